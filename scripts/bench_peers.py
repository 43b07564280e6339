"""The peers group: Ovi's SQLite event store against the event store people
already use, pyeventsourcing's ``SQLiteApplicationRecorder``, on the same
events in the same run.

Each figure alternates three workloads in one fresh interpreter: Ovi's store,
the peer and the raw sqlite3 baseline of the sqlite group, so that the Ovi /
peer ratio (the figure's) and the Ovi / raw ratio (in its details) come from
the same minutes of the same machine. Both stores are durable the same way:
WAL, ``synchronous=FULL`` (the peer's default, checked and reported), one
transaction per 1,000 events. pyeventsourcing is a bench-only extra
(``pip install -e '.[bench]'``), never a runtime dependency.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from scripts.bench_sqlite import At, Built, in_fresh_dir, raw_read_workload, timed_build
from scripts.bench_sqlite_workloads import (
    BATCH,
    ResourceSeen,
    make_event,
    raw_batched,
    store_batched,
    store_read,
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

if TYPE_CHECKING:
    from eventsourcing.sqlite import SQLiteApplicationRecorder

PEER = "pyeventsourcing 9.5.6 SQLiteApplicationRecorder"

PEER_BATCHED = FigureSpec(
    "peer_batched_append", Unit.EVENTS_PER_S, Target(min_ratio=1.2),
    baseline=f"{PEER}: insert_events of 1,000 StoredEvents (msgspec-encoded state) per "
             "call, text originator ids, WAL, synchronous=FULL",
    note="details: ovi_over_raw is Ovi / plain sqlite3 in the same alternation")
PEER_READ = FigureSpec(
    "peer_read_decode", Unit.EVENTS_PER_S, Target(min_ratio=2.0),
    baseline=f"{PEER}: select_notifications pages of 1,000 + msgspec typed decode of state",
    note="details: ovi_over_raw is Ovi / plain sqlite3 in the same alternation")


def sizes(quick: bool) -> tuple[int, int]:
    """(batched events, read events): the issue's 200k, smaller with --quick."""
    return (50_000, 100_000) if quick else (200_000, 300_000)


def peer_recorder(path: Path) -> SQLiteApplicationRecorder:
    # Imported here: the group must load (and say what is missing) without it.
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

    recorder = SQLiteApplicationRecorder(SQLiteDatastore(str(path), originator_id_type="text"))
    recorder.create_table()
    return recorder


def peer_synchronous(recorder: SQLiteApplicationRecorder) -> int:
    """The peer's ``PRAGMA synchronous`` on its own connection (2 = FULL)."""
    with recorder.datastore.transaction(commit=False) as cursor:
        cursor.execute("PRAGMA synchronous")
        return int(cursor.fetchone()[0])


def peer_insert(recorder: SQLiteApplicationRecorder, events: list[ResourceSeen]) -> None:
    """The events as the peer stores them: 1,000 per call, one stream per call,
    encoded in the loop as Ovi's append encodes them."""
    from eventsourcing.persistence import StoredEvent

    encode = msgspec.json.Encoder().encode
    for k in range(0, len(events), BATCH):
        stream = f"stream-{k // BATCH}"
        recorder.insert_events([StoredEvent(stream, j + 1, "ResourceSeen", encode(event))
                                for j, event in enumerate(events[k:k + BATCH])])


async def peer_batched(work: Path, total: int) -> float:
    recorder = peer_recorder(work / "peer.db")
    events = [make_event(i) for i in range(total)]
    start = time.perf_counter()
    peer_insert(recorder, events)
    elapsed = time.perf_counter() - start
    recorder.datastore.close()
    return elapsed


def peer_read(path: Path) -> tuple[int, float]:
    recorder = peer_recorder(path)
    decode = msgspec.json.Decoder(ResourceSeen).decode
    count, start_id = 0, 1
    start = time.perf_counter()
    while True:
        page = recorder.select_notifications(start_id, BATCH)
        if not page:
            break
        for notification in page:
            decode(notification.state)
        count += len(page)
        start_id = page[-1].id + 1
    elapsed = time.perf_counter() - start
    recorder.datastore.close()
    return count, elapsed


