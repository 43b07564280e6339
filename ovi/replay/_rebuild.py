"""``rebuild``: replay the whole log into fresh projections and compare them
with the ones the engine built incrementally in the log's file."""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from contextlib import AsyncExitStack, closing
from pathlib import Path

import anyio
import msgspec

from eventstore import SQLiteEventStore
from ovi._fold_workers import fold_in_workers
from ovi.replay._errors import ReplayError
from ovi.replay._store import open_views
from ovi.runtime import ovi_projections
from projections import Projection, ProjectionRunner
from projections._fold_apart import FoldApartFailed

__all__ = ["RebuildReport", "TableCheck", "rebuild_and_compare", "rebuild_in_place"]

#: compaction drops old versions from the store's copy on purpose
_COMPACTABLE = "resource_versions"


class TableCheck(msgspec.Struct, frozen=True):
    projection: str
    table: str
    rows: int  # in the rebuilt copy
    only_in_store: int
    only_in_rebuilt: int
    note: str = ""

    @property
    def equal(self) -> bool:
        return self.only_in_store == 0 and (self.only_in_rebuilt == 0 or bool(self.note))


class RebuildReport(msgspec.Struct, kw_only=True):
    position: int  # both copies were compared as of this log position
    events: int  # log events replayed
    seconds: float
    tables: list[TableCheck]
    workers: int = 1  # processes the rebuild ran in, side by side
    in_place_seconds: float | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)


async def rebuild_and_compare(store: SQLiteEventStore, *, workdir: Path | None = None,
                              attempts: int = 5, workers: int | None = None) -> RebuildReport:
    """Rebuild every projection from position 0 in temporary files, bring the
    log file's own projections up to the same position, compare.

    Projections are independent, so they are rebuilt side by side: in
    ``workers`` processes (default: one per core, at most one per projection),
    each folding its share into a file of its own. The time reported is the
    wall time of that, process start-up included.
    """
    projections = ovi_projections()
    count = workers if workers is not None else min(len(projections), os.cpu_count() or 1)
    shares = [projections[i::max(1, count)] for i in range(max(1, count))]
    shares = [share for share in shares if share]
    with tempfile.TemporaryDirectory(prefix="ovi-rebuild-", dir=workdir) as tmp:
        files = [Path(tmp) / f"rebuilt-{i}.db" for i in range(len(shares))]
        async with open_views(store) as mine:
            await mine.catch_up()
            # Fold the log file's WAL back in first: the workers' scans of the
            # log would otherwise look every page up in a WAL full of the
            # catch-up's writes.
            await mine.query(lambda db: db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
        until = await store.last_position()
        started = time.perf_counter()
        await _fold_apart(store.path, until, list(zip(files, shares, strict=True)))
        seconds = time.perf_counter() - started
        # Another process may append meanwhile: compare at one position.
        async with AsyncExitStack() as stack:
            runners = [await stack.enter_async_context(open_views(store))]
            for path, share in zip(files, shares, strict=True):
                runners.append(await stack.enter_async_context(ProjectionRunner(
                    store, path, share, synchronous="OFF")))
            for _ in range(attempts):
                for runner in runners:
                    await runner.catch_up()
                positions = {c for runner in runners for c in await _positions(runner)}
                if len(positions) == 1:
                    break
            position = (await runners[1].checkpoint(shares[0][0].name)).position
        checks = await anyio.to_thread.run_sync(
            _compare, store.path, list(zip(files, shares, strict=True)))
    return RebuildReport(position=position, events=position, seconds=seconds, tables=checks,
                         workers=len(shares))


async def _fold_apart(log: Path, until: int,
                      shares: list[tuple[Path, list[Projection]]]) -> None:
    """Fold each share of the projections from position 0 up to ``until``
    into its file, each in a worker process of its own."""
    try:
        await fold_in_workers(log)(until, [(copy, tuple(p.name for p in share))
                                           for copy, share in shares])
    except FoldApartFailed as exc:
        raise ReplayError(f"rebuild failed: {exc}") from exc


async def rebuild_in_place(store: SQLiteEventStore) -> float:
    """Rebuild the log file's own projection tables from the log; seconds taken."""
    async with open_views(store) as mine:
        started = time.perf_counter()
        await mine.rebuild()
        return time.perf_counter() - started


async def _positions(views: ProjectionRunner) -> list[int]:
    return [(await views.checkpoint(p.name)).position for p in views.projections]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _compare(store_path: Path, shares: list[tuple[Path, list[Projection]]]) -> list[TableCheck]:
    uri = store_path.absolute().as_uri() + "?mode=ro"
    checks: list[TableCheck] = []
    for fresh_path, share in shares:
        with closing(sqlite3.connect(fresh_path.absolute().as_uri(), uri=True)) as db:
            db.execute("ATTACH DATABASE ? AS log", (uri,))
            for projection in share:
                checks.extend(_compare_tables(db, projection))
    order = {p.name: i for i, p in enumerate(ovi_projections())}
    return sorted(checks, key=lambda c: order[c.projection])


def _compare_tables(db: sqlite3.Connection, projection: Projection) -> list[TableCheck]:
    checks = []
    for table in projection.tables:
        t = _quote(table)
        rows = db.execute(f"SELECT count(*) FROM main.{t}").fetchone()[0]
        only_store = db.execute(
            f"SELECT count(*) FROM (SELECT * FROM log.{t} EXCEPT SELECT * FROM main.{t})"
        ).fetchone()[0]
        only_rebuilt = db.execute(
            f"SELECT count(*) FROM (SELECT * FROM main.{t} EXCEPT SELECT * FROM log.{t})"
        ).fetchone()[0]
        note = ""
        if table == _COMPACTABLE and only_rebuilt and not only_store:
            note = "older versions compacted away in the log's copy"
        checks.append(TableCheck(projection.name, table, rows, only_store, only_rebuilt, note))
    return checks
