"""Hostile review of ``replay copy`` (issue 12): what a copy must never do.

Tests marked ``xfail(strict=True)`` are problems found and not fixed yet; the
reason says what happens instead.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import anyio
import asyncpg
import pytest

from eventstore import SQLiteEventStore, StreamBatch
from eventstore._copy import COPY_BATCH
from ovi.events import CycleStarted, registry
from ovi.model import CycleMode
from tests.postgres import PostgresSchema, quote_ident, with_search_path
from tests.replay.support import replay

pytestmark = pytest.mark.asyncio


async def run(*args: str) -> tuple[int, str, str]:
    done = await anyio.to_thread.run_sync(partial(replay, *args))
    return done.returncode, done.stdout, done.stderr


async def write_log(path: Path, events: int, tag: str) -> None:
    """A SQLite log of ``events`` cycle starts (cheap rows, many of them)."""
    started = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    async with SQLiteEventStore(path, registry()) as store:
        for first in range(0, events, 5_000):
            await store.append_streams(
                StreamBatch(f"cycle/{tag}-{n}", (CycleStarted(
                    cycle_id=f"{tag}-{n}", mode=CycleMode.PLAN, config_hash=tag,
                    started_at=started),))
                for n in range(first, min(events, first + 5_000)))


def rows(path: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT * FROM events ORDER BY position").fetchall()


async def pg_rows(schema: PostgresSchema) -> list[tuple[object, ...]]:
    conn = await schema.connect()
    try:
        found = await conn.fetch("SELECT * FROM events ORDER BY position")
    finally:
        await conn.close()
    return [tuple(r) for r in found]


def edit_row(path: Path, position: int) -> None:
    """Change one row's data in place, its hash left as it was."""
    with closing(sqlite3.connect(path)) as db:
        db.execute("DROP TRIGGER events_append_only_update")
        db.execute("UPDATE events SET data = replace(data, 'plan', 'apply') WHERE position = ?",
                   (position,))
        db.commit()


async def test_a_copy_that_fails_on_a_bad_row_leaves_nothing_behind(
    postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    source = tmp_path / "source.db"
    bad = COPY_BATCH + 345
    await write_log(source, COPY_BATCH + 1_000, "a")
    edit_row(source, bad)
    code, out, err = await run("copy", "--from", str(source), "--to", postgres_schema.dsn)
    assert code == 1 and out == ""
    assert f"position {bad}" in err and "Traceback" not in err
    assert await pg_rows(postgres_schema) == []


async def test_two_copies_racing_into_one_empty_log_leave_exactly_one_of_them(
    postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    """Held: the loser fails and nothing of it is mixed into the winner."""
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    await write_log(a, COPY_BATCH + 500, "a")
    await write_log(b, COPY_BATCH + 500, "b")
    codes: dict[str, int] = {}

    async def copy(path: Path) -> None:
        codes[path.name] = (await run("copy", "--from", str(path),
                                      "--to", postgres_schema.dsn))[0]

    async with anyio.create_task_group() as group:
        group.start_soon(copy, a)
        group.start_soon(copy, b)
    assert sorted(codes.values()) == [0, 1]
    winner = a if codes["a.db"] == 0 else b
    assert [tuple(r) for r in await pg_rows(postgres_schema)] == rows(winner)


async def test_copy_to_a_missing_schema_creates_it(
    postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    source = tmp_path / "source.db"
    await write_log(source, 10, "a")
    missing = PostgresSchema(postgres_schema.server_dsn, f"{postgres_schema.name}_new")
    target = with_search_path(missing.server_dsn, missing.name)
    try:
        code, _, err = await run("copy", "--from", str(source), "--to", target)
        assert code == 0, err
        assert [tuple(r) for r in await pg_rows(missing)] == rows(source)
    finally:
        conn = await asyncpg.connect(missing.server_dsn)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(missing.name)} CASCADE")
        finally:
            await conn.close()
