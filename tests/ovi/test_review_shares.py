"""Hostile review of the executor's shares of claims (ovi/executor.py
``execute``/``_claim_share``/``_sort_share``/``_shares``/``_ActedSince``) and
``Coordinator.keeping``. A test that passes means the code held; one that
fails proves a bug (see the report of review-shares)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest

from eventstore import (
    Event,
    EventStore,
    EventStoreError,
    RecordedEvent,
    SQLiteEventStore,
    StreamBatch,
)
from ovi.config import parse_config
from ovi.coordinator import ClaimResult, Coordinator
from ovi.engine import Engine
from ovi.events import (
    ActionExecuted,
    ActionExecuting,
    ActionFailed,
    ClaimAcquired,
    ClaimReleased,
    ClaimRenewed,
    registry,
)
from ovi.model import CycleMode, DesiredResource, Outcome, Resource
from ovi.replay import verify_log
from ovi.runtime import ovi_projections
from projections import ProjectionRunner
from tests.ovi.harness import Env, config_text, environment, managed

pytestmark = pytest.mark.asyncio

WEB = "{type: ec2, name: web, count: %d, size: t3.micro}"
US = "test"  # the harness's instance id


async def of_type(env: Env, cls: type[Event]) -> list[Any]:
    return [e.event for e in await env.events() if isinstance(e.event, cls)]


async def assert_verifies(env: Env, *, in_doubt_ok: bool = False, ignore: str = "") -> None:
    report = await verify_log(env.store)
    violations = [v for v in report.violations if not (ignore and ignore in v.reason
                                                         and "no earlier DecisionMade" in v.reason)]
    assert not (violations or report.chain_problem or report.anchor_problem
                or report.storage_problem), violations
    if not in_doubt_ok:
        assert report.in_doubt == [], report.in_doubt


def claim_histories(events: list[RecordedEvent]) -> dict[str, list[Any]]:
    by: dict[str, list[Any]] = {}
    for e in events:
        if isinstance(e.event, ClaimAcquired | ClaimReleased | ClaimRenewed):
            by.setdefault(e.event.resource_id, []).append(e.event)
    return by


def unreleased_claims(events: list[RecordedEvent], instance: str) -> list[str]:
    """Resources whose last claim event by ``instance`` is not a release."""
    left = []
    for rid, history in claim_histories(events).items():
        mine = [h for h in history if h.instance_id == instance]
        if mine and not isinstance(mine[-1], ClaimReleased):
            left.append(rid)
    return sorted(left)


def open_actions(events: list[RecordedEvent]) -> list[str]:
    """Resources with an ActionExecuting that no outcome of its token closes."""
    opened: dict[tuple[str, str, int], int] = {}
    for e in events:
        ev = e.event
        if isinstance(ev, ActionExecuting):
            opened[(ev.resource_id, ev.decision_id, ev.token)] = e.position
        elif isinstance(ev, ActionExecuted | ActionFailed):
            opened.pop((ev.resource_id, ev.decision_id, ev.token), None)
    return sorted({k[0] for k in opened})


def counting(env: Env, kind: str, per: dict[str, int], peak: dict[str, int]) -> None:
    """Wrap the fake provider's ``kind`` call to count calls in flight per target."""
    real = getattr(env.provider, kind)

    async def call(*args: Any, **kwargs: Any) -> Any:
        target = args[0].id if kind == "create" else args[1].cloud_id
        per[target] = per.get(target, 0) + 1
        peak[target] = max(peak.get(target, 0), per[target])
        try:
            await anyio.sleep(0.1)
            return await real(*args, **kwargs)
        finally:
            per[target] -= 1

    setattr(env.provider, kind, call)


@contextmanager
def clock_reading_fails(coordinator: Coordinator, at: int) -> Iterator[list[int]]:
    """The ``at``-th reading of the log's clock by ``coordinator`` raises a
    store error; yields the count of readings."""
    real = coordinator.reading
    count = [0]

    async def reading() -> Any:
        count[0] += 1
        if count[0] == at:
            raise EventStoreError("I/O error reading the clock")
        return await real()

    coordinator.reading = reading  # type: ignore[method-assign]
    try:
        yield count
    finally:
        coordinator.reading = real  # type: ignore[method-assign]


