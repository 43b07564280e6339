"""Event store benchmarks against raw SQLite baselines.

    python scripts/bench.py [--quick] [--json-only] [--only FIGURE,...] [--dir DIR]

Prints one JSON object on stdout: every figure with its unit, the baseline it is
compared with, the ratio, the target and whether it passed, plus the machine.
Progress and a summary table go to stderr (none with ``--json-only``). The exit
code is 0 whatever the figures say: this is a measurement, not a test.

Every figure runs in a fresh interpreter (this script with ``--child``) and is
the median of 3 repetitions, the store and its baseline alternating. Events are
a ~360-byte JSON msgspec Struct. Append figures use a fresh file per
repetition; the store and its baselines write with WAL and
``synchronous=FULL`` (the store's durable default), so each commit waits for
fsync. docs/benchmarks.md describes each figure and its baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import msgspec
import uvloop

# Measure this checkout, whatever is installed: an editable install made before
# a package gained its __init__.py resolves it as an empty namespace package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eventstore import Event, EventRegistry, SQLiteEventStore, format_timestamp
from projections import ProjectionRunner, StreamsProjection
from scripts.bench_aws import aws_figures
from scripts.bench_engine import engine_figures

REPEATS = 3
BATCH = 1000
RSS_EVENTS = 1_000_000


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


class Progress:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)


@contextmanager
def scratch(base: str | None) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ovi-bench-", dir=base) as name:
        yield Path(name)


def raw_connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    return db


def now_text() -> str:
    return format_timestamp(datetime.now(UTC))


# -- figures ---------------------------------------------------------------

Timed = Callable[[Path], Awaitable[float]]


def settle() -> None:
    """Start each timed run from the same state: the previous run's garbage
    collected and its dirty pages written back (else the kernel flushes them
    during the next run, which then pays for the previous one's writes)."""
    gc.collect()
    os.sync()


class Rates(msgspec.Struct):
    """Rates of the store and of its baseline, repetition by repetition."""

    store: list[float]
    raw: list[float]


async def paired_rates(
    say: Progress, events: int, base: Path, store: Timed, raw: Timed, raw_label: str
) -> Rates:
    """Run the store's workload and its baseline alternately (so a burst of
    load elsewhere hits both alike), each in a fresh directory; ``store`` and
    ``raw`` return elapsed seconds."""
    rates = Rates([], [])
    for rep in range(REPEATS):
        for label, run, into in (("store", store, rates.store), (raw_label, raw, rates.raw)):
            work = base / f"{label.replace(' ', '-')}-{rep}"
            work.mkdir()
            settle()
            seconds = await run(work)
            into.append(events / seconds)
            say(f"  #{rep + 1} {label}: {events / seconds:,.0f} events/s")
            for leftover in work.iterdir():
                leftover.unlink()
            work.rmdir()
    return rates


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


async def raw_aiosqlite_group(work: Path, producers: int, each: int) -> float:
    """The simplest group commit on plain aiosqlite: producers queue rows, one
    flusher writes whatever is queued with executemany + commit."""
    encode = msgspec.json.Encoder().encode
    db = await aiosqlite.connect(work / "raw.db")
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute("PRAGMA synchronous = FULL")
    await db.execute(RAW_SCHEMA)
    await db.commit()
    queue: list[tuple[str, str, asyncio.Future[None]]] = []
    versions: dict[str, int] = {}
    position = 0
    flusher: asyncio.Task[None] | None = None

    async def flush() -> None:
        nonlocal position, queue
        while queue:
            group, queue = queue, []
            recorded_at = now_text()
            rows = []
            for stream, data, _ in group:
                position += 1
                versions[stream] = versions.get(stream, 0) + 1
                rows.append((position, stream, versions[stream], "ResourceSeen", recorded_at,
                             INSTANCE, data, DUMMY_HASH, DUMMY_HASH))
            await db.executemany(RAW_INSERT, rows)
            await db.commit()
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
    elapsed = time.perf_counter() - start
    await db.close()
    return elapsed


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


async def store_rebuild(path: Path, work: Path) -> tuple[int, float]:
    async with (
        SQLiteEventStore(path, registry(), instance_id=INSTANCE) as store,
        ProjectionRunner(store, work / "projections.db", [StreamsProjection()]) as runner,
    ):
        start = time.perf_counter()
        folded = await runner.rebuild()
        return folded, time.perf_counter() - start


def rate_figure(
    rates: Rates,
    *,
    baseline_name: str,
    min_value: float | None = None,
    min_ratio: float | None = None,
    note: str = "",
) -> dict[str, Any]:
    value = statistics.median(rates.store)
    baseline = statistics.median(rates.raw)
    ratio = value / baseline
    passed = (min_value is None or value >= min_value) and (
        min_ratio is None or ratio >= min_ratio
    )
    target: dict[str, float] = {}
    if min_value is not None:
        target["min_value"] = min_value
    if min_ratio is not None:
        target["min_ratio"] = min_ratio
    figure: dict[str, Any] = {
        "unit": "events/s",
        "value": round(value),
        "runs": [round(r) for r in rates.store],
        "baseline": {
            "name": baseline_name,
            "value": round(baseline),
            "runs": [round(r) for r in rates.raw],
        },
        "ratio": round(ratio, 3),
        "target": target,
        "pass": passed,
    }
    if note:
        figure["note"] = note
    return figure


async def rss_read(path: Path) -> dict[str, Any]:
    """Read the whole log; report this process's peak RSS before and after."""
    async with SQLiteEventStore(path, registry(), instance_id=INSTANCE) as store:
        idle_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        count = 0
        start = time.perf_counter()
        async for _ in store.read():
            count += 1
        elapsed = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"events": count, "seconds": elapsed, "idle_kb": idle_kb, "peak_kb": peak_kb}


