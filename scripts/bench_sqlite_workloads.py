"""The sqlite group's workloads: Ovi's SQLite event store and the raw
SQLite baselines it is measured against (``scripts/bench_sqlite.py`` runs
them). Each timed function returns elapsed seconds (and, for reads, the
events it read) and times only the work, not the set-up.

Events are a ~360-byte JSON msgspec Struct. The store and its baselines
write with WAL and ``synchronous=FULL`` (the store's durable default), so
each commit waits for fsync; the baselines keep the store's table (with
``UNIQUE(stream, stream_version)``) but compute no hash chain.
"""

from __future__ import annotations

import asyncio
import resource
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite
import msgspec

from eventstore import Event, EventRegistry, SQLiteEventStore, format_timestamp
from projections import ProjectionRunner, StreamsProjection

BATCH = 1000


class ResourceSeen(Event, frozen=True):
    """A stand-in for a typical observation event (~360 bytes of JSON)."""

    resource_id: str
    provider: str
    region: str
    kind: str
    size: str
    cycle: int
    observed_at: str
    tags: dict[str, str]
    digest: str


def make_event(i: int) -> ResourceSeen:
    return ResourceSeen(
        resource_id=f"i-{i:017x}",
        provider="aws",
        region="eu-west-1",
        kind="ec2_instance",
        size="t3.medium",
        cycle=i // 100,
        observed_at="2026-11-26T06:54:48.123456Z",
        tags={
            "ovi:id": f"web-{i % 97}-{i % 13}",
            "ovi:managed": "true",
            "ovi:owner": "ovi",
            "env": "production",
            "team": "platform-core",
        },
        digest=f"{i * 2654435761:064x}",
    )


def registry() -> EventRegistry:
    return EventRegistry([ResourceSeen])


# The store's events table, for the raw baselines (no triggers, no head row).
RAW_SCHEMA = """
CREATE TABLE events (
    position       INTEGER PRIMARY KEY,
    stream         TEXT    NOT NULL,
    stream_version INTEGER NOT NULL,
    type           TEXT    NOT NULL,
    recorded_at    TEXT    NOT NULL,
    instance_id    TEXT    NOT NULL,
    data           TEXT    NOT NULL,
    prev_hash      TEXT    NOT NULL,
    hash           TEXT    NOT NULL,
    UNIQUE (stream, stream_version)
)"""
RAW_INSERT = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
# The columns a RecordedEvent carries (the store's read skips prev_hash too).
RAW_SELECT = (
    "SELECT position, stream, stream_version, type, recorded_at, instance_id, data, hash"
    " FROM events WHERE position > ? ORDER BY position LIMIT ?"
)
# Baselines write hash columns of the right size but compute no chain.
DUMMY_HASH = "f" * 64
INSTANCE = "bench:1"


def raw_connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    return db


def now_text() -> str:
    return format_timestamp(datetime.now(UTC))


async def store_batched(work: Path, total: int, per_append: int = BATCH) -> float:
    events = [make_event(i) for i in range(total)]
    async with SQLiteEventStore(work / "log.db", registry(), instance_id=INSTANCE) as store:
        start = time.perf_counter()
        for k in range(0, total, per_append):
            await store.append(f"stream-{k // per_append}", events[k:k + per_append],
                               expected_version=0)
        return time.perf_counter() - start


async def raw_batched(work: Path, total: int) -> float:
    events = [make_event(i) for i in range(total)]
    encode = msgspec.json.Encoder().encode
    db = raw_connect(work / "raw.db")
    db.execute(RAW_SCHEMA)
    start = time.perf_counter()
    for k in range(0, total, BATCH):
        stream, recorded_at = f"stream-{k // BATCH}", now_text()
        rows = [
            (k + j + 1, stream, j + 1, "ResourceSeen", recorded_at, INSTANCE,
             encode(event).decode(), DUMMY_HASH, DUMMY_HASH)
            for j, event in enumerate(events[k:k + BATCH])
        ]
        db.execute("BEGIN")
        db.executemany(RAW_INSERT, rows)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


async def store_serial(work: Path, total: int) -> float:
    events = [make_event(i) for i in range(total)]
    async with SQLiteEventStore(work / "log.db", registry(), instance_id=INSTANCE) as store:
        start = time.perf_counter()
        for i, event in enumerate(events):
            await store.append("serial", [event], expected_version=i)
        return time.perf_counter() - start


async def raw_aiosqlite_serial(work: Path, total: int) -> float:
    events = [make_event(i) for i in range(total)]
    encode = msgspec.json.Encoder().encode
    db = await aiosqlite.connect(work / "raw.db")
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute("PRAGMA synchronous = FULL")
    await db.execute(RAW_SCHEMA)
    await db.commit()
    start = time.perf_counter()
    for i, event in enumerate(events):
        await db.execute(RAW_INSERT, (i + 1, "serial", i + 1, "ResourceSeen", now_text(),
                                      INSTANCE, encode(event).decode(), DUMMY_HASH,
                                      DUMMY_HASH))
        await db.commit()
    elapsed = time.perf_counter() - start
    await db.close()
    return elapsed