@contextmanager
def on_append(store: EventStore,
              act: Callable[[list[StreamBatch]], Awaitable[None] | None]) -> Iterator[None]:
    """``act`` sees every list of batches ``store`` is asked to append, before
    it is appended (it may cancel a scope, or raise; what it returns to
    await is awaited first)."""
    real = store.append_streams

    async def append_streams(batches: Any, *args: Any, **kw: Any) -> Any:
        batches = list(batches)
        waiting = act(batches)
        if waiting is not None:
            await waiting
        return await real(batches, *args, **kw)

    store.append_streams = append_streams  # type: ignore[method-assign]
    try:
        yield
    finally:
        store.append_streams = real  # type: ignore[method-assign]


@contextmanager
def stream_read_fails(views: ProjectionRunner, stream: str) -> Iterator[None]:
    """Every checked read of ``stream`` through ``views`` raises a store error."""
    real = views.read_checked

    def read_checked(**kw: Any) -> Any:
        if kw.get("stream") == stream:
            async def failing() -> Any:
                raise EventStoreError("I/O error reading the log")
                yield  # pragma: no cover
            return failing()
        return real(**kw)

    views.read_checked = read_checked  # type: ignore[method-assign]
    try:
        yield
    finally:
        views.read_checked = real  # type: ignore[method-assign]


def renewing(batches: list[StreamBatch]) -> bool:
    return any(isinstance(e, ClaimRenewed) for b in batches for e in b.events)


def reversed_order(engine: Engine) -> None:
    """This engine's executor takes its decisions last first: two instances
    going through one estate from opposite ends meet in the middle."""
    executor = engine.executor
    real = executor.execute

    async def execute(decisions: Any, observation: Any, **kw: Any) -> Any:
        return await real(list(reversed(decisions)), observation, **kw)

    executor.execute = execute  # type: ignore[method-assign]


# -- 7. max concurrency -----------------------------------------------------


@pytest.mark.parametrize("mc", [1, 3])
async def test_never_more_than_max_concurrency_calls_in_flight(tmp_path: Path, mc: int) -> None:
    async with environment(tmp_path) as env:
        env.provider.latency = 0.01
        result = await env.apply(config_text(WEB % 25), max_concurrency=mc)
        await assert_verifies(env)
        events = await env.events()
    assert unreleased_claims(events, US) == []
    assert [e.outcome for e in result.executions] == ["executed"] * 25
    assert env.provider.max_in_flight <= mc, env.provider.max_in_flight
    assert len(env.provider.resources) == 25


# -- 4. two decisions on one resource in one cycle ---------------------------


def _twice_on(env: Env, resource_id: str) -> None:
    """The executor is given a second decision on ``resource_id`` (same action,
    its own id) right after the first: what ``_shares`` says it supports."""
    executor = env.engine.executor
    real = executor.execute

    async def execute(decisions: Any, observation: Any, **kw: Any) -> Any:
        out = []
        for d in decisions:
            out.append(d)
            if d.resource_id == resource_id:
                out.append(msgspec.structs.replace(d, decision_id=d.decision_id + "-second"))
        return await real(out, observation, **kw)

    executor.execute = execute  # type: ignore[method-assign]


async def _drifted_env(tmp_path: Path, n: int) -> tuple[Any, list[Resource]]:
    seen = [managed(f"web-{i}", f"i-{i:04d}", env="old") for i in range(n)]
    return environment(tmp_path, *seen), seen


WEB_TAGGED = "{type: ec2, name: web, count: %d, size: t3.micro, tags: {env: new}}"


@pytest.mark.parametrize("mc", [1, 2, 4])
async def test_two_decisions_on_one_resource_never_call_the_provider_at_once(
    tmp_path: Path, mc: int
) -> None:
    """Two decisions on web-0 in one cycle run under its one claim: never two
    provider calls on it in flight together."""
    cm, _seen = await _drifted_env(tmp_path, 1)
    async with cm as env:
        _twice_on(env, "web-0")
        per: dict[str, int] = {}
        peak: dict[str, int] = {}
        counting(env, "update", per, peak)
        await env.apply(config_text(WEB_TAGGED % 1), max_concurrency=mc)
    assert [k for k, _ in env.provider.calls if k == "update"] == ["update"] * 2
    assert peak.get("i-0000", 0) <= 1, peak


