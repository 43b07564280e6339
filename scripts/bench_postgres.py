"""The postgres group: appends to the PostgreSQL log (batched, and 50
producers' group commit), the log read back, and a host's mirror catching up
with it, each against a raw-driver baseline.

The server is ``$OVI_BENCH_POSTGRES_DSN`` (else ``$OVI_TEST_POSTGRES_DSN``);
every run works in a schema of its own, dropped afterwards. The log is built
once (``build`` child), then each figure is measured in a fresh interpreter,
the store and its baseline alternating. docs/benchmarks.md describes them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from eventstore import MirroredStore, SQLiteEventStore, format_timestamp
from eventstore.postgres import PostgresEventStore
from eventstore.sqlite_plumbing import BULK_PRAGMAS
from scripts.bench_sqlite_workloads import (
    BATCH,
    INSTANCE,
    RAW_SCHEMA,
    RawRowTuple,
    ResourceSeen,
    make_event,
    raw_group_commit,
    registry,
)
from scripts.benchkit import (
    ChildError,
    Context,
    Detail,
    Figure,
    FigureSpec,
    Target,
    Task,
    Unit,
    Workload,
    alternate,
)

READ = FigureSpec(
    "pg_read_decode", Unit.EVENTS_PER_S, Target(min_value=150_000, min_ratio=0.5),
    baseline="raw asyncpg: keyset pages of 1,000 rows (the 8 columns a RecordedEvent "
             "carries) + msgspec typed decode of data")
CATCH_UP = FigureSpec(
    "mirror_catch_up", Unit.EVENTS_PER_S, Target(min_value=100_000),
    baseline="raw asyncpg pages of 1,000 rows + sqlite3 executemany into the same table, "
             "10,000 rows per transaction, the settings of the store's long copy, no chain check",
    note="an empty mirror copying the whole log (MirroredStore.pull)")


APPEND = FigureSpec(
    "pg_batched_append", Unit.EVENTS_PER_S, Target(min_value=30_000, min_ratio=0.5),
    baseline="raw asyncpg: copy_records_to_table of the same rows, 1,000 per transaction, "
             "into a table of the same columns and unique index, no chain, no head row")
GROUP_COMMIT = FigureSpec(
    "pg_group_commit", Unit.EVENTS_PER_S, Target(min_value=5_000),
    baseline="raw asyncpg: one flusher task copying whatever the 50 producers queued, one "
             "transaction per flush, same table, no chain",
    note="ratio is informational; the target is absolute")
PRODUCERS = 50

_RAW_TABLE = """CREATE TABLE raw_events (
    position BIGINT PRIMARY KEY, stream TEXT COLLATE "C" NOT NULL,
    stream_version BIGINT NOT NULL, type TEXT COLLATE "C" NOT NULL,
    recorded_at TEXT COLLATE "C" NOT NULL, instance_id TEXT NOT NULL, data TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL, UNIQUE (stream, stream_version))"""
_DUMMY_HASH = "0" * 64


def server_dsn() -> str | None:
    return os.environ.get("OVI_BENCH_POSTGRES_DSN") or os.environ.get("OVI_TEST_POSTGRES_DSN")


class At(msgspec.Struct, frozen=True):
    dsn: str
    schema: str
    scratch: str


class Built(msgspec.Struct, frozen=True):
    seconds: float


def events_for(quick: bool) -> int:
    return 50_000 if quick else 200_000


def shared(at: At) -> PostgresEventStore:
    return PostgresEventStore(at.dsn, registry(), schema=at.schema, instance_id=INSTANCE)


def appends_for(quick: bool) -> int:
    return 20_000 if quick else 100_000


async def in_new_schema(at: At, label: str, rep: int,
                        work: Callable[[str], Awaitable[float]]) -> float:
    """``work`` in a schema of its own (so every repetition starts from an
    empty log), dropped afterwards."""
    schema = f"{at.schema}_{label}{rep}"
    conn = await asyncpg.connect(at.dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        try:
            return await work(schema)
        finally:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()


async def store_append(at: At, schema: str, total: int) -> float:
    events = [make_event(i) for i in range(total)]
    async with PostgresEventStore(at.dsn, registry(), schema=schema,
                                  instance_id=INSTANCE) as store:
        start = time.perf_counter()
        for first in range(0, total, BATCH):
            await store.append(f"s-{first // BATCH}", events[first:first + BATCH],
                               expected_version=0)
        return total / (time.perf_counter() - start)


async def raw_append(at: At, schema: str, total: int) -> float:
    encode = msgspec.json.Encoder().encode
    events = [make_event(i) for i in range(total)]
    conn = await asyncpg.connect(at.dsn, server_settings={"search_path": schema})
    try:
        await conn.execute(_RAW_TABLE)
        start = time.perf_counter()
        for first in range(0, total, BATCH):
            stamp = format_timestamp(datetime.now(UTC))
            rows = [(first + j + 1, f"s-{first // BATCH}", j + 1, "ResourceSeen", stamp,
                     INSTANCE, encode(event).decode(), _DUMMY_HASH, _DUMMY_HASH)
                    for j, event in enumerate(events[first:first + BATCH])]
            async with conn.transaction():
                await conn.copy_records_to_table("raw_events", records=rows)
        return total / (time.perf_counter() - start)
    finally:
        await conn.close()


async def store_group(at: At, schema: str, total: int) -> float:
    each = total // PRODUCERS
    async with PostgresEventStore(at.dsn, registry(), schema=schema,
                                  instance_id=INSTANCE) as store:

        async def produce(p: int) -> None:
            for i in range(each):
                await store.append(f"producer-{p}", [make_event(p * each + i)],
                                   expected_version=i)

        start = time.perf_counter()
        async with asyncio.TaskGroup() as tasks:
            for p in range(PRODUCERS):
                tasks.create_task(produce(p))
        return each * PRODUCERS / (time.perf_counter() - start)


async def raw_group(at: At, schema: str, total: int) -> float:
    """:func:`raw_group_commit` on plain asyncpg: one copy per transaction."""
    each = total // PRODUCERS
    conn = await asyncpg.connect(at.dsn, server_settings={"search_path": schema})

    async def write(rows: list[RawRowTuple]) -> None:
        async with conn.transaction():
            await conn.copy_records_to_table("raw_events", records=rows)

    try:
        await conn.execute(_RAW_TABLE)
        return each * PRODUCERS / await raw_group_commit(PRODUCERS, each, write)
    finally:
        await conn.close()


def paired(at: At, total: int, store: Callable[[At, str, int], Awaitable[float]],
           raw: Callable[[At, str, int], Awaitable[float]]) -> list[Workload]:
    return [
        Workload("store", lambda rep: in_new_schema(at, "s", rep, lambda s: store(at, s, total)),
                 "events/s"),
        Workload("raw asyncpg", lambda rep: in_new_schema(
            at, "r", rep, lambda s: raw(at, s, total)), "events/s")]


async def append_task(ctx: Context, at: At) -> Figure:
    total = appends_for(ctx.quick)
    ctx.say(f"PostgreSQL batched append: {total:,} events, {BATCH:,} per append")
    rates, raw_rates = await alternate(ctx.say, paired(at, total, store_append, raw_append))
    return APPEND.from_runs(rates, raw_rates)


async def group_commit_task(ctx: Context, at: At) -> Figure:
    total = 5_000 if ctx.quick else 20_000
    ctx.say(f"PostgreSQL group commit: {PRODUCERS} producers, {total:,} single-event appends")
    rates, raw_rates = await alternate(ctx.say, paired(at, total, store_group, raw_group))
    return GROUP_COMMIT.from_runs(rates, raw_rates)


async def build_task(ctx: Context, at: At) -> Built:
    n = events_for(ctx.quick)
    start = time.perf_counter()
    async with shared(at) as store:
        for first in range(0, n, BATCH):
            await store.append(f"s-{first // BATCH}",
                               [make_event(i) for i in range(first, first + BATCH)])
    return Built(time.perf_counter() - start)


_RAW_SELECT = ("SELECT position, stream, stream_version, type, recorded_at, instance_id, data,"
               " hash FROM events WHERE position > $1 ORDER BY position LIMIT $2")
_RAW_SELECT_ALL = _RAW_SELECT.replace("data,", "data, prev_hash,")


async def raw_read(at: At) -> float:
    decode = msgspec.json.Decoder(ResourceSeen).decode
    conn = await asyncpg.connect(at.dsn, server_settings={"search_path": at.schema})
    try:
        statement = await conn.prepare(_RAW_SELECT)
        count, after = 0, 0
        start = time.perf_counter()
        while rows := await statement.fetch(after, BATCH):
            for row in rows:
                decode(row[6])
            count += len(rows)
            after = rows[-1][0]
        return count / (time.perf_counter() - start)
    finally:
        await conn.close()


async def store_read(at: At) -> float:
    async with shared(at) as store:
        start = time.perf_counter()
        count = 0
        async for _ in store.read():
            count += 1
        return count / (time.perf_counter() - start)


async def read_task(ctx: Context, at: At) -> Figure:
    ctx.say(f"PostgreSQL read + decode: {events_for(ctx.quick):,} events")
    rates, raw_rates = await alternate(ctx.say, [
        Workload("store read", lambda rep: store_read(at), "events/s"),
        Workload("raw asyncpg read", lambda rep: raw_read(at), "events/s")])
    return READ.from_runs(rates, raw_rates)


async def store_catch_up(at: At, rep: int) -> float:
    mirror = Path(at.scratch) / f"mirror-{rep}.db"
    async with shared(at) as pg:
        store = MirroredStore(pg, SQLiteEventStore(mirror, registry(), instance_id=INSTANCE,
                                                   synchronous="NORMAL"))
        # Opening copies: time the open of a store whose mirror is empty.
        start = time.perf_counter()
        await store.open()
        elapsed = time.perf_counter() - start
        count = await store.mirror.last_position()
        await store.aclose()
    _remove(mirror)
    return count / elapsed


async def raw_catch_up(at: At, rep: int) -> float:
    path = Path(at.scratch) / f"raw-{rep}.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    # the settings the store's long copy writes with: the two differ in the work only
    for name, value in BULK_PRAGMAS.items():
        db.execute(f"PRAGMA {name} = {value}")
    db.execute(RAW_SCHEMA)
    conn = await asyncpg.connect(at.dsn, server_settings={"search_path": at.schema})
    try:
        statement = await conn.prepare(_RAW_SELECT_ALL)
        count, after, pending = 0, 0, []
        start = time.perf_counter()
        while rows := await statement.fetch(after, BATCH):
            pending.extend(rows)
            after = rows[-1][0]
            if len(pending) >= 10 * BATCH:
                db.execute("BEGIN")
                db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               [tuple(r) for r in pending])
                db.execute("COMMIT")
                count += len(pending)
                pending = []
        if pending:
            db.execute("BEGIN")
            db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [tuple(r) for r in pending])
            db.execute("COMMIT")
            count += len(pending)
        return count / (time.perf_counter() - start)
    finally:
        await conn.close()
        db.close()
        _remove(path)


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


async def catch_up_task(ctx: Context, at: At) -> Figure:
    ctx.say(f"mirror catch-up: {events_for(ctx.quick):,} events into an empty mirror")
    rates, raw_rates = await alternate(ctx.say, [
        Workload("mirror catch-up", lambda rep: store_catch_up(at, rep), "events/s"),
        Workload("raw copy", lambda rep: raw_catch_up(at, rep), "events/s")])
    return CATCH_UP.from_runs(rates, raw_rates)


TASKS: Mapping[str, Task[Any]] = {
    "build": Task(At, build_task),
    APPEND.name: Task(At, append_task),
    GROUP_COMMIT.name: Task(At, group_commit_task),
    READ.name: Task(At, read_task),
    CATCH_UP.name: Task(At, catch_up_task),
}


async def _drop(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


class PostgresGroup:
    """See the module docstring."""

    name = "postgres"
    specs = (APPEND, GROUP_COMMIT, READ, CATCH_UP)
    tasks = TASKS

    def workload(self, quick: bool) -> dict[str, Detail]:
        return {"events": events_for(quick), "per_append": BATCH,
                "event_json_bytes": len(msgspec.json.encode(make_event(123_456)))}

    async def run(self, ctx: Context) -> list[Figure]:
        wanted = [spec for spec in self.specs if ctx.wants(spec)]
        dsn = server_dsn()
        if dsn is None:
            return [spec.failed("no server: set $OVI_BENCH_POSTGRES_DSN") for spec in wanted]
        at = At(dsn, f"bench_{secrets.token_hex(4)}", str(ctx.scratch))
        try:
            ctx.say(f"postgres: building a {events_for(ctx.quick):,}-event log")
            try:
                built = await ctx.child("build", at, Built)
            except ChildError as exc:
                return [spec.failed(str(exc)) for spec in wanted]
            ctx.say(f"  built in {built.seconds:.1f} s")
            return [await ctx.figure_in_child(spec, at) for spec in wanted]
        finally:
            await _drop(dsn, at.schema)


GROUP = PostgresGroup()