def with_raw(spec: FigureSpec, ovi: list[float], peer: list[float], raw: list[float],
             extra: Mapping[str, Detail]) -> Figure:
    ovi_median = statistics.median(ovi)
    return spec.from_runs(ovi, peer, details={
        **extra, "raw_rate": round(statistics.median(raw)),
        "ovi_over_raw": round(ovi_median / statistics.median(raw), 3)})


async def batched_task(ctx: Context, at: At) -> Figure:
    total = sizes(ctx.quick)[0]
    base = Path(at.path)
    ctx.say(f"batched append vs {PEER}: {total:,} events, {BATCH:,} per transaction")
    probe = base / "probe"
    probe.mkdir()
    synchronous = peer_synchronous(peer_recorder(probe / "peer.db"))
    ovi, peer, raw = await alternate(ctx.say, [
        in_fresh_dir(base, "ovi", total, lambda w: store_batched(w, total)),
        in_fresh_dir(base, "peer", total, lambda w: peer_batched(w, total)),
        in_fresh_dir(base, "raw sqlite3", total, lambda w: raw_batched(w, total))])
    return with_raw(PEER_BATCHED, ovi, peer, raw, {"peer_synchronous": synchronous})


async def read_task(ctx: Context, at: At) -> Figure:
    log = Path(at.path)
    peer_log = log.with_name("peer.db")
    if not peer_log.exists():
        recorder = peer_recorder(peer_log)
        peer_insert(recorder, [make_event(i) for i in range(sizes(ctx.quick)[1])])
        recorder.datastore.close()

    async def ovi_read(rep: int) -> float:
        count, seconds = await store_read(log)
        return count / seconds

    async def peer_rate(rep: int) -> float:
        count, seconds = peer_read(peer_log)
        return count / seconds

    ovi, peer, raw = await alternate(ctx.say, [
        Workload("ovi read", ovi_read, "events/s"),
        Workload("peer read", peer_rate, "events/s"),
        raw_read_workload(log)])
    return with_raw(PEER_READ, ovi, peer, raw, {})


async def read_log_task(ctx: Context, at: At) -> Built:
    return await timed_build(Path(at.path), sizes(ctx.quick)[1], BATCH)


TASKS: Mapping[str, Task[Any]] = {
    PEER_BATCHED.name: Task(At, batched_task),
    PEER_READ.name: Task(At, read_task),
    "read_log": Task(At, read_log_task),
}


def peer_missing() -> str | None:
    try:
        import eventsourcing  # noqa: F401
    except ImportError:
        return "pyeventsourcing is not installed: pip install -e '.[bench]'"
    return None


class PeersGroup:
    """See the module docstring."""

    name = "peers"
    specs = (PEER_BATCHED, PEER_READ)
    tasks = TASKS

    def workload(self, quick: bool) -> dict[str, Detail]:
        batched, read = sizes(quick)
        return {"batched": batched, "read": read, "per_transaction": BATCH, "peer": PEER,
                "event_json_bytes": len(msgspec.json.encode(make_event(123_456)))}

    async def run(self, ctx: Context) -> list[Figure]:
        missing = peer_missing()
        wanted = [spec for spec in self.specs if ctx.wants(spec)]
        if missing is not None:
            return [spec.failed(missing) for spec in wanted]
        figures = []
        if ctx.wants(PEER_BATCHED):
            work = ctx.scratch / "peer-batched"
            work.mkdir()
            figures.append(await ctx.figure_in_child(PEER_BATCHED, At(str(work))))
        if ctx.wants(PEER_READ):
            log = ctx.scratch / "peer-read" / "ovi.db"
            log.parent.mkdir()
            ctx.say(f"read vs {PEER}: building both logs of {sizes(ctx.quick)[1]:,} events")
            try:
                await ctx.child("read_log", At(str(log)), Built)
            except ChildError as exc:
                figures.append(PEER_READ.failed(str(exc)))
            else:
                figures.append(await ctx.figure_in_child(PEER_READ, At(str(log))))
        return figures


GROUP = PeersGroup()