@pytest.mark.parametrize("mc", [1, 4])
async def test_two_decisions_on_one_resource_both_run_under_the_claim(
    tmp_path: Path, mc: int
) -> None:
    """The second decision on web-0 runs, in order, while the claim is still
    held: its outcome is not recorded flagged ``stale_token`` (the first one's
    outcome released the claim under it) and the log verifies."""
    cm, _seen = await _drifted_env(tmp_path, 4)
    async with cm as env:
        _twice_on(env, "web-0")
        await env.apply(config_text(WEB_TAGGED % 4), max_concurrency=mc)
        events = await env.events()
        # (The second decision has no DecisionMade of its own: that alone is ignored.)
        await assert_verifies(env, ignore="-second")
    on_web0 = [e.event for e in events if getattr(e.event, "resource_id", None) == "web-0"
               and isinstance(e.event, ActionExecuting | ActionExecuted | ActionFailed)]
    stale = [e for e in on_web0 if isinstance(e, ActionExecuted | ActionFailed)
             and e.stale_token]
    assert stale == [], [(type(e).__name__, e.decision_id) for e in on_web0]
    # In order: the first decision's outcome before the second's write-ahead.
    kinds = [(type(e).__name__, e.decision_id.endswith("-second")) for e in on_web0]
    assert kinds == [("ActionExecuting", False), ("ActionExecuted", False),
                     ("ActionExecuting", True), ("ActionExecuted", True)], kinds


async def test_two_decisions_on_one_resource_no_other_instance_acts_between(
    tmp_path: Path
) -> None:
    """While our second decision on web-0 is in flight, another instance
    tries to claim web-0: it must find it held (ours until our last outcome)."""
    cm, _seen = await _drifted_env(tmp_path, 2)
    async with cm as env:
        _twice_on(env, "web-0")
        got: list[bool] = []
        real_update = env.provider.update
        calls = Counter[str]()

        async with SQLiteEventStore(tmp_path / "ovi.db", registry(), instance_id="other:1:x",
                                    clock=env.clock) as other, \
                ProjectionRunner(other, tmp_path / "ovi.db", ovi_projections()) as ov:
            contender = Coordinator(other, ov)

            async def update(desired: Any, current: Any, changes: Any) -> Any:
                calls[current.cloud_id] += 1
                if current.cloud_id == "i-0000" and calls["i-0000"] == 2:
                    await anyio.sleep(0.05)  # a slow call: the first outcome is recorded
                    result = await contender.claim(["web-0"])
                    got.append("web-0" in result.held)
                    for c in result.held.values():
                        await contender.release(c)
                return await real_update(desired, current, changes)

            env.provider.update = update
            await env.apply(config_text(WEB_TAGGED % 2), max_concurrency=1)
    assert calls["i-0000"] == 2
    assert got == [False], "another instance claimed web-0 while our second action ran"


# -- 1. double action with another instance's cycle overlapping ---------------


async def test_two_instances_overlapping_act_once_per_resource(tmp_path: Path) -> None:
    """Two instances on one log and one cloud run apply cycles at once over the
    same 30 creates (both observe before either acts): every resource gets
    exactly one write-ahead and one provider create."""
    async with environment(tmp_path) as env:
        env.provider.latency = 0.005
        async with SQLiteEventStore(tmp_path / "ovi.db", registry(), instance_id="other:1:x",
                                    clock=env.clock) as other, \
                ProjectionRunner(other, tmp_path / "ovi.db", ovi_projections()) as ov:
            engine_b = Engine(other, ov, env.provider)
            reversed_order(engine_b)
            config = parse_config(config_text(WEB % 30), "test.yaml")
            observed = anyio.Event()
            waiting = [0]
            real_observe = env.provider.observe

            async def observe(scope: Any) -> Any:
                found = await real_observe(scope)
                waiting[0] += 1
                if waiting[0] >= 2:
                    observed.set()
                await observed.wait()  # both observe before either acts
                return found

            env.provider.observe = observe  # type: ignore[method-assign]
            # Neither goes past its first share until both have claimed one
            # (they walk the estate from opposite ends): both act, however
            # the machine schedules them.
            claimed: list[str] = []
            both = anyio.Event()

            def barrier(coordinator: Coordinator, who: str) -> None:
                real_claim = coordinator.claim

                async def claim(resource_ids: Any) -> Any:
                    result = await real_claim(resource_ids)
                    if who not in claimed:
                        claimed.append(who)
                        if len(claimed) == 2:
                            both.set()
                    await both.wait()
                    return result

                coordinator.claim = claim  # type: ignore[method-assign]

            barrier(env.engine.coordinator, "a")
            barrier(engine_b.coordinator, "b")
            results: list[Any] = []

            async def a() -> None:
                results.append(await env.engine.run_cycle(
                    config, source="test.yaml", mode=CycleMode.APPLY, max_concurrency=2))

            async def b() -> None:
                results.append(await engine_b.run_cycle(
                    config, source="test.yaml", mode=CycleMode.APPLY, max_concurrency=3))

            with anyio.fail_after(60):
                async with anyio.create_task_group() as group:
                    group.start_soon(a)
                    group.start_soon(b)
        events = await env.events()
        await assert_verifies(env)
    executing = Counter(e.event.resource_id for e in events
                        if isinstance(e.event, ActionExecuting))
    creates = Counter(t for k, t in env.provider.calls if k == "create")
    assert all(n == 1 for n in executing.values()), executing
    assert sorted(executing) == sorted(f"web-{i}" for i in range(30)), sorted(executing)
    assert len(env.provider.resources) == 30
    assert all(n == 1 for n in creates.values()), creates
    actors = Counter(e.instance_id for e in events if isinstance(e.event, ActionExecuting))
    assert len(actors) == 2, actors  # both acted: the overlap was real
    # No live claim was ever taken over.
    assert [e.event for e in events if isinstance(e.event, ClaimAcquired)
            and e.event.takeover_of] == []


