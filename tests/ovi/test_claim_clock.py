"""The clock claims are judged by: one store reading shared by the callers
that ask while it is under way; a caller that asks after it ended takes a
new one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from eventstore import EventStoreError, SQLiteEventStore
from ovi.coordinator import Coordinator
from ovi.events import registry
from ovi.runtime import Runtime, ovi_projections
from projections import ProjectionRunner

pytestmark = pytest.mark.asyncio

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class CountingClock:
    """A test clock for the store that counts how often it is read."""

    def __init__(self) -> None:
        self.now = T0
        self.readings = 0

    def __call__(self) -> datetime:
        self.readings += 1
        return self.now


@pytest_asyncio.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[tuple[Runtime, CountingClock]]:
    clock = CountingClock()
    path = tmp_path / "log.db"
    async with SQLiteEventStore(path, registry(), instance_id="a", clock=clock) as log, \
            ProjectionRunner(log, path, ovi_projections()) as views:
        yield Runtime(log, views), clock


async def test_callers_asking_while_a_reading_is_under_way_share_it(
    runtime: tuple[Runtime, CountingClock],
) -> None:
    rt, clock = runtime
    coordinator = Coordinator(rt.store, rt.views)
    before = clock.readings
    readings = await asyncio.gather(*(coordinator.now() for _ in range(100)))
    assert readings == [T0] * 100
    assert clock.readings - before == 1
    # Once it has ended, the next ask takes a new reading, and sees the clock move.
    clock.now = T0 + timedelta(minutes=4)
    assert await coordinator.now() == T0 + timedelta(minutes=4)
    assert clock.readings - before == 2


async def test_a_caller_cancelled_while_waiting_leaves_the_shared_reading_alone(
    runtime: tuple[Runtime, CountingClock],
) -> None:
    rt, _ = runtime
    coordinator = Coordinator(rt.store, rt.views)
    first = asyncio.ensure_future(coordinator.now())
    second = asyncio.ensure_future(coordinator.now())
    await asyncio.sleep(0)  # both wait on the one reading
    first.cancel()
    assert await second == T0
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_failed_reading_fails_every_caller_that_shared_it_and_the_next_reads_again(
    runtime: tuple[Runtime, CountingClock], monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt, _ = runtime
    coordinator = Coordinator(rt.store, rt.views)
    real_now = rt.store.now
    failures = 1

    async def failing_once() -> datetime:
        nonlocal failures
        if failures:
            failures -= 1
            await asyncio.sleep(0)
            raise EventStoreError("the log cannot be read")
        return await real_now()

    monkeypatch.setattr(rt.store, "now", failing_once)
    results = await asyncio.gather(*(coordinator.now() for _ in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, EventStoreError) for r in results)
    assert await coordinator.now() == T0


async def test_usable_at_a_reading_the_caller_took_reads_no_clock(
    runtime: tuple[Runtime, CountingClock],
) -> None:
    rt, clock = runtime
    coordinator = Coordinator(rt.store, rt.views, ttl=timedelta(minutes=10))
    claim = (await coordinator.claim(["web-0"])).held["web-0"]
    before = clock.readings
    assert await coordinator.usable(claim, now=T0 + timedelta(minutes=8))
    # within the margin (a minute) of running out: no new work under it
    assert not await coordinator.usable(claim, now=T0 + timedelta(minutes=9, seconds=1))
    assert clock.readings == before
