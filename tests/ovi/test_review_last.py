"""Hostile review of d669876 (fenced outcome via finish_shielded) and 54574be
(observed_after gate in the resources projection). It broke two things, both
fixed since: a claim taken over while its outcome was in the grace was not
marked taken; a listing begun on an empty log (observed_after 0) was read as
an older log's (now None) and restored Ovi's creates as not there. Every
attack is kept: a failing test here is a regression."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from eventstore import SQLiteEventStore, StreamBatch, WrongExpectedVersion
from ovi.coordinator import Coordinator
from ovi.events import (
    ActionExecuted,
    ObservationCompleted,
    claim_stream,
    cycle_stream,
    resource_stream,
)
from ovi.model import Action
from ovi.replay._rebuild import rebuild_and_compare
from tests.ovi.harness import config_text, environment
from tests.ovi.test_bounded_stop import shorten_stop_grace
from tests.ovi.test_state_knows_actions import WEB, _state

pytestmark = pytest.mark.asyncio
GRACE = 0.2


@pytest.fixture(autouse=True)
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    shorten_stop_grace(monkeypatch, GRACE)


async def _claimed(env: Any) -> tuple[Coordinator, Any]:
    co = Coordinator(env.store, env.views)
    result = await co.claim(["web-0"])
    claim = result.held["web-0"]
    # a write-ahead under it: in doubt
    await co.append_fenced(claim, [StreamBatch(resource_stream("web-0"), (ActionExecuted(
        cycle_id="c", decision_id="d", action=Action.CREATE, resource_id="web-0",
        cloud_id="i-1", token=claim.token),))])
    assert claim.in_doubt
    return co, claim


def _slow_store(env: Any, delay: float, *, fail: BaseException | None = None) -> None:
    real = env.store.append_streams

    async def append_streams(batches: Any, *a: Any, **kw: Any) -> Any:
        batches = list(batches)
        await asyncio.sleep(delay)
        if fail is not None:
            raise fail
        return await real(batches, *a, **kw)

    env.store.append_streams = append_streams


async def _cancelled_outcome(co: Coordinator, claim: Any, after: float) -> None:
    with anyio.move_on_after(after):
        await co.append_fenced(claim, [StreamBatch(resource_stream("web-0"), ())],
                               outcome=True)
        raise AssertionError("not cancelled")


# -- attack 1 ------------------------------------------------------------------


async def test_outcome_answered_in_grace_clears_in_doubt_and_releases(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        co, claim = await _claimed(env)
        _slow_store(env, GRACE / 2)
        await _cancelled_outcome(co, claim, GRACE / 10)
        assert not claim.in_doubt  # committed in the grace: tidied
        env.store.append_streams = type(env.store).append_streams.__get__(env.store)  # type: ignore[method-assign]
        assert await co.release(claim)


async def test_outcome_not_answered_in_grace_stays_in_doubt(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        co, claim = await _claimed(env)
        _slow_store(env, GRACE * 3)
        t = time.monotonic()
        await _cancelled_outcome(co, claim, GRACE / 10)
        took = time.monotonic() - t
        assert claim.in_doubt
        assert took < GRACE * 2, f"stop held {took:.2f}s, grace {GRACE}"
        assert not claim._lock.locked()


async def test_wrong_expected_version_in_grace_claim_state(tmp_path: Path) -> None:
    """The append answers WrongExpectedVersion in the grace: the
    cancellation wins; is the claim marked taken over as it would be uncancelled?"""
    async with environment(tmp_path) as env:
        co, claim = await _claimed(env)
        exc = WrongExpectedVersion(claim_stream("web-0"), claim.version, claim.version + 1)
        _slow_store(env, GRACE / 4, fail=exc)
        await _cancelled_outcome(co, claim, GRACE / 10)
        assert claim.in_doubt  # correct: no outcome recorded
        # The uncancelled path marks it taken (lost, not renewable); the cancelled one?
        assert claim.taken_over, "claim taken over in the grace left renewable/not lost"


async def test_lock_held_by_renew_in_grace_then_outcome_cancelled(tmp_path: Path) -> None:
    """A heartbeat renewal holds the lock in its own grace while an outcome
    waits for it: the stop is bounded by the sum of the graces, no deadlock."""
    async with environment(tmp_path) as env:
        co, claim = await _claimed(env)
        _slow_store(env, GRACE * 10)
        t = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(co.renew, [claim])
            await anyio.sleep(0.01)
            tg.start_soon(_cancelled_outcome, co, claim, GRACE / 10)
            await anyio.sleep(GRACE / 5)
            tg.cancel_scope.cancel()
        took = time.monotonic() - t
        assert took < GRACE * 3, f"stop held {took:.2f}s"
        assert claim.in_doubt and not claim._lock.locked()


# -- attack 2 ------------------------------------------------------------------


async def test_listing_begun_at_an_empty_log_is_not_read_as_an_old_log(tmp_path: Path) -> None:
    """observed_after=0 means both "old log" and "listing began when the log
    was empty". A first listing on a fresh log (another host's) that began
    before this host's creates and completes after them restores them as not
    there: the bug 54574be fixes, left open for position 0."""
    async with environment(tmp_path) as env:
        began = await env.store.last_position()
        assert began == 0
        await env.apply(config_text(WEB % 2))
        executed = [e.event for e in await env.events() if isinstance(e.event, ActionExecuted)]
        assert executed[0].resource is not None
        await env.store.append(cycle_stream("other"), [ObservationCompleted(
            cycle_id="other", scope=executed[0].resource.scope, count=0, digest="",
            observed_after=began)])
        known = await _state(env)
        assert all(s.exists and s.from_action for s in known.values()), {
            k: (s.exists, s.from_action) for k, s in known.items()}


async def test_rebuild_equals_incremental_with_gated_observations(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        await env.apply(config_text(WEB % 2))
        began = next(e.position for e in await env.events()
                     if isinstance(e.event, ObservationCompleted))
        executed = [e.event for e in await env.events() if isinstance(e.event, ActionExecuted)]
        assert executed[0].resource is not None
        scope = executed[0].resource.scope
        for b in (began, 0, began, None):
            head = await env.store.last_position()
            await env.store.append(cycle_stream("other"), [ObservationCompleted(
                cycle_id="other", scope=scope, count=0, digest="",
                observed_after=head if b is None else b)])
            await env.views.catch_up()  # incremental, one event at a time
        await env.apply(config_text(WEB % 3))
        await env.views.catch_up()
        head = await env.store.last_position()

        assert isinstance(env.store, SQLiteEventStore)
        report = await rebuild_and_compare(env.store, workdir=tmp_path, workers=1)
        assert report.equal, [t for t in report.tables if not t.equal]
