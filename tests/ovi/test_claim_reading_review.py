"""A hostile review's attacks on confirm(claim, after=reading), kept: a claim
clock reading moved on instead of a new query, the fast-acquire primitives
and EventRegistry.strict_decodes.

Each test says what it attacks. The first version moved a reading on by
time.monotonic(): a clock step or a suspended host between the write-ahead
and the call then let an instance call under a claim another had taken over
(the first two attacks), on SQLite and PostgreSQL. A reading is now moved on
only by the store's own clock, read locally, and only where that clock is
this host's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

import eventstore.sqlite as sqlite_backend
from eventstore import (
    Event,
    EventRegistry,
    EventStoreError,
    MirroredStore,
    PostgresEventStore,
    SQLiteEventStore,
    StreamBatch,
)
from ovi.coordinator import Coordinator, Reading
from ovi.events import registry
from ovi.model import ID_TAG
from ovi.providers.fake import FakeProvider
from ovi.runtime import ovi_projections
from projections import ProjectionRunner
from tests.ovi.harness import Env, environment

pytestmark = pytest.mark.asyncio

TTL = timedelta(minutes=2)  # heartbeat 40 s, margin 30 s
ONE_WEB = ("version: v1\nprovider: aws\nregion: us-east-1\nresources:\n"
           "  - {type: ec2, name: web, count: 1, size: t3.micro}\n")


@asynccontextmanager
async def wall_clock_env(tmp_path: Path, instance_id: str, *,
                         claim_ttl: timedelta = timedelta(minutes=10)) -> AsyncIterator[Env]:
    """An environment as production runs it: the store has no test clock, so
    now() and local_clock() are this host's wall clock."""
    path = tmp_path / "ovi.db"
    async with SQLiteEventStore(path, registry(), instance_id=instance_id) as store, \
            ProjectionRunner(store, path, ovi_projections()) as views:
        yield Env(store, views, FakeProvider(()), lambda: datetime.now(UTC),
                  claim_ttl=claim_ttl)


def hook_after_write_ahead(env: Env, after: Callable[[Any], Any]) -> None:
    """Run ``after(claim)`` (a coroutine function) once the action's
    write-ahead is durable, before its call slot and confirm()."""
    coordinator = env.engine.coordinator
    real_fenced = coordinator.append_fenced

    async def fenced(claim: Any, batches: Any, **kw: Any) -> Any:
        appended = await real_fenced(claim, batches, **kw)
        await after(claim)
        return appended

    coordinator.append_fenced = fenced  # type: ignore[method-assign]


def record_calls(env: Env, now: Callable[[], datetime]) -> list[datetime]:
    called_at: list[datetime] = []
    real_create = env.provider.create

    async def create(*args: Any, **kw: Any) -> Any:
        called_at.append(now())
        return await real_create(*args, **kw)

    env.provider.create = create  # type: ignore[method-assign]
    return called_at


# -- attack 1: the store's clock steps forward, the monotonic clock does not --


async def test_a_wall_clock_step_after_the_write_ahead_does_not_let_a_taken_over_claim_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Production wiring (no test clock): the store's clock is the wall clock.
    Between the write-ahead and the call slot the wall clock moves 11 minutes
    while a monotonic clock would not (a host suspend or VM pause:
    CLOCK_MONOTONIC does not count it; or an NTP step). Instance b, on the
    same log, sees the claim expired and takes it over, legitimately. Were
    a's reading moved on by a stopwatch, it would find the claim usable and
    call: two instances acting on one resource."""
    async with wall_clock_env(tmp_path, "a") as a, wall_clock_env(tmp_path, "b") as b:
        real_utc_now: Callable[[], datetime] = sqlite_backend.__dict__["utc_now"]
        taken: list[bool] = []

        async def suspended(claim: Any) -> None:
            step = timedelta(minutes=11)  # past the 10-minute TTL
            monkeypatch.setattr(sqlite_backend, "utc_now", lambda: real_utc_now() + step)
            theirs = await Coordinator(b.store, b.views, ttl=b.engine.coordinator.ttl).claim(
                [claim.resource_id])
            taken.append(claim.resource_id in theirs.held)

        hook_after_write_ahead(a, suspended)
        calls = record_calls(a, lambda: sqlite_backend.__dict__["utc_now"]())
        await a.apply(ONE_WEB)
        assert taken == [True], "instance b could not take the expired claim over"
        assert not calls, (
            "the provider was called by instance a after instance b took its claim over:"
            " confirm(after=checked) trusted a reading moved on by time.monotonic() while"
            " the store's clock had moved 11 minutes (a double action)")


async def test_the_same_on_postgres_where_the_server_clock_moves_and_the_host_is_suspended(
    tmp_path: Path,
) -> None:
    """The harness's postgres-mirror backend: now() is the shared store's
    (the test clock stands in for the server's). The clock moves past the
    claim's expiry between the write-ahead and the call slot (as a suspended
    host sees the server's clock do), instance b (another host, same
    PostgreSQL log) takes the claim over: a must not call. Where the clock is
    another host's, only a query tells, so confirm() takes a new reading."""
    async with environment(tmp_path, instance_id="a", backend="postgres-mirror") as a:
        shared = a.store.shared  # type: ignore[attr-defined]
        b_shared = PostgresEventStore(shared._dsn, registry(), schema=shared.schema,
                                      instance_id="b", clock=a.clock)
        b_mirror = SQLiteEventStore(tmp_path / "b.db", registry(), instance_id="b",
                                    synchronous="NORMAL")
        async with MirroredStore(b_shared, b_mirror) as b_store, \
                ProjectionRunner(b_store, tmp_path / "b.db", ovi_projections()) as b_views:
            taken: list[bool] = []

            async def suspended(claim: Any) -> None:
                a.clock.advance(minutes=11)  # the server's clock, past the 10-minute TTL
                theirs = await Coordinator(b_store, b_views).claim([claim.resource_id])
                taken.append(claim.resource_id in theirs.held)

            hook_after_write_ahead(a, suspended)
            calls = record_calls(a, a.clock)
            await a.apply(ONE_WEB)
        assert taken == [True], "instance b could not take the expired claim over"
        assert not calls, (
            "the provider was called under a claim instance b had taken over:"
            " confirm(after=) did not see the server's clock move (a double action)")


