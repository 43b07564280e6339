"""A stop is bounded: the appends a cancellation must not cut short (a
share's claims, a renewal) go on for a grace, not for as long as a store
that does not answer takes, and the cancellation is what the caller sees,
not the store's late error."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from eventstore import BackendError, EventStore, StreamBatch
from ovi import _shielded, executor
from ovi._shielded import finish_shielded
from ovi.events import ActionExecuting, ClaimAcquired
from tests.ovi.harness import Env, config_text, environment
from tests.ovi.test_review_shares import (
    WEB,
    assert_verifies,
    on_append,
    renewing,
    unreleased_claims,
)

pytestmark = pytest.mark.asyncio

GRACE = 0.5
US = "test"


def shorten_stop_grace(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The grace of :mod:`ovi._shielded` (and the executor's give-back) at ``seconds``."""
    monkeypatch.setattr(_shielded, "STOP_GRACE_SECONDS", seconds)
    monkeypatch.setattr(executor, "STOP_GRACE_SECONDS", seconds)


@pytest.fixture(autouse=True)
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    shorten_stop_grace(monkeypatch, GRACE)


def acts(env: Env) -> list[tuple[str, str]]:
    return [c for c in env.provider.calls if c[0] != "observe"]


def claiming(batches: list[StreamBatch]) -> bool:
    return any(isinstance(e, ClaimAcquired) for b in batches for e in b.events)


@contextmanager
def slow_append(store: EventStore, which: Callable[[list[StreamBatch]], bool],
                answer: Callable[[], Awaitable[None]], asked: anyio.Event) -> Iterator[None]:
    """The first append ``which`` picks sets ``asked``, then waits for
    ``answer`` (which may raise) before it is appended."""
    done = [False]

    def act(batches: list[StreamBatch]) -> Awaitable[None] | None:
        if done[0] or not which(batches):
            return None
        done[0] = True
        asked.set()
        return answer()

    with on_append(store, act):
        yield


async def apply_cancelled_when(env: Env, asked: anyio.Event, count: int) -> tuple[bool, float]:
    """Apply ``count`` web servers, cancelled once ``asked`` is set; whether
    the apply finished on its own, and how long it took after the cancel."""
    finished = False
    cancelled_at = [0.0]
    async with anyio.create_task_group() as group:
        async def cancel_when_asked() -> None:
            await asked.wait()
            cancelled_at[0] = anyio.current_time()
            group.cancel_scope.cancel()

        group.start_soon(cancel_when_asked)
        await env.apply(config_text(WEB % count), max_concurrency=2)
        finished = True
    return finished, anyio.current_time() - cancelled_at[0]


async def test_a_claim_append_that_does_not_answer_holds_a_stop_up_for_the_grace_only(
    tmp_path: Path
) -> None:
    asked = anyio.Event()
    async with environment(tmp_path) as env:
        with slow_append(env.store, claiming, lambda: anyio.sleep(30), asked):
            finished, took = await apply_cancelled_when(env, asked, 3)
        assert not finished
        assert GRACE * 0.9 <= took < GRACE + 2, f"the stop took {took:.1f} s"
        events = await env.events()
        assert not [e for e in events if isinstance(e.event, ActionExecuting)]
        assert acts(env) == []
        await assert_verifies(env)


async def test_a_claim_append_that_fails_after_the_cancel_lets_the_cancellation_go_on(
    tmp_path: Path
) -> None:
    """The store's late error does not replace the stop (the service would
    take a stop for a failed cycle)."""
    asked = anyio.Event()

    async def fail_late() -> None:
        await anyio.sleep(GRACE / 4)
        raise BackendError("disk I/O error")

    async with environment(tmp_path) as env:
        with slow_append(env.store, claiming, fail_late, asked):
            finished, took = await apply_cancelled_when(env, asked, 3)
        assert not finished
        assert took < GRACE + 2
        assert acts(env) == []
        await assert_verifies(env)


async def test_claims_recorded_within_the_grace_are_given_back(tmp_path: Path) -> None:
    asked = anyio.Event()
    async with environment(tmp_path) as env:
        with slow_append(env.store, claiming, lambda: anyio.sleep(GRACE / 4), asked):
            finished, _ = await apply_cancelled_when(env, asked, 3)
        assert not finished
        events = await env.events()
        assert [e for e in events if isinstance(e.event, ClaimAcquired)], "nothing was claimed"
        assert unreleased_claims(events, US) == []
        assert acts(env) == []
        await assert_verifies(env)


async def test_a_renewal_that_does_not_answer_holds_a_stop_up_for_the_grace_only(
    tmp_path: Path
) -> None:
    """An action outlasts a heartbeat; the renewal does not answer, and the
    stop comes meanwhile."""
    asked = anyio.Event()
    async with environment(tmp_path, real_time=True,
                           claim_ttl=timedelta(seconds=0.9)) as env:
        env.provider.slow["create"] = 5.0  # the call outlasts a heartbeat
        with slow_append(env.store, renewing, lambda: anyio.sleep(30), asked):
            finished, took = await apply_cancelled_when(env, asked, 1)
        assert not finished
        assert GRACE * 0.9 <= took < GRACE + 2, f"the stop took {took:.1f} s"
        await assert_verifies(env, in_doubt_ok=True)


async def test_an_append_answered_in_the_grace_is_tidied_and_the_cancellation_goes_on(
) -> None:
    """What the append returned goes to ``tidy`` (to give back what it
    holds); the caller sees the cancellation, never the result."""
    tidied: list[str] = []
    reached: list[str] = []

    async def append() -> str:
        await anyio.sleep(GRACE / 4)
        return "claims"

    async def tidy(claims: str) -> None:
        await anyio.lowlevel.checkpoint()
        tidied.append(claims)

    with anyio.CancelScope() as scope:
        scope.cancel()
        reached.append(await finish_shielded(append(), tidy))
    assert scope.cancelled_caught
    assert (tidied, reached) == (["claims"], [])


async def test_an_asyncio_cancel_comes_once_and_is_not_lost() -> None:
    """asyncio's own cancellation (Ctrl-C, ``asyncio.timeout``) is not
    delivered again: answered in time or not, it goes on."""
    async def append() -> str:
        await asyncio.sleep(GRACE / 4)
        return "claims"

    task = asyncio.ensure_future(finish_shielded(append()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_without_a_cancel_the_append_is_awaited_as_it_is() -> None:
    async def append() -> str:
        await anyio.sleep(0.01)
        raise BackendError("disk I/O error")

    with pytest.raises(BackendError):
        await finish_shielded(append())