async def fig_rss(args: argparse.Namespace, say: Progress, base: Path) -> dict[str, Any]:
    path = base / "million.db"
    say(f"memory: building a {RSS_EVENTS:,}-event log")
    built = await in_child(args, "million_log", path)
    if "error" in built:
        return {"unit": "MB", "value": None, "target": {"max_value": 200}, "pass": False,
                "error": built["error"]}
    say(f"  built in {built['seconds']:.1f} s ({built['mb']:,.0f} MB); reading it")
    report = await in_child(args, "rss_read", path)
    if "error" in report:
        return {"unit": "MB", "value": None, "target": {"max_value": 200}, "pass": False,
                "error": report["error"]}
    peak_mb = report["peak_kb"] / 1024
    idle_mb = report["idle_kb"] / 1024
    say(f"  read {report['events']:,} events in {report['seconds']:.1f} s, "
        f"peak RSS {peak_mb:.0f} MB")
    return {
        "unit": "MB",
        "value": round(peak_mb, 1),
        "events": report["events"],
        "read_rate": round(report["events"] / report["seconds"]),
        "baseline": {"name": "peak RSS of the same process once the store is open, before "
                             "reading (imports included)",
                     "value": round(idle_mb, 1)},
        "ratio": round(peak_mb / idle_mb, 3),
        "target": {"max_value": 200},
        "pass": peak_mb < 200 and report["events"] == RSS_EVENTS,
        "build_seconds": round(built["seconds"], 1),
    }


async def in_child(args: argparse.Namespace, task: str, path: Path) -> dict[str, Any]:
    """Run one task of this script in a fresh interpreter: each figure starts
    from a clean heap, not the garbage of the figures before it. The task's
    JSON comes back on the child's stdout; its progress goes to our stderr."""
    flags = [flag for flag, on in (("--quick", args.quick), ("--json-only", args.json_only))
             if on]
    # Argument list is fixed (this interpreter, this script); no shell.
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--child", task, "--path", str(path), *flags,
        stdout=subprocess.PIPE,
    )
    out, _ = await child.communicate()
    if child.returncode != 0:
        return {"error": f"{task} failed with exit code {child.returncode}"}
    result: dict[str, Any] = json.loads(out)
    return result


async def child_task(args: argparse.Namespace) -> dict[str, Any]:
    say = Progress(args.json_only)
    sizes = sizes_for(args.quick)
    path: Path = args.path
    match args.child:
        case "batched_append":
            return await fig_batched(say, path, sizes.batched)
        case "serial_append":
            return await fig_serial(say, path, sizes.serial)
        case "group_commit":
            return await fig_group(say, path, sizes.producers, sizes.each)
        case "read_log":
            await build_log(path, sizes.read, BATCH)
            return {}
        case "read_decode":
            return await fig_read(say, path)
        case "projection_rebuild":
            return await fig_rebuild(say, path.parent, path)
        case "million_log":
            start = time.perf_counter()
            await build_log(path, RSS_EVENTS, 5000)
            seconds = time.perf_counter() - start
            return {"seconds": seconds, "mb": os.stat(path).st_size / 2**20}
        case "rss_read":
            return await rss_read(path)
    raise ValueError(f"unknown task {args.child!r}")


