"""A shared PostgreSQL log read through each host's SQLite mirror."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from eventstore import (
    EventStore,
    MirroredStore,
    MirrorMismatchError,
    SQLiteEventStore,
    WrongExpectedVersion,
    store_for,
)
from eventstore.postgres import PostgresEventStore
from tests.eventstore.contract import (
    following,
    next_events,
    read_all,
)
from tests.eventstore.sample_events import Note, Ping, sample_registry
from tests.postgres import PostgresSchema

pytestmark = pytest.mark.asyncio


def host(schema: PostgresSchema, mirror: Path, name: str = "host-a:1") -> MirroredStore:
    shared = PostgresEventStore(schema.server_dsn, sample_registry(), schema=schema.name,
                                instance_id=name)
    return MirroredStore(shared, SQLiteEventStore(mirror, sample_registry(), instance_id=name))


async def raw_rows(store: EventStore) -> list[tuple[object, ...]]:
    return [row async for page in store.read_raw() for row in page]


async def test_every_host_mirrors_the_shared_log_with_the_same_positions_and_hashes(
    postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    async with host(postgres_schema, tmp_path / "a.db", "host-a:1") as a, \
            host(postgres_schema, tmp_path / "b.db", "host-b:1") as b:
        await a.append("orders-1", [Ping(n=1), Note(text="from a")])
        await b.append("orders-1", [Ping(n=2)], expected_version=2)
        # A writer reads its own write at once; the other host once it looks.
        assert [e.position for e in await read_all(b)] == [1, 2, 3]
        assert await a.last_position() == 3
        with pytest.raises(WrongExpectedVersion):
            await a.append("orders-1", [Ping(n=3)], expected_version=2)
        shared = await raw_rows(a.shared)
        assert await raw_rows(a.mirror) == shared == await raw_rows(b.mirror)
        assert (await a.verify()).ok and (await b.verify()).ok
    # The mirror is a plain SQLite log: it reads with no server at hand.
    async with SQLiteEventStore(tmp_path / "a.db", sample_registry()) as offline:
        assert await raw_rows(offline) == shared


async def test_a_mirror_that_disagrees_with_the_shared_log_is_an_error_naming_the_position(
    postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    async with host(postgres_schema, tmp_path / "a.db") as a:
        await a.append("orders-1", [Ping(n=1), Ping(n=2)])
    # The same positions, other content: a mirror of another log.
    async with SQLiteEventStore(tmp_path / "other.db", sample_registry()) as other:
        await other.append("orders-1", [Ping(n=1), Ping(n=99)])
    with pytest.raises(MirrorMismatchError, match=r"^position 2: hash .* but .*") as caught:
        await host(postgres_schema, tmp_path / "other.db").open()
    assert caught.value.position == 2
    # Nothing was copied over the difference.
    with closing(sqlite3.connect(tmp_path / "other.db")) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 2


async def test_a_mirror_ahead_of_the_shared_log_is_an_error_naming_the_position(
    postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    async with host(postgres_schema, tmp_path / "a.db") as a:
        await a.append("orders-1", [Ping(n=1), Ping(n=2), Ping(n=3)])
    # The shared log restored from an older backup: two rows, one a copy of the old.
    async with SQLiteEventStore(tmp_path / "a.db", sample_registry()) as mirror:
        rows = [row async for page in mirror.read_raw(until=2) for row in page]
    fresh = PostgresSchema(postgres_schema.server_dsn, postgres_schema.name)
    async with PostgresEventStore(fresh.server_dsn, sample_registry(), schema=fresh.name) as pg:
        conn = await fresh.connect()
        try:
            await conn.execute("ALTER TABLE events DISABLE TRIGGER USER")
            await conn.execute("DELETE FROM events WHERE position = 3")
            await conn.execute("UPDATE log_head SET position = 2, hash = $1", rows[1][8])
        finally:
            await conn.close()
        assert await pg.last_position() == 2
    with pytest.raises(MirrorMismatchError, match="ends at 2") as caught:
        await host(postgres_schema, tmp_path / "a.db").open()
    assert caught.value.position == 3


async def test_a_follower_on_one_host_wakes_when_another_host_appends(
    postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    async with host(postgres_schema, tmp_path / "a.db", "host-a:1") as a, \
            host(postgres_schema, tmp_path / "b.db", "host-b:1") as b, \
            following(b, poll_interval=30) as received:
        await a.append("orders-1", [Ping(n=1)])
        # Woken by NOTIFY: the 30 s poll never comes into it.
        (event,) = await next_events(received, 1, within=5)
        assert event.position == 1 and event.instance_id == "host-a:1"


async def test_store_for_gives_a_mirrored_store_for_a_url_and_a_mirror(
    postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    store = store_for(postgres_schema.dsn, sample_registry(), mirror=tmp_path / "m.db")
    assert isinstance(store, MirroredStore)
    async with store:
        await store.append("s", [Ping(n=1)])
        assert str(tmp_path / "m.db") in store.location
        # The store's clock is the server's, as the shared log records it.
        assert (await store.now()) >= (await read_all(store))[0].recorded_at

