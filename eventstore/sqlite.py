"""The embedded backend: one SQLite file in WAL mode, through aiosqlite.

Schema (stable; operators may query it with the ``sqlite3`` tool)::

    events(position INTEGER PRIMARY KEY, stream TEXT, stream_version INTEGER,
           type TEXT, recorded_at TEXT, instance_id TEXT, data TEXT,
           prev_hash TEXT, hash TEXT, UNIQUE(stream, stream_version))
    log_head(id = 1, position, hash)   -- last row, written with every commit

``recorded_at`` is ISO-8601 UTC (``2026-11-26T06:54:48.123456Z``), ``data`` the
event's JSON. Triggers refuse UPDATE and DELETE on ``events``: the log is
append-only, and changing it by hand means dropping them first (``verify``
will then name the position that was touched).

The file and its ``-wal``/``-shm`` companions are private to their owner: a
new log is created 0600; an existing one that others may write is refused,
and one they may only read is tightened to 0600 (said once, through the
``eventstore`` logger).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, cast

import aiosqlite

from eventstore._chain import (
    GENESIS_HASH,
    chain_group,
    check_chained,
    check_continuation,
    check_head,
    check_header_unchanged,
)
from eventstore._events import EventRegistry
from eventstore._exceptions import (
    BackendError,
    EventStoreError,
    ImportRejectedError,
    LogCorruptedError,
    StoreClosedError,
)
from eventstore._import_worker import HelperUnavailable, ImportWorker
from eventstore._known_versions import KnownVersions
from eventstore._store import (
    EventStore,
    GroupResult,
    ReadFilter,
    format_timestamp,
    stamp_after,
    utc_now,
)
from eventstore._store_types import EncodedBatch, EncodedRow, EventRow, RawRow
from eventstore.sqlite_plumbing import (
    connect,
    connect_read_only,
    create_private_file,
    immediate_transaction,
    run_in_connection_thread,
)

__all__ = ["SCHEMA_VERSION", "SQLiteEventStore"]

_log = logging.getLogger("eventstore")

#: 2 added ``log_header`` (an older Ovi refuses the log rather than append
#: unkeyed rows to a keyed one)
SCHEMA_VERSION = 2

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
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
);
CREATE TABLE IF NOT EXISTS log_head (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    position INTEGER NOT NULL,
    hash     TEXT    NOT NULL
);
INSERT OR IGNORE INTO log_head (id, position, hash) VALUES (1, 0, '{GENESIS_HASH}');
CREATE TABLE IF NOT EXISTS log_header (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    header TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS log_mirror (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    source TEXT    NOT NULL
);
CREATE TRIGGER IF NOT EXISTS events_append_only_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_append_only_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
PRAGMA user_version = {SCHEMA_VERSION};
"""

_INSERT = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_COLUMNS = "position, stream, stream_version, type, recorded_at, instance_id, data, prev_hash, hash"
_EVENT_COLUMNS = "position, stream, stream_version, type, recorded_at, instance_id, data, hash"
_ENCODED_COLUMNS = _EVENT_COLUMNS.replace("data", "CAST(data AS BLOB)")
# SQLite's default limit on host parameters is 32766; stay well below it.
_MAX_PARAMS = 500
_SIDE_FILES = ("", "-wal", "-shm")
#: the one index on ``events`` the store makes: UNIQUE (stream, stream_version)
_STREAM_INDEX = ("sqlite_autoindex_events_1", None)


def _translate(exc: sqlite3.Error, doing: str) -> EventStoreError:
    return BackendError(f"{doing}: {exc}")


