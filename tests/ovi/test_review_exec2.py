"""Hostile review 2 of the executor after commit e229612 (a resource's
decisions in order under its one claim; the give-back of unused claims on
cancellation or failure; store errors before/after the write-ahead). A test
that passes means the code held; one that fails proves a bug (see the report
of review-exec2)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest

from eventstore import EventStoreError, SQLiteEventStore, StreamBatch
from ovi.config import parse_config
from ovi.coordinator import ClaimResult
from ovi.engine import Engine
from ovi.events import (
    ActionExecuted,
    ActionExecuting,
    ActionFailed,
    Actor,
    AutomationPaused,
    pause_stream,
    registry,
)
from ovi.model import CycleMode, DesiredResource, Outcome, Resource
from ovi.replay import verify_log
from ovi.runtime import ovi_projections
from projections import ProjectionError, ProjectionRunner
from tests.ovi.harness import Env, config_text, environment, managed
from tests.ovi.test_review_shares import (
    WEB,
    WEB_TAGGED,
    _twice_on,
    assert_verifies,
    claim_histories,
    clock_reading_fails,
    on_append,
    open_actions,
    renewing,
    stream_read_fails,
    unreleased_claims,
)

pytestmark = pytest.mark.asyncio

US = "test"


def leaked(events: list[Any]) -> list[str]:
    """Claims of ours left held with no action in doubt under them."""
    in_doubt = set(open_actions(events))
    return [r for r in unreleased_claims(events, US) if r not in in_doubt]


def on(events: list[Any], resource_id: str) -> list[tuple[str, str]]:
    return [(type(e.event).__name__, e.event.decision_id) for e in events
            if getattr(e.event, "resource_id", None) == resource_id
            and isinstance(e.event, ActionExecuting | ActionExecuted | ActionFailed)]


# -- 1. the give-back racing a heartbeat renewal --------------------------------


async def test_cancelled_while_a_heartbeat_renewal_commits_claims_are_still_given_back(
    tmp_path: Path
) -> None:
    """Real time, TTL 1.2 s (heartbeat 0.4 s), one call at a time, 6 creates
    of 0.5 s: the first heartbeat renews every queued claim. The execution is
    cancelled (a drain that timed out) while that renewal is being written;
    the store commits it anyway (an append queued is flushed by the store's
    own task). Every claim of ours with no write-ahead must still be given
    back: else other instances wait a whole TTL (10 minutes by default)."""
    async with environment(tmp_path, real_time=True,
                           claim_ttl=timedelta(seconds=1.2)) as env:
        env.provider.latency = 0.5
        scope = anyio.CancelScope()
        hit = [0]

        def cancel_at_the_first_renewal(batches: list[StreamBatch]) -> None:
            if not hit[0] and renewing(batches):
                hit[0] += 1
                scope.cancel()

        with on_append(env.store, cancel_at_the_first_renewal), anyio.fail_after(30), scope:
            await env.apply(config_text(WEB % 6), max_concurrency=1)
        await anyio.sleep(0.1)  # the store's flusher commits what was queued
        events = await env.events()
        report = await verify_log(env.store)
    assert hit[0] == 1, "no renewal was written while the actions ran"
    assert report.ok, report.violations
    histories = claim_histories(events)
    assert leaked(events) == [], (
        f"claims left held with no action written ahead: {leaked(events)};"
        f" in doubt: {open_actions(events)}; their claim streams:"
        f" {[[type(h).__name__ for h in histories[r]] for r in leaked(events)]}")


# -- 2. two decisions on one resource ------------------------------------------------


async def test_cancelled_between_two_decisions_on_a_resource_its_claim_is_given_back(
    tmp_path: Path
) -> None:
    """web-0 has two decisions; the first runs and records its outcome (the
    claim kept for the second); the execution is cancelled before the second
    writes ahead. Nothing is in doubt on web-0: its claim must be given back,
    not left to block other instances for the TTL."""
    async with environment(tmp_path, managed("web-0", "i-0000", env="old")) as env:
        _twice_on(env, "web-0")
        coordinator = env.engine.coordinator
        real_reading = coordinator.reading
        scope = anyio.CancelScope()
        readings = [0]

        async def reading() -> Any:
            readings[0] += 1
            if readings[0] == 2:  # the second decision's, just before its write-ahead
                scope.cancel()
                await anyio.lowlevel.checkpoint()
            return await real_reading()

        coordinator.reading = reading  # type: ignore[method-assign]
        with scope:
            await env.apply(config_text(WEB_TAGGED % 1), max_concurrency=1)
        coordinator.reading = real_reading  # type: ignore[method-assign]
        events = await env.events()
    assert readings[0] == 2
    assert [k for k, _ in on(events, "web-0")] == ["ActionExecuting", "ActionExecuted"]
    assert open_actions(events) == []
    assert leaked(events) == [], f"claims left held with nothing in doubt: {leaked(events)}"


async def test_first_of_two_decisions_not_attempted_the_second_is_not_called_claim_expired(
    tmp_path: Path
) -> None:
    """web-0 has two decisions; the first cannot read the log's clock (not
    attempted, its claim given back). The second must not run unclaimed;
    and it is not reported as a claim that ran out (it never did: the
    claim was given back by the first)."""
    async with environment(tmp_path, managed("web-0", "i-0000", env="old")) as env:
        _twice_on(env, "web-0")
        with clock_reading_fails(env.engine.coordinator, 1):
            result = await env.apply(config_text(WEB_TAGGED % 1), max_concurrency=1)
        events = await env.events()
        await assert_verifies(env, ignore="-second")
    assert [k for k, _ in env.provider.calls if k == "update"] == []
    assert on(events, "web-0") == []
    assert unreleased_claims(events, US) == []
    reasons = {e.decision_id.endswith("-second"): (e.outcome, e.reason)
               for e in result.executions}
    assert reasons[False][0] == Outcome.FAILED
    assert reasons[True][1] not in ("claim-expired", "claim-lost"), reasons


async def test_first_of_two_decisions_paused_the_second_never_runs(tmp_path: Path) -> None:
    """web-0 has two decisions; a pause of web-0 is recorded after the cycle
    read the pauses: the first's write-ahead is refused (paused). The second
    must not write ahead nor call; the claim ends released; the log verifies."""
    async with environment(tmp_path, managed("web-0", "i-0000", env="old")) as env:
        _twice_on(env, "web-0")
        executor = env.engine.executor
        real_run = executor._run
        paused = [False]

        async def _run(decision: Any, claim: Any, *a: Any, **kw: Any) -> Any:
            if not paused[0]:
                paused[0] = True
                await _pause(env, "web-0")
            return await real_run(decision, claim, *a, **kw)

        executor._run = _run  # type: ignore[method-assign]
        result = await env.apply(config_text(WEB_TAGGED % 1), max_concurrency=1)
        events = await env.events()
        await assert_verifies(env, ignore="-second")
    assert [k for k, _ in env.provider.calls if k == "update"] == []
    assert on(events, "web-0") == [], on(events, "web-0")
    assert unreleased_claims(events, US) == []
    assert {e.reason for e in result.executions} <= {"paused"}, result.executions


async def _pause(env: Env, target: str) -> None:
    actor = Actor(by="oncall", user="oncall", uid=1000, host="laptop")
    await env.store.append(pause_stream(target), [AutomationPaused(
        target=target, reason="review", actor=actor, at=env.clock())])


# -- 3. a create not attempted --------------------------------------------------------


async def test_a_create_whose_progress_cannot_be_read_is_made_once_next_cycle(
    tmp_path: Path
) -> None:
    """web-3's earlier attempts cannot be read (not attempted): no write-ahead,
    its claim given back at once (another instance can claim it), the
    others run; the next cycle makes web-3, exactly once."""
    async with environment(tmp_path) as env:
        with stream_read_fails(env.views, "resource/web-3"):
            first = await env.apply(config_text(WEB % 6), max_concurrency=2)
        events = await env.events()
        assert on(events, "web-3") == []
        assert unreleased_claims(events, US) == []
        async with SQLiteEventStore(tmp_path / "ovi.db", registry(), instance_id="other:1:x",
                                    clock=env.clock) as other, \
                ProjectionRunner(other, tmp_path / "ovi.db", ovi_projections()) as ov:
            engine_b = Engine(other, ov, env.provider)
            got = await engine_b.coordinator.claim(["web-3"])
            assert "web-3" in got.held, got
            await engine_b.coordinator.release(got.held["web-3"])
        await env.apply(config_text(WEB % 6), max_concurrency=2)
        await assert_verifies(env)
    failed = [e for e in first.executions if e.outcome == Outcome.FAILED]
    assert [e.resource_id for e in failed] == ["web-3"]
    ids = Counter(r.tags["ovi:id"] for r in env.provider.resources.values())
    assert sorted(ids) == [f"web-{i}" for i in range(6)] and set(ids.values()) == {1}, ids
    assert Counter(t for k, t in env.provider.calls if k == "create")["web-3"] == 1


# -- 4. an error confirming the claim after the write-ahead ----------------------------


async def test_an_error_confirming_the_claim_closes_the_write_ahead_and_nothing_is_called(
    tmp_path: Path
) -> None:
    """The claim check after web-2's write-ahead cannot read the log: its
    write-ahead is closed with ActionFailed (attempts 0, retryable), its claim
    released with it, its create never called; the next cycle makes it once."""
    async with environment(tmp_path) as env:
        coordinator = env.engine.coordinator
        real_confirm = coordinator.confirm

        async def confirm(claim: Any, **kw: Any) -> bool:
            if claim.resource_id == "web-2":
                raise EventStoreError("I/O error reading the clock")
            return await real_confirm(claim, **kw)

        coordinator.confirm = confirm  # type: ignore[method-assign]
        first = await env.apply(config_text(WEB % 4), max_concurrency=2)
        coordinator.confirm = real_confirm  # type: ignore[method-assign]
        events = await env.events()
        await assert_verifies(env)
        assert [k for k, t in env.provider.calls if k == "create" and t == "web-2"] == []
        failed = [e.event for e in events if isinstance(e.event, ActionFailed)
                  and e.event.resource_id == "web-2"]
        assert len(failed) == 1 and failed[0].attempts == 0 and failed[0].retryable, failed
        assert unreleased_claims(events, US) == []
        await env.apply(config_text(WEB % 4), max_concurrency=2)
        await assert_verifies(env)
    web2 = [e for e in first.executions if e.resource_id == "web-2"]
    assert [e.outcome for e in web2] == [Outcome.FAILED], web2
    ids = Counter(r.tags["ovi:id"] for r in env.provider.resources.values())
    assert sorted(ids) == [f"web-{i}" for i in range(4)] and set(ids.values()) == {1}, ids
    assert Counter(t for k, t in env.provider.calls if k == "create")["web-2"] == 1


# -- 5. a projection error while a later share is claimed --------------------------------


@pytest.mark.parametrize("error", [EventStoreError, ProjectionError])
async def test_a_projection_error_claiming_a_later_share_lets_running_actions_finish(
    tmp_path: Path, error: type[Exception]
) -> None:
    """A later share cannot be claimed because the claims projection cannot
    be read (a ProjectionError, which ``ovi run`` catches as it does a
    store error): as with a store error, the actions already under way must
    finish and record their outcomes; none is left in doubt, cut mid-call."""
    async with environment(tmp_path) as env:
        coordinator = env.engine.coordinator
        real_claim = coordinator.claim
        asked = [0]

        in_flight = anyio.Event()
        real_create = env.provider.create

        async def create(desired: DesiredResource, **kwargs: Any) -> Resource:
            in_flight.set()
            return await real_create(desired, **kwargs)

        async def claim(resource_ids: Any) -> ClaimResult:
            asked[0] += 1
            if asked[0] == 2:
                await in_flight.wait()  # the first share's calls are under way
                raise error("claims: the projection cannot be read")
            return await real_claim(resource_ids)

        coordinator.claim = claim  # type: ignore[method-assign]
        env.provider.create = create  # type: ignore[method-assign]
        env.provider.slow["create"] = 0.05
        surfaced: list[BaseException] = []
        try:
            await env.apply(config_text(WEB % 8), max_concurrency=2)
        except BaseException as exc:
            surfaced.append(exc)
        events = await env.events()
        report = await verify_log(env.store)
    assert asked[0] == 2
    assert len(surfaced) == 1 and type(surfaced[0]) is error, surfaced
    assert open_actions(events) == [], f"cut mid-call, in doubt: {open_actions(events)}"
    assert report.ok and report.in_doubt == [], (report.violations, report.in_doubt)
    assert unreleased_claims(events, US) == []


# -- 6. an outcome recorded, the clock read after it failing ------------------------------


async def test_an_outcome_recorded_fenced_is_not_reported_as_not_recorded(
    tmp_path: Path
) -> None:
    """web-0 has two decisions; the first's outcome is appended fenced (the
    claim kept); reading the store's clock right after that append fails.
    The outcome IS in the log: the execution must not report it failed and
    "outcome not recorded"."""
    async with environment(tmp_path, managed("web-0", "i-0000", env="old")) as env:
        _twice_on(env, "web-0")
        coordinator = env.engine.coordinator
        real_append_fenced = coordinator.append_fenced
        real_now = coordinator.now
        failing = [False]

        async def now() -> Any:
            if failing[0]:
                failing[0] = False
                raise EventStoreError("I/O error reading the clock")
            return await real_now()

        async def append_fenced(claim: Any, batches: Any, **kw: Any) -> Any:
            batches = list(batches)
            if not kw.get("checked_at") and any(isinstance(e, ActionExecuted)
                                                for b in batches for e in b.events):
                failing[0] = True
            return await real_append_fenced(claim, batches, **kw)

        coordinator.now = now  # type: ignore[method-assign]
        coordinator.append_fenced = append_fenced  # type: ignore[method-assign]
        result = await env.apply(config_text(WEB_TAGGED % 1), max_concurrency=1)
        events = await env.events()
    first = [e for e in result.executions if not e.decision_id.endswith("-second")]
    assert [k for k, _ in on(events, "web-0")][:2] == ["ActionExecuting", "ActionExecuted"]
    assert [e.outcome for e in first] == [Outcome.EXECUTED], first


# -- 7. cancellation sweep, two instances ---------------------------------------------------


@pytest.mark.parametrize("n", list(range(1, 31)))
async def test_cancelled_after_the_nth_append_two_instances_converge(
    tmp_path: Path, n: int
) -> None:
    """Our apply of 8 creates (two calls at a time) is cancelled as its n-th
    append to the log is made (the append itself commits: the store flushes
    it in its own task). Then: the log verifies; no claim of ours is left
    held without an action in doubt under it; and another instance, once our
    claims have run out, converges: exactly one resource per id, and no
    create token used for two resources."""
    async with environment(tmp_path) as env:
        env.provider.latency = 0.005
        scope = anyio.CancelScope()
        count = [0]
        what: list[str] = []

        def cancel_at_the_nth(batches: list[StreamBatch]) -> None:
            count[0] += 1
            if count[0] == n:
                what.extend(type(e).__name__ for b in batches for e in b.events)
                scope.cancel()

        with on_append(env.store, cancel_at_the_nth), anyio.fail_after(30), scope:
            await env.apply(config_text(WEB % 8), max_concurrency=2)
        await anyio.sleep(0.05)
        events = await env.events()
        report = await verify_log(env.store)
        left = leaked(events)
        env.clock.advance(minutes=11)
        async with SQLiteEventStore(tmp_path / "ovi.db", registry(), instance_id="other:1:x",
                                    clock=env.clock) as other, \
                ProjectionRunner(other, tmp_path / "ovi.db", ovi_projections()) as ov:
            engine_b = Engine(other, ov, env.provider)
            config = parse_config(config_text(WEB % 8), "test.yaml")
            for _ in range(3):
                await engine_b.run_cycle(config, source="test.yaml", mode=CycleMode.APPLY,
                                         max_concurrency=3)
            final = await verify_log(other)
    assert report.ok, report.violations
    assert final.ok and final.in_doubt == [], (final.violations, final.in_doubt)
    ids = Counter(r.tags["ovi:id"] for r in env.provider.resources.values())
    assert sorted(ids) == [f"web-{i}" for i in range(8)] and set(ids.values()) == {1}, ids
    assert left == [], (f"cancelled at append {n} ({what}): claims held with nothing in doubt:"
                        f" {left}")


# keep imports used by type checkers
_ = (msgspec, DesiredResource, Resource)
