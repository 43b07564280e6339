"""SQLite plumbing shared by the SQLite log and the projection runner.

Not part of the event store's contract: these are the few connection and
transaction helpers both ``eventstore.sqlite`` and ``projections`` need, kept
in one place so that the two packages open files, run calls and commit the
same way (and imports keep pointing one way: projections → eventstore).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar, cast

import aiosqlite

__all__ = [
    "BULK_PRAGMAS",
    "configure",
    "connect",
    "connect_read_only",
    "create_private_file",
    "immediate_transaction",
    "run_in_connection_thread",
    "side_files_absent",
]

T = TypeVar("T")

#: a long copy's connection (:mod:`eventstore._import_helper`): a 32 MiB page
#: cache (not 2 MiB) keeps the (stream, stream_version) index's pages in
#: memory, and a WAL checkpointed every 10,000 pages (not 1,000) rewrites its
#: hot pages into the main file a tenth as often: together ~1.4x the rows per
#: second into the file (docs/benchmarks.md). A service's appends keep
#: SQLite's defaults.
BULK_PRAGMAS = {"cache_size": -32768, "wal_autocheckpoint": 10_000}


def create_private_file(path: Path) -> None:
    """Create ``path`` with mode 0600 unless it exists; SQLite then gives its
    -wal and -shm files the same mode."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


async def run_in_connection_thread(
    conn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]
) -> T:
    """Run ``fn`` with the raw connection on aiosqlite's worker thread.

    aiosqlite serialises every call of a connection on one thread; running a
    whole transaction there as one call costs one thread hop instead of one per
    statement, which is what makes single durable appends cheap.
    """
    raw = conn._conn
    execute = cast(Callable[..., Awaitable[T]], conn._execute)
    return await execute(fn, raw)


def configure(db: sqlite3.Connection, *, busy_timeout: float, synchronous: str) -> None:
    """Give ``db`` the pragmas every Ovi connection that writes uses."""
    db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {synchronous}")


async def connect(path: Path, *, busy_timeout: float, synchronous: str) -> aiosqlite.Connection:
    """Open a connection with the pragmas every Ovi connection uses."""
    conn = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout)
    try:
        await run_in_connection_thread(
            conn, lambda db: configure(db, busy_timeout=busy_timeout, synchronous=synchronous))
    except BaseException:
        await conn.close()
        raise
    return conn


def _file_uri(path: Path) -> str:
    return path.absolute().as_uri()


def side_files_absent(path: Path) -> bool:
    """Whether ``path`` has neither a ``-wal`` nor a ``-shm`` file: its writer
    closed it (or it is a backup), so the main file is the whole database and
    nobody is writing it, and a reader allowed to create those files (the
    log's owner, root) would create them and leave them behind (a read-only
    connection cannot delete them on close)."""
    return not any(path.with_name(path.name + suffix).exists() for suffix in ("-wal", "-shm"))


def _has_rows(wal: Path) -> bool:
    try:
        return wal.stat().st_size > 0
    except FileNotFoundError:
        return False


async def connect_read_only(path: Path, *, busy_timeout: float) -> tuple[aiosqlite.Connection, str]:
    """Open an existing database for reading only, changing nothing: no
    pragma that writes, no file created beside it. Returns the connection and
    how it was opened: ``"ro"``, or ``"immutable"``.

    A reader of a WAL database needs its ``-shm`` file: SQLite creates it
    when it is missing, which a user who may not write the directory (or a
    read-only mount) cannot. Then, provided there is no ``-wal`` file holding
    committed rows that are not in the main file yet, the main file *is* the
    whole database, and it is opened ``immutable`` (no locks, no ``-shm``).
    With such a ``-wal`` (a writer running as another user), there is no
    way to read those rows without write access: refused, saying so.
    When neither side file exists (no writer has it open) it is opened
    ``immutable`` at once: a reader that could create them (the owner, root)
    would otherwise leave them behind. An immutable connection does not see
    later appends: reopen it to (see :meth:`SQLiteEventStore.follow`).

    :raises sqlite3.Error: if it cannot be opened (the caller translates).
    """
    base = _file_uri(path)
    if not side_files_absent(path):
        conn = await aiosqlite.connect(f"{base}?mode=ro", uri=True, isolation_level=None,
                                       timeout=busy_timeout)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            await conn.execute_fetchall("SELECT count(*) FROM sqlite_master")
            return conn, "ro"
        except sqlite3.OperationalError as exc:
            await conn.close()
            wal = path.with_name(path.name + "-wal")
            if _has_rows(wal):
                raise sqlite3.OperationalError(
                    f"{exc}; {wal} holds rows not yet in the main file, and reading them"
                    f" needs write access to {path.parent} (or a readable {wal.name} and"
                    f" {path.name}-shm)") from exc
    conn = await aiosqlite.connect(f"{base}?immutable=1", uri=True, isolation_level=None,
                                   timeout=busy_timeout)
    try:
        await conn.execute_fetchall("SELECT count(*) FROM sqlite_master")
    except BaseException:
        await conn.close()
        raise
    return conn, "immutable"


def immediate_transaction(db: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``body`` in a ``BEGIN IMMEDIATE`` … ``COMMIT`` transaction on ``db``
    (an autocommit connection), rolling back if it raises.

    IMMEDIATE takes the write lock up front, so whatever ``body`` reads is what
    it writes over: no other writer can commit in between.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        result = body(db)
        db.execute("COMMIT")
    except BaseException:
        # SQLite rolls back by itself on some errors (disk full, I/O); a second
        # ROLLBACK would then fail and hide the real error.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return result
