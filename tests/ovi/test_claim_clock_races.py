"""Races on the shared claim-clock reading (a hostile review's attacks, kept):
Coordinator.now()'s single flight, usable(now=), confirm() and
append_fenced(checked_at=). The first two failed until the store read its
clock after the reading's query instead of before it queued.

Each test says what it attacks. A reading "stalled" here is one whose store
query is queued behind other work on the store's reader (SQLite: one thread
serves every read); the test holds it with a gate so time can move on the
test clock while it waits, as it would on the wall clock under load."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from eventstore import EventStoreError, StreamBatch
from ovi.coordinator import Coordinator
from ovi.events import ClaimAcquired, claim_stream
from tests.ovi.harness import Env, environment

pytestmark = pytest.mark.asyncio

TTL = timedelta(minutes=2)  # heartbeat 40 s, margin 30 s
NEWEST = "ORDER BY position DESC LIMIT 1"  # the query of SQLiteEventStore._now


def stall_readings(env: Env, monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event,
                                                                         asyncio.Event]:
    """Hold every clock reading's query of ``env``'s store until the returned
    gate is set; ``entered`` is set once one waits there."""
    gate, entered = asyncio.Event(), asyncio.Event()
    real_query: Callable[..., Any] = env.store._query  # type: ignore[attr-defined]

    async def queued(sql: str, params: tuple[object, ...] = ()) -> Any:
        if NEWEST in sql and not gate.is_set():
            entered.set()
            await gate.wait()
        return await real_query(sql, params)

    monkeypatch.setattr(env.store, "_query", queued)
    return gate, entered


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# -- attack 1: a reading older than the ask --------------------------------


async def test_a_caller_that_asks_after_the_claim_expired_is_not_told_it_is_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reading queued behind reader work, joined by a caller that asks
    *after* the claim expired: were the clock sampled before the query queued
    (as it once was), that caller would get the old sample, and usable() and
    confirm() would say the claim may be worked under though it has run out
    (and another instance may take it over at once)."""
    async with environment(tmp_path, instance_id="a", claim_ttl=TTL) as a, \
            environment(tmp_path, instance_id="b", claim_ttl=TTL) as b:
        mine = Coordinator(a.store, a.views, ttl=TTL)
        claim = (await mine.claim(["web-0"])).held["web-0"]
        start = a.clock.now
        assert claim.expires_at == start + TTL
        gate, entered = stall_readings(a, monkeypatch)

        a.clock.advance(seconds=10)
        early = asyncio.ensure_future(mine.now())  # some other worker's reading
        await entered.wait()
        # The reading waits; time moves past the claim's expiry.
        a.clock.advance(minutes=2, seconds=20)
        b.clock.advance(minutes=2, seconds=30)
        asked_at = a.clock.now
        assert asked_at > claim.expires_at

        confirming = asyncio.ensure_future(mine.confirm(claim))  # the executor's last check
        using = asyncio.ensure_future(mine.usable(claim))
        await settle()
        gate.set()
        shared = await early  # were the clock read before the query: start + 10 s
        confirmed, usable = await confirming, await using
        # Another instance now takes the expired claim over, legitimately.
        taken = await Coordinator(b.store, b.views, ttl=TTL).claim(["web-0"])
        assert "web-0" in taken.held
        # Each reading sampled after its query: (False, False).
        assert (usable, confirmed) == (False, False), (
            f"asked at {asked_at.isoformat()}, after the claim expired at"
            f" {claim.expires_at.isoformat()}, sharing a reading of {shared.isoformat()}:"
            f" usable()={usable}, confirm()={confirmed} (the"
            " provider would be called while instance b takes the claim over)")


