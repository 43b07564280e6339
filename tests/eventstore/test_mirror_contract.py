"""The store contract through a shared log's mirror (``MirroredStore``)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from eventstore import (
    NO_STREAM,
    ChainKeyError,
    EventRegistry,
    EventStore,
    ImportRejectedError,
    LogCorruptedError,
    MirroredStore,
    MirrorMismatchError,
    SQLiteEventStore,
)
from eventstore.postgres import PostgresEventStore
from tests.eventstore.contract import (
    EventStoreContract,
    LogTamperer,
    StoreFactory,
    positions,
    read_all,
)
from tests.eventstore.contract_evidence import FORGED, KEY, OTHER_KEY
from tests.eventstore.sample_events import Note, Ping, sample_registry
from tests.eventstore.test_postgres_store import PostgresTamperer
from tests.postgres import PostgresSchema


class TestMirroredStore(EventStoreContract):
    """The whole store contract through a mirror: every store the factory
    makes is another host (a mirror of its own) on the one shared log."""

    @pytest.fixture
    def store_factory(self, postgres_schema: PostgresSchema, tmp_path: Path) -> StoreFactory:
        made = itertools.count()

        def make(
            registry: EventRegistry | None = None,
            *,
            clock: Callable[[], datetime] | None = None,
            instance_id: str | None = None,
            chain_key: bytes | None = None,
            read_only: bool = False,
        ) -> EventStore:
            registry = registry or sample_registry()
            shared = PostgresEventStore(
                postgres_schema.server_dsn, registry, schema=postgres_schema.name,
                clock=clock, instance_id=instance_id, chain_key=chain_key,
                read_only=read_only)
            mirror = SQLiteEventStore(tmp_path / f"mirror-{next(made)}.db", registry,
                                      instance_id=shared.instance_id, chain_key=chain_key)
            return MirroredStore(shared, mirror)

        return make

    @pytest.fixture
    def tamperer(self, postgres_schema: PostgresSchema) -> LogTamperer:
        return PostgresTamperer(postgres_schema)

    # -- tampering with the shared log, once the mirror copied it ----------
    #
    # ``verify`` walks the shared log on the server, as for PostgreSQL alone.
    # What differs is reading: the mirror holds the rows as they were when
    # copied (each checked then), so a forgery on the server is not read back
    # as if genuine; and a mirror whose newest row the server no longer has
    # stops every copy with MirrorMismatchError naming that position.

    @pytest.mark.asyncio
    async def test_verify_names_an_edited_row(
        self, store: EventStore, tamperer: LogTamperer
    ) -> None:
        await self._six_events(store)
        await tamperer.set_data(4, '{"n":40}')
        report = await store.verify()
        assert report.problem is not None and report.problem.position == 4
        assert "edited" in report.problem.reason
        assert (report.ok, report.events_checked) == (False, 3)
        # the mirror reads the row as it was copied, not the forgery
        assert (await read_all(store))[3].event == Ping(n=4)

    @pytest.mark.asyncio
    async def test_rehashed_last_row_disagrees_with_the_head(
        self, store: EventStore, tamperer: LogTamperer
    ) -> None:
        await self._six_events(store)
        await tamperer.set_data(6, '{"text":"forged"}', rehash=True)
        report = await store.verify()
        assert report.problem is not None and report.problem.position == 6
        assert "head" in report.problem.reason
        with pytest.raises(LogCorruptedError) as caught:
            await store.append("a", [Ping(n=7)])
        assert caught.value.position == 6
        with pytest.raises(MirrorMismatchError) as mismatch:
            await store.last_position()
        assert mismatch.value.position == 6

    @pytest.mark.asyncio
    async def test_verify_names_swapped_rows(
        self, store: EventStore, tamperer: LogTamperer
    ) -> None:
        await self._six_events(store)
        await tamperer.swap(2, 5)
        assert [e.event.n for e in await read_all(store, types=["Ping"])] == [1, 2, 4, 5]
        report = await store.verify()
        assert report.problem is not None and report.problem.position == 2
        assert (report.ok, report.events_checked) == (False, 1)

    @pytest.mark.asyncio
    async def test_truncated_tail_is_reported_and_refuses_appends(
        self, store: EventStore, tamperer: LogTamperer, store_factory: StoreFactory
    ) -> None:
        await self._six_events(store)
        await tamperer.delete(5, 6)
        report = await store.verify()
        assert report.problem is not None and report.problem.position == 5
        assert "truncated" in report.problem.reason
        assert (report.events_checked, report.last_position, report.head_position) == (4, 4, 6)
        with pytest.raises(LogCorruptedError) as caught:
            await store.append("a", [Ping(n=7)])
        assert caught.value.position == 5
        async with store_factory() as fresh:  # another host, a new mirror
            assert await positions(fresh) == [1, 2, 3, 4]
            with pytest.raises(LogCorruptedError):
                await fresh.append("c", [Ping(n=8)], expected_version=NO_STREAM)
        with pytest.raises(MirrorMismatchError, match="ends at 4") as mismatch:
            await positions(store)
        assert mismatch.value.position == 6

    # -- a keyed shared log ----------------------------------------------

    @pytest.mark.asyncio
    async def test_a_keyed_log_refuses_no_key_for_writing_and_a_wrong_key_always(
        self, store_factory: StoreFactory
    ) -> None:
        """As for one store, except an audit without the key: a mirror checks
        every row it copies, which a keyed log's rows need the key for."""
        async with store_factory(chain_key=KEY) as store:
            await store.append("a", [Ping(n=1)])
        with pytest.raises(ChainKeyError, match=r"keyed .* no chain key was given"):
            await store_factory().open()
        with pytest.raises(ChainKeyError, match="wrong chain key"):
            await store_factory(chain_key=OTHER_KEY).open()
        with pytest.raises(ChainKeyError, match="wrong chain key"):
            await store_factory(chain_key=OTHER_KEY, read_only=True).open()
        with pytest.raises(ChainKeyError, match=r"keyed .* no chain key was given"):
            await store_factory(read_only=True).open()
        async with store_factory(chain_key=KEY, read_only=True) as audit:
            report = await audit.verify()
        assert report.ok and report.keyed and report.hashes_checked

    @pytest.mark.asyncio
    async def test_an_unkeyed_forger_cannot_make_a_keyed_log_verify(
        self, store_factory: StoreFactory, tamperer: LogTamperer
    ) -> None:
        """A new host's mirror checks every row as it copies it: the forgery
        stops the copy at its position, before anything reads it."""
        async with store_factory(chain_key=KEY) as store:
            await store.append("a", [Ping(n=1), Note(text="2"), Ping(n=3)])
            header = (await store.read_header()).encode()
        await tamperer.forge(2, FORGED)
        with pytest.raises(ImportRejectedError) as caught:
            await store_factory(chain_key=KEY, read_only=True).open()
        assert caught.value.position == 2
        await tamperer.forge(2, FORGED, header='{"format":1,"chain":"sha256"}')
        with pytest.raises(ChainKeyError, match="not keyed"):
            await store_factory(chain_key=KEY, read_only=True).open()
        await tamperer.forge(2, FORGED, header=header)
        with pytest.raises(ImportRejectedError) as caught:
            await store_factory(chain_key=KEY, read_only=True).open()
        assert caught.value.position == 1
