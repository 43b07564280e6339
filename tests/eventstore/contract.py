"""The event store contract, as one test suite every backend runs.

A backend's test module subclasses :class:`EventStoreContract` and provides two
fixtures:

``store_factory``
    a :class:`StoreFactory`: each call returns a new, *unopened* store on the
    same log (so a test can open two stores on one log, or close and reopen it);
``tamperer``
    a :class:`LogTamperer` that changes the stored log behind the store's back,
    as someone with direct access to the database would.

Copying tests read from a second log, a SQLite file in ``tmp_path``: the
reference backend, and the copy an operator makes most (SQLite → PostgreSQL).

Everything here goes through the public :class:`~eventstore.EventStore` API
only, so ``class TestPostgresEventStore(EventStoreContract)`` runs it unchanged.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol, cast

import msgspec
import pytest
import pytest_asyncio

from eventstore import (
    ANY,
    GENESIS_HASH,
    NO_STREAM,
    Appended,
    Event,
    EventEncodingError,
    EventRegistry,
    EventStore,
    ImportRejectedError,
    LogCorruptedError,
    RawRow,
    RecordedEvent,
    SQLiteEventStore,
    StoreClosedError,
    StreamBatch,
    UnknownEvent,
    WrongExpectedVersion,
    format_timestamp,
    process_home,
    row_hash,
)
from tests.eventstore.contract_evidence import EvidenceContract
from tests.eventstore.sample_events import Note, Ping, Secret

__all__ = [
    "EventStoreContract",
    "LogTamperer",
    "StepClock",
    "StoreFactory",
    "assert_intact",
    "following",
    "next_events",
    "read_all",
]

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


class StoreFactory(Protocol):
    """Makes a new, unopened store on the backend's one test log."""

    def __call__(
        self,
        registry: EventRegistry | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
        instance_id: str | None = None,
        chain_key: bytes | None = None,
        read_only: bool = False,
    ) -> EventStore: ...


class LogTamperer(Protocol):
    """Edits the stored log directly, bypassing (and disabling) its safeguards."""

    async def set_data(self, position: int, data: str, *, rehash: bool = False) -> None:
        """Overwrite the ``data`` of the row at ``position``; with ``rehash``, also
        recompute that row's own ``hash`` so that the row alone looks genuine."""

    async def delete(self, *positions: int) -> None:
        """Remove the rows at ``positions``."""

    async def swap(self, first: int, second: int) -> None:
        """Exchange every column but ``position`` between two rows."""

    async def insert_after_head(self, stream: str, type_: str, data: str) -> int:
        """Add a well-chained row after the newest one without moving the log's
        recorded head, as a writer that bypasses the store would; return its position."""

    async def forge(self, position: int, data: str, *, header: str | None = None) -> None:
        """Rewrite history as a forger with write access but no key would: set
        the ``data`` of the row at ``position``, recompute (plain SHA-256)
        every hash from there on and the head; with ``header``, also replace
        the log header by that text (and the genesis, recomputing from row 1)."""

    def holding_write_lock(self) -> AbstractAsyncContextManager[None]:
        """Hold the log's write lock (the one appenders serialise on) from
        another connection while the block runs."""


class StepClock:
    """A controllable clock: returns :attr:`now`, then moves it on by ``step``.

    :attr:`readings` counts the calls (a backend may call it from a worker thread).
    """

    def __init__(self, start: datetime = T0, step: timedelta = timedelta(0)) -> None:
        self.now = start
        self.step = step
        self.readings = 0
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            moment = self.now
            self.now += self.step
            self.readings += 1
            return moment


async def read_all(store: EventStore, **filters: Any) -> list[RecordedEvent]:
    return [event async for event in store.read(**filters)]


async def positions(store: EventStore, **filters: Any) -> list[int]:
    return [event.position for event in await read_all(store, **filters)]


async def assert_intact(store: EventStore, count: int) -> None:
    """The log holds ``count`` events at positions 1..count and its chain verifies."""
    assert await positions(store) == list(range(1, count + 1))
    assert await store.last_position() == count
    report = await store.verify()
    assert report.problem is None
    assert report.ok
    assert (report.events_checked, report.last_position, report.head_position) == (
        count,
        count,
        count,
    )


def closing_follow(
    events: AsyncIterator[RecordedEvent],
) -> aclosing[AsyncGenerator[RecordedEvent, None]]:
    """Close a follower when the block ends (``read``/``follow`` are async generators,
    though typed as iterators)."""
    assert isinstance(events, AsyncGenerator)
    return aclosing(events)


@asynccontextmanager
async def following(
    store: EventStore, **options: Any
) -> AsyncIterator[asyncio.Queue[RecordedEvent]]:
    """Run ``store.follow(**options)`` in a task that queues what it yields."""
    received: asyncio.Queue[RecordedEvent] = asyncio.Queue()

    async def consume() -> None:
        async for event in store.follow(**options):
            received.put_nowait(event)

    consumer = asyncio.create_task(consume())
    try:
        yield received
    finally:
        consumer.cancel()
        with suppress(asyncio.CancelledError):
            await consumer


async def next_events(
    received: asyncio.Queue[RecordedEvent], count: int, within: float
) -> list[RecordedEvent]:
    """The next ``count`` events a :func:`following` task queued, waiting up to ``within`` s."""
    async with asyncio.timeout(within):
        return [await received.get() for _ in range(count)]


