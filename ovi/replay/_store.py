"""Opening a log for reading without ever creating one, and finding things in it.

Audits open the log read-only (:class:`~eventstore.SQLiteEventStore` with
``read_only``): no DDL, no file created or chmod-ed, so a user who may only
read the file — or a log on a read-only mount — can run every read
subcommand. Projections they need (``state``: the resources projection) are
read from the log's file when they are up to date there, else folded into a
temporary file, which is said on stderr.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, closing
from datetime import datetime
from pathlib import Path
from typing import Protocol, TypeVar

import anyio
import msgspec

from eventstore import SQLiteEventStore, format_timestamp
from eventstore.sqlite_plumbing import side_files_absent
from ovi.events import (
    ResourceDisappeared,
    claim_stream,
    registry,
    resource_stream,
    stream_resource,
)
from ovi.replay._errors import ReplayError
from ovi.runtime import ovi_projections
from projections import CHECKPOINTS_TABLE, Projection, ProjectionRunner

__all__ = [
    "Views",
    "check_log_file",
    "open_log",
    "open_views",
    "read_views",
    "resolve_resource",
    "revision_at_time",
]

T = TypeVar("T")


def check_log_file(path: Path) -> None:
    """Refuse anything but an existing Ovi event log, without creating or
    changing a file (the store would create a missing one).

    :raises ReplayError: naming the path and what is wrong with it.
    """
    if not path.exists():
        raise ReplayError(f"{path}: no such event log (give --store PATH or set $OVI_STORE)")
    if path.is_dir():
        raise ReplayError(f"{path}: is a directory, not an event log")
    if not os.access(path, os.R_OK):
        raise ReplayError(f"{path}: cannot read it (permission denied)")
    # Neither -wal nor -shm: mode=ro would create both (and leave them) for
    # a reader who may write the directory; the main file is the whole log.
    uri = path.absolute().as_uri() + ("?immutable=1" if side_files_absent(path) else "?mode=ro")
    try:
        with closing(sqlite3.connect(uri, uri=True)) as db:
            found = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
            ).fetchone()
    except sqlite3.OperationalError:
        # a -shm this user cannot create (read-only directory or mount):
        # the store decides how to open it; here, only "is it a log?"
        found = _has_events_table(uri.replace("mode=ro", "immutable=1"), path)
    except sqlite3.Error as exc:
        raise ReplayError(f"{path}: not an SQLite event log ({exc})") from exc
    if found is None:
        raise ReplayError(f"{path}: not an Ovi event log (it has no events table)")


def _has_events_table(uri: str, path: Path) -> object:
    try:
        with closing(sqlite3.connect(uri, uri=True)) as db:
            return db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
            ).fetchone()
    except sqlite3.Error as exc:
        raise ReplayError(f"{path}: not an SQLite event log ({exc})") from exc


def _uri(path: Path, mode: str) -> str:
    """The URI that opens ``path`` read-only as the store did (``mode``)."""
    return f"{path.absolute().as_uri()}?{'immutable=1' if mode == 'immutable' else 'mode=ro'}"


def _connect_like(path: Path, mode: str) -> sqlite3.Connection:
    """A plain read-only connection opened as the store opened the file."""
    return sqlite3.connect(_uri(path, mode), uri=True, check_same_thread=False)


@asynccontextmanager
async def open_log(path: Path, *, read_only: bool = True,
                   chain_key: bytes | None = None) -> AsyncIterator[SQLiteEventStore]:
    """The log at ``path``, which must exist. Nothing is appended through it;
    read-only (the default) nothing in the file changes at all."""
    check_log_file(path)
    async with SQLiteEventStore(path, registry(), instance_id=f"replay:{os.getpid()}",
                                read_only=read_only, chain_key=chain_key) as store:
        yield store


class Views(Protocol):
    """Projection tables to query: the runner's, or the log file's read-only."""

    async def query(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


class _FileViews:
    """Up-to-date projection tables in a log opened read-only."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    async def query(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await anyio.to_thread.run_sync(fn, self._db)


def _checkpoints(db: sqlite3.Connection) -> dict[str, tuple[int, int]]:
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                  (CHECKPOINTS_TABLE,)).fetchone() is None:
        return {}
    rows = db.execute(f"SELECT name, position, schema_version FROM {CHECKPOINTS_TABLE}")
    return {name: (position, version) for name, position, version in rows}