# -- 2. claims of queued shares renewed while they wait ------------------------


async def test_queued_claims_are_renewed_and_never_taken_over(tmp_path: Path) -> None:
    """Real time, a TTL of 1.2 s (heartbeat 0.4 s, margin 0.3 s), one call at
    a time, 8 creates of 0.45 s each: the later actions wait in the queue
    about twice the TTL. A contender claims every resource over and over
    (releasing what it gets): it must never take a claim of ours over, and
    nothing of ours is skipped for a claim run out."""
    async with environment(tmp_path, real_time=True,
                           claim_ttl=timedelta(seconds=1.2)) as env:
        env.provider.latency = 0.45
        taken: list[str] = []
        async with SQLiteEventStore(tmp_path / "ovi.db", registry(), instance_id="other:1:x",
                                    clock=env._clock) as other, \
                ProjectionRunner(other, tmp_path / "ovi.db", ovi_projections()) as ov:
            contender = Coordinator(other, ov, ttl=timedelta(seconds=1.2))
            done = anyio.Event()

            async def contend() -> None:
                # Only resources we claimed already: one we have not claimed
                # yet, held by the contender for a moment, would be skipped
                # by our next share as claimed (right, but not this attack).
                while not done.is_set():
                    ours = {e.event.resource_id async for e in other.read(types=["ClaimAcquired"])
                            if e.event.instance_id == US}
                    got = await contender.claim(sorted(ours))
                    for c in got.held.values():
                        taken.append(c.resource_id)
                        await contender.release(c)
                    await anyio.sleep(0.05)

            result: list[Any] = []

            async def run() -> None:
                try:
                    result.append(await env.apply(config_text(WEB % 8), max_concurrency=1))
                finally:
                    done.set()

            with anyio.fail_after(60):
                async with anyio.create_task_group() as group:
                    group.start_soon(run)
                    # the contender starts once our first share is claimed
                    await anyio.sleep(0.3)
                    group.start_soon(contend)
        events = await env.events()
    outcomes = {e.resource_id: (e.outcome, e.reason) for e in result[0].executions}
    takeovers = [(e.event.resource_id, e.event.takeover_of) for e in events
                 if isinstance(e.event, ClaimAcquired) and e.event.takeover_of]
    assert takeovers == [], takeovers
    expired = {r: o for r, o in outcomes.items() if o[1] in ("claim-expired", "claim-lost")}
    assert expired == {}, expired
    # Every claim of ours that lived past its TTL before its action was
    # written ahead was renewed meanwhile (else it was used run out).
    claimed_at: dict[str, Any] = {}
    unrenewed_long_waits = []
    renewed: set[str] = set()
    for e in events:
        ev = e.event
        if isinstance(ev, ClaimAcquired) and ev.instance_id == US:
            claimed_at[ev.resource_id] = ev.claimed_at
        elif isinstance(ev, ClaimRenewed) and ev.instance_id == US:
            renewed.add(ev.resource_id)
        elif isinstance(ev, ActionExecuting) and e.instance_id == US:
            waited = e.recorded_at - claimed_at[ev.resource_id]
            if waited > timedelta(seconds=1.2) and ev.resource_id not in renewed:
                unrenewed_long_waits.append((ev.resource_id, waited))
    waits = {e.event.resource_id: e.recorded_at - claimed_at[e.event.resource_id]
             for e in events if isinstance(e.event, ActionExecuting) and e.instance_id == US}
    assert max(waits.values()) > timedelta(seconds=1.2), waits  # the attack happened
    assert unrenewed_long_waits == [], unrenewed_long_waits
    assert sum(o == ("executed", None) for o in outcomes.values()) >= 1, outcomes
    assert Counter(t for k, t in env.provider.calls if k == "create").most_common(1)[0][1] == 1