class CpuMeter:
    """How busy the machine was with *other* work during the run: system-wide
    CPU time from /proc/stat minus this process's and its children's. The
    figures are only comparable with a machine that was otherwise idle."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        ticks = os.sysconf("SC_CLK_TCK")
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return 0.0, 0.0, time.monotonic()
        busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4)) / ticks
        own = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            own += usage.ru_utime + usage.ru_stime
        return busy, own, time.monotonic()

    def others_cores(self) -> float:
        """Average number of cores kept busy by other processes."""
        busy0, own0, t0 = self.start
        busy1, own1, t1 = self._sample()
        if t1 <= t0:
            return 0.0
        return round(max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0), 2)


def machine(base: str) -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fs = ""
    try:
        best = ""
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, kind, *_ = line.split()
            if base.startswith(mount) and len(mount) > len(best):
                best, fs = mount, kind
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "cores": os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "scratch_dir": base,
        "scratch_fs": fs,
        "packages": {name: metadata.version(name) for name in ("aiosqlite", "msgspec", "uvloop")},
        "event_loop": "uvloop",
    }


class Sizes(msgspec.Struct, frozen=True):
    batched: int
    serial: int
    producers: int
    each: int
    read: int


async def fig_batched(say: Progress, base: Path, n: int) -> dict[str, Any]:
    say(f"batched append: {n:,} events, {BATCH:,} per append")
    rates = await paired_rates(say, n, base, lambda w: store_batched(w, n),
                               lambda w: raw_batched(w, n), "raw sqlite3")
    return rate_figure(
        rates,
        baseline_name="plain sqlite3: msgspec encode + executemany of 1,000 rows per "
                      "transaction, same schema, WAL, synchronous=FULL, no hash chain",
        min_value=100_000, min_ratio=0.4)


async def fig_serial(say: Progress, base: Path, n: int) -> dict[str, Any]:
    say(f"serial durable single-event appends: {n:,}")
    rates = await paired_rates(say, n, base, lambda w: store_serial(w, n),
                               lambda w: raw_aiosqlite_serial(w, n), "raw aiosqlite")
    return rate_figure(
        rates,
        baseline_name="aiosqlite: execute(INSERT) + commit() per event, same schema, WAL, "
                      "synchronous=FULL",
        min_ratio=0.6)


async def fig_group(say: Progress, base: Path, producers: int, each: int) -> dict[str, Any]:
    total = producers * each
    say(f"group commit: {producers} producers x {each} single-event appends")
    rates = await paired_rates(say, total, base, lambda w: store_group(w, producers, each),
                               lambda w: raw_aiosqlite_group(w, producers, each), "raw aiosqlite")
    return rate_figure(
        rates,
        baseline_name="aiosqlite: one flusher task, executemany + commit of whatever is "
                      "queued, same schema, WAL, synchronous=FULL, no hash chain",
        min_value=20_000, note="ratio is informational; the target is absolute")


async def fig_read(say: Progress, log: Path) -> dict[str, Any]:
    rates = Rates([], [])
    for rep in range(REPEATS):
        settle()
        count, seconds = await store_read(log)
        rates.store.append(count / seconds)
        settle()
        raw_count, raw_seconds = raw_read(log)
        rates.raw.append(raw_count / raw_seconds)
        say(f"  #{rep + 1}: store {count / seconds:,.0f} events/s, "
            f"raw {raw_count / raw_seconds:,.0f} events/s")
    return rate_figure(
        rates,
        baseline_name="plain sqlite3: keyset pages of 1,000 rows (the 8 columns a "
                      "RecordedEvent carries) + msgspec typed decode of data",
        min_value=300_000, min_ratio=0.4)


async def fig_rebuild(say: Progress, base: Path, log: Path) -> dict[str, Any]:
    say("projection rebuild (StreamsProjection via ProjectionRunner.rebuild)")
    rates = Rates([], [])
    for rep in range(REPEATS):
        work = base / f"rebuild-{rep}"
        work.mkdir()
        settle()
        count, seconds = await store_rebuild(log, work)
        rates.store.append(count / seconds)
        settle()
        raw_count, raw_seconds = raw_read(log)
        rates.raw.append(raw_count / raw_seconds)
        say(f"  #{rep + 1}: {count:,} events in {seconds:.2f} s, {count / seconds:,.0f} "
            f"events/s; raw read {raw_count / raw_seconds:,.0f} events/s")
    return rate_figure(
        rates,
        baseline_name="the raw read + decode baseline (plain sqlite3 pages + msgspec decode), "
                      "run alternately with the rebuilds",
        min_value=200_000)


def sizes_for(quick: bool) -> Sizes:
    if quick:
        return Sizes(batched=50_000, serial=500, producers=50, each=100, read=100_000)
    return Sizes(batched=200_000, serial=2_000, producers=50, each=400, read=300_000)


FIGURES = ("batched_append", "serial_append", "group_commit", "read_decode",
           "projection_rebuild", "read_1m_peak_rss")
# Groups of figures measured by sibling modules: reconcile cycles and execution
# (fake provider), the AWS provider against moto, and the replay tool.
GROUPS = ("engine", "aws", "replay")


async def run(args: argparse.Namespace, host: dict[str, Any]) -> dict[str, Any]:
    say = Progress(args.json_only)
    sizes = sizes_for(args.quick)
    only = set(args.only.split(",")) if args.only else {*FIGURES, *GROUPS}
    figures: dict[str, Any] = {}
    started = time.perf_counter()
    meter = CpuMeter()
    with scratch(args.dir) as base:
        for name in FIGURES[:3]:
            if name in only:
                work = base / name
                work.mkdir()
                figures[name] = await in_child(args, name, work)
        if only & {"read_decode", "projection_rebuild"}:
            say(f"read: building a {sizes.read:,}-event log")
            log = base / "read" / "read.db"
            log.parent.mkdir()
            built = await in_child(args, "read_log", log)
            for name in ("read_decode", "projection_rebuild"):
                if name in only:
                    figures[name] = built if "error" in built else await in_child(args, name, log)
        if "read_1m_peak_rss" in only:
            figures["read_1m_peak_rss"] = await fig_rss(args, say, base)
        if "engine" in only:
            settle()  # the earlier groups' big logs must not be written back during it
            say("engine: cycles over 1k/10k/100k resources, 1,000 actions, 1,000 claims")
            (base / "engine").mkdir()
            figures.update(await engine_figures(base / "engine", quick=args.quick))
        if "aws" in only:
            settle()
            say("aws: converging 50 EC2 instances against moto, plan call count")
            (base / "aws").mkdir()
            figures.update(await aws_figures(base / "aws"))
        if "replay" in only:
            settle()
            events = 200_000 if args.quick else 1_000_000
            say(f"replay: log / rebuild / state --at on a {events:,}-event log")
            (base / "replay").mkdir()
            # A small parent of its own: Linux counts a forked child's pre-exec
            # pages in its peak RSS, and this process is large by now.
            done = await anyio.run_process(
                [sys.executable, str(Path(__file__).with_name("bench_replay.py")), "--figures",
                 "--events", str(events), "--dir", str(base / "replay")], check=True)
            figures.update(json.loads(done.stdout))
    for figure in figures.values():
        figure.setdefault("pass", False)

    return {
        "benchmark": "eventstore",
        "command": " ".join(["python", "scripts/bench.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "sizes": msgspec.structs.asdict(sizes),
        "machine": {**host, "busy_cores_other_processes": meter.others_cores()},
        "event": {"type": "ResourceSeen",
                  "json_bytes": len(msgspec.json.encode(make_event(123_456)))},
        "figures": figures,
        "all_targets_met": bool(figures) and all(f["pass"] for f in figures.values()),
        "seconds": round(time.perf_counter() - started, 1),
    }


def describe_target(target: dict[str, float]) -> str:
    words = {"min_value": "≥ {:,g}", "max_value": "≤ {:,g}", "min_ratio": "ratio ≥ {:g}",
             "max_ratio": "ratio ≤ {:g}", "max_events": "≤ {:g} events",
             "max_bytes": "≤ {:g} bytes"}
    return ", ".join(words.get(key, key + " {:g}").format(value)
                     for key, value in target.items())


def summary(report: dict[str, Any]) -> str:
    def number(value: object) -> str:
        if isinstance(value, float) and abs(value) < 1000:
            return f"{value:.4g}"
        return f"{value:,.0f}" if isinstance(value, int | float) else "-"

    lines = [f"{'figure':<30}{'value':>10}{'baseline':>10}{'ratio':>7}  {'target':<26}pass"]
    for name, fig in report["figures"].items():
        base = (fig.get("baseline") or {}).get("value")
        ratio = fig.get("ratio")
        lines.append(f"{name:<30}{number(fig['value']):>10}{number(base):>10}"
                     f"{number(ratio) if ratio is not None else '-':>7}  "
                     f"{describe_target(fig['target']):<26}{'yes' if fig['pass'] else 'NO'}")
    machine_ = report["machine"]
    lines.append(f"all targets met: {report['all_targets_met']} ({report['seconds']} s; "
                 f"other processes kept {machine_['busy_cores_other_processes']} "
                 f"of {machine_['cores']} cores busy)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller workloads")
    parser.add_argument("--json-only", action="store_true", help="no progress on stderr")
    parser.add_argument("--dir", help="scratch directory (default: the system temp dir)")
    parser.add_argument("--only", help="comma-separated figures or groups to run, of: "
                        f"{', '.join((*FIGURES, *GROUPS))}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(uvloop.run(child_task(args))))
        return
    if args.only and (unknown := set(args.only.split(",")) - {*FIGURES, *GROUPS}):
        parser.error(f"--only: unknown figure(s) {', '.join(sorted(unknown))}")
    host = machine(str(Path(args.dir or tempfile.gettempdir()).resolve()))
    report = uvloop.run(run(args, host))
    print(json.dumps(report, indent=2))
    if not args.json_only:
        print(summary(report), file=sys.stderr)


if __name__ == "__main__":
    main()