async def test_the_caller_whose_reading_waits_in_the_queue_is_not_told_an_expired_claim_is_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same hazard, for the caller that *starts* the queued reading: it
    was there before readings were shared (the store sampled its clock
    before queueing the query)."""
    async with environment(tmp_path, instance_id="a", claim_ttl=TTL) as a:
        mine = Coordinator(a.store, a.views, ttl=TTL)
        claim = (await mine.claim(["web-0"])).held["web-0"]
        gate, entered = stall_readings(a, monkeypatch)
        a.clock.advance(seconds=10)
        confirming = asyncio.ensure_future(mine.confirm(claim))
        await entered.wait()
        a.clock.advance(minutes=2, seconds=20)  # the reading waits past the expiry
        gate.set()
        assert not await confirming, "confirm() delivered after the claim expired said True"


# -- attack 2: a reading newer than it should be ---------------------------


async def test_no_reading_is_newer_than_the_store_clock_nor_goes_backwards(
    tmp_path: Path,
) -> None:
    """Readings shared by many callers while the clock moves: each is the
    clock at some moment no later than its delivery, and one coordinator's
    readings never go back (a takeover is never judged on a time to come)."""
    async with environment(tmp_path, instance_id="a", claim_ttl=TTL) as a:
        coordinator = Coordinator(a.store, a.views, ttl=TTL)
        seen: list[tuple[Any, Any]] = []

        async def ask() -> None:
            for _ in range(20):
                reading = await coordinator.now()
                seen.append((reading, a.clock.now))
                a.clock.advance(milliseconds=7)
                await asyncio.sleep(0)

        await asyncio.gather(*(ask() for _ in range(25)))
        assert all(reading <= clock for reading, clock in seen)
        readings = [r for r, _ in seen]
        assert readings == sorted(readings)  # delivered in order, never backwards


# -- attack 3: confirmed_at too late ----------------------------------------


async def test_a_write_ahead_proves_the_claim_only_as_of_its_check_and_confirm_renews_on_time(
    tmp_path: Path,
) -> None:
    """append_fenced(checked_at=) sets confirmed_at to the reading before the
    write, even when a renewal landed between the check and the write (then
    confirmed_at goes back, the cautious way); confirm() renews once a
    heartbeat has passed since the check, and finds a takeover then."""
    async with environment(tmp_path, instance_id="a", claim_ttl=TTL) as a, \
            environment(tmp_path, instance_id="b", claim_ttl=TTL) as b:
        mine = Coordinator(a.store, a.views, ttl=TTL)
        claim = (await mine.claim(["web-0"])).held["web-0"]
        a.clock.advance(seconds=20)
        checked_at = await mine.now()
        a.clock.advance(seconds=15)
        await mine.renew([claim])  # between the check and the write
        assert claim.confirmed_at == checked_at + timedelta(seconds=15)
        await mine.append_fenced(claim, [StreamBatch("probe", ())], checked_at=checked_at)
        assert claim.confirmed_at == checked_at
        # Within a heartbeat of the check: no renewal needed, none made.
        version = claim.version
        a.clock.advance(seconds=24)
        assert await mine.confirm(claim)
        assert claim.version == version
        # A foreign claim appears on the stream (as a takeover would); a
        # heartbeat after the check, confirm() renews, and so finds it.
        await b.store.append(claim_stream("web-0"), [ClaimAcquired(
            resource_id="web-0", instance_id="b", claimed_at=b.clock.now,
            expires_at=b.clock.now + TTL, token=claim.version + 1)],
            expected_version=claim.version)
        a.clock.advance(seconds=1)  # now - checked_at == heartbeat (40 s)
        assert not await mine.confirm(claim)
        assert claim.taken_over


# -- attack 4: cancellation ---------------------------------------------------


async def test_a_caller_cancelled_by_an_anyio_scope_leaves_the_others_their_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with environment(tmp_path, instance_id="a", claim_ttl=TTL) as a:
        coordinator = Coordinator(a.store, a.views, ttl=TTL)
        gate, entered = stall_readings(a, monkeypatch)
        got: list[Any] = []
        cancelled: list[bool] = []

        async def impatient() -> None:
            with anyio.move_on_after(0.01) as scope:
                got.append(await coordinator.now())
            cancelled.append(scope.cancelled_caught)

        async def patient() -> None:
            got.append(await coordinator.now())

        async with anyio.create_task_group() as group:
            group.start_soon(impatient)
            group.start_soon(patient)
            await entered.wait()
            await anyio.sleep(0.05)
            assert cancelled == [True]
            gate.set()
        assert got == [a.clock.now]


async def test_a_reading_every_caller_abandoned_fails_unseen_and_the_next_ask_reads_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """All waiters cancelled, then the reading fails: no 'exception was never
    retrieved', no reading left behind, the next caller reads afresh."""
    async with environment(tmp_path, instance_id="a", claim_ttl=TTL) as a:
        coordinator = Coordinator(a.store, a.views, ttl=TTL)
        gate = asyncio.Event()
        real_now = a.store.now
        calls = 0

        async def failing_first() -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                await gate.wait()
                raise EventStoreError("the log cannot be read")
            return await real_now()

        monkeypatch.setattr(a.store, "now", failing_first)
        waiters = [asyncio.ensure_future(coordinator.now()) for _ in range(3)]
        await settle()
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        assert all(w.cancelled() for w in waiters)
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            gate.set()
            await settle()
            assert coordinator._reading is None
            gc.collect()
            await settle()
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
        a.clock.advance(minutes=3)
        assert await coordinator.now() == a.clock.now
        assert calls == 2