# -- 3. cancellation in the middle of a share ----------------------------------


async def _cancel_mid_share(env: Env, *, after_creates: int, n: int, mc: int) -> None:
    real_create = env.provider.create
    made = [0]
    scope = anyio.CancelScope()

    async def create(desired: DesiredResource, **kwargs: Any) -> Resource:
        made[0] += 1
        if made[0] == after_creates:
            scope.cancel()
        return await real_create(desired, **kwargs)

    env.provider.create = create  # type: ignore[method-assign]
    env.provider.latency = 0.01
    with scope:
        await env.apply(config_text(WEB % n), max_concurrency=mc)
    env.provider.create = real_create  # type: ignore[method-assign]


async def test_cancelled_mid_share_claims_not_started_are_given_back(tmp_path: Path) -> None:
    """The execute task is cancelled while later shares wait in the queue:
    every claim of ours whose action never wrote ahead is released (else
    other instances are blocked until the TTL, 10 minutes by default)."""
    async with environment(tmp_path) as env:
        await _cancel_mid_share(env, after_creates=3, n=20, mc=2)
        events = await env.events()
    left = unreleased_claims(events, US)
    in_doubt = set(open_actions(events))
    never_started = [r for r in left if r not in in_doubt]
    assert never_started == [], (
        f"claims left to expire with no action written ahead: {never_started};"
        f" in doubt: {sorted(in_doubt)}")


async def test_cancelled_mid_share_the_log_still_verifies(tmp_path: Path) -> None:
    """The execute task is cancelled mid-share (a drain that timed out): the
    log verifies. What it leaves in doubt is the calls in flight and the
    write-aheads waiting for a call slot (recovery's to resolve, next test);
    nothing else."""
    async with environment(tmp_path) as env:
        await _cancel_mid_share(env, after_creates=3, n=20, mc=2)
        report = await verify_log(env.store)
        events = await env.events()
    assert report.ok, report.violations
    # at most one wave in flight and one written ahead (2 * max_concurrency)
    assert len(report.in_doubt) <= 4, report.in_doubt
    assert sorted(d.resource_id for d in report.in_doubt) == open_actions(events)


async def test_after_a_cancelled_cycle_the_next_one_acts_once_per_resource(
    tmp_path: Path
) -> None:
    """After the cancelled cycle, the next cycle (recovery first) makes each
    resource exactly once, and the log verifies."""
    async with environment(tmp_path) as env:
        await _cancel_mid_share(env, after_creates=3, n=20, mc=2)
        second = await env.apply(config_text(WEB % 20), max_concurrency=2)
        await assert_verifies(env)
        third = await env.apply(config_text(WEB % 20), max_concurrency=2)
        await assert_verifies(env)
    ids = Counter(r.tags["ovi:id"] for r in env.provider.resources.values())
    assert sorted(ids) == sorted(f"web-{i}" for i in range(20)), ids
    assert all(n == 1 for n in ids.values()), ids
    assert [e for e in third.executions if e.outcome == Outcome.EXECUTED] == []
    assert second is not None


async def test_cancelled_mid_share_another_instance_is_not_blocked(tmp_path: Path) -> None:
    """After our cycle is cancelled, another instance's cycle (right away,
    well inside the TTL) can act on every resource we never started on."""
    async with environment(tmp_path) as env:
        await _cancel_mid_share(env, after_creates=3, n=20, mc=2)
        events = await env.events()
        started = {e.event.resource_id for e in events if isinstance(e.event, ActionExecuting)}
        async with SQLiteEventStore(tmp_path / "ovi.db", registry(), instance_id="other:1:x",
                                    clock=env.clock) as other, \
                ProjectionRunner(other, tmp_path / "ovi.db", ovi_projections()) as ov:
            engine_b = Engine(other, ov, env.provider)
            result = await engine_b.run_cycle(parse_config(config_text(WEB % 20), "test.yaml"),
                                              source="test.yaml", mode=CycleMode.APPLY,
                                              max_concurrency=4)
    blocked = sorted(e.resource_id for e in result.executions
                     if e.reason == "claimed" and e.resource_id not in started)
    assert blocked == [], f"held by the cancelled cycle's claims: {blocked}"


# -- 5. EventStoreError mid-way --------------------------------------------------