async def store_group(work: Path, producers: int, each: int) -> float:
    async with SQLiteEventStore(work / "log.db", registry(), instance_id=INSTANCE) as store:

        async def produce(p: int) -> None:
            for i in range(each):
                await store.append(f"producer-{p}", [make_event(p * each + i)],
                                   expected_version=i)

        start = time.perf_counter()
        async with asyncio.TaskGroup() as tasks:
            for p in range(producers):
                tasks.create_task(produce(p))
        return time.perf_counter() - start


RawRowTuple = tuple[int, str, int, str, str, str, str, str, str]


async def raw_group_commit(producers: int, each: int,
                           write: Callable[[list[RawRowTuple]], Awaitable[None]]) -> float:
    """The simplest group commit, on any driver: ``producers`` queue rows and
    one flusher hands whatever is queued to ``write`` (one transaction), then
    wakes their producers; returns the seconds all producers took. The raw
    baseline of the group-commit figures (SQLite and PostgreSQL)."""
    encode = msgspec.json.Encoder().encode
    queue: list[tuple[str, str, asyncio.Future[None]]] = []
    versions: dict[str, int] = {}
    position = 0
    flusher: asyncio.Task[None] | None = None

    async def flush() -> None:
        nonlocal position, queue
        while queue:
            group, queue = queue, []
            recorded_at = now_text()
            rows: list[RawRowTuple] = []
            for stream, data, _ in group:
                position += 1
                versions[stream] = versions.get(stream, 0) + 1
                rows.append((position, stream, versions[stream], "ResourceSeen", recorded_at,
                             INSTANCE, data, DUMMY_HASH, DUMMY_HASH))
            await write(rows)
            for *_, future in group:
                future.set_result(None)

    async def produce(p: int) -> None:
        nonlocal flusher
        loop = asyncio.get_running_loop()
        for i in range(each):
            future: asyncio.Future[None] = loop.create_future()
            queue.append((f"producer-{p}", encode(make_event(p * each + i)).decode(), future))
            if flusher is None or flusher.done():
                flusher = asyncio.create_task(flush())
            await future

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tasks:
        for p in range(producers):
            tasks.create_task(produce(p))
    return time.perf_counter() - start


async def raw_aiosqlite_group(work: Path, producers: int, each: int) -> float:
    """:func:`raw_group_commit` on plain aiosqlite: executemany + commit."""
    db = await aiosqlite.connect(work / "raw.db")
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute("PRAGMA synchronous = FULL")
    await db.execute(RAW_SCHEMA)
    await db.commit()

    async def write(rows: list[RawRowTuple]) -> None:
        await db.executemany(RAW_INSERT, rows)
        await db.commit()

    try:
        return await raw_group_commit(producers, each, write)
    finally:
        await db.close()


async def build_log(path: Path, total: int, per_append: int) -> None:
    async with SQLiteEventStore(path, registry(), instance_id=INSTANCE) as store:
        for k in range(0, total, per_append):
            await store.append(f"stream-{k // per_append}",
                               [make_event(i) for i in range(k, min(total, k + per_append))])


async def store_read(path: Path) -> tuple[int, float]:
    async with SQLiteEventStore(path, registry(), instance_id=INSTANCE) as store:
        count = 0
        start = time.perf_counter()
        async for _ in store.read():
            count += 1
        return count, time.perf_counter() - start


def raw_read(path: Path) -> tuple[int, float]:
    decode = msgspec.json.Decoder(ResourceSeen).decode
    db = raw_connect(path)
    count = 0
    start = time.perf_counter()
    after = 0
    while True:
        rows = db.execute(RAW_SELECT, (after, BATCH)).fetchall()
        if not rows:
            break
        for row in rows:
            decode(row[6])
        count += len(rows)
        after = rows[-1][0]
    elapsed = time.perf_counter() - start
    db.close()
    return count, elapsed


async def raw_aiosqlite_read(path: Path) -> tuple[int, float]:
    """:func:`raw_read` with each page fetched on aiosqlite's thread, as the
    store fetches it: what the thread hop alone costs a read."""
    decode = msgspec.json.Decoder(ResourceSeen).decode
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        count = 0
        start = time.perf_counter()
        after = 0
        while True:
            rows = list(await db.execute_fetchall(RAW_SELECT, (after, BATCH)))
            if not rows:
                break
            for row in rows:
                decode(row[6])
            count += len(rows)
            after = rows[-1][0]
        return count, time.perf_counter() - start
    finally:
        await db.close()


async def store_rebuild(path: Path, work: Path) -> tuple[int, float]:
    async with (
        SQLiteEventStore(path, registry(), instance_id=INSTANCE) as store,
        ProjectionRunner(store, work / "projections.db", [StreamsProjection()]) as runner,
    ):
        start = time.perf_counter()
        folded = await runner.rebuild()
        return folded, time.perf_counter() - start


class RssRead(msgspec.Struct, frozen=True):
    """A whole read of a log and this process's peak RSS before and after it."""

    events: int
    seconds: float
    idle_kb: int
    peak_kb: int


async def rss_read(path: Path) -> RssRead:
    """Read the whole log; report this process's peak RSS before and after."""
    async with SQLiteEventStore(path, registry(), instance_id=INSTANCE) as store:
        idle_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        count = 0
        start = time.perf_counter()
        async for _ in store.read():
            count += 1
        elapsed = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return RssRead(events=count, seconds=elapsed, idle_kb=idle_kb, peak_kb=peak_kb)