async def test_a_store_whose_clock_is_another_hosts_has_no_local_clock(
    tmp_path: Path,
) -> None:
    """A MirroredStore's now() is its shared store's (PostgreSQL: the
    server's clock): nothing read here stands for it, so a reading is never
    moved on there, and confirm() always asks."""
    async with environment(tmp_path, instance_id="a", backend="postgres-mirror") as a:
        assert a.store.local_clock() is None
        assert a.store.shared.local_clock() is None  # type: ignore[attr-defined]
        mine = Coordinator(a.store, a.views)
        claim = (await mine.claim(["web-0"])).held["web-0"]
        checked = await mine.reading()
        assert checked.asked is None
        a.clock.advance(minutes=11)  # past the claim's expiry
        assert not await mine.confirm(claim, after=checked)


async def test_sqlite_with_the_test_clock_sees_the_same_step(tmp_path: Path) -> None:
    """Control: on SQLite with a test clock, local_clock() is the test clock,
    so the same step is seen (the reading is too old to stand)."""
    async with environment(tmp_path, instance_id="a") as a, \
            environment(tmp_path, instance_id="b") as b:
        taken: list[bool] = []

        async def suspended(claim: Any) -> None:
            a.clock.advance(minutes=11)
            b.clock.advance(minutes=11)
            theirs = await Coordinator(b.store, b.views).claim([claim.resource_id])
            taken.append(claim.resource_id in theirs.held)

        hook_after_write_ahead(a, suspended)
        calls = record_calls(a, a.clock)
        await a.apply(ONE_WEB)
        assert taken == [True]
        assert not calls


# -- attack 2: a shared reading joined after it was sampled -------------------


async def test_a_reading_joined_after_its_sample_is_not_moved_on_from_its_ask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """confirm()'s docstring: 'The store samples its clock after it was
    asked, so that is never earlier than the store's clock now'. But
    Coordinator.now() is single flight and self._reading stays set until its
    done-callback runs, one loop iteration after the sample. A worker that
    asks in that iteration (after other work there took time) gets the old
    sample with a later `asked`: the reading moved on is earlier than the
    store's clock by that time, and confirm() judges the margin on it."""
    async with environment(tmp_path, instance_id="a", claim_ttl=TTL) as a:
        mine = Coordinator(a.store, a.views, ttl=TTL)
        mine.heartbeat = TTL  # no renewal: the margin is what is checked
        claim = (await mine.claim(["web-0"])).held["web-0"]
        threshold = claim.expires_at - mine.margin
        a.clock.now = threshold - timedelta(seconds=0.2)
        real_now = a.store._now
        late: list[asyncio.Future[Reading]] = []

        def busy_then_ask() -> None:
            # Runs after the sample, before Coordinator._reading_done: the
            # event loop was busy for 0.4 s (here: the test clock moves).
            a.clock.advance(seconds=0.4)
            late.append(asyncio.ensure_future(mine.reading()))

        async def sampled() -> str:
            text = await real_now()
            if not late:
                asyncio.get_running_loop().call_soon(busy_then_ask)
            return text

        monkeypatch.setattr(a.store, "_now", sampled)
        await mine.now()
        await asyncio.sleep(0)
        reading = await late[0]
        assert reading.at >= threshold + timedelta(seconds=0.2), "joined the earlier sample"
        store_clock = a.clock.now
        assert store_clock >= threshold
        confirmed = await mine.confirm(claim, after=reading)
        assert not confirmed, (
            f"confirm(after=) said the claim is usable at {store_clock.isoformat()}, past"
            f" its margin ({threshold.isoformat()}): the reading joined ({reading.at}) was"
            " sampled before it was asked, so 'moved on' lagged the store's clock")