async def test_a_reading_cancelled_underneath_its_waiters_is_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the shared reading itself is cancelled (a loop shutting down cancels
    every task), its waiters see CancelledError and the next ask reads again:
    no reading stays stuck."""
    async with environment(tmp_path, instance_id="a", claim_ttl=TTL) as a:
        coordinator = Coordinator(a.store, a.views, ttl=TTL)
        gate, entered = stall_readings(a, monkeypatch)
        waiter = asyncio.ensure_future(coordinator.now())
        await entered.wait()
        assert coordinator._reading is not None
        coordinator._reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await settle()
        assert coordinator._reading is None
        gate.set()
        a.clock.advance(minutes=1)
        assert await coordinator.now() == a.clock.now


# -- attack 1, through the executor ------------------------------------------


async def test_the_executor_does_not_call_the_provider_under_a_claim_expired_before_its_check(
    tmp_path: Path,
) -> None:
    """The executor's last check before a call is confirm(). Between the
    write-ahead and that check, another task's clock reading is queued behind
    reader work and the claim runs out; the worker's check joins that reading.
    The store samples its clock after the query, so the check sees the expiry."""
    async with environment(tmp_path, instance_id="a", claim_ttl=TTL) as a:
        coordinator = a.engine.coordinator
        real_query: Callable[..., Any] = a.store._query  # type: ignore[attr-defined]
        gate, entered = asyncio.Event(), asyncio.Event()
        engaged = False

        async def queued(sql: str, params: tuple[object, ...] = ()) -> Any:
            if engaged and NEWEST in sql and not gate.is_set():
                entered.set()
                await gate.wait()
            return await real_query(sql, params)

        a.store._query = queued  # type: ignore[attr-defined]
        real_fenced = coordinator.append_fenced
        expiry: list[Any] = []
        others: list[asyncio.Future[Any]] = []

        async def fenced(claim: Any, batches: Any, **kw: Any) -> Any:
            nonlocal engaged
            appended = await real_fenced(claim, batches, **kw)
            # Written ahead. Another task's reading is now queued behind
            # reader work, and the claim runs out while it waits.
            engaged = True
            others.append(asyncio.ensure_future(coordinator.now()))
            await entered.wait()
            expiry.append(claim.expires_at)
            a.clock.advance(minutes=2, seconds=30)
            asyncio.get_running_loop().call_later(0.05, gate.set)
            return appended

        coordinator.append_fenced = fenced  # type: ignore[method-assign]
        real_create = a.provider.create
        called_at: list[Any] = []

        async def create(*args: Any, **kw: Any) -> Any:
            called_at.append(a.clock.now)
            return await real_create(*args, **kw)

        a.provider.create = create  # type: ignore[method-assign]
        await a.apply("version: v1\nprovider: aws\nregion: us-east-1\nresources:\n"
                      "  - {type: ec2, name: web, count: 1, size: t3.micro}\n")
        await asyncio.gather(*others)
        (expires_at,) = expiry
        late = [t for t in called_at if t >= expires_at]
        assert not late, (f"the provider was called at {late[0].isoformat()}, under a claim"
                          f" that expired at {expires_at.isoformat()}")


# -- a reading moved on (confirm's after=) -----------------------------------


def count_readings(env: Env, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every clock reading's query of ``env``'s store, as it is made."""
    made: list[str] = []
    real_query: Callable[..., Any] = env.store._query  # type: ignore[attr-defined]

    async def counted(sql: str, params: tuple[object, ...] = ()) -> Any:
        if NEWEST in sql:
            made.append(sql)
        return await real_query(sql, params)

    monkeypatch.setattr(env.store, "_query", counted)
    return made


async def test_confirm_after_a_fresh_reading_asks_the_store_nothing_and_after_a_stale_one_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the executor's last check before a call does with the reading it
    took before the write-ahead: less than fresh_for ago it stands (moved
    on), older it is read again, and an expiry meanwhile is seen."""
    async with environment(tmp_path, instance_id="a", claim_ttl=TTL) as a:
        mine = Coordinator(a.store, a.views, ttl=TTL)
        claim = (await mine.claim(["web-0"])).held["web-0"]
        checked = await mine.reading()
        made = count_readings(a, monkeypatch)
        assert await mine.confirm(claim, after=checked)
        assert made == []
        a.clock.advance(minutes=2, seconds=20)  # the wait for a slot outlasted the claim
        assert not await mine.confirm(claim, after=checked)
        assert len(made) == 1


async def test_a_reading_moved_on_sees_the_margin_reached_within_fresh_for(
    tmp_path: Path,
) -> None:
    """The reading stands for the time it was asked plus what elapsed since:
    a claim that reaches its margin half a second after the reading is not
    usable half a second later, though no new reading was taken."""
    async with environment(tmp_path, instance_id="a", claim_ttl=TTL) as a:
        mine = Coordinator(a.store, a.views, ttl=TTL)
        mine.heartbeat = TTL  # no renewal: the margin is what is checked
        claim = (await mine.claim(["web-0"])).held["web-0"]
        a.clock.now = claim.expires_at - mine.margin - timedelta(seconds=0.3)
        checked = await mine.reading()
        assert await mine.confirm(claim, after=checked)
        a.clock.advance(seconds=0.5)
        assert not await mine.confirm(claim, after=checked)