def _make_private(path: Path) -> None:
    """Refuse a log (or -wal/-shm file) that others may write; tighten one they
    may only read to its owner's bits, and say so once.

    A restored backup or a ``touch``ed file keeps the umask's 0644, and SQLite
    gives new -wal/-shm files the log's mode: left alone, the whole log would
    stay readable by every local user. A file others could *write* may already
    have been changed by one of them, so it is not quietly fixed but refused.
    """
    files: list[tuple[Path, int]] = []
    for suffix in _SIDE_FILES:
        file = path.with_name(path.name + suffix)
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise BackendError(f"cannot inspect event log file {file}: {exc.strerror}") from exc
        files.append((file, mode))
    writable = [(file, mode) for file, mode in files if mode & 0o022]
    if writable:
        named = ", ".join(f"{file} (mode {mode:04o})" for file, mode in writable)
        fix = " ".join(str(file) for file, _ in writable)
        raise BackendError(
            f"refusing to open the event log: {named} can be written by other users;"
            f" check it was not changed, then make it private: chmod 600 {fix}"
        )
    loose = [(file, mode) for file, mode in files if mode & 0o077]
    for file, mode in loose:
        try:
            os.chmod(file, mode & 0o700)
        except OSError as exc:
            raise BackendError(
                f"event log file {file} (mode {mode:04o}) is readable by other users and"
                f" cannot be made private: {exc.strerror}; chmod 600 {file} as its owner"
            ) from exc
    if loose:
        _log.warning(
            "event log %s was readable by other users; made %s private (mode 0600)",
            path, ", ".join(f"{file.name} (was {mode:04o})" for file, mode in loose),
        )


#: what a commit left: the head, and the versions of the streams it touched
_Committed = tuple[tuple[int, str], dict[str, int]]


class _Head(NamedTuple):
    position: int
    hash: str
    #: ``recorded_at`` of the newest row; None for an empty log
    recorded_at: str | None
    #: the shared log this file mirrors (:meth:`SQLiteEventStore.mark_as_mirror`), if any
    mirror_of: str | None
    #: the log's header (keyed or not), None if it has none
    header: str | None