# -- attack 3: a reading taken before the claim was lost ---------------------


async def test_a_fresh_reading_does_not_outlive_a_renewal_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with environment(tmp_path, instance_id="a", claim_ttl=TTL) as a:
        mine = Coordinator(a.store, a.views, ttl=TTL)
        claim = (await mine.claim(["web-0"])).held["web-0"]
        checked = await mine.reading()

        async def failing(*args: Any, **kw: Any) -> Any:
            raise EventStoreError("the log cannot be written")

        monkeypatch.setattr(a.store, "append_streams", failing)
        with pytest.raises(EventStoreError):
            await mine.renew([claim])
        assert claim.lost
        assert not await mine.confirm(claim, after=checked), (
            "confirm(after=) said a claim whose renewal failed is usable")


async def test_a_reading_does_not_outlive_a_takeover_found_by_a_renewal(
    tmp_path: Path,
) -> None:
    async with environment(tmp_path, instance_id="a", claim_ttl=TTL) as a, \
            environment(tmp_path, instance_id="b", claim_ttl=TTL) as b:
        mine = Coordinator(a.store, a.views, ttl=TTL)
        claim = (await mine.claim(["web-0"])).held["web-0"]
        checked = await mine.reading()
        a.clock.advance(minutes=3)
        b.clock.advance(minutes=3)
        assert "web-0" in (await Coordinator(b.store, b.views, ttl=TTL).claim(["web-0"])).held
        await mine.renew([claim])  # the heartbeat finds the takeover
        assert claim.taken_over
        a.clock.now = checked.at  # even with the clock back where it was read
        assert not await mine.confirm(claim, after=checked)


# -- attack 4: the test clock moved backwards or jumping ---------------------


async def test_a_clock_moved_back_then_on_is_read_again_or_moved_on_correctly(
    tmp_path: Path,
) -> None:
    async with environment(tmp_path, instance_id="a", claim_ttl=TTL) as a:
        mine = Coordinator(a.store, a.views, ttl=TTL)
        mine.heartbeat = TTL
        claim = (await mine.claim(["web-0"])).held["web-0"]
        threshold = claim.expires_at - mine.margin
        a.clock.now = threshold - timedelta(seconds=0.5)
        checked = await mine.reading()
        a.clock.advance(seconds=-10)  # back: elapsed < 0, read again
        assert mine._moved_on(checked) is None
        assert await mine.confirm(claim, after=checked)
        a.clock.now = threshold + timedelta(seconds=0.1)  # on again past the margin
        assert not await mine.confirm(claim, after=checked)


async def test_a_reading_moved_on_is_never_later_than_the_store_clock_it_stands_for(
    tmp_path: Path,
) -> None:
    """Many readings taken by many tasks while the test clock jumps around
    by less than fresh_for: whenever a reading is moved on, the result is
    within the store's clock (single reader, no shared-reading window)."""
    async with environment(tmp_path, instance_id="a", claim_ttl=TTL) as a:
        coordinator = Coordinator(a.store, a.views, ttl=TTL)
        errors: list[str] = []

        async def worker(i: int) -> None:
            for j in range(10):
                reading = await coordinator.reading()
                a.clock.advance(milliseconds=(i * 37 + j * 13) % 300)
                await asyncio.sleep(0)
                moved = coordinator._moved_on(reading)
                if moved is not None and moved > a.clock.now + timedelta(microseconds=1):
                    errors.append(f"moved on to {moved} past the clock {a.clock.now}")

        await asyncio.gather(*(worker(i) for i in range(20)))
        assert not errors, errors[:3]


# -- attack 5: fast-acquire primitives and cancellation ------------------------