@asynccontextmanager
async def read_views(store: SQLiteEventStore, projections: Sequence[Projection], *,
                     from_log: bool = False,
                     until: int | None = None) -> AsyncIterator[tuple[Views, int]]:
    """``projections`` up to date with the log, and the position they are at.

    A writable store brings the tables in the log's file up to date (as the
    service does). A read-only one reads them there when they are current
    (same schema version, checkpoint at the head); else it folds them into
    a temporary file that is deleted afterwards, and says so on stderr.
    ``from_log`` (read-only) folds the whole log into the temporary file
    whatever the file holds: its projection tables are covered by no hash,
    so an audit that must show what the log says does not read them;
    ``until`` (with ``from_log``) folds only the events up to that position,
    all that a question about that revision needs, and is the position
    yielded.
    """
    if not store.read_only:
        async with ProjectionRunner(store, store.path, projections) as runner:
            await runner.catch_up()
            yield runner, (await runner.checkpoint(projections[0].name)).position
        return
    head = await store.last_position()
    if from_log and until is not None:
        head = min(until, head)
    mode = store.read_mode or "ro"
    with closing(_connect_like(store.path, mode)) as db:
        stored = await anyio.to_thread.run_sync(_checkpoints, db)
        if not from_log and all(stored.get(p.name) == (head, p.schema_version)
                                for p in projections):
            yield _FileViews(db), head
            return
    usable = [p for p in projections if p.schema_version == stored.get(p.name, (0, -1))[1]
              and not from_log]
    since = min((stored[p.name][0] for p in usable), default=0) if len(usable) == len(
        projections) else 0
    names = ", ".join(p.name for p in projections)
    if from_log:
        sys.stderr.write(f"note: folding the events of {store.path} up to revision"
                         f" {head:,} into a temporary copy of the {names} projection: the"
                         " projection tables in the log's file are covered by no hash\n")
    else:
        sys.stderr.write(f"note: {store.path} is opened read-only and its {names} projection"
                         f" is behind the log (at {since:,} of {head:,}): folding the"
                         f" {head - since:,} events since into a temporary copy\n")
    sys.stderr.flush()
    with tempfile.TemporaryDirectory(prefix="ovi-replay-") as folder:
        copy = Path(folder) / "views.db"
        try:
            await anyio.to_thread.run_sync(_copy_projections, store.path, mode, copy, usable,
                                           stored)
        except sqlite3.Error as exc:
            # The file's tables are not what their checkpoint says: fold from
            # the start instead (slower, same answer).
            sys.stderr.write(f"note: cannot copy the projections of {store.path} ({exc});"
                             " folding the whole log instead\n")
            copy.unlink(missing_ok=True)
        async with ProjectionRunner(store, copy, projections, synchronous="OFF") as runner:
            await runner.catch_up(until=head)
        # Some queries join the log's events (the resources projection indexes
        # the log rather than copying it): the log is attached, read-only.
        with closing(sqlite3.connect(copy.as_uri(), uri=True, check_same_thread=False)) as db:
            db.execute("ATTACH DATABASE ? AS log", (_uri(store.path, mode),))
            yield _FileViews(db), head


def _copy_projections(path: Path, mode: str, copy: Path, projections: Sequence[Projection],
                      stored: dict[str, tuple[int, int]]) -> None:
    """Copy the tables (and checkpoints) of ``projections`` from the log's
    file, opened read-only, into a new file: the runner then folds only the
    events they miss."""
    with closing(sqlite3.connect(copy.as_uri(), uri=True, isolation_level=None)) as db:
        db.execute("ATTACH DATABASE ? AS source", (_uri(path, mode),))
        db.execute("BEGIN")
        db.execute(f"CREATE TABLE {CHECKPOINTS_TABLE} (name TEXT PRIMARY KEY,"
                   " position INTEGER NOT NULL, schema_version INTEGER NOT NULL)")
        for projection in projections:
            tables = projection.tables
            marks = ", ".join("?" * len(tables))
            # tables before their indexes; SQLite's autoindexes have no SQL
            for (sql,) in db.execute(
                    "SELECT sql FROM source.sqlite_master WHERE sql IS NOT NULL AND tbl_name"
                    f" IN ({marks}) ORDER BY type = 'index'", tables).fetchall():
                db.execute(sql)
            for table in tables:
                db.execute(f'INSERT INTO main."{table}" SELECT * FROM source."{table}"')
            # and the views over them (the resources view), which the runner
            # only creates with the tables
            for (sql,) in db.execute(
                    "SELECT sql FROM source.sqlite_master WHERE type = 'view'").fetchall():
                if any(table in sql for table in tables):
                    db.execute(sql)
            position, version = stored[projection.name]
            db.execute(f"INSERT INTO {CHECKPOINTS_TABLE} VALUES (?, ?, ?)",
                       (projection.name, position, version))
        db.execute("COMMIT")
        db.execute("DETACH DATABASE source")