class EventStoreContract(EvidenceContract):
    """What every :class:`~eventstore.EventStore` backend must do."""

    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        raise NotImplementedError("a backend's test class provides store_factory")

    @pytest.fixture
    def tamperer(self) -> LogTamperer:
        raise NotImplementedError("a backend's test class provides tamperer")

    @pytest_asyncio.fixture
    async def store(self, store_factory: StoreFactory) -> AsyncIterator[EventStore]:
        async with store_factory(instance_id="tester") as store:
            yield store

    # -- append and read back ------------------------------------------

    @pytest.mark.asyncio
    async def test_empty_log(self, store: EventStore) -> None:
        assert await store.last_position() == 0
        assert await store.stream_version("nothing") == 0
        assert await read_all(store) == []
        report = await store.verify()
        assert report.ok
        assert (report.events_checked, report.last_position, report.head_position) == (0, 0, 0)

    @pytest.mark.asyncio
    async def test_round_trip_records_every_field_and_chains_hashes(
        self, store_factory: StoreFactory
    ) -> None:
        moment = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=timezone(timedelta(hours=2)))
        async with store_factory(clock=StepClock(moment), instance_id="host-a:42") as store:
            appended = await store.append("orders-1", [Ping(n=1), Note(text="héllo ✓")])
            events = await read_all(store)

        assert appended == Appended(first_position=1, last_position=2, versions={"orders-1": 2})
        assert [e.event for e in events] == [Ping(n=1), Note(text="héllo ✓")]
        assert [(e.position, e.stream, e.stream_version, e.type) for e in events] == [
            (1, "orders-1", 1, "Ping"),
            (2, "orders-1", 2, "Note"),
        ]
        for event in events:
            assert event.recorded_at == moment
            assert event.recorded_at.utcoffset() == timedelta(0)
            assert event.instance_id == "host-a:42"
        # hash = sha256(prev_hash || canonical bytes), starting from the genesis hash
        stamp = format_timestamp(moment)
        first = row_hash(GENESIS_HASH, 1, "orders-1", 1, "Ping", stamp, "host-a:42", '{"n":1}')
        second = row_hash(
            first,
            2,
            "orders-1",
            2,
            "Note",
            stamp,
            "host-a:42",
            msgspec.json.encode(Note(text="héllo ✓")).decode(),
        )
        assert [e.hash for e in events] == [first, second]

    @pytest.mark.asyncio
    async def test_awkward_names_and_text_round_trip_and_verify(
        self, store_factory: StoreFactory
    ) -> None:
        names = ["with space", 'quote\'s "double"', "back\\slash", "ünïcødé ✓ 🚀", "tab\tnl\n"]
        async with store_factory(instance_id='host "ü"\t:1') as store:
            for name in names:
                await store.append(name, [Note(text=name), Ping(n=len(name))])
            assert [e.event.text for e in await read_all(store, types=["Note"])] == names
            for name in names:
                events = await read_all(store, stream=name)
                assert [(e.stream, e.stream_version) for e in events] == [(name, 1), (name, 2)]
                assert await store.stream_version(name) == 2
            assert {e.instance_id for e in await read_all(store)} == {'host "ü"\t:1'}
            await assert_intact(store, 2 * len(names))

    @pytest.mark.asyncio
    async def test_default_instance_id_names_host_and_process(
        self, store_factory: StoreFactory
    ) -> None:
        async with store_factory() as store:
            await store.append("s", [Ping(n=1)])
            (event,) = await read_all(store)
        assert event.instance_id == store.instance_id
        home, pid, nonce = event.instance_id.rsplit(":", 2)
        assert home == process_home() and pid == str(os.getpid()) and nonce

    @pytest.mark.asyncio
    async def test_positions_are_gap_free_in_commit_order_and_versions_per_stream(
        self, store: EventStore
    ) -> None:
        results = [
            await store.append("a", [Ping(n=1), Ping(n=2)]),
            await store.append("b", [Ping(n=3)]),
            await store.append("a", [Ping(n=4)]),
            await store.append("c", [Ping(n=5), Ping(n=6), Ping(n=7)]),
            await store.append("b", [Ping(n=8)]),
        ]
        assert [(r.first_position, r.last_position, r.versions) for r in results] == [
            (1, 2, {"a": 2}),
            (3, 3, {"b": 1}),
            (4, 4, {"a": 3}),
            (5, 7, {"c": 3}),
            (8, 8, {"b": 2}),
        ]
        events = await read_all(store)
        assert [e.event.n for e in events] == list(range(1, 9))
        assert [(e.position, e.stream, e.stream_version) for e in events] == [
            (1, "a", 1), (2, "a", 2), (3, "b", 1), (4, "a", 3),
            (5, "c", 1), (6, "c", 2), (7, "c", 3), (8, "b", 2),
        ]  # fmt: skip
        assert [await store.stream_version(s) for s in ("a", "b", "c", "d")] == [3, 2, 3, 0]
        await assert_intact(store, 8)

    # -- expected versions ---------------------------------------------

    @pytest.mark.asyncio
    async def test_expected_version_any_no_stream_and_exact(self, store: EventStore) -> None:
        assert (await store.append("s", [Ping(n=1)], expected_version=ANY)).versions == {"s": 1}
        assert (await store.append("s", [Ping(n=2)])).versions == {"s": 2}
        assert (await store.append("t", [Ping(n=3)], expected_version=NO_STREAM)).versions == {
            "t": 1
        }
        assert (await store.append("s", [Ping(n=4), Ping(n=5)], expected_version=2)).versions == {
            "s": 4
        }
        assert (await store.append("s", [Ping(n=6)], expected_version=4)).versions == {"s": 5}
        assert [e.event.n for e in await read_all(store, stream="s")] == [1, 2, 4, 5, 6]
        await assert_intact(store, 6)

    @pytest.mark.parametrize(
        ("stream", "expected", "actual"),
        [
            pytest.param("s", NO_STREAM, 3, id="no-stream-but-exists"),
            pytest.param("s", 2, 3, id="exact-too-low"),
            pytest.param("s", 4, 3, id="exact-too-high"),
            pytest.param("fresh", 1, 0, id="exact-on-missing-stream"),
        ],
    )
    @pytest.mark.asyncio
    async def test_wrong_expected_version_raises_and_writes_nothing(
        self, store: EventStore, stream: str, expected: int, actual: int
    ) -> None:
        await store.append("s", [Ping(n=1), Ping(n=2), Ping(n=3)])
        with pytest.raises(WrongExpectedVersion) as caught:
            await store.append(stream, [Ping(n=99)], expected_version=expected)
        error = caught.value
        assert (error.stream, error.expected, error.actual) == (stream, expected, actual)
        assert repr(stream) in str(error)
        assert f"found version {actual}" in str(error)
        assert await store.stream_version(stream) == actual
        await assert_intact(store, 3)
        # the stream is still usable with the right expectation
        await store.append(stream, [Ping(n=4)], expected_version=actual)
        await assert_intact(store, 4)

    @pytest.mark.asyncio
    async def test_malformed_requests_are_rejected_before_writing(self, store: EventStore) -> None:
        with pytest.raises(ValueError, match="stream name"):
            await store.append("", [Ping(n=1)])
        with pytest.raises(ValueError, match="expected_version"):
            await store.append("s", [Ping(n=1)], expected_version=-1)
        # names every backend stores as given (PostgreSQL text has no NUL)
        with pytest.raises(ValueError, match="stream name must not contain a NUL"):
            await store.append_streams([StreamBatch("ok", (Ping(n=1),)),
                                        StreamBatch("a\x00b", (Ping(n=2),))])
        with pytest.raises(ValueError, match="stream name must be valid Unicode"):
            await store.append("\ud800", [Ping(n=1)])
        assert await store.last_position() == 0

    def test_an_instance_id_every_backend_can_store_is_required(
        self, store_factory: StoreFactory
    ) -> None:
        with pytest.raises(ValueError, match="instance id must not contain a NUL"):
            store_factory(instance_id="host\x00:1")

    @pytest.mark.asyncio
    async def test_concurrent_appenders_with_the_same_expectation_one_wins(
        self, store: EventStore
    ) -> None:
        await store.append("account", [Ping(n=0)])
        results = await asyncio.gather(
            store.append("account", [Ping(n=1)], expected_version=1),
            store.append("account", [Ping(n=2)], expected_version=1),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, Appended)]
        losers = [r for r in results if isinstance(r, WrongExpectedVersion)]
        assert (len(winners), len(losers)) == (1, 1)
        assert (losers[0].expected, losers[0].actual) == (1, 2)
        events = await read_all(store, stream="account")
        assert [e.stream_version for e in events] == [1, 2]
        assert events[1].event == Ping(n=1 if results[0] is winners[0] else 2)
        await assert_intact(store, 2)

    @pytest.mark.asyncio
    async def test_concurrent_appenders_on_two_stores_one_wins(
        self, store: EventStore, store_factory: StoreFactory
    ) -> None:
        await store.append("account", [Ping(n=0)])
        async with store_factory() as other:
            for round_ in range(1, 6):
                results = await asyncio.gather(
                    store.append("account", [Ping(n=round_)], expected_version=round_),
                    other.append("account", [Ping(n=-round_)], expected_version=round_),
                    return_exceptions=True,
                )
                assert sorted(type(r).__name__ for r in results) == [
                    "Appended",
                    "WrongExpectedVersion",
                ]
            assert await other.stream_version("account") == 6
        await assert_intact(store, 6)

    @pytest.mark.asyncio
    async def test_a_conflict_in_a_group_does_not_fail_its_neighbours(
        self, store: EventStore
    ) -> None:
        await store.append("s", [Ping(n=0)])
        results = await asyncio.gather(
            store.append("a", [Ping(n=1)]),
            store.append("s", [Ping(n=2)], expected_version=NO_STREAM),
            store.append("b", [Ping(n=3)], expected_version=NO_STREAM),
            return_exceptions=True,
        )
        assert isinstance(results[0], Appended)
        assert isinstance(results[1], WrongExpectedVersion)
        assert isinstance(results[2], Appended)
        assert sorted(e.event.n for e in await read_all(store)) == [0, 1, 3]
        await assert_intact(store, 3)

    # -- atomic batches ----------------------------------------------

    @pytest.mark.asyncio
    async def test_append_streams_writes_every_stream_in_one_commit(
        self, store: EventStore
    ) -> None:
        await store.append("b", [Ping(n=0)])
        appended = await store.append_streams(
            [
                StreamBatch("a", (Ping(n=1), Ping(n=2)), NO_STREAM),
                StreamBatch("b", (Ping(n=3),), 1),
                StreamBatch("c", (Ping(n=4),)),
            ]
        )
        assert appended == Appended(2, 5, {"a": 2, "b": 2, "c": 1})
        events = await read_all(store, after=1)
        assert [(e.position, e.stream, e.stream_version, e.event.n) for e in events] == [
            (2, "a", 1, 1), (3, "a", 2, 2), (4, "b", 2, 3), (5, "c", 1, 4),
        ]  # fmt: skip
        assert len({e.recorded_at for e in events}) == 1
        await assert_intact(store, 5)

    @pytest.mark.asyncio
    async def test_append_streams_sees_its_own_earlier_batches(self, store: EventStore) -> None:
        appended = await store.append_streams(
            [
                StreamBatch("a", (Ping(n=1),), NO_STREAM),
                StreamBatch("a", (Ping(n=2),), 1),
            ]
        )
        assert appended == Appended(1, 2, {"a": 2})
        assert [e.stream_version for e in await read_all(store)] == [1, 2]

    @pytest.mark.asyncio
    async def test_one_failed_expectation_writes_no_stream(self, store: EventStore) -> None:
        await store.append("b", [Ping(n=0)])
        with pytest.raises(WrongExpectedVersion) as caught:
            await store.append_streams(
                [
                    StreamBatch("a", (Ping(n=1),), NO_STREAM),
                    StreamBatch("b", (Ping(n=2),), NO_STREAM),
                    StreamBatch("c", (Ping(n=3),)),
                ]
            )
        assert (caught.value.stream, caught.value.expected, caught.value.actual) == ("b", 0, 1)
        assert [await store.stream_version(s) for s in ("a", "b", "c")] == [0, 1, 0]
        await assert_intact(store, 1)

    @pytest.mark.asyncio
    async def test_unregistered_event_raises_encoding_error_and_writes_nothing(
        self, store: EventStore
    ) -> None:
        class Stranger(Event, frozen=True):
            x: int

        await store.append("a", [Ping(n=0)])
        with pytest.raises(EventEncodingError, match="Stranger"):
            await store.append("a", [Ping(n=1), Stranger(x=1)])
        with pytest.raises(EventEncodingError, match="Stranger"):
            await store.append_streams(
                [StreamBatch("b", (Ping(n=2),)), StreamBatch("c", (Stranger(x=2),))]
            )
        assert [await store.stream_version(s) for s in ("a", "b", "c")] == [1, 0, 0]
        await assert_intact(store, 1)

    @pytest.mark.parametrize(
        "bad",
        [
            pytest.param(Note(text=cast(str, object())), id="unsupported-value"),
            pytest.param(Note(text="\ud800"), id="lone-surrogate"),
        ],
    )
    @pytest.mark.asyncio
    async def test_unencodable_event_raises_encoding_error_and_writes_nothing(
        self, store: EventStore, bad: Note
    ) -> None:
        with pytest.raises(EventEncodingError, match="Note") as caught:
            await store.append_streams([StreamBatch("a", (Ping(n=1),)), StreamBatch("b", (bad,))])
        assert caught.value.__cause__ is not None
        assert await store.last_position() == 0
        await assert_intact(store, 0)

    # -- group commit --------------------------------------------------

    @pytest.mark.asyncio
    async def test_group_commit_of_fifty_concurrent_producers(
        self, store_factory: StoreFactory
    ) -> None:
        # The clock ticks on every read, and a commit reads it once: fewer distinct
        # timestamps than appends shows that appends were committed together.
        clock = StepClock(step=timedelta(microseconds=1))
        async with store_factory(clock=clock) as store:

            async def produce(i: int) -> Appended:
                return await store.append(f"producer-{i}", [Ping(n=i)], expected_version=0)

            results = await asyncio.gather(*(produce(i) for i in range(50)))
            assert sorted(r.first_position for r in results) == list(range(1, 51))
            assert all(r.first_position == r.last_position for r in results)
            for i, result in enumerate(results):
                assert result.versions == {f"producer-{i}": 1}
            events = await read_all(store)
            for event in events:
                assert event.stream == f"producer-{event.event.n}"
                assert event.position == results[event.event.n].first_position
            assert len({e.recorded_at for e in events}) < 50
            await assert_intact(store, 50)

    @pytest.mark.asyncio
    async def test_aclose_waits_for_appends_in_flight(self, store_factory: StoreFactory) -> None:
        store = await store_factory().open()
        tasks = [asyncio.create_task(store.append("s", [Ping(n=i)])) for i in range(10)]
        await asyncio.sleep(0)  # every task has queued its append
        await store.aclose()
        results = await asyncio.gather(*tasks)
        assert sorted(r.first_position for r in results) == list(range(1, 11))
        async with store_factory() as reopened:
            await assert_intact(reopened, 10)

    # -- persistence and several stores --------------------------------

    @pytest.mark.asyncio
    async def test_reopened_log_keeps_events_and_chain(self, store_factory: StoreFactory) -> None:
        async with store_factory() as store:
            await store.append("s", [Ping(n=1), Ping(n=2)])
        async with store_factory() as store:
            await assert_intact(store, 2)
            appended = await store.append("s", [Ping(n=3)], expected_version=2)
            assert appended == Appended(3, 3, {"s": 3})
            await assert_intact(store, 3)

    @pytest.mark.asyncio
    async def test_two_stores_on_one_log_both_work(self, store_factory: StoreFactory) -> None:
        async with store_factory(instance_id="one") as one, store_factory(instance_id="two") as two:
            for i in range(3):
                await one.append("s", [Ping(n=2 * i)])
                await two.append("s", [Ping(n=2 * i + 1)])
            for store in (one, two):
                events = await read_all(store)
                assert [e.event.n for e in events] == list(range(6))
                assert [e.instance_id for e in events] == ["one", "two"] * 3
                assert await store.stream_version("s") == 6
                await assert_intact(store, 6)

    # -- unknown events ------------------------------------------------

    @pytest.mark.asyncio
    async def test_unknown_types_are_read_back_verbatim(self, store_factory: StoreFactory) -> None:
        async with store_factory() as writer:
            await writer.append("s", [Ping(n=1), Secret(code="x-1", level=3), Ping(n=2)])

        async with store_factory(EventRegistry([Ping])) as reader:
            events = await read_all(reader)
            assert [e.type for e in events] == ["Ping", "Secret", "Ping"]
            assert events[0].event == Ping(n=1)
            assert events[2].event == Ping(n=2)
            unknown = events[1].event
            assert isinstance(unknown, UnknownEvent)
            assert unknown.type == "Secret"
            assert msgspec.json.decode(unknown.data) == {"code": "x-1", "level": 3}
            assert "unregistered" in unknown.reason
            # the data survives a round trip through the reader's own encoding
            assert msgspec.json.decode(msgspec.json.encode(unknown)) == {
                "type": "Secret",
                "data": {"code": "x-1", "level": 3},
                "reason": unknown.reason,
            }
            assert [e.position for e in await read_all(reader, types=["Secret"])] == [2]
            await assert_intact(reader, 3)
            # the reader can still append what it knows after the unknown event
            assert (await reader.append("s", [Ping(n=3)], expected_version=3)).last_position == 4

    @pytest.mark.asyncio
    async def test_registered_type_with_mismatched_data_is_unknown(
        self, store_factory: StoreFactory
    ) -> None:
        class Later:
            class Note(Event, frozen=True):
                text: int  # the field changed type since the log was written

        async with store_factory() as writer:
            await writer.append("s", [Note(text="three"), Ping(n=1)])
        async with store_factory(EventRegistry([Later.Note, Ping])) as reader:
            events = await read_all(reader)
        mismatched = events[0].event
        assert isinstance(mismatched, UnknownEvent)
        assert mismatched.type == "Note"
        assert msgspec.json.decode(mismatched.data) == {"text": "three"}
        assert "does not match Note" in mismatched.reason
        assert events[1].event == Ping(n=1)

    # -- reads ---------------------------------------------------------

    @pytest.mark.asyncio
    async def test_read_filters_by_position_type_stream_and_limit(self, store: EventStore) -> None:
        await store.append("a", [Ping(n=1), Note(text="2"), Ping(n=3)])
        await store.append("b", [Note(text="4"), Secret(code="5"), Ping(n=6)])
        await store.append("a", [Note(text="7")])

        assert await positions(store) == [1, 2, 3, 4, 5, 6, 7]
        assert await positions(store, after=2) == [3, 4, 5, 6, 7]
        assert await positions(store, until=3) == [1, 2, 3]
        assert await positions(store, after=2, until=5) == [3, 4, 5]
        assert await positions(store, after=7) == []
        assert await positions(store, types=["Note"]) == [2, 4, 7]
        assert await positions(store, types={"Note", "Secret"}) == [2, 4, 5, 7]
        assert await positions(store, types=[]) == []
        assert await positions(store, types=["NoSuchType"]) == []
        assert await positions(store, stream="b") == [4, 5, 6]
        assert await positions(store, stream="zzz") == []
        assert await positions(store, stream="a", types=["Note"]) == [2, 7]
        assert await positions(store, limit=2) == [1, 2]
        assert await positions(store, limit=0) == []
        assert await positions(store, types=["Ping"], after=1, limit=1) == [3]
        assert await positions(store, stream="a", after=1, until=6) == [2, 3]

    @pytest.mark.asyncio
    async def test_read_filters_by_recorded_time(self, store_factory: StoreFactory) -> None:
        clock = StepClock()
        async with store_factory(clock=clock) as store:
            for i in range(5):
                clock.now = T0 + timedelta(minutes=i)
                await store.append("s", [Ping(n=i)])
            at = [T0 + timedelta(minutes=i) for i in range(5)]
            assert [e.recorded_at for e in await read_all(store)] == at
            assert await positions(store, since=at[1]) == [2, 3, 4, 5]
            assert await positions(store, before=at[1]) == [1]
            assert await positions(store, since=at[1], before=at[3]) == [2, 3]
            assert await positions(store, since=at[1] + timedelta(microseconds=1)) == [3, 4, 5]
            assert await positions(store, since=at[4] + timedelta(seconds=1)) == []
            # any time zone is compared as the instant it denotes
            plus_two = timezone(timedelta(hours=2))
            assert await positions(store, since=at[2].astimezone(plus_two)) == [3, 4, 5]
            assert await positions(store, since=at[1], stream="s", types=["Ping"], limit=2) == [
                2,
                3,
            ]
            with pytest.raises(ValueError, match="timezone"):
                await read_all(store, since=datetime(2026, 1, 1))

    @pytest.mark.asyncio
    async def test_reads_page_across_page_boundaries(self, store: EventStore) -> None:
        store.page_size = 3
        await store.append("a", [Ping(n=i) for i in range(1, 11)])
        await store.append("b", [Note(text=str(i)) for i in range(11, 15)])
        assert await positions(store) == list(range(1, 15))
        pages = [[row[0] for row in page] async for page in store.read_raw()]
        assert pages == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12], [13, 14]]
        assert await positions(store, limit=7) == [1, 2, 3, 4, 5, 6, 7]
        assert await positions(store, after=2, until=9) == [3, 4, 5, 6, 7, 8, 9]
        assert await positions(store, stream="b") == [11, 12, 13, 14]
        assert await positions(store, types=["Note"], limit=4) == [11, 12, 13, 14]
        assert await positions(store, stream="a", after=8) == [9, 10]
        await assert_intact(store, 14)

    @pytest.mark.asyncio
    async def test_read_encoded_gives_the_rows_with_their_data_as_utf8(
            self, store: EventStore) -> None:
        store.page_size = 2
        await store.append("a", [Ping(n=1), Note(text="naïve ✓")])
        await store.append("b", [Ping(n=3)])
        raw = [row async for page in store.read_raw() for row in page]
        encoded = [row async for page in store.read_encoded() for row in page]
        assert encoded == [(*row[:6], row[6].encode(), row[8]) for row in raw]
        assert all(isinstance(row[6], bytes) for row in encoded)
        pages = [[row[0] for row in page]
                 async for page in store.read_encoded(after=1, until=3, types=["Ping"])]
        assert pages == [[3]]

    @pytest.mark.asyncio
    async def test_large_log_is_read_in_bounded_pages(self, store: EventStore) -> None:
        total = 3000
        for start in range(0, total, 1000):
            await store.append("bulk", [Ping(n=i) for i in range(start, start + 1000)])
        store.page_size = 128
        expected_position = 1
        pages = 0
        async for page in store.read_raw():
            assert 0 < len(page) <= 128
            assert [row[0] for row in page] == list(
                range(expected_position, expected_position + len(page))
            )
            expected_position += len(page)
            pages += 1
        assert (expected_position - 1, pages) == (total, -(-total // 128))
        count = 0
        async for event in store.read(types=["Ping"]):
            count += 1
            assert event.event == Ping(n=event.position - 1)
        assert count == total
        await assert_intact(store, total)

    # -- follow --------------------------------------------------------

    @pytest.mark.asyncio
    async def test_follow_yields_existing_then_new_events_promptly(self, store: EventStore) -> None:
        await store.append("s", [Ping(n=1), Ping(n=2)])
        # a long poll interval: only the in-process wake-up can be this quick
        async with following(store, poll_interval=60) as received:
            assert [e.position for e in await next_events(received, 2, within=10)] == [1, 2]
            await asyncio.sleep(0.05)
            assert received.empty()
            for n in (3, 4):
                await store.append("s", [Ping(n=n)])
                (event,) = await next_events(received, 1, within=2)
                assert (event.position, event.event) == (n, Ping(n=n))
            await store.append_streams([StreamBatch("t", (Ping(n=5), Ping(n=6)))])
            assert [e.position for e in await next_events(received, 2, within=2)] == [5, 6]

    @pytest.mark.asyncio
    async def test_closing_the_store_ends_a_waiting_follower(
            self, store_factory: StoreFactory) -> None:
        store = store_factory(instance_id="closer")
        await store.open()
        await store.append("s", [Ping(n=1)])
        seen: list[int] = []

        async def follow() -> None:
            async for event in store.follow(poll_interval=60):
                seen.append(event.position)  # noqa: PERF401 - seen while it follows

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0.1)  # it has read event 1 and waits for more
        await store.aclose()
        # Woken at once, not after its 60 s poll: the store is gone.
        async with asyncio.timeout(5):
            with pytest.raises(StoreClosedError):
                await follower
        assert seen == [1]

    @pytest.mark.asyncio
    async def test_follow_stops_when_its_task_is_cancelled(self, store: EventStore) -> None:
        await store.append("s", [Ping(n=1)])
        seen: asyncio.Queue[int] = asyncio.Queue()

        async def consume() -> None:
            async for event in store.follow(poll_interval=60):
                seen.put_nowait(event.position)

        consumer = asyncio.create_task(consume())
        async with asyncio.timeout(5):
            assert await seen.get() == 1
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        assert consumer.cancelled()
        await store.append("s", [Ping(n=2)])
        await asyncio.sleep(0.05)
        assert seen.empty()

    @pytest.mark.asyncio
    async def test_follow_filters_and_starts_after_a_position(self, store: EventStore) -> None:
        await store.append("a", [Ping(n=1), Note(text="2")])
        await store.append("b", [Note(text="3")])
        seen: list[int] = []
        async with closing_follow(
            store.follow(after=2, types=["Note"], poll_interval=60)
        ) as events:
            async for event in events:
                seen.append(event.position)
                if event.position == 3:
                    await store.append("a", [Ping(n=4), Note(text="5")])
                    await store.append("b", [Note(text="6")])
                if event.position == 6:
                    break
        assert seen == [3, 5, 6]
        async with closing_follow(store.follow(stream="a", poll_interval=60)) as events:
            assert [(await anext(events)).position for _ in range(3)] == [1, 2, 4]

    @pytest.mark.asyncio
    async def test_follow_stops_when_the_consumer_breaks(self, store: EventStore) -> None:
        await store.append("s", [Ping(n=i) for i in range(5)])
        seen: list[int] = []
        async for event in store.follow(poll_interval=60):
            seen.append(event.position)
            if len(seen) == 3:
                break
        assert seen == [1, 2, 3]
        # the store is unaffected by the abandoned follower
        assert (await store.append("s", [Ping(n=5)])).last_position == 6

    @pytest.mark.asyncio
    async def test_follow_sees_another_store_within_the_poll_interval(
        self, store: EventStore, store_factory: StoreFactory
    ) -> None:
        loop = asyncio.get_running_loop()
        async with store_factory() as other, following(store, poll_interval=0.1) as received:
            for n in range(3):
                await asyncio.sleep(0.15)  # the follower is idle, waiting for its next poll
                await other.append("s", [Ping(n=n)])
                appended_at = loop.time()
                (event,) = await next_events(received, 1, within=5)
                assert (event.position, event.event) == (n + 1, Ping(n=n))
                # nothing wakes the follower but its poll; allow for a slow machine
                assert loop.time() - appended_at < 1.0

    # -- hash chain ----------------------------------------------------

    @pytest.mark.asyncio
    async def test_verify_while_appends_are_committed(self, store: EventStore) -> None:
        store.page_size = 16
        await store.append("s", [Ping(n=i) for i in range(200)])
        stop = asyncio.Event()

        async def keep_appending() -> int:
            count = 0
            while not stop.is_set():
                await store.append("t", [Ping(n=count)])
                count += 1
            return count

        writer = asyncio.create_task(keep_appending())
        try:
            reports = [await store.verify() for _ in range(5)]
        finally:
            stop.set()
            appended = await writer
        assert [r.problem for r in reports] == [None] * 5
        assert all(r.events_checked >= 200 for r in reports)
        await assert_intact(store, 200 + appended)

    async def _six_events(self, store: EventStore) -> None:
        await store.append("a", [Ping(n=1), Ping(n=2)])
        await store.append("b", [Note(text="3"), Ping(n=4)])
        await store.append("a", [Ping(n=5), Note(text="6")])
        await assert_intact(store, 6)

    @pytest.mark.asyncio
    async def test_verify_names_an_edited_row(
        self, store: EventStore, tamperer: LogTamperer
    ) -> None:
        await self._six_events(store)
        await tamperer.set_data(4, '{"n":40}')
        report = await store.verify()
        assert report.problem is not None
        assert report.problem.position == 4
        assert "edited" in report.problem.reason
        assert (report.ok, report.events_checked) == (False, 3)
        # reading still works and shows the forged content
        assert (await read_all(store))[3].event == Ping(n=40)

    @pytest.mark.asyncio
    async def test_verify_names_the_row_after_a_rehashed_edit(
        self, store: EventStore, tamperer: LogTamperer
    ) -> None:
        await self._six_events(store)
        await tamperer.set_data(3, '{"text":"forged"}', rehash=True)
        report = await store.verify()
        assert report.problem is not None
        # row 3 is self-consistent now, but row 4 was chained onto its old hash
        assert report.problem.position == 4
        assert (report.ok, report.events_checked) == (False, 3)

    @pytest.mark.asyncio
    async def test_rehashed_last_row_disagrees_with_the_head(
        self, store: EventStore, tamperer: LogTamperer
    ) -> None:
        await self._six_events(store)
        await tamperer.set_data(6, '{"text":"forged"}', rehash=True)
        report = await store.verify()
        assert report.problem is not None
        assert report.problem.position == 6
        assert "head" in report.problem.reason
        with pytest.raises(LogCorruptedError) as caught:
            await store.append("a", [Ping(n=7)])
        assert caught.value.position == 6
        assert await store.last_position() == 6

    @pytest.mark.asyncio
    async def test_rows_written_behind_the_stores_back_are_reported(
        self, store: EventStore, tamperer: LogTamperer
    ) -> None:
        await self._six_events(store)
        assert await tamperer.insert_after_head("a", "Ping", '{"n":7}') == 7
        report = await store.verify()
        assert report.problem is not None
        assert report.problem.position == 7
        assert "beyond the recorded head" in report.problem.reason
        with pytest.raises(LogCorruptedError) as caught:
            await store.append("a", [Ping(n=8)])
        assert caught.value.position == 7
        assert await store.last_position() == 7

    @pytest.mark.asyncio
    async def test_verify_names_a_deleted_row(
        self, store: EventStore, tamperer: LogTamperer
    ) -> None:
        await self._six_events(store)
        await tamperer.delete(3)
        report = await store.verify()
        assert report.problem is not None
        assert report.problem.position == 3
        assert "missing" in report.problem.reason
        assert (report.ok, report.events_checked) == (False, 2)

    @pytest.mark.asyncio
    async def test_verify_names_the_first_deleted_row(
        self, store: EventStore, tamperer: LogTamperer
    ) -> None:
        await self._six_events(store)
        await tamperer.delete(1, 2)
        report = await store.verify()
        assert report.problem is not None
        assert report.problem.position == 1
        assert "1..2" in report.problem.reason

    @pytest.mark.asyncio
    async def test_verify_names_swapped_rows(
        self, store: EventStore, tamperer: LogTamperer
    ) -> None:
        await self._six_events(store)
        await tamperer.swap(2, 5)
        assert [e.event.n for e in await read_all(store, types=["Ping"])] == [1, 5, 4, 2]
        report = await store.verify()
        assert report.problem is not None
        assert report.problem.position == 2
        assert (report.ok, report.events_checked) == (False, 1)

    @pytest.mark.asyncio
    async def test_truncated_tail_is_reported_and_refuses_appends(
        self, store: EventStore, tamperer: LogTamperer, store_factory: StoreFactory
    ) -> None:
        await self._six_events(store)
        await tamperer.delete(5, 6)
        report = await store.verify()
        assert report.problem is not None
        assert report.problem.position == 5
        assert "truncated" in report.problem.reason
        assert (report.events_checked, report.last_position, report.head_position) == (4, 4, 6)

        with pytest.raises(LogCorruptedError) as caught:
            await store.append("a", [Ping(n=7)])
        assert caught.value.position == 5
        assert "position 5" in str(caught.value)
        # nothing was chained onto the cut log, by this store or a fresh one
        async with store_factory() as fresh:
            with pytest.raises(LogCorruptedError):
                await fresh.append("c", [Ping(n=8)], expected_version=NO_STREAM)
        assert await positions(store) == [1, 2, 3, 4]
        assert await store.stream_version("c") == 0

    # -- the store's clock ---------------------------------------------

    @pytest.mark.asyncio
    async def test_recorded_at_never_runs_backwards_against_position(
        self, store_factory: StoreFactory
    ) -> None:
        # One clock that goes backwards, and a second writer whose clock is behind.
        late = StepClock(T0 + timedelta(minutes=10), step=timedelta(minutes=-1))
        behind = StepClock(T0)
        async with store_factory(clock=late) as ahead, store_factory(clock=behind) as lagging:
            await ahead.append("s", [Ping(n=1)])
            await ahead.append("s", [Ping(n=2)])
            await lagging.append("s", [Ping(n=3)])
            await ahead.append("s", [Ping(n=4)])
            behind.now = T0 + timedelta(hours=1)
            await lagging.append("s", [Ping(n=5)])
            events = await read_all(ahead)
        stamps = [e.recorded_at for e in events]
        assert stamps == [T0 + timedelta(minutes=10)] * 4 + [T0 + timedelta(hours=1)]
        assert stamps == sorted(stamps)

    @pytest.mark.asyncio
    async def test_recorded_at_is_read_once_the_write_lock_is_held(
        self, store_factory: StoreFactory, tamperer: LogTamperer
    ) -> None:
        clock = StepClock(T0)
        async with store_factory(clock=clock) as store:
            await store.append("s", [Ping(n=1)])
            assert clock.readings == 1
            async with tamperer.holding_write_lock():
                append = asyncio.create_task(store.append("s", [Ping(n=2)]))
                await asyncio.sleep(0.3)
                # waiting for the lock, and not yet stamped: whoever commits
                # first would otherwise get the later time
                assert not append.done()
                assert clock.readings == 1
                clock.now = T0 + timedelta(seconds=5)
            appended = await append
            assert clock.readings == 2
            (event,) = await read_all(store, after=1)
        assert (appended.last_position, event.recorded_at) == (2, T0 + timedelta(seconds=5))

    @pytest.mark.asyncio
    async def test_now_is_the_clock_but_never_before_the_newest_row(
        self, store_factory: StoreFactory
    ) -> None:
        clock = StepClock(T0)
        async with store_factory(clock=clock) as store:
            assert await store.now() == T0
            clock.now = T0 + timedelta(minutes=5)
            await store.append("s", [Ping(n=1)])
            clock.now = T0
            # an append now would be stamped with the newest row's time
            assert await store.now() == T0 + timedelta(minutes=5)
            clock.now = T0 + timedelta(hours=1)
            now = await store.now()
        assert now == T0 + timedelta(hours=1)
        assert now.utcoffset() == timedelta(0)

    @pytest.mark.asyncio
    async def test_now_is_the_stores_own_clock_without_a_test_clock(
        self, store_factory: StoreFactory
    ) -> None:
        # This host's clock and the database's agree here (the PostgreSQL
        # test server runs on this machine); what matters is the wiring.
        async with store_factory() as store:
            before = datetime.now(UTC) - timedelta(seconds=5)
            now = await store.now()
            await store.append("s", [Ping(n=1)])
            (event,) = await read_all(store)
            after = datetime.now(UTC) + timedelta(seconds=5)
        assert before <= now <= event.recorded_at <= after

    # -- event types ---------------------------------------------------

    @pytest.mark.asyncio
    async def test_event_types_names_each_type_after_a_position(
        self, store_factory: StoreFactory
    ) -> None:
        async with store_factory() as writer:
            assert await writer.event_types() == frozenset()
            await writer.append("a", [Ping(n=1), Ping(n=2), Note(text="3")])
            await writer.append("b", [Secret(code="4"), Ping(n=5)])
        # a reader that knows fewer types learns which ones it is missing
        async with store_factory(EventRegistry([Ping])) as reader:
            types = await reader.event_types()
            assert types == frozenset({"Ping", "Note", "Secret"})
            assert types - reader.registry.names == {"Note", "Secret"}
            assert await reader.event_types(after=3) == frozenset({"Secret", "Ping"})
            assert await reader.event_types(after=4) == frozenset({"Ping"})
            assert await reader.event_types(after=5) == frozenset()

    # -- copying rows from another log ---------------------------------

    @pytest_asyncio.fixture
    async def source_rows(self, tmp_path: Path) -> list[RawRow]:
        """The raw rows of another log: three writers, several streams, times."""
        rows: list[RawRow] = []
        clock = StepClock(T0, step=timedelta(seconds=1))
        async with SQLiteEventStore(tmp_path / "source.db", EventRegistry([Ping, Note, Secret]),
                                    clock=clock, instance_id="source-a") as source:
            await source.append("a", [Ping(n=1), Note(text="dös ✓")])
            await source.append_streams([StreamBatch("b", (Secret(code="x"),)),
                                         StreamBatch("a", (Ping(n=4),), 2)])
            await source.append("c", [Ping(n=i) for i in range(5, 12)])
            async for page in source.read_raw():
                rows.extend(page)
        assert [row[0] for row in rows] == list(range(1, 12))
        return rows

    @pytest.mark.asyncio
    async def test_imported_rows_are_the_source_rows_verbatim(
        self, store_factory: StoreFactory, source_rows: list[RawRow]
    ) -> None:
        async with store_factory(EventRegistry([Ping])) as store:
            first = await store.import_rows(source_rows[:3])
            second = await store.import_rows(source_rows[3:])
            assert await store.import_rows([]) is None
            assert first == Appended(1, 3, {"a": 2, "b": 1})
            assert second == Appended(4, 11, {"a": 3, "c": 7})
            copied = [row async for page in store.read_raw() for row in page]
            assert copied == source_rows
            await assert_intact(store, 11)
            # the log goes on from the copy, chained onto its last hash
            appended = await store.append("a", [Ping(n=12)], expected_version=3)
            assert appended == Appended(12, 12, {"a": 4})
            (row,) = [row async for page in store.read_raw(after=11) for row in page]
            assert row[7] == source_rows[-1][8]
            assert await store.now() >= datetime.fromisoformat(source_rows[-1][4])
            await assert_intact(store, 12)

    @pytest.mark.asyncio
    async def test_a_follower_sees_imported_rows(
        self, store: EventStore, source_rows: list[RawRow]
    ) -> None:
        async with following(store, poll_interval=60) as received:
            await asyncio.sleep(0.05)
            await store.import_rows(source_rows[:2])
            events = await next_events(received, 2, within=5)
        assert [(e.position, e.instance_id, e.hash) for e in events] == [
            (row[0], row[5], row[8]) for row in source_rows[:2]
        ]

    @staticmethod
    def _edited(row: RawRow, column: int, value: object) -> RawRow:
        edited = list(row)
        edited[column] = value
        return cast(RawRow, tuple(edited))

    @pytest.mark.asyncio
    async def test_rows_that_do_not_continue_the_log_are_refused(
        self, store: EventStore, source_rows: list[RawRow]
    ) -> None:
        await store.import_rows(source_rows[:3])
        rest = source_rows[3:]
        refused: list[tuple[list[RawRow], int, str]] = [
            (rest[1:], 4, "expected the row at position 4, got position 5"),
            (source_rows[:2], 4, "expected the row at position 4, got position 1"),
            ([self._edited(rest[0], 7, GENESIS_HASH), *rest[1:]], 4, "prev_hash"),
            ([rest[0], self._edited(rest[1], 6, '{"n":666}'), *rest[2:]], 5, "hash does not"),
            ([rest[0], rest[1], self._edited(rest[2], 2, 9), *rest[3:]], 6, "version 9"),
            ([rest[0], self._edited(rest[1], 4, "2026-01-02 03:04:05"), *rest[2:]], 5,
             "not ISO-8601"),
            ([rest[0], self._edited(rest[1], 1, "c\x00"), *rest[2:]], 5, "NUL"),
            ([rest[0], cast(RawRow, rest[1][:8])], 5, "9 columns"),
        ]
        for rows, position, reason in refused:
            with pytest.raises(ImportRejectedError, match=reason) as caught:
                await store.import_rows(rows)
            assert caught.value.position == position
            assert f"position {position}" in str(caught.value)
            # nothing of a refused call is written, not even its good first rows
            assert await store.last_position() == 3
        await assert_intact(store, 3)
        await store.import_rows(rest)
        await assert_intact(store, 11)

    @pytest.mark.asyncio
    async def test_rows_of_another_log_do_not_import_after_own_events(
        self, store: EventStore, source_rows: list[RawRow]
    ) -> None:
        await store.append("mine", [Ping(n=0)])
        with pytest.raises(ImportRejectedError, match="got position 1") as caught:
            await store.import_rows(source_rows)
        assert caught.value.position == 2
        with pytest.raises(ImportRejectedError, match="prev_hash") as caught:
            await store.import_rows(source_rows[1:])
        assert caught.value.position == 2
        await assert_intact(store, 1)

    @pytest.mark.asyncio
    async def test_import_is_refused_onto_a_log_whose_head_is_wrong(
        self, store: EventStore, tamperer: LogTamperer, source_rows: list[RawRow]
    ) -> None:
        await store.import_rows(source_rows[:4])
        await tamperer.delete(4)
        with pytest.raises(LogCorruptedError) as caught:
            await store.import_rows(source_rows[3:])
        assert caught.value.position == 4

    # -- lifecycle -----------------------------------------------------

    @pytest.mark.asyncio
    async def test_closed_store_raises_store_closed_error(
        self, store_factory: StoreFactory
    ) -> None:
        never_opened = store_factory()
        store = store_factory()
        async with store:
            await store.append("s", [Ping(n=1)])
        await store.aclose()  # closing twice is harmless
        for closed in (store, never_opened):
            with pytest.raises(StoreClosedError):
                await closed.append("s", [Ping(n=2)])
            with pytest.raises(StoreClosedError):
                await closed.append_streams([StreamBatch("s", (Ping(n=2),))])
            with pytest.raises(StoreClosedError):
                await read_all(closed)
            with pytest.raises(StoreClosedError):
                await anext(closed.read_raw())
            with pytest.raises(StoreClosedError):
                await closed.last_position()
            with pytest.raises(StoreClosedError):
                await closed.stream_version("s")
            with pytest.raises(StoreClosedError):
                await closed.verify()
            with pytest.raises(StoreClosedError):
                await closed.now()
            with pytest.raises(StoreClosedError):
                await closed.event_types()
            with pytest.raises(StoreClosedError):
                await closed.import_rows([])
            with pytest.raises(StoreClosedError):
                async with closing_follow(closed.follow()) as events:
                    await anext(events)
        async with store_factory() as reopened:
            await assert_intact(reopened, 1)