class SQLiteEventStore(EventStore):
    """Event store in one SQLite file (WAL mode, created 0600).

    Several processes may open the same file: writes serialise on SQLite's
    write lock (waiting up to ``busy_timeout`` seconds), reads never block.
    ``synchronous`` is FULL so that a returned append survives power loss.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        registry: EventRegistry,
        *,
        instance_id: str | None = None,
        busy_timeout: float = 10.0,
        synchronous: str = "FULL",
        clock: Callable[[], datetime] | None = None,
        chain_key: bytes | None = None,
        read_only: bool = False,
    ) -> None:
        super().__init__(registry, instance_id=instance_id, clock=clock, chain_key=chain_key,
                         read_only=read_only)
        self.path = Path(path)
        #: the file this store opened, wherever the working directory moves
        #: afterwards (a helper process opens it again by this name)
        self._opened_path = self.path.absolute()
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._known_versions = KnownVersions()
        #: the helper process writing imports, inside :meth:`bulk_import`
        self._import_worker: ImportWorker | None = None
        self._import_users = 0
        self._import_starting = asyncio.Lock()
        #: how a read-only store opened the file: "ro", or "immutable" (see
        #: :func:`~eventstore.sqlite_plumbing.connect_read_only`)
        self.read_mode: str | None = None

    @property
    def location(self) -> str:
        return str(self.path)

    async def _open_backend(self) -> None:
        if self.read_only:
            await self._open_read_only()
            return
        self._opened_path = self.path.absolute()
        if self.path.exists() and not self.path.is_file():
            # Checked first: making "the log" private would chmod a directory.
            raise BackendError(f"cannot open event log {self.path}: not a file (a directory?);"
                               " name the log's file")
        try:
            create_private_file(self.path)
        except OSError as exc:
            raise BackendError(f"cannot create event log {self.path}: {exc.strerror}") from exc
        _make_private(self.path)
        try:
            self._writer = await connect(
                self.path, busy_timeout=self._busy_timeout, synchronous=self._synchronous
            )
            self._reader = await connect(
                self.path, busy_timeout=self._busy_timeout, synchronous=self._synchronous
            )
            await run_in_connection_thread(self._writer, _create_schema)
            await self._refuse_foreign_indexes()
        except sqlite3.Error as exc:
            await self._close_backend()
            raise _translate(exc, f"cannot open event log {self.path}") from exc
        except BaseException:
            await self._close_backend()
            raise

    async def _open_read_only(self) -> None:
        # No file created, no mode tightened, no DDL: an auditor who may only
        # read the file (or a log on a read-only mount) changes nothing.
        if not self.path.is_file():
            raise BackendError(f"cannot open event log {self.path} read-only: no such file")
        try:
            self._reader, self.read_mode = await connect_read_only(
                self.path, busy_timeout=self._busy_timeout)
            version = (await self._query("PRAGMA user_version"))[0][0]
        except sqlite3.Error as exc:
            await self._close_backend()
            raise _translate(exc, f"cannot open event log {self.path} read-only") from exc
        if version > SCHEMA_VERSION:
            await self._close_backend()
            raise BackendError(f"the event log has schema version {version}; this Ovi knows"
                               f" up to {SCHEMA_VERSION}")
        try:
            await self._refuse_foreign_indexes()
        except BaseException:
            await self._close_backend()
            raise

    async def _refresh_reads(self) -> None:
        # An immutable connection (a read-only mount, a directory this user
        # may not write, a log nobody had open) never sees a later append:
        # open the file afresh, as open() did. A -wal holding rows this user
        # cannot read is not an error here: they are seen once they reach the
        # main file (a checkpoint: at the latest when the writer closes).
        if self.read_mode != "immutable" or self._reader is None:
            return
        opening = asyncio.ensure_future(
            connect_read_only(self.path, busy_timeout=self._busy_timeout))
        try:
            reader, mode = await asyncio.shield(opening)
        except sqlite3.Error:
            return
        except asyncio.CancelledError:
            # (a follower stopped by ^C) Let the open end and close what it
            # opened: a connection left to its thread would call back into
            # an event loop that is gone, and print a traceback at exit.
            with contextlib.suppress(Exception):
                opened, _ = await opening
                await opened.close()
            raise
        old, self._reader, self.read_mode = self._reader, reader, mode
        await old.close()

    async def _foreign_indexes(self) -> list[str]:
        """Indexes on ``events`` other than the store's own: SQLite answers a
        read through whichever index it likes, so one that lacks rows (a
        partial index made to look full through ``writable_schema``) hides them
        from every filtered read, while the chain walk, by position, sees them."""
        rows = await self._query(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'")
        return [str(name) for name, sql in rows if (name, sql) != _STREAM_INDEX]

    async def _refuse_foreign_indexes(self) -> None:
        """:raises LogCorruptedError: if ``events`` has an index the store did not create."""
        foreign = await self._foreign_indexes()
        if foreign:
            names = ", ".join(foreign)
            raise LogCorruptedError(
                0, f"{self.path}: the events table has an index the store did not create"
                f" ({names}): an index can hide rows from reads; check the log (PRAGMA"
                f" integrity_check), then drop it: DROP INDEX {foreign[0]}")

    async def _check_storage(self) -> str | None:
        foreign = await self._foreign_indexes()
        if foreign:
            return (f"the events table has an index the store did not create"
                    f" ({', '.join(foreign)}): it can hide rows from filtered reads")
        # Compares every index with its table (quick_check does not): the
        # only check that finds an index whose pages were swapped for another's.
        found = [str(row[0]) for row in await self._query("PRAGMA integrity_check(10)")]
        if found != ["ok"]:
            return ("PRAGMA integrity_check fails (an index disagrees with its table, or the"
                    f" file is damaged; reads through an index may miss rows): {'; '.join(found)}")
        return None

    async def _close_backend(self) -> None:
        for conn in (self._writer, self._reader):
            if conn is not None:
                await conn.close()
        self._writer = self._reader = None

    def _conn(self, conn: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if conn is None:
            raise StoreClosedError("the event store is not open")
        return conn

    async def _commit_group(self, group: list[tuple[EncodedBatch, ...]]) -> list[GroupResult]:
        instance_id = self.instance_id
        clock = self._clock or utc_now
        chain = self.chain
        hash_row = chain.row_hash

        def body(db: sqlite3.Connection) -> tuple[list[GroupResult], _Committed]:
            head = _checked_head(db)
            _refuse_if_mirror(head, self.path)
            # Is the log still the kind it was when this store opened it? At
            # every commit, not only the first row's: another writer may have
            # made it keyed while it was empty and appended since.
            check_header_unchanged(chain, head.header)
            # Read under the write lock: another process's commit cannot come
            # between this reading and these positions.
            recorded_at = stamp_after(format_timestamp(clock()), head.recorded_at)
            start = (head.position, head.hash)
            versions, unknown = known.split(
                start, {b.stream for request in group for b in request})
            if unknown:
                versions.update(_stream_versions(db, unknown))
            rows, results = chain_group(group, versions, start, recorded_at, instance_id,
                                        hash_row)
            _write_rows(db, rows)
            return results, ((rows[-1][0], rows[-1][8]) if rows else start, versions)

        def commit(db: sqlite3.Connection) -> list[GroupResult]:
            results, (head, versions) = immediate_transaction(db, body)
            known.committed(head, versions)  # only once COMMIT returned
            return results

        known = self._known_versions
        try:
            return await run_in_connection_thread(self._conn(self._writer), commit)
        except sqlite3.Error as exc:
            raise _translate(exc, f"append to {self.path} failed, nothing written") from exc

    async def _import_rows(self, rows: list[RawRow]) -> dict[str, int]:
        hash_row = self.chain.row_hash
        worker = self._import_worker
        if worker is not None:
            # The chain is checked here (with the key, which stays in this
            # process); the helper checks the rest under the write lock.
            problem = check_chained(rows, None, hash_row)
            if problem is not None:
                raise ImportRejectedError(problem.position, problem.reason)
            self._known_versions.forget()
            try:
                await worker.import_rows(rows)
                return {row[1]: row[2] for row in rows}
            except HelperUnavailable as exc:
                # It never opened the file: nothing of these rows was written.
                if not worker.fallback_said:
                    worker.fallback_said = True
                    _log.warning("%s: cannot start a helper process to copy with (%s);"
                                 " copying in this process", self.path, exc)
        chain = self.chain

        def body(db: sqlite3.Connection) -> dict[str, int]:
            self._known_versions.forget()
            head = _checked_head(db)
            # As for an append: rows checked by this store's chain must not go
            # into a log another writer has made keyed since it was opened empty.
            check_header_unchanged(chain, head.header)
            versions = _stream_versions(db, {row[1] for row in rows})
            problem = check_continuation(rows, (head.position, head.hash), versions, hash_row)
            if problem is not None:
                raise ImportRejectedError(problem.position, problem.reason)
            _write_rows(db, rows)
            return {row[1]: row[2] for row in rows}

        try:
            return await run_in_connection_thread(
                self._conn(self._writer), lambda db: immediate_transaction(db, body)
            )
        except sqlite3.Error as exc:
            raise _translate(exc, f"import into {self.path} failed, nothing written") from exc

    @contextlib.asynccontextmanager
    async def bulk_import(self) -> AsyncIterator[int]:
        """Within the block, :meth:`import_rows` is written by a helper process
        (:mod:`eventstore._import_worker`), so a long copy uses a second core;
        each call is still one transaction, checked alike, and two may be in
        flight. If the helper cannot be started, imports stay here (said)."""
        self._writable()
        # Two copies through this store share one helper: the first starts it
        # (the other waits meanwhile), the last to end stops it.
        async with self._import_starting:
            worker = self._import_worker
            if worker is None:
                try:
                    worker = await ImportWorker.start(
                        self._opened_path, header=self.chain.header,
                        busy_timeout=self._busy_timeout, synchronous=self._synchronous)
                except OSError as exc:
                    _log.warning("%s: cannot start a helper process to copy with (%s);"
                                 " copying in this process", self.path, exc)
                    worker = None
                self._import_worker = worker
            if worker is not None:
                self._import_users += 1
        if worker is None:
            yield 1
            return
        try:
            yield _IN_FLIGHT
        finally:
            self._import_users -= 1
            if self._import_users == 0:
                self._import_worker = None
                await worker.close()

    async def mark_as_mirror(self, source: str) -> None:
        """Mark this file as the mirror of the shared log at ``source`` (a
        location without a password): from now on it takes only copied rows
        (:meth:`import_rows`); an append refuses, naming the shared log.

        A mirror that took appends of its own would act outside the shared
        log's claims, unseen by other hosts, and disagree with the shared log
        for good.
        """
        def mark(db: sqlite3.Connection) -> None:
            def body(db: sqlite3.Connection) -> None:
                db.execute("INSERT INTO log_mirror (id, source) VALUES (1, ?) ON CONFLICT (id)"
                           " DO UPDATE SET source = excluded.source"
                           " WHERE source IS NOT excluded.source", (source,))

            immediate_transaction(db, body)

        try:
            await run_in_connection_thread(self._conn(self._writer), mark)
        except sqlite3.Error as exc:
            raise _translate(exc, f"cannot mark {self.path} as a mirror") from exc

    async def _read_page(self, after: int, limit: int, filters: ReadFilter) -> list[RawRow]:
        return cast(list[RawRow], await self._select(_COLUMNS, after, limit, filters))

    async def _read_event_page(
        self, after: int, limit: int, filters: ReadFilter
    ) -> list[EventRow]:
        # Not fetching prev_hash makes a full read ~7% faster.
        return cast(list[EventRow], await self._select(_EVENT_COLUMNS, after, limit, filters))

    async def _read_encoded_page(
        self, after: int, limit: int, filters: ReadFilter
    ) -> list[EncodedRow]:
        # The column's bytes as they are: no UTF-8 decoding into a str, and
        # msgspec decodes bytes faster (~15 % off a projection rebuild).
        return cast(list[EncodedRow], await self._select(_ENCODED_COLUMNS, after, limit, filters))

    async def _select(
        self, columns: str, after: int, limit: int, filters: ReadFilter
    ) -> Iterable[sqlite3.Row]:
        clauses = ["position > ?"]
        params: list[object] = [after]
        if filters.until is not None:
            clauses.append("position <= ?")
            params.append(filters.until)
        if filters.types is not None:
            clauses.append(f"type IN ({', '.join('?' * len(filters.types))})")
            params.extend(filters.types)
        if filters.stream is not None:
            clauses.append("stream = ?")
            params.append(filters.stream)
        if filters.since is not None:
            clauses.append("recorded_at >= ?")
            params.append(filters.since)
        if filters.before is not None:
            clauses.append("recorded_at < ?")
            params.append(filters.before)
        sql = (f"SELECT {columns} FROM events WHERE {' AND '.join(clauses)} "
               f"ORDER BY position LIMIT {int(limit)}")
        try:
            return await self._conn(self._reader).execute_fetchall(sql, params)
        except sqlite3.OperationalError as exc:
            if "Could not decode to UTF-8" in str(exc):
                raise await self._not_text(sql, params, exc) from exc
            raise _translate(exc, f"reading {self.path}") from exc
        except sqlite3.Error as exc:
            raise _translate(exc, f"reading {self.path}") from exc

    async def _not_text(self, sql: str, params: list[object],
                        exc: sqlite3.Error) -> EventStoreError:
        """Where a page could not be read because a text column holds bytes
        that are not UTF-8 (written below SQL): the first such row, as a
        corrupted log; sqlite3 names only the column."""
        as_bytes = ("SELECT position, CAST(stream AS BLOB), CAST(type AS BLOB),"
                    " CAST(recorded_at AS BLOB), CAST(instance_id AS BLOB), CAST(data AS BLOB),"
                    " CAST(prev_hash AS BLOB), CAST(hash AS BLOB)"
                    + sql[sql.index(" FROM events "):])
        try:
            rows = await self._conn(self._reader).execute_fetchall(as_bytes, params)
        except sqlite3.Error:
            return _translate(exc, f"reading {self.path}")
        for position, *columns in rows:
            for value in columns:
                try:
                    if isinstance(value, bytes):
                        value.decode()
                except UnicodeDecodeError:
                    return LogCorruptedError(int(position), "a text column holds bytes that"
                                             " are not UTF-8 (written below SQL?)")
        return _translate(exc, f"reading {self.path}")

    async def _read_head(self) -> tuple[int, str]:
        rows = await self._query("SELECT position, hash FROM log_head WHERE id = 1")
        if not rows:
            raise LogCorruptedError(0, "the log_head row is missing")
        return int(rows[0][0]), str(rows[0][1])

    async def _read_header(self) -> str | None:
        # A read-only open of a log from before headers has no such table.
        if not await self._query("SELECT 1 FROM sqlite_master WHERE type = 'table'"
                                 " AND name = 'log_header'"):
            return None
        rows = await self._query("SELECT header FROM log_header WHERE id = 1")
        return str(rows[0][0]) if rows else None

    async def _write_header(self, text: str, genesis: str, *, replace: bool = False) -> str:
        def body(db: sqlite3.Connection) -> str:
            if db.execute("SELECT 1 FROM events LIMIT 1").fetchone() is None:
                verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
                if db.execute(f"{verb} INTO log_header (id, header) VALUES (1, ?)",
                              (text,)).rowcount:
                    db.execute("UPDATE log_head SET hash = ? WHERE id = 1 AND position = 0",
                               (genesis,))
            return str(db.execute("SELECT header FROM log_header WHERE id = 1").fetchone()[0])

        try:
            return await run_in_connection_thread(
                self._conn(self._writer), lambda db: immediate_transaction(db, body)
            )
        except sqlite3.Error as exc:
            raise _translate(exc, f"writing the header of {self.path}") from exc

    async def last_position(self) -> int:
        rows = await self._query("SELECT max(position) FROM events")
        return int(rows[0][0] or 0)

    def local_clock(self) -> datetime | None:
        return (self._clock or utc_now)()

    async def _now(self) -> str:
        rows = await self._query("SELECT recorded_at FROM events ORDER BY position DESC LIMIT 1")
        # The clock is read once the query has run, not before it waited in
        # the reader's queue: a reading is never older than the wait (callers
        # that share one, see Coordinator.now, asked before it was taken).
        now = format_timestamp((self._clock or utc_now)())
        return stamp_after(now, str(rows[0][0]) if rows else None)

    async def _event_types(self, after: int) -> list[str]:
        rows = await self._query("SELECT DISTINCT type FROM events WHERE position > ?", (after,))
        return [str(row[0]) for row in rows]

    async def stream_version(self, stream: str) -> int:
        rows = await self._query(
            "SELECT max(stream_version) FROM events WHERE stream = ?", (stream,)
        )
        return int(rows[0][0] or 0)

    async def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            rows = await self._conn(self._reader).execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            raise _translate(exc, f"reading {self.path}") from exc
        return cast(list[tuple[Any, ...]], list(rows))


def _create_schema(db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise BackendError(
            f"the event log has schema version {version}; this Ovi knows up to {SCHEMA_VERSION}"
        )

    def body(db: sqlite3.Connection) -> None:
        for statement in _SCHEMA.split(";\n"):
            if statement.strip():
                db.execute(statement)

    immediate_transaction(db, body)


def _refuse_if_mirror(head: _Head, path: Path) -> None:
    """Refuse an append to a file marked as a shared log's mirror."""
    if head.mirror_of is None:
        return
    raise BackendError(
        f"{path} is this host's mirror of the shared log {head.mirror_of}: it takes only rows"
        f" copied from it, nothing written; to write to the shared log use --store URL"
        f" --mirror {path} (the log's postgresql:// URL); replay commands may read the"
        " file as it is")