@asynccontextmanager
async def open_views(store: SQLiteEventStore, path: Path | None = None, *,
                     synchronous: str = "NORMAL") -> AsyncIterator[ProjectionRunner]:
    """The engine's projections over ``store``, in the log's own file unless
    ``path`` names another (they are created or brought up to date there)."""
    async with ProjectionRunner(store, path or store.path, ovi_projections(),
                                synchronous=synchronous) as views:
        yield views


class _Observed(msgspec.Struct):
    cloud_id: str = ""


class _CloudRef(msgspec.Struct):
    resource: _Observed | None = None
    cloud_id: str | None = None


_decode_ref = msgspec.json.Decoder(_CloudRef).decode


async def resolve_resource(store: SQLiteEventStore, text: str) -> str:
    """The resource id (``ovi:id``, or the cloud id of an unmanaged resource)
    that ``text`` names: a resource id the log has events for, else a cloud id
    seen in an observation or an executed action.

    :raises ReplayError: if the log knows no such resource, or the cloud id
        belonged to several resources.
    """
    if await store.stream_version(resource_stream(text)):
        return await _renamed(store, text)
    if await store.stream_version(claim_stream(text)):
        return text
    needle = msgspec.json.encode(text)
    found: list[str] = []
    async for page in store.read_encoded(types=("ResourceObserved", "ActionExecuted")):
        for row in page:
            data = row[6]
            if needle not in data:
                continue  # the cheap test first: most rows don't mention it at all
            resource_id = stream_resource(row[1])
            if resource_id is None:
                continue
            try:
                ref = _decode_ref(data)
            except msgspec.DecodeError:
                continue
            cloud_id = ref.resource.cloud_id if ref.resource is not None else ref.cloud_id
            if cloud_id == text and resource_id not in found:
                found.append(resource_id)
    if not found:
        raise ReplayError(f"no resource {text!r} in {store.path}: neither a resource id (ovi:id)"
                          " nor a cloud id the log has seen")
    if len(found) > 1:
        raise ReplayError(f"cloud id {text!r} belonged to several resources over time"
                          f" ({', '.join(found)}): name one of them")
    return found[0]


async def _renamed(store: SQLiteEventStore, resource_id: str) -> str:
    """The identity a resource is known by now: a log written before
    identities were ``provider/region/type/cloud id`` keyed foreign resources
    by their cloud id, and the first cycle after the upgrade recorded the new
    key (``ResourceDisappeared.now_known_as``). Only such a key (the stream of
    a cloud id) is followed."""
    seen = {resource_id}
    current = resource_id
    while "/" not in current:
        renamed: str | None = None
        async for recorded in store.read(stream=resource_stream(current),
                                         types=("ResourceDisappeared", "ResourceObserved")):
            event = recorded.event
            renamed = (event.now_known_as if isinstance(event, ResourceDisappeared)
                       and event.cloud_id == current else None)
        if renamed is None or renamed in seen:
            return current
        seen.add(renamed)
        current = renamed
    return current


async def revision_at_time(store: SQLiteEventStore, moment: datetime, head: int) -> int:
    """The last position recorded at or before ``moment`` (0 if none).

    Positions are commit order and ``recorded_at`` the commit time, so the
    log is in time order (up to clock skew between hosts sharing it): a
    binary search over positions costs ~log2(head) one-row reads.
    """
    bound = format_timestamp(moment)
    low, high = 0, head  # invariant: time(low) <= bound (position 0: the empty log)
    while low < high:
        middle = (low + high + 1) // 2
        recorded = await _recorded_at(store, middle)
        if recorded is not None and recorded <= bound:
            low = middle
        else:
            high = middle - 1
    return low


async def _recorded_at(store: SQLiteEventStore, position: int) -> str | None:
    async for page in store.read_raw(after=position - 1, until=position, limit=1):
        for row in page:
            return row[4]
    return None