async def test_a_task_cancelled_while_waiting_for_a_claim_lock_leaves_it_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with environment(tmp_path, instance_id="a", claim_ttl=TTL) as a:
        mine = Coordinator(a.store, a.views, ttl=TTL)
        claim = (await mine.claim(["web-0"])).held["web-0"]
        gate = asyncio.Event()
        real_append = a.store.append_streams

        async def slow(*args: Any, **kw: Any) -> Any:
            await gate.wait()
            return await real_append(*args, **kw)

        monkeypatch.setattr(a.store, "append_streams", slow)
        holder = asyncio.ensure_future(mine.renew([claim]))
        await asyncio.sleep(0.01)
        assert claim._lock.locked()
        waiters = [asyncio.ensure_future(mine.append_fenced(claim, [StreamBatch("probe", ())]))
                   for _ in range(3)]
        await asyncio.sleep(0.01)
        waiters[1].cancel()
        gate.set()
        holder.cancel()  # the holder itself cancelled mid-append
        await asyncio.gather(holder, *waiters, return_exceptions=True)
        assert not claim._lock.locked(), "a cancelled task left the claim's lock held"
        monkeypatch.setattr(a.store, "append_streams", real_append)
        with anyio.fail_after(5):
            await mine.append_fenced(claim, [StreamBatch("probe", ())])


async def test_an_execution_cancelled_while_actions_wait_for_call_slots_leaves_nothing_held(
    tmp_path: Path,
) -> None:
    """Many actions, one call slot, the provider slow: the cycle is cancelled
    while workers wait for a slot. Then a new cycle runs to the end (no slot,
    lock or reading left held), and no create was called twice."""
    async with environment(tmp_path, instance_id="a", real_time=True) as a:
        started: list[str] = []
        real_create = a.provider.create

        async def slow(*args: Any, **kw: Any) -> Any:
            started.append(repr(args)[:60])
            await anyio.sleep(0.05)
            return await real_create(*args, **kw)

        a.provider.create = slow  # type: ignore[method-assign]
        config = ("version: v1\nprovider: aws\nregion: us-east-1\nresources:\n"
                  "  - {type: ec2, name: web, count: 8, size: t3.micro}\n")
        with anyio.move_on_after(0.12):
            await a.apply(config, max_concurrency=1)
        assert 0 < len(started) < 8
        # the claims of the cancelled cycle are released or still ours: a new
        # cycle of the same instance finishes within the claim TTL
        with anyio.fail_after(20):
            await a.apply(config, max_concurrency=2)
        ids = sorted(r.tags[ID_TAG] for r in a.provider.resources.values())
        assert ids == [f"web-{i}" for i in range(8)], f"created: {ids}"


# -- attack 6: strict_decodes -------------------------------------------------


class Probe(Event, frozen=True):
    value: int


class Probe2(Event, frozen=True):
    text: str


async def test_types_registered_after_the_store_opened_decode_as_themselves(
    tmp_path: Path,
) -> None:
    writer_registry = EventRegistry([Probe, Probe2])
    reader_registry = EventRegistry()
    other = EventRegistry([Probe2])
    path = tmp_path / "log.db"
    async with SQLiteEventStore(path, writer_registry) as writer:
        await writer.append("s", [Probe(value=1), Probe2(text="x")])
    async with SQLiteEventStore(path, reader_registry) as reader, \
            SQLiteEventStore(path, other) as third:
        first = [e.event async for e in reader.read()]
        assert [type(e).__name__ for e in first] == ["UnknownEvent", "UnknownEvent"]
        reader_registry.register(Probe)
        second = [e.event async for e in reader.read()]
        assert isinstance(second[0], Probe) and second[0].value == 1
        assert type(second[1]).__name__ == "UnknownEvent"
        # another registry is not touched by this one's registration
        seen = [e.event async for e in third.read()]
        assert type(seen[0]).__name__ == "UnknownEvent"
        assert isinstance(seen[1], Probe2)
        assert "Probe" not in other.strict_decodes
        # a registration during a read takes effect for the rows after it
        rows = []
        async for recorded in reader.read():
            rows.append(recorded.event)
            if len(rows) == 1:
                reader_registry.register(Probe2)
        assert isinstance(rows[0], Probe) and isinstance(rows[1], Probe2)


async def test_a_row_of_an_older_shape_still_falls_back_rather_than_misdecoding(
    tmp_path: Path,
) -> None:
    class Shape(Event, frozen=True):
        value: int

    path = tmp_path / "log.db"
    async with SQLiteEventStore(path, EventRegistry([Shape])) as writer:
        await writer.append("s", [Shape(value=1)])

    class Shape(Event, frozen=True):  # type: ignore[no-redef]  # a newer version of the type
        value: str

    async with SQLiteEventStore(path, EventRegistry([Shape])) as reader:
        (event,) = [e.event async for e in reader.read()]
    assert not isinstance(event, Shape)
    assert "does not match" in getattr(event, "error", "") or isinstance(event, msgspec.Struct)


async def test_without_a_test_clock_the_local_clock_is_the_hosts(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "x.db", registry())
    before = datetime.now(UTC)
    local = store.local_clock()
    assert local is not None and before <= local <= datetime.now(UTC)