async def test_a_third_share_refused_lets_queued_and_running_actions_finish(
    tmp_path: Path
) -> None:
    """The third share's claim fails: what was claimed (running or still
    queued) runs and records its outcome with its release; nothing unclaimed
    runs; the error surfaces; the log verifies."""
    async with environment(tmp_path) as env:
        coordinator = env.engine.coordinator
        real_claim = coordinator.claim
        asked: list[list[str]] = []

        async def claim(resource_ids: Any) -> ClaimResult:
            ids = list(resource_ids)
            asked.append(ids)
            if len(asked) == 3:
                raise EventStoreError("disk full")
            return await real_claim(ids)

        coordinator.claim = claim  # type: ignore[method-assign]
        env.provider.latency = 0.01
        with pytest.raises(EventStoreError, match="disk full"):
            await env.apply(config_text(WEB % 12), max_concurrency=2)
        events = await env.events()
        await assert_verifies(env)
    claimed = sorted(r for ids in asked[:2] for r in ids)
    assert len(claimed) == 6
    made = sorted(r.tags["ovi:id"] for r in env.provider.resources.values())
    assert made == claimed
    assert unreleased_claims(events, US) == []


@pytest.mark.parametrize("fails", ["progress", "clock"])
async def test_a_store_error_in_a_worker_does_not_cut_running_actions(
    tmp_path: Path, fails: str
) -> None:
    """The log cannot be read for one queued action (a create reads its
    stream before its write-ahead; every action reads the store's clock):
    the actions already in flight finish and record their outcomes (nothing
    left in doubt), and the error surfaces as itself."""
    async with environment(tmp_path) as env:
        env.provider.slow["create"] = 0.05
        surfaced: list[BaseException] = []
        # (or the third action's reading of the clock, just before its
        # write-ahead, fails while the first two are in flight)
        with (clock_reading_fails(env.engine.coordinator, 3) if fails == "clock"
              else stream_read_fails(env.views, "resource/web-3")):
            try:
                await env.apply(config_text(WEB % 8), max_concurrency=2)
            except BaseException as exc:
                surfaced.append(exc)
        events = await env.events()
        report = await verify_log(env.store)
    assert report.ok, report.violations
    assert open_actions(events) == [], (
        f"in doubt after the error: {open_actions(events)}; surfaced: {surfaced!r}")
    assert report.in_doubt == [], report.in_doubt
    assert all(isinstance(e, EventStoreError) for e in surfaced), surfaced


# -- 6. draining ----------------------------------------------------------------


async def test_no_share_is_claimed_after_stopping_and_all_claims_are_released(
    tmp_path: Path
) -> None:
    """stopping() turns true as the first call starts: no claim is asked for
    from then on; every claim of ours ends released; one call only."""
    async with environment(tmp_path) as env:
        stop = [False]
        env.engine = Engine(env.store, env.views, env.provider, stopping=lambda: stop[0])
        coordinator = env.engine.coordinator
        real_claim = coordinator.claim
        asked_while_stopping: list[list[str]] = []

        async def claim(resource_ids: Any) -> ClaimResult:
            ids = list(resource_ids)
            if stop[0]:
                asked_while_stopping.append(ids)
            return await real_claim(ids)

        coordinator.claim = claim  # type: ignore[method-assign]
        real_create = env.provider.create

        async def create(desired: DesiredResource, **kwargs: Any) -> Resource:
            stop[0] = True
            return await real_create(desired, **kwargs)

        env.provider.create = create  # type: ignore[method-assign]
        env.provider.latency = 0.01
        result = await env.apply(config_text(WEB % 20), max_concurrency=2)
        events = await env.events()
        await assert_verifies(env)
    assert asked_while_stopping == [], asked_while_stopping
    assert unreleased_claims(events, US) == []
    assert open_actions(events) == []
    creates = len([k for k, _ in env.provider.calls if k == "create"])
    assert sum(e.outcome == "executed" for e in result.executions) == creates <= 2


async def test_draining_set_while_a_share_is_being_claimed(tmp_path: Path) -> None:
    """stopping() turns true while the second share is being claimed: its
    claims are given back, nothing more starts, the log verifies."""
    async with environment(tmp_path) as env:
        stop = [False]
        env.engine = Engine(env.store, env.views, env.provider, stopping=lambda: stop[0])
        coordinator = env.engine.coordinator
        real_claim = coordinator.claim
        asked = [0]

        async def claim(resource_ids: Any) -> ClaimResult:
            asked[0] += 1
            got = await real_claim(resource_ids)
            if asked[0] == 2:
                stop[0] = True
            return got

        coordinator.claim = claim  # type: ignore[method-assign]
        env.provider.latency = 0.01
        await env.apply(config_text(WEB % 12), max_concurrency=2)
        events = await env.events()
        await assert_verifies(env)
    assert asked[0] == 2
    assert unreleased_claims(events, US) == []
    assert open_actions(events) == []


