"""``rebuild``: replay the whole log into fresh projections and compare them
with the ones the engine built incrementally in the log's file."""

from __future__ import annotations

import sqlite3
import tempfile
import time
from contextlib import closing
from pathlib import Path

import anyio
import msgspec

from eventstore import SQLiteEventStore
from ovi.replay._store import open_views
from ovi.runtime import ovi_projections
from projections import ProjectionRunner

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
    in_place_seconds: float | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)


async def rebuild_and_compare(store: SQLiteEventStore, *, workdir: Path | None = None,
                              attempts: int = 5) -> RebuildReport:
    """Rebuild every projection from position 0 in a temporary file, bring
    the log file's own projections up to the same position, compare."""
    with tempfile.TemporaryDirectory(prefix="ovi-rebuild-", dir=workdir) as tmp:
        fresh_path = Path(tmp) / "rebuilt.db"
        # The rebuilt copy is thrown away: it needs no durability.
        async with open_views(store) as mine, \
                open_views(store, fresh_path, synchronous="OFF") as fresh:
            await mine.catch_up()
            started = time.perf_counter()
            await fresh.catch_up()
            seconds = time.perf_counter() - started
            # Another process may append meanwhile: compare at one position.
            for _ in range(attempts):
                a = await _positions(mine)
                b = await _positions(fresh)
                if a == b and len(set(a)) == 1:
                    break
                await mine.catch_up()
                await fresh.catch_up()
            position = (await fresh.checkpoint(ovi_projections()[0].name)).position
        tables = await anyio.to_thread.run_sync(_compare, store.path, fresh_path)
    return RebuildReport(position=position, events=position, seconds=seconds, tables=tables)


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


def _compare(store_path: Path, fresh_path: Path) -> list[TableCheck]:
    uri = store_path.absolute().as_uri() + "?mode=ro"
    checks: list[TableCheck] = []
    with closing(sqlite3.connect(fresh_path.absolute().as_uri(), uri=True)) as db:
        db.execute("ATTACH DATABASE ? AS log", (uri,))
        for projection in ovi_projections():
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
                checks.append(TableCheck(projection.name, table, rows, only_store,
                                         only_rebuilt, note))
    return checks