#: batches of a long copy in flight at once: one written by the helper while
#: the next is read and checked here
_IN_FLIGHT = 2


def _write_rows(db: sqlite3.Connection, rows: list[RawRow]) -> None:
    if rows:
        db.executemany(_INSERT, rows)
        last = rows[-1]
        db.execute("UPDATE log_head SET position = ?, hash = ? WHERE id = 1", (last[0], last[8]))


def _checked_head(db: sqlite3.Connection) -> _Head:
    """The head, after checking it still matches the newest row, whether the
    file is a mirror, and its header: one statement, run under the write lock
    at every commit (so a mark or header written by another process since
    this one opened the file counts too)."""
    row = db.execute(
        "SELECT h.position, h.hash, (SELECT max(position) FROM events), e.hash, e.recorded_at,"
        " (SELECT source FROM log_mirror WHERE id = 1),"
        " (SELECT header FROM log_header WHERE id = 1)"
        " FROM log_head AS h LEFT JOIN events AS e ON e.position = h.position WHERE h.id = 1"
    ).fetchone()
    if row is None:
        raise LogCorruptedError(0, "the log_head row is missing")
    position, hash_, newest, hash_at_head, recorded_at, mirror_of, header = row
    check_head(position, hash_, newest, hash_at_head)
    return _Head(int(position), str(hash_), recorded_at, mirror_of,
                 None if header is None else str(header))


def _stream_versions(db: sqlite3.Connection, streams: set[str]) -> dict[str, int]:
    # One correlated max() per stream: SQLite answers each with a single seek
    # on the (stream, stream_version) index. ``... WHERE stream IN (...) GROUP
    # BY stream`` instead walks every row of every stream, so appends to a long
    # stream got slower with each event (~150 µs at 1,000 events).
    versions = dict.fromkeys(streams, 0)
    ordered = sorted(streams)
    for start in range(0, len(ordered), _MAX_PARAMS):
        chunk = ordered[start:start + _MAX_PARAMS]
        values = ", ".join(["(?)"] * len(chunk))
        for stream, version in db.execute(
            f"WITH wanted(stream) AS (VALUES {values}) SELECT stream,"
            " (SELECT max(stream_version) FROM events WHERE events.stream = wanted.stream)"
            " FROM wanted",
            chunk,
        ):
            if version is not None:
                versions[stream] = version
    return versions
