"""A long copy into a SQLite log (a mirror catching up, ``replay copy``):
written with a bigger page cache and rarer checkpoints, checked as any import,
and the writer's settings given back however the copy ends."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path

import pytest

from eventstore import ImportRejectedError, SQLiteEventStore, StreamBatch
from eventstore._copy import copy_new_rows
from eventstore._store_types import RawRow
from eventstore.sqlite_plumbing import run_in_connection_thread
from tests.eventstore.sample_events import Ping, sample_registry

pytestmark = pytest.mark.asyncio

#: SQLite's defaults, which a service's own appends keep
DEFAULTS = (-2000, 1000)
BULK = (-32768, 10_000)


async def settings(store: SQLiteEventStore) -> tuple[int, int]:
    assert store._writer is not None

    def read(db: sqlite3.Connection) -> tuple[int, int]:
        return (db.execute("PRAGMA cache_size").fetchone()[0],
                db.execute("PRAGMA wal_autocheckpoint").fetchone()[0])

    return await run_in_connection_thread(store._writer, read)


async def filled(path: Path, count: int) -> SQLiteEventStore:
    store = SQLiteEventStore(path, sample_registry(), instance_id="source:1")
    await store.open()
    store.page_size = 50  # pages smaller than the copy's batches, as a mirror's are
    await store.append_streams(StreamBatch(f"s-{i % 7}", (Ping(n=i),)) for i in range(count))
    return store


def watch_imports(store: SQLiteEventStore) -> list[tuple[int, int]]:
    """The writer's settings at each import of ``store``."""
    seen: list[tuple[int, int]] = []
    original: Callable[[list[RawRow]], Awaitable[dict[str, int]]] = store._import_rows

    async def watched(rows: list[RawRow]) -> dict[str, int]:
        seen.append(await settings(store))
        return await original(rows)

    store._import_rows = watched  # type: ignore[method-assign]
    return seen


async def raw(store: SQLiteEventStore) -> list[tuple[object, ...]]:
    return [tuple(row) async for page in store.read_raw() for row in page]


async def test_a_copy_past_one_batch_writes_with_bulk_settings_and_gives_them_back(
    tmp_path: Path
) -> None:
    source = await filled(tmp_path / "source.db", 350)
    try:
        async with SQLiteEventStore(tmp_path / "copy.db", sample_registry()) as target:
            seen = watch_imports(target)
            assert await copy_new_rows(source, target, batch=100) == 350
            # The first batch is written as any pull is; the rest as a long copy.
            assert seen == [DEFAULTS, BULK, BULK, BULK]
            assert await settings(target) == DEFAULTS
            assert await raw(target) == await raw(source)
            assert (await target.verify()).ok
            # A short pull afterwards is no long copy.
            await source.append("s-0", [Ping(n=350)], expected_version=50)
            seen.clear()
            assert await copy_new_rows(source, target, batch=100) == 1
            assert seen == [DEFAULTS]
    finally:
        await source.aclose()


async def test_a_long_copy_refused_midway_keeps_the_batches_before_and_gives_settings_back(
    tmp_path: Path
) -> None:
    source = await filled(tmp_path / "source.db", 350)
    await source.aclose()
    with closing(sqlite3.connect(tmp_path / "source.db")) as db:
        db.execute("DROP TRIGGER events_append_only_update")
        db.execute("""UPDATE events SET data = '{"n":9999}' WHERE position = 250""")
        db.commit()
    async with SQLiteEventStore(tmp_path / "source.db", sample_registry()) as source, \
            SQLiteEventStore(tmp_path / "copy.db", sample_registry()) as target:
        source.page_size = 50
        with pytest.raises(ImportRejectedError, match="hash does not match") as caught:
            await copy_new_rows(source, target, batch=100)
        assert caught.value.position == 250
        # Batches are whole: 201-300 held the edited row, none of it is in.
        assert await target.last_position() == 200
        assert await settings(target) == DEFAULTS
        assert (await target.verify()).ok
