"""Where an event's microseconds go in the SQLite store: each step of a
batched append, a read and a copied row's check, timed on its own in this
process, next to the store doing the whole thing.

    python scripts/profile_store.py [--events N] [--repeat R]

Prints one JSON object: for each step, microseconds per event (the best of
``--repeat`` runs, wall clock; ``cpu`` is this process's CPU time, all
threads, for the same run, set-up included for the store's own runs). The
steps are the store's own functions fed the bench's ~360-byte events
(scripts/bench_sqlite_workloads.py), so the parts can be set against the
whole: what the whole costs beyond its parts is the event loop, the thread
hop and the store's bookkeeping. A profile, not a benchmark: no target;
docs/benchmarks.md says what the numbers showed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eventstore import SQLiteEventStore
from eventstore._chain import UNKEYED, Chain, chain_group, check_continuation, keyed_header
from eventstore._store_types import EncodedBatch, RawRow
from scripts.bench_sqlite_workloads import (
    BATCH,
    INSTANCE,
    RAW_INSERT,
    RAW_SCHEMA,
    RAW_SELECT,
    ResourceSeen,
    make_event,
    now_text,
    raw_connect,
    registry,
    store_batched,
)


def timed(work: Callable[[], object], events: int, repeat: int) -> dict[str, float]:
    """``work``'s best run; a ``work`` that returns a float has timed itself
    (the store's workloads time only the appends or reads, not the set-up)."""
    best: tuple[float, float] | None = None
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        seconds = work()
        run = (time.perf_counter() - wall, time.process_time() - cpu)
        if isinstance(seconds, float):
            run = (seconds, run[1])
        best = run if best is None or run[0] < best[0] else best
    assert best is not None
    return {"us": round(best[0] / events * 1e6, 3), "cpu": round(best[1] / events * 1e6, 3)}


def chained(encoded: list[tuple[tuple[str, str], ...]], chain: Chain) -> list[RawRow]:
    rows: list[RawRow] = []
    head = (0, chain.genesis or "")
    recorded_at = now_text()
    for k, items in enumerate(encoded):
        stream = f"stream-{k}"
        page, _ = chain_group([(EncodedBatch(stream, 0, items),)], {stream: 0}, head,
                              recorded_at, INSTANCE, chain.row_hash)
        head = (page[-1][0], page[-1][8])
        rows.extend(page)
    return rows


def fresh_dir(work: Path) -> Path:
    path = work / str(time.monotonic_ns())
    path.mkdir()
    return path


def insert(work: Path, rows: list[RawRow]) -> None:
    path = fresh_dir(work) / "insert.db"
    db = raw_connect(path)
    db.execute(RAW_SCHEMA)
    for start in range(0, len(rows), BATCH):
        db.execute("BEGIN")
        db.executemany(RAW_INSERT, rows[start:start + BATCH])
        db.execute("COMMIT")
    db.close()


def fetch_pages(path: Path) -> list[list[tuple[Any, ...]]]:
    db = sqlite3.connect(path)
    pages, after = [], 0
    while rows := db.execute(RAW_SELECT, (after, BATCH)).fetchall():
        pages.append(rows)
        after = rows[-1][0]
    db.close()
    return pages


async def store_read(path: Path) -> float:
    async with SQLiteEventStore(path, registry(), instance_id=INSTANCE) as store:
        start = time.perf_counter()
        async for _ in store.read():
            pass
        return time.perf_counter() - start


def profile(events: int, repeat: int, work: Path) -> dict[str, dict[str, float]]:
    batch = [make_event(i) for i in range(events)]
    reg = registry()
    encoded = [reg._encode_many(batch[k:k + BATCH]) for k in range(0, events, BATCH)]
    key = b"k" * 32
    plain, keyed = Chain(UNKEYED, None, "profile"), Chain(keyed_header(key), key, "profile")
    rows = chained(encoded, plain)
    keyed_rows = chained(encoded, keyed)
    encode = msgspec.json.Encoder().encode
    out = {
        "append: msgspec encode (raw baseline)": timed(
            lambda: [encode(e).decode() for e in batch], events, repeat),
        "append: registry encode": timed(
            lambda: [reg._encode_many(batch[k:k + BATCH]) for k in range(0, events, BATCH)],
            events, repeat),
        "append: chain (sha256)": timed(lambda: chained(encoded, plain), events, repeat),
        "append: chain (keyed, hmac-sha256)": timed(lambda: chained(encoded, keyed), events,
                                                    repeat),
        "append: sqlite3 executemany + commit": timed(lambda: insert(work, rows), events,
                                                      repeat),
        "append: the store, whole": timed(
            lambda: asyncio.run(store_batched(fresh_dir(work), events)), events, repeat),
        "copy: check a copied row (sha256)": timed(
            lambda: check_continuation(rows, (0, plain.genesis or ""), {}, plain.row_hash),
            events, repeat),
        "copy: check a copied row (keyed)": timed(
            lambda: check_continuation(keyed_rows, (0, keyed.genesis or ""), {},
                                       keyed.row_hash), events, repeat),
    }
    where = fresh_dir(work)
    asyncio.run(store_batched(where, events))
    log = where / "log.db"
    pages = fetch_pages(log)
    decode = msgspec.json.Decoder(ResourceSeen).decode
    out["read: sqlite3 pages of 1,000 (fetchall)"] = timed(lambda: fetch_pages(log), events,
                                                           repeat)
    out["read: msgspec decode"] = timed(
        lambda: [decode(row[6]) for page in pages for row in page], events, repeat)
    out["read: the store, whole (read())"] = timed(lambda: asyncio.run(store_read(log)),
                                                   events, repeat)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ovi-profile-") as scratch:
        result = profile(args.events, args.repeat, Path(scratch))
    print(json.dumps({"events": args.events, "unit": "µs per event", "steps": result},
                     indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
