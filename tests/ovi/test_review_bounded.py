"""Hostile review of c54cef7: bounded shields on claim and renewal appends
(ovi/_shielded.py::finish_shielded, Executor._claim_share, Coordinator.renew).

It broke two things, both fixed since: one asyncio cancellation (Ctrl-C in
``ovi apply``, ``asyncio.timeout``) during a claim append answered within
the grace was swallowed and the cycle acted after the stop; a second
cancellation during the grace left the append running unbounded. Every
attack is kept: a failing test here is a regression."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from eventstore import BackendError
from eventstore._store_types import EncodedBatch
from ovi._shielded import finish_shielded
from ovi.events import ActionExecuted, ClaimAcquired, ClaimRenewed
from tests.ovi.harness import Env, config_text, environment
from tests.ovi.test_bounded_stop import acts, claiming, shorten_stop_grace, slow_append
from tests.ovi.test_review_shares import (
    WEB,
    assert_verifies,
    open_actions,
    renewing,
    unreleased_claims,
)

pytestmark = pytest.mark.asyncio

GRACE = 0.5
US = "test"


@pytest.fixture(autouse=True)
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    shorten_stop_grace(monkeypatch, GRACE)


def creates(env: Env) -> Counter[str]:
    return Counter(c[1] if len(c) > 1 else "" for c in acts(env))


@contextmanager
def slow_commit(env: Env, which: Callable[[list[EncodedBatch]], bool], delay: float,
                asked: anyio.Event) -> Iterator[list[bool]]:
    """The store's flusher (not the caller) waits ``delay`` before committing
    the first group that ``which`` picks: the caller's await can be cancelled,
    the commit happens all the same (as aiosqlite's thread would). Yields
    [committed]."""
    store = env.store
    real = store._commit_group
    done = [False]
    committed = [False]

    async def commit_group(group: list[tuple[EncodedBatch, ...]]) -> Any:
        flat = [b for batches in group for b in batches]
        if not done[0] and which(flat):
            done[0] = True
            asked.set()
            await asyncio.sleep(delay)  # the flusher task: nobody cancels it
            result = await real(group)
            committed[0] = True
            return result
        return await real(group)

    store._commit_group = commit_group  # type: ignore[method-assign]
    try:
        yield committed
    finally:
        store._commit_group = real  # type: ignore[method-assign]


def encoded_type(name: str) -> Callable[[list[EncodedBatch]], bool]:
    def which(batches: list[EncodedBatch]) -> bool:
        return any(t == name for b in batches for t, _ in b.items)
    return which


# -- 1. one native cancellation (Ctrl-C under asyncio.Runner, wait_for) -----------------


@pytest.mark.parametrize("how", ["task.cancel", "asyncio.timeout"])
async def test_one_native_cancel_during_the_claim_append_stops_the_apply(
    tmp_path: Path, how: str
) -> None:
    """``ovi apply`` runs under anyio.run (asyncio.Runner): Ctrl-C cancels the
    main task ONCE, natively; asyncio.timeout / wait_for also cancel once. The
    claim is made in the task group's host task, i.e. that very task.
    finish_shielded swallows the one CancelledError and returns the claims:
    nothing delivers the cancellation again, and the apply acts after it."""
    asked = anyio.Event()
    async with environment(tmp_path) as env:
        with slow_append(env.store, claiming, lambda: anyio.sleep(GRACE / 4), asked):
            if how == "task.cancel":
                work = asyncio.ensure_future(env.apply(config_text(WEB % 3), max_concurrency=2))
                await asked.wait()
                work.cancel()  # what asyncio.Runner does on SIGINT
                with pytest.raises(asyncio.CancelledError):
                    await work
            else:
                async def expire(cm: asyncio.Timeout) -> None:
                    await asked.wait()
                    cm.reschedule(asyncio.get_running_loop().time())  # the deadline falls now

                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(None) as cm:
                        helper = asyncio.ensure_future(expire(cm))
                        await env.apply(config_text(WEB % 3), max_concurrency=2)
                await helper
        assert acts(env) == [], f"acted after the cancellation: {acts(env)}"


# -- 2. anyio cancellations: move_on_after, fail_after, group cancel, twice, nested ---------


@pytest.mark.parametrize("how", ["move_on_after", "fail_after", "group", "twice", "nested"])
async def test_anyio_cancel_during_claim_answered_in_the_grace(tmp_path: Path,
                                                               how: str) -> None:
    asked = anyio.Event()
    finished = False
    async with environment(tmp_path) as env:
        with slow_append(env.store, claiming, lambda: anyio.sleep(GRACE / 2), asked):
            async def apply() -> None:
                nonlocal finished
                await env.apply(config_text(WEB % 3), max_concurrency=2)
                finished = True

            started = anyio.current_time()
            if how in ("move_on_after", "fail_after"):
                # the deadline falls while the claim append is in flight
                async def deadline_scope() -> None:
                    if how == "move_on_after":
                        with anyio.move_on_after(0.05):
                            await apply()
                    else:
                        with pytest.raises(TimeoutError):
                            with anyio.fail_after(0.05):
                                await apply()
                await deadline_scope()
            else:
                async with anyio.create_task_group() as outer:
                    with anyio.CancelScope() as inner:
                        async def cancel() -> None:
                            await asked.wait()
                            (inner if how == "nested" else outer.cancel_scope).cancel()
                            await anyio.sleep(GRACE / 8)
                            if how in ("twice", "nested"):
                                outer.cancel_scope.cancel()  # again, during the grace
                                outer.cancel_scope.cancel()
                        outer.start_soon(cancel)
                        await apply()
            took = anyio.current_time() - started
        assert asked.is_set()
        assert not finished
        assert took < 3 * GRACE + 1, took
        assert acts(env) == []
        events = await env.events()
        assert unreleased_claims(events, US) == []
        await assert_verifies(env)


# -- 3. a claim append cut short that commits later --------------------------------------


async def test_claims_committed_after_the_grace_then_the_next_cycle_acts_once(
    tmp_path: Path
) -> None:
    asked = anyio.Event()
    async with environment(tmp_path) as env:
        with slow_commit(env, encoded_type("ClaimAcquired"), GRACE * 2, asked) as committed:
            with anyio.CancelScope() as scope:
                async def cancel() -> None:
                    await asked.wait()
                    scope.cancel()
                async with anyio.create_task_group() as group:
                    group.start_soon(cancel)
                    await env.apply(config_text(WEB % 3), max_concurrency=2)
            assert scope.cancelled_caught
            await anyio.sleep(GRACE * 2)
            assert committed[0], "the claim append did not commit later"
        events = await env.events()
        held = unreleased_claims(events, US)
        assert held, "nothing held with no handle: the scenario did not happen"
        assert acts(env) == []
        # the same instance, next cycle: its own claims, no handle
        result = await env.apply(config_text(WEB % 3), max_concurrency=2)
        assert [e.outcome for e in result.executions] == ["executed"] * 3, result.executions
        assert len(acts(env)) == 3, acts(env)
        events = await env.events()
        assert unreleased_claims(events, US) == []
        assert open_actions(events) == []
        await assert_verifies(env)
        # and nothing more to do
        again = await env.apply(config_text(WEB % 3), max_concurrency=2)
        assert [e for e in again.executions if e.outcome == "executed"] == []
        assert len(acts(env)) == 3


# -- 4. a renewal cut short that commits later -------------------------------------------


async def test_renewal_committed_after_the_grace_corrupts_nothing(tmp_path: Path) -> None:
    """The heartbeat's renewal is asked while an action outlasts a heartbeat;
    its commit comes after the grace; meanwhile the stop gives back claims
    expecting the old version."""
    asked = anyio.Event()
    async with environment(tmp_path, real_time=True,
                           claim_ttl=timedelta(seconds=0.9)) as env:
        env.provider.slow["create"] = 1.0
        with slow_commit(env, encoded_type("ClaimRenewed"), GRACE * 2, asked) as committed:
            with anyio.CancelScope() as scope:
                async def cancel() -> None:
                    await asked.wait()
                    scope.cancel()
                async with anyio.create_task_group() as group:
                    group.start_soon(cancel)
                    await env.apply(config_text(WEB % 1), max_concurrency=1)
            assert scope.cancelled_caught
            await anyio.sleep(GRACE * 3)
            assert committed[0]
        events = await env.events()
        assert [e for e in events if isinstance(e.event, ClaimRenewed)], "no renewal recorded"
        await assert_verifies(env, in_doubt_ok=True)
        # the next cycle of the same instance: no double action beyond the in-doubt one
        env.provider.slow.clear()
        await anyio.sleep(1.0)  # the claim expires
        await env.apply(config_text(WEB % 1), max_concurrency=1)
        await assert_verifies(env, in_doubt_ok=True)
        events = await env.events()
        assert len([e for e in events if isinstance(e.event, ActionExecuted)]) <= 1


# -- 5. a renewal that fails after the cancellation ---------------------------------------


async def test_renewal_that_fails_in_the_grace_is_a_stop_not_a_store_error(
    tmp_path: Path
) -> None:
    asked = anyio.Event()

    async def fail_late() -> None:
        await anyio.sleep(GRACE / 4)
        raise BackendError("disk I/O error")

    async with environment(tmp_path, real_time=True,
                           claim_ttl=timedelta(seconds=0.9)) as env:
        env.provider.slow["create"] = 2.0
        with slow_append(env.store, renewing, fail_late, asked):
            with anyio.CancelScope() as scope:
                async def cancel() -> None:
                    await asked.wait()
                    scope.cancel()
                async with anyio.create_task_group() as group:
                    group.start_soon(cancel)
                    await env.apply(config_text(WEB % 1), max_concurrency=1)
        assert scope.cancelled_caught
        await assert_verifies(env, in_doubt_ok=True)


# -- 6. the child task: the claim's lock, a concurrent release ----------------------------


async def test_a_release_waits_for_a_renewal_in_the_child_task(tmp_path: Path) -> None:
    asked = anyio.Event()
    async with environment(tmp_path) as env:
        coordinator = env.engine.coordinator
        claims = await coordinator.claim(["web-1", "web-2"])
        held = list(claims.held.values())
        released: list[bool] = []
        with slow_append(env.store, renewing, lambda: anyio.sleep(0.2), asked):
            async with anyio.create_task_group() as group:
                group.start_soon(coordinator.renew, held)
                await asked.wait()
                for claim in held:  # one after another, each waiting for the renewal
                    released += [await coordinator.release(claim)]
        assert released == [True, True]
        assert not any(c.lost for c in held)
        await assert_verifies(env)


async def test_a_cancelled_renewal_answered_in_the_grace_moves_the_version_on(
    tmp_path: Path
) -> None:
    asked = anyio.Event()
    async with environment(tmp_path) as env:
        coordinator = env.engine.coordinator
        claims = await coordinator.claim(["web-1"])
        (claim,) = claims.held.values()
        with slow_append(env.store, renewing, lambda: anyio.sleep(GRACE / 4), asked):
            with anyio.CancelScope() as scope:
                async def cancel() -> None:
                    await asked.wait()
                    scope.cancel()
                async with anyio.create_task_group() as group:
                    group.start_soon(cancel)
                    await coordinator.renew([claim])
                    await anyio.lowlevel.checkpoint()
        assert scope.cancelled_caught
        assert claim.version == claim.token + 1  # moved on with the renewal it made
        assert await coordinator.release(claim)
        await assert_verifies(env)


# -- 7. finish_shielded itself: a second native cancel during the grace -------------------


async def test_a_second_cancel_during_the_grace_still_bounds_the_append() -> None:
    """A second (native) cancellation during the grace interrupts the wait:
    the append's task must then be cancelled (bounded) and its late error
    retrieved, as after a grace that ran out."""
    children: list[asyncio.Task[Any]] = []

    async def append() -> str:
        task = asyncio.current_task()
        assert task is not None
        children.append(task)
        await asyncio.sleep(GRACE * 4)
        raise BackendError("late")

    caller = asyncio.ensure_future(finish_shielded(append()))
    await asyncio.sleep(0.01)
    caller.cancel()
    await asyncio.sleep(0.05)
    caller.cancel()  # again, while it waits out the grace
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0)
    (child,) = children
    try:
        assert child.done() or child.cancelling(), (
            "the append runs on, unbounded and unawaited, after finish_shielded gave up")
    finally:
        child.cancel()
        with pytest.raises((asyncio.CancelledError, BackendError)):
            await child


async def test_a_result_after_the_cancel_never_lets_the_cycle_act(tmp_path: Path) -> None:
    """Claims answered in the grace (returned), and the share's sort has no
    checkpoint of its own: the next checkpoint (the send to the workers)
    must still stop it."""
    asked = anyio.Event()
    async with environment(tmp_path) as env:
        with slow_append(env.store, claiming, lambda: anyio.sleep(GRACE / 4), asked):
            with anyio.CancelScope() as scope:
                async def cancel() -> None:
                    await asked.wait()
                    scope.cancel()
                async with anyio.create_task_group() as group:
                    group.start_soon(cancel)
                    await env.apply(config_text(WEB % 1), max_concurrency=1)
        assert scope.cancelled_caught
        assert acts(env) == []
        events = await env.events()
        assert [e for e in events if isinstance(e.event, ClaimAcquired)]
        assert unreleased_claims(events, US) == []
        await assert_verifies(env)


# -- 8. the service's drain: a store error during the grace is a stop, not a failed cycle ---


@pytest.mark.parametrize("late", ["error", "hang"])
async def test_the_drain_during_a_claim_append_ends_ovi_run_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, late: str
) -> None:
    import io
    import os
    import signal
    from contextlib import asynccontextmanager

    from eventstore import SQLiteEventStore
    from ovi.providers.fake import FakeProvider
    from ovi.service import ProviderSource, Service, ServiceSettings
    from ovi.servicelog import LogFormat, ServiceLog

    config_path = tmp_path / "ovi.yaml"
    config_path.write_text(config_text(WEB % 3))
    providers: list[FakeProvider] = []

    @asynccontextmanager
    async def open_provider(config: Any) -> Any:
        provider = FakeProvider()
        providers.append(provider)
        yield provider

    real = SQLiteEventStore.append_streams
    done = [False]

    async def append_streams(self: Any, batches: Any) -> Any:
        batches = list(batches)
        if not done[0] and claiming(batches):
            done[0] = True
            os.kill(os.getpid(), signal.SIGTERM)  # the drain begins; its deadline falls now
            if late == "error":
                await anyio.sleep(GRACE / 2)
                raise BackendError("disk I/O error")
            await anyio.sleep(30)
        return await real(self, batches)

    monkeypatch.setattr(SQLiteEventStore, "append_streams", append_streams)
    log = io.StringIO()
    settings = ServiceSettings(config_path=config_path, store_path=tmp_path / "ovi.db",
                               interval=0.05, metrics_host=None, max_cycles=3, jitter=0.0,
                               drain_timeout=0.01)
    service = Service(settings, provider=ProviderSource(open_provider, lambda c: c.owner),
                      log=ServiceLog(LogFormat.JSON, stream=log, journald=False))
    started = anyio.current_time()
    with anyio.fail_after(10):
        code = await service.run()
    took = anyio.current_time() - started
    assert done[0], "no claim was appended"
    assert code == 1, log.getvalue()  # the drain timed out, said so
    assert "cycle failed" not in log.getvalue(), log.getvalue()
    assert "Traceback" not in log.getvalue()
    assert took < GRACE * 3 + 2, took
    assert [c for p in providers for c in p.calls if c[0] != "observe"] == []


# -- 9. Ctrl-C on `ovi apply`: anyio.run (asyncio.Runner, uvloop) cancels the main task once --

_CHILD = r'''
import sys
from pathlib import Path
import anyio
from eventstore import SQLiteEventStore
from ovi.config import parse_config
from ovi.engine import Engine
from ovi.events import ClaimAcquired, registry
from ovi.model import CycleMode
from ovi.providers.fake import FakeProvider
from ovi.runtime import ovi_projections
from projections import ProjectionRunner

class Provider(FakeProvider):
    async def create(self, desired, **kw):
        print("create", desired.id, flush=True)
        return await super().create(desired, **kw)

async def main():
    log = Path(sys.argv[1])
    config = parse_config(sys.argv[2], "test.yaml")
    async with SQLiteEventStore(log, registry()) as store, ProjectionRunner(
            store, log, ovi_projections()) as views:
        real = store.append_streams
        async def append_streams(batches):
            batches = list(batches)
            if any(isinstance(e, ClaimAcquired) for b in batches for e in b.events):
                print("claiming", flush=True)
                await anyio.sleep(1.0)  # within the 5 s grace
            return await real(batches)
        store.append_streams = append_streams
        engine = Engine(store, views, Provider())
        result = await engine.run_cycle(config, source="test.yaml", mode=CycleMode.APPLY,
                                        max_concurrency=2)
        print("finished", [e.outcome for e in result.executions], flush=True)

try:
    anyio.run(main, backend_options={"use_uvloop": True})  # as ovi.cli.main
except KeyboardInterrupt:
    print("interrupted", flush=True)
'''


async def test_ctrl_c_during_the_claim_of_an_apply_stops_it(tmp_path: Path) -> None:
    """Before c54cef7 (an anyio shield, which a native cancel goes through)
    the apply stopped; now the one cancel is swallowed and it acts."""
    lines = await anyio.to_thread.run_sync(_ctrl_c_child, tmp_path)
    assert not [line for line in lines if line.startswith("create")], (
        f"the apply acted after Ctrl-C: {lines}")


def _ctrl_c_child(tmp_path: Path) -> list[str]:
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path / "ovi.db"), config_text(WEB % 3)],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert child.stdout is not None
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            lines.append(line.strip())
            if line.startswith("claiming") or not line:
                break
        assert lines[-1] == "claiming", (lines, child.stderr.read() if child.stderr else "")
        child.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return lines + out.splitlines() + ["stderr: " + err[-300:]]


# -- 10. a store that answers nothing once the stop comes: how long the stop takes ----------


async def test_a_store_that_answers_nothing_holds_the_stop_for_a_few_graces_only(
    tmp_path: Path
) -> None:
    """An action outlasts a heartbeat; the renewal is asked, the stop comes,
    and from then on no append answers (renewal, give-backs, outcome): the
    graces run one after another, not without end."""
    asked = anyio.Event()
    async with environment(tmp_path, real_time=True,
                           claim_ttl=timedelta(seconds=0.9)) as env:
        env.provider.slow["create"] = 5.0
        real = env.store.append_streams

        async def append_streams(batches: Any) -> Any:
            batches = list(batches)
            if renewing(batches):
                asked.set()
            if asked.is_set():
                await anyio.sleep(2 * GRACE + 2)  # longer than the bound asserted
            return await real(batches)

        env.store.append_streams = append_streams  # type: ignore[method-assign]
        started = [0.0]
        with anyio.CancelScope() as scope:
            async def cancel() -> None:
                await asked.wait()
                started[0] = anyio.current_time()
                scope.cancel()
            async with anyio.create_task_group() as group:
                group.start_soon(cancel)
                await env.apply(config_text(WEB % 3), max_concurrency=1)
        took = anyio.current_time() - started[0]
        env.store.append_streams = real  # type: ignore[method-assign]
        assert scope.cancelled_caught
        assert took < 2 * GRACE + 1, f"the stop took {took:.2f} s"
