"""The sqlite group: Ovi's SQLite event store against raw SQLite baselines.

Every figure is measured in fresh interpreters (child tasks: the figure's
own, of the same name; for the 1M-event read, one child builds the log and
another reads it). A rate is the median of 3 repetitions with the store and
its baseline alternating, and each append repetition writes a fresh file.
``scripts/bench_sqlite_workloads.py`` holds what is timed; docs/benchmarks.md
describes each figure and its baseline.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from scripts.bench_sqlite_workloads import (
    BATCH,
    RssRead,
    build_log,
    make_event,
    raw_aiosqlite_group,
    raw_aiosqlite_read,
    raw_aiosqlite_serial,
    raw_batched,
    raw_read,
    rss_read,
    store_batched,
    store_group,
    store_read,
    store_rebuild,
    store_serial,
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

RSS_EVENTS = 1_000_000

BATCHED = FigureSpec(
    "batched_append", Unit.EVENTS_PER_S, Target(min_value=100_000, min_ratio=0.9),
    baseline="plain sqlite3: msgspec encode + executemany of 1,000 rows per transaction, "
             "same schema, WAL, synchronous=FULL, no hash chain")
SERIAL = FigureSpec(
    "serial_append", Unit.EVENTS_PER_S, Target(min_ratio=0.6),
    baseline="aiosqlite: execute(INSERT) + commit() per event, same schema, WAL, "
             "synchronous=FULL")
GROUP_COMMIT = FigureSpec(
    "group_commit", Unit.EVENTS_PER_S, Target(min_value=20_000, min_ratio=0.9),
    baseline="aiosqlite: one flusher task, executemany + commit of whatever is queued, "
             "same schema, WAL, synchronous=FULL, no hash chain")
READ = FigureSpec(
    "read_decode", Unit.EVENTS_PER_S, Target(min_value=300_000, min_ratio=0.85),
    baseline="plain sqlite3: keyset pages of 1,000 rows (the 8 columns a RecordedEvent "
             "carries) + msgspec typed decode of data")
REBUILD = FigureSpec(
    "projection_rebuild", Unit.EVENTS_PER_S, Target(min_value=200_000, min_ratio=0.8),
    baseline="the raw read + decode baseline (plain sqlite3 pages + msgspec decode), run "
             "alternately with the rebuilds")
RSS = FigureSpec(
    "read_1m_peak_rss", Unit.MB, Target(max_value=200),
    baseline="peak RSS of the same process once the store is open, before reading "
             "(imports included)")


class Sizes(msgspec.Struct, frozen=True):
    batched: int
    serial: int
    producers: int
    each: int
    read: int


def sizes_for(quick: bool) -> Sizes:
    if quick:
        return Sizes(batched=50_000, serial=500, producers=50, each=100, read=100_000)
    return Sizes(batched=200_000, serial=2_000, producers=50, each=400, read=300_000)


class At(msgspec.Struct, frozen=True):
    """A child task's one parameter: the directory or log it works in."""

    path: str


class Built(msgspec.Struct, frozen=True):
    """A log a child built: how long it took and how big it is."""

    seconds: float
    mb: float


# -- child tasks -----------------------------------------------------------

Timed = Callable[[Path], Awaitable[float]]


def in_fresh_dir(base: Path, label: str, events: int, timed: Timed) -> Workload:
    """``timed`` as a rate, each repetition in a new directory removed after."""

    async def run(rep: int) -> float:
        work = base / f"{label.replace(' ', '-')}-{rep}"
        work.mkdir()
        seconds = await timed(work)
        for leftover in work.iterdir():
            leftover.unlink()
        work.rmdir()
        return events / seconds

    return Workload(label, run, "events/s")


async def paired(ctx: Context, spec: FigureSpec, base: Path, events: int, store: Timed,
                 raw: Timed, raw_label: str) -> Figure:
    store_rates, raw_rates = await alternate(ctx.say, [
        in_fresh_dir(base, "store", events, store),
        in_fresh_dir(base, raw_label, events, raw)])
    return spec.from_runs(store_rates, raw_rates)


async def batched_task(ctx: Context, at: At) -> Figure:
    n = sizes_for(ctx.quick).batched
    ctx.say(f"batched append: {n:,} events, {BATCH:,} per append")
    return await paired(ctx, BATCHED, Path(at.path), n, lambda w: store_batched(w, n),
                        lambda w: raw_batched(w, n), "raw sqlite3")


async def serial_task(ctx: Context, at: At) -> Figure:
    n = sizes_for(ctx.quick).serial
    ctx.say(f"serial durable single-event appends: {n:,}")
    return await paired(ctx, SERIAL, Path(at.path), n, lambda w: store_serial(w, n),
                        lambda w: raw_aiosqlite_serial(w, n), "raw aiosqlite")


async def group_commit_task(ctx: Context, at: At) -> Figure:
    sizes = sizes_for(ctx.quick)
    producers, each = sizes.producers, sizes.each
    ctx.say(f"group commit: {producers} producers x {each} single-event appends")
    return await paired(ctx, GROUP_COMMIT, Path(at.path), producers * each,
                        lambda w: store_group(w, producers, each),
                        lambda w: raw_aiosqlite_group(w, producers, each), "raw aiosqlite")


def raw_read_workload(log: Path) -> Workload:
    async def run(rep: int) -> float:
        count, seconds = raw_read(log)
        return count / seconds

    return Workload("raw read", run, "events/s")


