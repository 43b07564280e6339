"""Folding projections from position 0 in other processes, then taking the
result in: what a runner does when a long log must be folded anew (a
projection whose schema version changed on upgrade, a new file).

One process folds at ~70k events/s however many cores it has (the decoding
holds the GIL, and sqlite3 retakes it per row). Projections are independent,
so shares of them can be folded side by side, each in a worker process into
a scratch file of its own; the runner then copies the workers' tables into
its file in one transaction, with the checkpoints, as if it had folded them.

The runner does not know how to start a worker (the projections are the
application's); it is given a :data:`FoldApart` that does.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import anyio

from eventstore.sqlite_plumbing import immediate_transaction
from projections._projection import Projection

__all__ = ["FoldApart", "FoldApartFailed", "adopt_folds", "scratch_directory", "split_shares",
           "usable_cores"]

#: the file in a scratch directory its owner holds locked while it lives
_LOCK = "owner.lock"
#: a scratch directory with no lock file yet is its owner's for this long
_UNLOCKED_GRACE = 60.0

#: ``fold_apart(until, shares)``: fold each share's projections (by name) from
#: position 0 up to ``until`` into its file (which does not exist yet), each
#: share in a process of its own, side by side; returns the number of events
#: folded, summed over the projections. Raises :class:`FoldApartFailed` if
#: any share failed (the runner then folds in process).
FoldApart = Callable[[int, Sequence[tuple[Path, tuple[str, ...]]]], Awaitable[int]]


class FoldApartFailed(Exception):
    """A worker of a :data:`FoldApart` did not fold its share."""


def usable_cores(*, cgroup: Path = Path("/proc/self/cgroup"),
                 cgroups: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may run on: its CPU affinity, capped by a
    cgroup v2 CPU quota (systemd's ``CPUQuota=``) where one is set; at least 1.
    A worker per core of the host would only queue on a quota of one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    with contextlib.suppress(OSError, ValueError):
        group = cgroup.read_text().splitlines()
        unified = next((line[3:] for line in group if line.startswith("0::")), None)
        if unified is not None:
            quota, period = (cgroups / unified.lstrip("/") / "cpu.max").read_text().split()[:2]
            if quota != "max":
                cores = min(cores, -(-int(quota) // int(period)))
    return max(1, cores)


def split_shares(group: Sequence[Projection], workers: int) -> list[list[Projection]]:
    """``group`` dealt round-robin into at most ``workers`` non-empty shares
    (in the order given: the heaviest projections first go to different
    workers)."""
    count = max(1, min(workers, len(group)))
    return [list(group[i::count]) for i in range(count)]


@contextlib.asynccontextmanager
async def scratch_directory(next_to: Path) -> AsyncIterator[Path]:
    """A new directory ``.<name>.fold-*`` beside ``next_to`` (the same disk,
    the same permissions), removed afterwards. Its owner holds a lock in it
    while it lives; the directories of owners that died (a ``kill -9``, a
    power cut) are removed first, those of live ones (another process
    folding the same file) are left alone. The file work runs on a worker
    thread: a large stale directory does not stall the event loop."""
    scratch, lock = await anyio.to_thread.run_sync(_make_scratch, next_to)
    try:
        yield scratch
    finally:
        with anyio.CancelScope(shield=True):  # removed also when the fold was cancelled
            await anyio.to_thread.run_sync(_remove_scratch, scratch, lock)


def _make_scratch(next_to: Path) -> tuple[Path, int]:
    prefix = f".{next_to.name}.fold-"
    parent = next_to.absolute().parent
    for stale in parent.glob(prefix + "*"):
        _remove_if_ownerless(stale)
    scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        lock = os.open(scratch / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return scratch, lock


def _remove_scratch(scratch: Path, lock: int) -> None:
    try:
        shutil.rmtree(scratch, ignore_errors=True)
    finally:
        os.close(lock)  # the lock goes last: nobody removes a directory still being removed


def _remove_if_ownerless(scratch: Path) -> None:
    try:
        lock = os.open(scratch / _LOCK, os.O_RDWR)
    except FileNotFoundError:  # being made, or its owner died before it locked
        with contextlib.suppress(OSError):
            if time.time() - scratch.stat().st_mtime > _UNLOCKED_GRACE:
                shutil.rmtree(scratch, ignore_errors=True)
        return
    except OSError:
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: its owner is folding
        os.close(lock)
        return
    try:
        shutil.rmtree(scratch, ignore_errors=True)
    finally:
        os.close(lock)


def adopt_folds(
    db: sqlite3.Connection,
    shares: Sequence[tuple[Path, Sequence[Projection]]],
    *,
    checkpoint: Callable[[sqlite3.Connection, str, str], tuple[int, int] | None],
    take: Callable[[sqlite3.Connection, Projection, int], None],
    until: int,
) -> bool:
    """Copy the tables each share's projections were folded into (in its
    file) into ``db``'s, in one transaction; False (nothing written) unless
    every file's checkpoints stand at ``until`` with the projections' schema
    versions (the runner then folds in process).

    ``db`` is the runner's autocommit connection: the files are attached for
    the copy and detached afterwards. ``checkpoint(db, schema, name)`` reads
    a checkpoint (position, schema version) of the attached ``schema`` or of
    ``main``. ``take(db, projection, position)``, called in the transaction
    for each projection before its tables are copied, checks that nobody
    folded it meanwhile, drops and creates its tables and moves its
    checkpoint to ``position``; whatever it raises rolls everything back.
    """
    schemas = [f"fold_apart_{i}" for i in range(len(shares))]
    attached: list[str] = []
    try:
        for schema, (path, _) in zip(schemas, shares, strict=True):
            db.execute(f"ATTACH DATABASE ? AS {schema}", (str(path),))
            attached.append(schema)
        reached = {checkpoint(db, schema, p.name) == (until, p.schema_version)
                   for schema, (_, share) in zip(schemas, shares, strict=True) for p in share}
        if reached != {True}:
            return False

        def body(db: sqlite3.Connection) -> None:
            for schema, (_, share) in zip(schemas, shares, strict=True):
                for projection in share:
                    take(db, projection, until)
                    for table in projection.tables:
                        _copy_table(db, schema, table)

        immediate_transaction(db, body)
        return True
    finally:
        for schema in attached:
            db.execute(f"DETACH DATABASE {schema}")


def _copy_table(db: sqlite3.Connection, schema: str, table: str) -> None:
    """Every row of ``schema.table`` into ``main.table`` (created alike),
    rowids kept where the table has them (an ordinary table's rowid is part
    of its content: a query may order by it)."""
    name = '"' + table.replace('"', '""') + '"'
    columns = ", ".join('"' + str(row[1]).replace('"', '""') + '"'
                        for row in db.execute(f"PRAGMA {schema}.table_info({name})"))
    try:
        db.execute(f"SELECT rowid FROM {schema}.{name} LIMIT 0")
        with_rowid = True
    except sqlite3.OperationalError:  # WITHOUT ROWID
        with_rowid = False
    keep = f"rowid, {columns}" if with_rowid else columns
    db.execute(f"INSERT INTO main.{name} ({keep}) SELECT {keep} FROM {schema}.{name}")