async def test_the_first_share_refused_runs_nothing(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        coordinator = env.engine.coordinator

        async def claim(resource_ids: Any) -> ClaimResult:
            raise EventStoreError("disk full")

        coordinator.claim = claim  # type: ignore[method-assign]
        with pytest.raises(EventStoreError, match="disk full"):
            await env.apply(config_text(WEB % 6), max_concurrency=2)
        await assert_verifies(env)
    assert [c for c in env.provider.calls if c[0] != "observe"] == []


async def test_a_store_error_in_a_worker_fails_that_action_not_the_cycle(
    tmp_path: Path
) -> None:
    """``ovi run`` catches (OviError, EventStoreError, ProjectionError) around a
    cycle (ovi/service.py); an ExceptionGroup would stop the service. A
    worker's store error before its write-ahead fails that action, "not
    attempted" (as a write-ahead that cannot be written does); the others
    run, and the next cycle makes the one that failed."""
    async with environment(tmp_path) as env:
        with clock_reading_fails(env.engine.coordinator, 3):
            first = await env.apply(config_text(WEB % 8), max_concurrency=2)
        failed = [e for e in first.executions if e.outcome == Outcome.FAILED]
        assert len(failed) == 1 and failed[0].error is not None, first.executions
        assert failed[0].error.startswith("not attempted: cannot read the log's clock")
        assert sum(e.outcome == Outcome.EXECUTED for e in first.executions) == 7
        await env.apply(config_text(WEB % 8), max_concurrency=2)
        await assert_verifies(env)
    ids = Counter(r.tags["ovi:id"] for r in env.provider.resources.values())
    assert sorted(ids) == sorted(f"web-{i}" for i in range(8)), ids
    assert all(n == 1 for n in ids.values()), ids


# -- 2b. the claim clock jumps while shares wait (a suspended host) ---------------


async def test_claims_run_out_while_queued_and_taken_over_nothing_more_is_called(
    tmp_path: Path
) -> None:
    """One call at a time; while web-0's call runs the store's clock jumps 11
    minutes (a host suspended: no heartbeat ran) and another instance takes
    over every other resource. Nothing of ours is called after that, and
    no live claim of the other instance is taken back."""
    async with environment(tmp_path) as env:
        async with SQLiteEventStore(tmp_path / "ovi.db", registry(), instance_id="other:1:x",
                                    clock=env.clock) as other, \
                ProjectionRunner(other, tmp_path / "ovi.db", ovi_projections()) as ov:
            contender = Coordinator(other, ov)
            real_create = env.provider.create
            theirs: list[str] = []

            async def create(desired: DesiredResource, **kwargs: Any) -> Resource:
                if desired.id == "web-0":
                    env.clock.advance(minutes=11)
                    got = await contender.claim([f"web-{i}" for i in range(1, 8)])
                    theirs.extend(got.held)
                return await real_create(desired, **kwargs)

            env.provider.create = create  # type: ignore[method-assign]
            result = await env.apply(config_text(WEB % 8), max_concurrency=1)
            events = await env.events()
            report = await verify_log(env.store)
    assert theirs, "the contender took nothing over"
    made = [t for k, t in env.provider.calls if k == "create"]
    assert set(made) & set(theirs) == set(), (made, theirs)
    executed = [e.resource_id for e in result.executions if e.outcome == "executed"]
    assert set(executed) & set(theirs) == set(), (executed, theirs)
    ours_after = [e.event.resource_id for e in events if isinstance(e.event, ClaimAcquired)
                  and e.event.instance_id == US and e.event.takeover_of]
    assert ours_after == [], ours_after
    assert report.ok, report.violations


# -- 1b. the same on a shared PostgreSQL log, two hosts ---------------------------


async def test_two_hosts_on_postgres_overlapping_act_once_per_resource(
    postgres_schema: Any, tmp_path: Path
) -> None:
    """Two hosts (a shared PostgreSQL log, a mirror each) run apply cycles at
    once over the same 30 creates, both having observed before either acts:
    one write-ahead and one create per resource; the log verifies."""
    from ovi.providers.fake import FakeProvider
    from ovi.runtime import open_runtime

    provider = FakeProvider(latency=0.005)
    dsn = postgres_schema.dsn
    async with open_runtime(dsn, mirror=tmp_path / "a.db", instance_id="host-a:7:aa") as a, \
            open_runtime(dsn, mirror=tmp_path / "b.db", instance_id="host-b:7:bb") as b:
        config = parse_config(config_text(WEB % 30), "test.yaml")
        observed = anyio.Event()
        waiting = [0]
        real_observe = provider.observe

        async def observe(scope: Any) -> Any:
            found = await real_observe(scope)
            waiting[0] += 1
            if waiting[0] >= 2:
                observed.set()
            await observed.wait()
            return found

        provider.observe = observe  # type: ignore[method-assign]

        async def run(rt: Any, mc: int) -> None:
            engine = Engine(rt.store, rt.views, provider)
            if rt is b:
                reversed_order(engine)
            await engine.run_cycle(
                config, source="test.yaml", mode=CycleMode.APPLY, max_concurrency=mc)

        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:
                group.start_soon(run, a, 2)
                group.start_soon(run, b, 3)
        events = [e async for e in a.store.read()]
        report = await verify_log(a.store)
    assert report.ok and report.in_doubt == [], (report.violations, report.in_doubt)
    executing = Counter(e.event.resource_id for e in events
                        if isinstance(e.event, ActionExecuting))
    assert sorted(executing) == sorted(f"web-{i}" for i in range(30))
    assert all(n == 1 for n in executing.values()), executing
    creates = Counter(t for k, t in provider.calls if k == "create")
    assert all(n == 1 for n in creates.values()) and len(provider.resources) == 30, creates
    # Both hosts acted (the overlap was real), on disjoint resources.
    actors = Counter(e.instance_id for e in events if isinstance(e.event, ActionExecuting))
    assert len(actors) == 2, actors


# -- 3b. cancelled while a later share's staleness check reads the log -------------


async def test_cancelled_during_a_shares_staleness_check_gives_that_share_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while the second share is being checked for staleness (after
    its claim, before any of it is queued): its claims are given back."""
    from ovi import executor as executor_module

    real_read_on = executor_module._ActedSince.read_on
    reads = [0]
    scope = anyio.CancelScope()
    second: list[str] = []

    async def read_on(self: Any) -> None:
        reads[0] += 1
        if reads[0] == 2:
            scope.cancel()
            await anyio.lowlevel.checkpoint()  # the cancellation lands here
        await real_read_on(self)

    monkeypatch.setattr(executor_module._ActedSince, "read_on", read_on)
    async with environment(tmp_path) as env:
        coordinator = env.engine.coordinator
        real_claim = coordinator.claim

        async def claim(resource_ids: Any) -> ClaimResult:
            got = await real_claim(resource_ids)
            if not second and reads[0] == 1:
                second.extend(got.held)
            return got

        coordinator.claim = claim  # type: ignore[method-assign]
        env.provider.latency = 0.01
        with scope:
            await env.apply(config_text(WEB % 12), max_concurrency=2)
        events = await env.events()
    assert len(second) == 4, second
    left = unreleased_claims(events, US)
    assert set(left) & set(second) == set(), (left, second)


# -- 2c. a renewal that cannot be written while shares wait ------------------------


async def test_a_failed_renewal_while_queued_starts_nothing_and_gives_every_claim_back(
    tmp_path: Path
) -> None:
    """Real time, TTL 1.2 s; the first heartbeat's renewal cannot be written:
    those claims are lost (nothing more starts under them), every claim of
    ours still ends released or closed with an outcome, the log verifies,
    and the next cycle finishes the job with one create per resource."""
    async with environment(tmp_path, real_time=True,
                           claim_ttl=timedelta(seconds=1.2)) as env:
        env.provider.latency = 0.3
        failed = [0]

        def fail_the_first_renewal(batches: list[StreamBatch]) -> None:
            if not failed[0] and renewing(batches):
                failed[0] += 1
                raise EventStoreError("database is locked")

        with on_append(env.store, fail_the_first_renewal):
            first = await env.apply(config_text(WEB % 6), max_concurrency=1)
        events = await env.events()
        report = await verify_log(env.store)
        env.provider.latency = 0.0
        await env.apply(config_text(WEB % 6), max_concurrency=3)
        await assert_verifies(env)
    assert failed[0] == 1
    assert report.ok and report.in_doubt == [], (report.violations, report.in_doubt)
    assert unreleased_claims(events, US) == []
    assert any(e.reason in ("claim-expired", "claim-lost") for e in first.executions)
    ids = Counter(r.tags["ovi:id"] for r in env.provider.resources.values())
    assert sorted(ids) == sorted(f"web-{i}" for i in range(6)) and set(ids.values()) == {1}