async def read_task(ctx: Context, at: At) -> Figure:
    log = Path(at.path)

    async def read(rep: int) -> float:
        count, seconds = await store_read(log)
        return count / seconds

    async def threaded(rep: int) -> float:
        count, seconds = await raw_aiosqlite_read(log)
        return count / seconds

    # The raw read on aiosqlite's thread is context, not the baseline: it
    # shows what fetching a page on another thread costs by itself (the
    # rows are made on one core and read and freed on another).
    store_rates, raw_rates, threaded_rates = await alternate(ctx.say, [
        Workload("store read", read, "events/s"), raw_read_workload(log),
        Workload("raw read on aiosqlite's thread", threaded, "events/s")])
    threaded_median = statistics.median(threaded_rates)
    return READ.from_runs(store_rates, raw_rates, details={
        "raw_aiosqlite_events_per_s": round(threaded_median),
        "raw_aiosqlite_runs": [round(r) for r in threaded_rates],
        "ratio_to_raw_aiosqlite": round(statistics.median(store_rates) / threaded_median, 3),
        "raw_aiosqlite_to_raw": round(threaded_median / statistics.median(raw_rates), 3)})


async def rebuild_task(ctx: Context, at: At) -> Figure:
    ctx.say("projection rebuild (StreamsProjection via ProjectionRunner.rebuild)")
    log = Path(at.path)

    async def rebuild(rep: int) -> float:
        work = log.parent / f"rebuild-{rep}"
        work.mkdir()
        count, seconds = await store_rebuild(log, work)
        return count / seconds

    rates, raw_rates = await alternate(ctx.say, [
        Workload("rebuild", rebuild, "events/s"), raw_read_workload(log)])
    return REBUILD.from_runs(rates, raw_rates)


async def timed_build(path: Path, events: int, per_append: int) -> Built:
    start = time.perf_counter()
    await build_log(path, events, per_append)
    return Built(seconds=time.perf_counter() - start, mb=os.stat(path).st_size / 2**20)


async def read_log_task(ctx: Context, at: At) -> Built:
    return await timed_build(Path(at.path), sizes_for(ctx.quick).read, BATCH)


async def million_log_task(ctx: Context, at: At) -> Built:
    return await timed_build(Path(at.path), RSS_EVENTS, 5000)


TASKS: Mapping[str, Task[Any]] = {
    BATCHED.name: Task(At, batched_task),
    SERIAL.name: Task(At, serial_task),
    GROUP_COMMIT.name: Task(At, group_commit_task),
    READ.name: Task(At, read_task),
    REBUILD.name: Task(At, rebuild_task),
    "read_log": Task(At, read_log_task),
    "million_log": Task(At, million_log_task),
    "rss_read": Task(At, lambda ctx, at: rss_read(Path(at.path))),
}


# -- the group -------------------------------------------------------------

async def rss_figure(ctx: Context) -> Figure:
    """Peak RSS of a child reading a 1M-event log built by another child."""
    path = ctx.scratch / "million.db"
    ctx.say(f"memory: building a {RSS_EVENTS:,}-event log")
    try:
        built = await ctx.child("million_log", At(str(path)), Built)
        ctx.say(f"  built in {built.seconds:.1f} s ({built.mb:,.0f} MB); reading it")
        report = await ctx.child("rss_read", At(str(path)), RssRead)
    except ChildError as exc:
        return RSS.failed(str(exc))
    peak_mb, idle_mb = report.peak_kb / 1024, report.idle_kb / 1024
    ctx.say(f"  read {report.events:,} events in {report.seconds:.1f} s, "
            f"peak RSS {peak_mb:.0f} MB")
    wrong = report.events != RSS_EVENTS
    return RSS.figure(
        peak_mb, baseline=idle_mb,
        details={"events": report.events, "read_rate": round(report.events / report.seconds),
                 "build_seconds": round(built.seconds, 1)},
        error=f"read {report.events:,} events, expected {RSS_EVENTS:,}" if wrong else None)


class SQLiteGroup:
    """See the module docstring."""

    name = "sqlite"
    specs = (BATCHED, SERIAL, GROUP_COMMIT, READ, REBUILD, RSS)
    tasks = TASKS

    def workload(self, quick: bool) -> dict[str, Detail]:
        event = make_event(123_456)
        return {**msgspec.structs.asdict(sizes_for(quick)), "rss_events": RSS_EVENTS,
                "event_type": type(event).__name__,
                "event_json_bytes": len(msgspec.json.encode(event))}

    async def run(self, ctx: Context) -> list[Figure]:
        figures = []
        for spec in (BATCHED, SERIAL, GROUP_COMMIT):
            if ctx.wants(spec):
                work = ctx.scratch / spec.name
                work.mkdir()
                figures.append(await ctx.figure_in_child(spec, At(str(work))))
        if ctx.wants(READ, REBUILD):
            ctx.say(f"read: building a {sizes_for(ctx.quick).read:,}-event log")
            log = ctx.scratch / "read" / "read.db"
            log.parent.mkdir()
            try:
                await ctx.child("read_log", At(str(log)), Built)
            except ChildError as exc:
                figures += [spec.failed(str(exc)) for spec in (READ, REBUILD)]
            else:
                for spec in (READ, REBUILD):
                    if ctx.wants(spec):
                        figures.append(await ctx.figure_in_child(spec, At(str(log))))
        if ctx.wants(RSS):
            figures.append(await rss_figure(ctx))
        return figures


GROUP = SQLiteGroup()
