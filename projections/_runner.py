"""The runner that folds the log into projections, exactly once.

Each projection has one row in ``projection_checkpoints`` (the position of the
last event it folded, and its schema version). The rows a batch of events
produces and the checkpoint move are written in one ``BEGIN IMMEDIATE …
COMMIT`` transaction, and that transaction first checks the checkpoint is
still where the runner read it; so a batch is applied once whatever crashes,
cancellations or other runners on the same file do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import AsyncGenerator, Callable, Collection, Iterable, Sequence
from contextlib import aclosing
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import aiosqlite
import anyio
import msgspec

from eventstore import EncodedRow, EventStore, RecordedEvent, parse_timestamp
from eventstore.sqlite_plumbing import (
    connect,
    create_private_file,
    immediate_transaction,
    run_in_connection_thread,
)
from projections._exceptions import (
    CheckpointError,
    ProjectionApplyError,
    ProjectionDatabaseError,
    RunnerClosedError,
    UnknownProjectionError,
)
from projections._fold_apart import (
    FoldApart,
    FoldApartFailed,
    adopt_folds,
    scratch_directory,
    split_shares,
    usable_cores,
)
from projections._projection import Projection
from projections._router import Router
from projections._vouched import Vouched

__all__ = ["CHECKPOINTS_TABLE", "DEFAULT_BATCH_SIZE", "FOLD_APART_FROM", "Checkpoint",
           "ProjectionRunner"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

CHECKPOINTS_TABLE = "projection_checkpoints"
DEFAULT_BATCH_SIZE = 50_000
#: a fold from position 0 of at least this many events goes to ``fold_apart``
#: workers, when given: below it a worker's start-up (~0.3 s) is not repaid
FOLD_APART_FROM = 100_000
# Never owned by a projection: the checkpoints, and the SQLite log's own tables
# (projections usually share the log's file, and DROP TABLE ignores triggers).
_RESERVED_TABLES = frozenset({CHECKPOINTS_TABLE, "events", "log_head", "log_header"})

_CREATE_CHECKPOINTS = f"""CREATE TABLE IF NOT EXISTS {CHECKPOINTS_TABLE} (
    name           TEXT PRIMARY KEY,
    position       INTEGER NOT NULL,
    schema_version INTEGER NOT NULL
)"""
_SELECT_CHECKPOINTS = f"SELECT name, position, schema_version FROM {CHECKPOINTS_TABLE}"
_SELECT_CHECKPOINT = f"SELECT position, schema_version FROM {CHECKPOINTS_TABLE} WHERE name = ?"
_MOVE_CHECKPOINT = f"UPDATE {CHECKPOINTS_TABLE} SET position = ? WHERE name = ?"
_RESET_CHECKPOINT = (
    f"INSERT INTO {CHECKPOINTS_TABLE} (name, position, schema_version) VALUES (?, 0, ?)"
    " ON CONFLICT (name) DO UPDATE SET position = 0, schema_version = excluded.schema_version"
)


class Checkpoint(msgspec.Struct, frozen=True):
    """Where a projection stands: the last position folded and its schema version."""

    name: str
    position: int
    schema_version: int


class _Progress:
    __slots__ = ("applied",)

    def __init__(self) -> None:
        self.applied = 0


def _checkpoint_of(projection: Projection, stored: dict[str, tuple[int, int]]) -> int:
    position, version = stored.get(projection.name, (None, None))
    if position is None or version != projection.schema_version:
        raise CheckpointError(
            f"projection {projection.name!r}: checkpoint row missing or changed by"
            " another process; reopen the runner to reset it"
        )
    return position


class _CheckpointMoved(Exception):
    """Another runner moved a checkpoint since it was read; nothing was written
    (the fold re-reads the checkpoints and resumes from them)."""


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _check_projections(projections: Iterable[Projection]) -> tuple[Projection, ...]:
    found = tuple(projections)
    names: set[str] = set()
    owners: dict[str, str] = {}
    for projection in found:
        name = getattr(projection, "name", "")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{type(projection).__name__}.name: expected a non-empty string")
        if name in names:
            raise ValueError(f"two projections are named {name!r}")
        names.add(name)
        if not isinstance(getattr(projection, "schema_version", None), int):
            raise ValueError(f"{type(projection).__name__}.schema_version: expected an integer")
        tables = getattr(projection, "tables", None)
        if not isinstance(tables, tuple) or not all(isinstance(t, str) and t for t in tables):
            raise ValueError(f"{type(projection).__name__}.tables: expected a tuple of names")
        for table in tables:
            if table.lower() in _RESERVED_TABLES:
                raise ValueError(f"projection {name!r} may not own table {table!r}: reserved")
            if table.lower() in owners:
                raise ValueError(
                    f"table {table!r} is owned by both {owners[table.lower()]!r} and {name!r}"
                )
            owners[table.lower()] = name
    return found


class ProjectionRunner:
    """Folds an event store into projections stored in a SQLite file.

    ``db_path`` may be the SQLite log's own file (the default layout) or a
    separate one. Use as an async context manager, or call :meth:`open` and
    :meth:`aclose`. The store is not opened or closed by the runner.

    On open, a projection without a checkpoint, or whose stored schema version
    differs from its class's, is reset: its tables are dropped and created
    anew and its checkpoint set to 0, so the next :meth:`catch_up` replays the
    whole log into it (:attr:`reset_on_open` names them).

    :param batch_size: events folded per transaction (default
        :data:`DEFAULT_BATCH_SIZE`). Projections aggregate a batch in memory,
        so a bigger one writes a row touched by many events once, at the cost
        of holding the batch (the refold of the bench's 1M-event log peaks at
        ~137 MB RSS with 50,000, 76 MB with 20,000, which took 1.6 times the CPU).
    :param synchronous: SQLite ``synchronous`` pragma. ``NORMAL`` suffices:
        a commit lost to power failure loses rows and checkpoint together, and
        they are re-applied from the log.
    :param fold_apart: folds shares of the projections in other processes
        (:mod:`projections._fold_apart`): a fold from position 0 of at least
        ``fold_apart_from`` events (:data:`FOLD_APART_FROM`), on a machine of
        several cores, is then folded side by side into scratch files next
        to ``db_path`` and copied in, in one transaction. If that fails, the
        fold runs in this process (said in a warning).
    """

    def __init__(
        self,
        store: EventStore,
        db_path: str | os.PathLike[str],
        projections: Iterable[Projection],
        *,
        batch_size: int | None = None,
        busy_timeout: float = 10.0,
        synchronous: str = "NORMAL",
        fold_apart: FoldApart | None = None,
        fold_apart_from: int = FOLD_APART_FROM,
    ) -> None:
        self.store = store
        self.path = Path(db_path)
        self.projections = _check_projections(projections)
        self.batch_size = batch_size if batch_size is not None else DEFAULT_BATCH_SIZE
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected an integer ≥ 1, got {self.batch_size}")
        self.reset_on_open: tuple[str, ...] = ()
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous
        self._fold_apart = fold_apart
        self._fold_apart_from = fold_apart_from
        self._conn: aiosqlite.Connection | None = None
        self._by_name = {p.name: p for p in self.projections}
        # One fold at a time per runner; other runners are detected by checkpoint.
        self._lock = asyncio.Lock()
        # What of a keyed log has been checked (see _vouch_for).
        self._vouched: Vouched | None = None

    # -- lifecycle -------------------------------------------------------

    async def open(self) -> Self:
        """Open the projections database and create or reset projections as needed.

        :raises ProjectionApplyError: if a projection's ``create()`` failed (nothing reset).
        :raises ProjectionDatabaseError: if the database can't be opened or written.
        """
        if self._conn is not None:
            return self
        try:
            create_private_file(self.path)
            conn = await connect(
                self.path, busy_timeout=self._busy_timeout, synchronous=self._synchronous
            )
        except (OSError, sqlite3.Error) as exc:
            raise ProjectionDatabaseError(
                f"cannot open projections database {self.path}: {exc}"
            ) from exc
        self._conn = conn
        try:
            self.reset_on_open = await self._run(self._prepare, "preparing projections")
        except BaseException:
            await self.aclose()
            raise
        return self

    async def aclose(self) -> None:
        """Close the projections database (waiting for a transaction in flight)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _prepare(self, db: sqlite3.Connection) -> tuple[str, ...]:
        def body(db: sqlite3.Connection) -> tuple[str, ...]:
            db.execute(_CREATE_CHECKPOINTS)
            stored = {name: version for name, _, version in db.execute(_SELECT_CHECKPOINTS)}
            stale = [p for p in self.projections if stored.get(p.name) != p.schema_version]
            for projection in stale:
                _reset(db, projection)
            return tuple(p.name for p in stale)

        return immediate_transaction(db, body)

    # -- folding ---------------------------------------------------------

    async def catch_up(self, *names: str, until: int | None = None) -> int:
        """Fold every event up to the log's current head into each projection
        (or only the named ones: a caller that reads one projection need not
        wait for the others).

        Each projection resumes after its checkpoint; the events of each batch
        and the checkpoint move commit together. Afterwards every checkpoint
        equals the head read at the start, even for a projection that had no
        event of its types to fold. Returns the number of events folded,
        summed over the projections.

        ``until`` stops the fold at that position instead of the head (the
        state at a revision is the fold of the events up to it: a temporary
        copy need not fold the rest); a projection already past it is left
        where it is, and a keyed log's chain is checked up to it.

        :raises ProjectionApplyError: if a projection's ``apply()`` raised; that
            batch was rolled back (earlier batches and projections stay committed).
        :raises CheckpointError: if a checkpoint is beyond the head (the
            projections were built from another log: :meth:`rebuild` them) or its
            schema version was changed by another process.
        :raises ProjectionDatabaseError: if the projections database failed.
        :raises eventstore.EventStoreError: if reading the log failed.
        :raises UnknownProjectionError: if a name matches no projection.
        """
        chosen = tuple(self._named(name) for name in names) if names else self.projections
        if until is not None and until < 0:
            raise ValueError(f"until: expected a position ≥ 0, got {until}")
        async with self._lock:
            return await self._catch_up(chosen, until)

    def _named(self, name: str) -> Projection:
        found = self._by_name.get(name)
        if found is None:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise UnknownProjectionError(f"no projection named {name!r} (known: {known})")
        return found

    async def rebuild(self, name: str | None = None) -> int:
        """Drop a projection's tables and checkpoint, create them anew and
        replay the whole log into it (every projection when ``name`` is None).

        The reset is one transaction; the replay then commits batch by batch
        like :meth:`catch_up`, so an interrupted rebuild resumes where it
        stopped. Returns the number of events folded.

        :raises UnknownProjectionError: if no projection has that name.
        Otherwise raises as :meth:`catch_up`.
        """
        chosen = self.projections if name is None else (self._named(name),)

        def reset(db: sqlite3.Connection) -> None:
            def body(db: sqlite3.Connection) -> None:
                for projection in chosen:
                    _reset(db, projection)

            immediate_transaction(db, body)

        async with self._lock:
            await self._run(reset, "resetting projections")
            return await self._catch_up(chosen)

    async def read_checked(
        self, *, after: int = 0, until: int | None = None,
        types: Collection[str] | None = None, stream: str | None = None,
    ) -> AsyncGenerator[RecordedEvent, None]:
        """The log's events with ``after < position ≤ until`` (the head when
        None) of ``types`` (and of ``stream``, unless None), as
        :meth:`EventStore.read` gives them; on a keyed log opened with its
        key, checked as a fold's are (its HMAC chain up to there, each row
        matched with what was checked, none missing): for code that acts on
        the log beside the projections (recovery, the executor's last
        checks), which must not act on a forged or edited row.

        :raises LogCorruptedError: as :meth:`catch_up` would.
        """
        await self.store.check_chain_unchanged()
        if not self._vouches:
            async for recorded in self.store.read(after=after, until=until, types=types,
                                                  stream=stream):
                yield recorded
            return
        log_ends = None
        if until is None:
            until = log_ends = await self.store.last_position()
        await self._vouch_for(until, log_ends=log_ends)
        vouched = self._vouched
        assert vouched is not None
        decode = self.store.registry.decode
        pages = vouched.read_encoded(after=after, until=until, types=types, stream=stream)
        async with aclosing(pages):
            async for page in pages:
                for position, stream_, version, type_, at, instance, data, hash_ in page:
                    yield RecordedEvent(position, stream_, version, type_, parse_timestamp(at),
                                        instance, decode(type_, data), hash_)

    async def checkpoint(self, name: str) -> Checkpoint:
        """The stored checkpoint of a projection of this runner.

        :raises UnknownProjectionError: if no projection has that name.
        """
        if name not in self._by_name:
            raise UnknownProjectionError(f"no projection named {name!r}")
        row = await self._run(
            lambda db: db.execute(_SELECT_CHECKPOINT, (name,)).fetchone(), "reading checkpoint"
        )
        if row is None:
            raise CheckpointError(f"projection {name!r} has no checkpoint row in {self.path}")
        return Checkpoint(name, int(row[0]), int(row[1]))

    async def query(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` with the projections connection, on its worker thread.

        For reading projection tables; wrap several statements in ``BEGIN`` …
        ``COMMIT`` to read one snapshot (a transaction ``fn`` leaves open is
        rolled back). ``sqlite3`` errors become :class:`ProjectionDatabaseError`.
        """

        def guarded(db: sqlite3.Connection) -> T:
            try:
                return fn(db)
            finally:
                if db.in_transaction:
                    db.execute("ROLLBACK")

        return await self._run(guarded, "querying projections")

    async def _catch_up(self, projections: Sequence[Projection],
                        until: int | None = None) -> int:
        # Checkpoints first, then the head: a checkpoint can never pass the
        # head read after it unless it was folded from another log.
        stored = await self._read_checkpoints()
        await self.store.check_chain_unchanged()
        head = await self.store.last_position()
        end = head if until is None else min(until, head)
        await self._vouch_for(end, log_ends=head)
        at: dict[str, int] = {}
        for projection in projections:
            position = _checkpoint_of(projection, stored)
            if position > head:
                raise CheckpointError(
                    f"projection {projection.name!r} is at position {position} but the log's"
                    f" head is {head}: it was built from another log; rebuild it"
                )
            at[projection.name] = position
        if end and any(position == 0 for position in at.values()):
            # A fold of the whole log (a new or rebuilt projection) takes every
            # row as it is served: a mirror edited in place must stop it here,
            # since a copy's rows are otherwise checked only as they arrive.
            await self.store.check_served_rows()
        # Projections that stand at the same position fold together, in one
        # read of the log and one transaction per batch; one that lags folds
        # alone until it reaches the next, then they go on together.
        applied = 0
        failed: list[ProjectionApplyError] = []
        while behind := [p for p in projections if at[p.name] < end]:
            start = min(at[p.name] for p in behind)
            group = [p for p in behind if at[p.name] == start]
            stop = min((at[p.name] for p in behind if at[p.name] > start), default=end)
            progress = _Progress()
            try:
                if not (start == 0 and await self._fold_in_workers(group, stop, progress)):
                    await self._fold_pass(group, start, stop, progress)
                for projection in group:
                    at[projection.name] = stop
            except _CheckpointMoved:
                # Another runner committed (or reset) in between; resume from there.
                await self._resume(group, at)
            except ProjectionApplyError as error:
                # A failing projection must not hold the others back: they go
                # on without it, and the error is raised once they are done.
                failed.append(error)
                at[error.name] = end
                await self._resume([p for p in group if p.name != error.name], at)
            applied += progress.applied
        if failed:
            raise failed[0]
        return applied

    async def _vouch_for(self, head: int, *, log_ends: int | None = None) -> None:
        """On a keyed log opened with its key, check the HMAC chain of every
        row up to ``head`` before anything of it is folded: the safety gates
        read the projections, and a row appended by someone with write access
        to the log but not the key (say an ApprovalGranted) must not be acted
        on. Incremental: each row is checked once per runner, so a cycle pays
        only for the rows appended since the last one; and each row read for a
        fold is matched with what was checked (:mod:`projections._vouched`).

        :raises LogCorruptedError: at the first row that does not verify.
        """
        if not self._vouches:
            return
        if self._vouched is None:
            self._vouched = Vouched(self.store)
        await self._vouched.check_up_to(head, log_ends=log_ends)

    @property
    def _vouches(self) -> bool:
        """Whether rows are checked before they are acted on: only on a keyed
        log opened with its key (on an unkeyed one anyone can chain a valid
        row, a check proves nothing)."""
        chain = self.store.chain
        return chain.keyed and chain.checks_hashes

    async def _resume(self, group: Sequence[Projection], at: dict[str, int]) -> None:
        stored = await self._read_checkpoints()
        for projection in group:
            at[projection.name] = _checkpoint_of(projection, stored)

    async def _read_checkpoints(self) -> dict[str, tuple[int, int]]:
        rows = await self._run(lambda db: db.execute(_SELECT_CHECKPOINTS).fetchall(),
                               "reading checkpoints")
        return {name: (position, version) for name, position, version in rows}

    async def _fold_pass(
        self, group: Sequence[Projection], after: int, head: int, progress: _Progress
    ) -> None:
        router = Router(self.store.registry, group)
        checkpoint = after
        pending = 0
        if router.types is None or router.types:
            # Read, fold, commit, in turn. Overlapping them on threads was
            # measured slower: the GIL-bound decoding and the sqlite3 calls
            # (which drop and retake the GIL per row) only contend.
            vouched = self._vouched
            pages = (self.store.read_encoded(after=after, until=head, types=router.types)
                     if vouched is None else
                     vouched.read_encoded(after=after, until=head, types=router.types))
            async with aclosing(pages):  # closed now, also when a commit fails
                async for page in pages:
                    # Batches end at batch_size events (of the group's types).
                    rest: Sequence[EncodedRow] = page
                    while rest:
                        taken, used = router.route(rest, self.batch_size - pending)
                        pending += taken
                        if pending >= self.batch_size:
                            to = rest[used - 1][0]
                            await self._commit(group, checkpoint, router.take(), to, progress)
                            checkpoint, pending = to, 0
                        rest = rest[used:]
        if checkpoint < head:
            # The last batch carries the checkpoints to the head, past events of other types.
            await self._commit(group, checkpoint, router.take(), head, progress)

    async def _fold_in_workers(
        self, group: Sequence[Projection], until: int, progress: _Progress
    ) -> bool:
        """Fold ``group`` from position 0 to ``until`` side by side: the first
        share here, straight into this runner's file, the others meanwhile
        with :attr:`_fold_apart`, whose results are then taken in; False
        when that is not worth it (nothing written: the caller folds in
        process).

        :raises _CheckpointMoved: if another runner folded or reset one of
            these projections meanwhile, or the other shares could not be
            folded apart or taken in once the first one was folded here: the
            caller resumes from the checkpoints (and folds the rest itself).
        """
        fold_apart = self._fold_apart
        shares = split_shares(group, usable_cores())
        if (fold_apart is None or until < self._fold_apart_from or len(shares) < 2
                # The workers have no key: they could not match the rows they
                # fold with what this runner checked (see _vouch_for).
                or self._vouched is not None):
            return False
        # The first share (the heaviest projection first) is folded in this
        # process: its tables need no copying in afterwards, and a worker's
        # start-up is saved.
        here, apart = shares[0], shares[1:]
        names = ", ".join(repr(p.name) for share in apart for p in share)

        def take(db: sqlite3.Connection, projection: Projection, position: int) -> None:
            row = db.execute(_SELECT_CHECKPOINT, (projection.name,)).fetchone()
            if row is None or tuple(row) != (0, projection.schema_version):
                raise _CheckpointMoved
            _reset(db, projection)
            db.execute(_MOVE_CHECKPOINT, (position, projection.name))

        async with scratch_directory(self.path) as scratch:
            files = [(scratch / f"share-{i}.db", share) for i, share in enumerate(apart, 1)]
            folded: list[int] = []
            refused: list[FoldApartFailed] = []

            async def fold_the_others() -> None:
                try:
                    folded.append(await fold_apart(until, [(f, tuple(p.name for p in share))
                                                           for f, share in files]))
                except FoldApartFailed as exc:
                    refused.append(exc)

            failed: Exception | None = None
            async with anyio.create_task_group() as workers:
                workers.start_soon(fold_the_others)
                try:
                    await self._fold_pass(here, 0, until, progress)
                except Exception as exc:  # raised as it is, not in a group
                    failed = exc
                    workers.cancel_scope.cancel()
            if failed is not None:
                raise failed
            if refused:
                _log.warning("%s: folding %s in worker processes failed (%s); folding them"
                             " in this process", self.path, names, refused[0])
                raise _CheckpointMoved
            taken = await self._run(lambda db: adopt_folds(
                db, files, checkpoint=_attached_checkpoint, take=take, until=until),
                f"taking in the folds of {names}")
        if not taken:
            _log.warning("%s: the worker processes did not fold %s up to %d; folding them"
                         " in this process", self.path, names, until)
            raise _CheckpointMoved
        progress.applied += folded[0]
        return True

    async def _commit(
        self,
        group: Sequence[Projection],
        expected: int,
        batches: list[list[RecordedEvent]],
        to: int,
        progress: _Progress,
    ) -> None:
        def body(db: sqlite3.Connection) -> None:
            for projection, events in zip(group, batches, strict=True):
                name = projection.name
                row = db.execute(_SELECT_CHECKPOINT, (name,)).fetchone()
                if row is None or row[1] != projection.schema_version:
                    raise CheckpointError(
                        f"projection {name!r}: checkpoint row removed or reset to another"
                        " schema version by another process"
                    )
                if row[0] != expected:
                    raise _CheckpointMoved
                if events:
                    _call_projection(db, projection, events)
                db.execute(_MOVE_CHECKPOINT, (to, name))

        names = ", ".join(repr(p.name) for p in group)
        await self._run(lambda db: immediate_transaction(db, body), f"folding into {names}")
        progress.applied += sum(len(events) for events in batches)

    async def _run(self, fn: Callable[[sqlite3.Connection], T], doing: str) -> T:
        conn = self._conn
        if conn is None:
            raise RunnerClosedError("the projection runner is not open")
        try:
            return await run_in_connection_thread(conn, fn)
        except sqlite3.Error as exc:
            raise ProjectionDatabaseError(f"{self.path}: {doing}: {exc}") from exc


def _attached_checkpoint(
    db: sqlite3.Connection, schema: str, name: str
) -> tuple[int, int] | None:
    try:
        row = db.execute(f"SELECT position, schema_version FROM {schema}.{CHECKPOINTS_TABLE}"
                         " WHERE name = ?", (name,)).fetchone()
    except sqlite3.OperationalError:  # no checkpoints table: nothing was folded
        return None
    return None if row is None else (int(row[0]), int(row[1]))


def _reset(db: sqlite3.Connection, projection: Projection) -> None:
    for table in reversed(projection.tables):
        db.execute(f"DROP TABLE IF EXISTS {_quote(table)}")
    try:
        projection.create(db)
    except Exception as exc:
        raise ProjectionApplyError(projection.name, 0, 0, f"{type(exc).__name__}: {exc}") from exc
    if not db.in_transaction:
        raise ProjectionApplyError(projection.name, 0, 0, "create() ended the runner's transaction")
    db.execute(_RESET_CHECKPOINT, (projection.name, projection.schema_version))


def _call_projection(
    db: sqlite3.Connection, projection: Projection, events: list[RecordedEvent]
) -> None:
    first, last = events[0].position, events[-1].position
    try:
        projection.apply(db, events)
    except Exception as exc:
        raise ProjectionApplyError(
            projection.name, first, last, f"{type(exc).__name__}: {exc}"
        ) from exc
    if not db.in_transaction:
        raise ProjectionApplyError(
            projection.name, first, last, "apply() ended the runner's transaction"
        )
