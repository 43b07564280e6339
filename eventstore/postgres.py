"""The shared backend: one PostgreSQL database (or schema of one), through asyncpg.

Schema (stable; the same columns as the SQLite log, so that a log copies
between the two with identical hashes)::

    events(position BIGINT PRIMARY KEY, stream TEXT, stream_version BIGINT,
           type TEXT, recorded_at TEXT, instance_id TEXT, data TEXT,
           prev_hash TEXT, hash TEXT, UNIQUE(stream, stream_version))
    log_head(id = 1, position, hash)   -- last row, written with every commit
    log_header(id = 1, header)         -- keyed or not (eventstore._chain.LogHeader)
    log_schema(id = 1, version)

Positions are gap-free and in commit order across any number of writers on
any number of hosts: every append transaction first locks the ``log_head``
row (``SELECT … FOR UPDATE``), so appenders commit one after another, each
numbering its rows from the head the previous one left. (A sequence would not
do: its values are taken before commit, so position 7 could become visible
before position 6, and a reader past 7 would never see 6.) Group commit keeps
that lock to one transaction per group of queued appends. The transaction
also NOTIFYs the log's channel, which wakes every follower on other
connections at commit.

Triggers refuse UPDATE, DELETE and TRUNCATE on ``events``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import NamedTuple, NoReturn, cast

import asyncpg

from eventstore._chain import (
    chain_group,
    check_continuation,
    check_head,
    check_header_unchanged,
    check_name,
)
from eventstore._dsn import ConnectSettings, connect_settings, is_postgres_dsn, mask_dsn, scrub
from eventstore._events import EventRegistry
from eventstore._exceptions import (
    BackendError,
    ImportRejectedError,
    LogCorruptedError,
    StoreClosedError,
)
from eventstore._pg_schema import SCHEMA_VERSION, channel_for, prepare_schema, quote_ident
from eventstore._store import EventStore, GroupResult, ReadFilter, format_timestamp, stamp_after
from eventstore._store_types import EncodedBatch, EncodedRow, EventRow, RawRow

__all__ = ["SCHEMA_VERSION", "PostgresEventStore"]

_COLUMNS = (
    "position", "stream", "stream_version", "type", "recorded_at",
    "instance_id", "data", "prev_hash", "hash",
)  # fmt: skip
_ALL_COLUMNS = ", ".join(_COLUMNS)
_EVENT_COLUMNS = _ALL_COLUMNS.replace("prev_hash, ", "")
# bytea, which asyncpg hands over as bytes (convert_to: the text's UTF-8, no escapes)
_ENCODED_COLUMNS = _EVENT_COLUMNS.replace("data", "convert_to(data, 'UTF8')")
_SERVER_NOW = "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
_NEWEST_STAMP = "(SELECT recorded_at FROM events ORDER BY position DESC LIMIT 1)"

# lock the head, then read what chaining needs (see _pg_schema: log_lock_head)
_LOCK_HEAD = "SELECT * FROM log_lock_head($1::text[])"
_MOVE_HEAD = """
WITH moved AS (UPDATE log_head SET position = $1, hash = $2 WHERE id = 1 RETURNING position)
SELECT pg_notify($3, position::text) FROM moved
"""
# Rows, head and NOTIFY in one statement: one round trip for a small group.
_INSERT_MOVE_HEAD = f"""
WITH written AS (
    INSERT INTO events ({_ALL_COLUMNS})
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::text[], $9::text[])
), moved AS (UPDATE log_head SET position = $10, hash = $11 WHERE id = 1 RETURNING position)
SELECT pg_notify($12, position::text) FROM moved
"""
#: from this many rows on, COPY beats the one-statement insert (docs/postgres.md)
_COPY_FROM = 100

#: what the driver raises: server errors, client-side errors, sockets, timeouts
_DRIVER_ERRORS = (
    asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
    OSError, TimeoutError,
)  # fmt: skip
_LOCK_NOT_AVAILABLE = "55P03"


class _State(NamedTuple):
    """The log as an appender sees it once it holds the head's lock."""

    position: int
    hash: str
    recorded_at: str | None
    now: str
    versions: dict[str, int]


#: the first schema the session's search_path names ($user: the session's user)
_FIRST_SEARCHED = """
SELECT CASE WHEN first = '"$user"' OR first = '$user' THEN current_user
            ELSE (parse_ident(first))[1] END
FROM (SELECT nullif(btrim(split_part(current_setting('search_path'), ',', 1)), '') AS first) s
"""


class PostgresEventStore(EventStore):
    """Event store in a PostgreSQL database, shared by any number of hosts.

    :param dsn: a ``postgresql://`` (or ``postgres://``) URL; libpq's ``PG*``
        environment variables fill in what it omits (see ``docs/postgres.md``).
        It is never shown with its password (:func:`eventstore.mask_dsn`).
    :param schema: the schema that holds the log, created if missing. Without
        it, the session's ``search_path`` decides (a DSN may set it with
        ``?options=-csearch_path%3Dname``), and that schema must exist unless
        ``create_schema``.
    :param create_schema: without ``schema``, create the first schema the
        ``search_path`` names if none of it exists (a copy's target).
    :param lock_timeout: seconds an append waits for another writer's lock
        before failing with :class:`BackendError`.
    :param clock: a test clock replacing the server's (``clock_timestamp()``).

    Writes go through one connection, reads through another (which also
    LISTENs); either is opened again on next use if the server drops it.
    """

    def __init__(
        self,
        dsn: str,
        registry: EventRegistry,
        *,
        schema: str | None = None,
        instance_id: str | None = None,
        clock: Callable[[], datetime] | None = None,
        lock_timeout: float = 10.0,
        chain_key: bytes | None = None,
        read_only: bool = False,
        create_schema: bool = False,
    ) -> None:
        if not is_postgres_dsn(dsn):
            raise ValueError(
                f"dsn: expected a postgresql:// or postgres:// URL, got {mask_dsn(dsn)!r}"
            )
        if schema is not None and not schema:
            raise ValueError("schema: expected a schema name, got an empty string")
        super().__init__(registry, instance_id=instance_id, clock=clock, chain_key=chain_key,
                         read_only=read_only)
        self._dsn = dsn
        self.schema = schema
        self._create_schema = create_schema and not read_only
        self._lock_timeout = lock_timeout
        self._settings: ConnectSettings | None = None
        self._active = False
        self._writer: asyncpg.Connection | None = None
        self._reader: asyncpg.Connection | None = None
        self._writer_pid = 0
        self._channel = ""
        # One statement at a time per connection (asyncpg's rule); commits
        # are serialised by the flusher anyway, imports join them here.
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()

    @property
    def location(self) -> str:
        where = mask_dsn(self._dsn)
        return where if self.schema is None else f"{where} (schema {self.schema})"

    # -- connections -----------------------------------------------------

    async def _open_backend(self) -> None:
        try:
            self._settings = connect_settings(
                self._dsn,
                defaults={
                    "lock_timeout": f"{int(self._lock_timeout * 1000)}ms",
                    # a writer stopped mid-transaction must not hold the lock for ever
                    "idle_in_transaction_session_timeout": "60s",
                },
                forced={
                    **({"search_path": quote_ident(self.schema)} if self.schema else {}),
                    # an audit: the server itself refuses any write
                    **({"default_transaction_read_only": "on"} if self.read_only else {}),
                },
            )
        except ValueError as exc:
            raise BackendError(f"{self.location}: {exc}") from None
        self._active = True
        try:
            writer = await self._writer_connection()
            schema = self.schema or await writer.fetchval("SELECT current_schema()")
            create = self.schema is not None
            if schema is None and self._create_schema:
                schema, create = await writer.fetchval(_FIRST_SEARCHED), True
            if schema is None:
                raise BackendError(
                    f"{self.location}: no schema to keep the event log in: the search_path"
                    " names none that exists; create one, or name one with schema="
                )
            if not self.read_only:
                await prepare_schema(writer, schema, create_schema=create)
            self._channel = channel_for(schema)
            await self._reader_connection()
        except _DRIVER_ERRORS as exc:
            await self._close_backend()
            self._raise(exc, f"cannot open event log {self.location}")
        except BaseException:
            await self._close_backend()
            raise

    async def _close_backend(self) -> None:
        self._active = False
        async with self._write_lock:
            writer, self._writer = self._writer, None
            await _close(writer)
        async with self._read_lock:
            reader, self._reader = self._reader, None
            await _close(reader)

    async def _connect(self) -> asyncpg.Connection:
        settings = self._settings
        if not self._active or settings is None:
            raise StoreClosedError("the event store is not open")
        try:
            conn = await asyncpg.connect(
                settings.dsn,
                # None waits for ever: asyncpg takes it, though its stubs say float
                timeout=cast(float, settings.timeout),
                server_settings=settings.server_settings,
            )
        except (*_DRIVER_ERRORS, ValueError) as exc:  # ValueError: a malformed DSN
            self._raise(exc, f"cannot connect to {self.location}")
        encoding = conn.get_settings().server_encoding
        if encoding != "UTF8":
            await conn.close()
            raise BackendError(
                f"{self.location}: the database's encoding is {encoding}; the event log"
                " needs UTF8 (events are hashed as UTF-8 text)"
            )
        return conn

    async def _writer_connection(self) -> asyncpg.Connection:
        conn = self._writer
        if conn is None or conn.is_closed():
            conn = self._writer = await self._connect()
            self._writer_pid = conn.get_server_pid()
        return conn

    async def _reader_connection(self) -> asyncpg.Connection:
        conn = self._reader
        if conn is None or conn.is_closed():
            conn = await self._connect()
            try:
                await conn.add_listener(self._channel, self._on_notify)
            except BaseException:
                await _close(conn)
                raise
            # Notifications sent while no connection listened are lost: wake
            # the followers, so they look for themselves, when this one drops.
            conn.add_termination_listener(lambda _conn: self._notify_appended())
            self._reader = conn
        return conn

    def _on_notify(self, conn: object, pid: int, channel: str, payload: object) -> None:
        if pid != self._writer_pid:  # our own appends woke our followers already
            self._notify_appended()

    def _raise(self, exc: BaseException, doing: str) -> NoReturn:
        """Raise ``exc`` as a :class:`BackendError` saying what was being done,
        with no password in it (nor in the chained cause)."""
        secrets = self._settings.secrets if self._settings is not None else []
        detail = _describe(exc)
        error = BackendError(scrub(f"{doing}: {detail}", secrets))
        cause: BaseException | None = exc
        while cause is not None:
            if scrub(str(cause), secrets) != str(cause):
                raise error from None  # the driver's own message quotes a secret
            cause = cause.__cause__ or cause.__context__
        raise error from exc

    # -- writing ---------------------------------------------------------

    async def _locked_state(self, conn: asyncpg.Connection, streams: list[str]) -> _State:
        row = await conn.fetchrow(_LOCK_HEAD, streams)
        assert row is not None  # a function with OUT parameters returns one row
        position, hash_, newest, hash_at_head, recorded_at, now, versions = row
        if position is None:
            raise LogCorruptedError(0, "the log_head row is missing")
        check_head(position, hash_, newest, hash_at_head)
        return _State(position, hash_, recorded_at, now, dict(zip(streams, versions, strict=True)))

    async def _write_rows(self, conn: asyncpg.Connection, rows: Sequence[RawRow]) -> None:
        if not rows:
            return
        last = rows[-1]
        if len(rows) < _COPY_FROM:
            await conn.execute(_INSERT_MOVE_HEAD, *zip(*rows, strict=True), last[0], last[8],
                               self._channel)
        else:
            await conn.copy_records_to_table("events", records=rows, columns=_COLUMNS)
            await conn.execute(_MOVE_HEAD, last[0], last[8], self._channel)

    async def _commit_group(self, group: list[tuple[EncodedBatch, ...]]) -> list[GroupResult]:
        streams = sorted({batch.stream for request in group for batch in request})
        rows: list[RawRow] = []
        async with self._write_lock:
            conn = await self._writer_connection()
            try:
                async with conn.transaction():
                    state = await self._locked_state(conn, streams)
                    # still the kind of log it was when opened? (at every commit: another
                    # writer may have made it keyed while empty and appended since)
                    check_header_unchanged(self.chain, await conn.fetchval(
                        "SELECT header FROM log_header WHERE id = 1"))
                    now = state.now if self._clock is None else format_timestamp(self._clock())
                    rows, results = chain_group(
                        group, state.versions, (state.position, state.hash),
                        stamp_after(now, state.recorded_at), self.instance_id,
                        self.chain.row_hash,
                    )  # fmt: skip
                    await self._write_rows(conn, rows)
            except _DRIVER_ERRORS as exc:
                # A connection lost once the rows went out may have taken the
                # COMMIT with it, or only its answer: find out which.
                if not (rows and conn.is_closed() and await self._committed(rows[-1], exc)):
                    self._raise(exc, f"append to {self.location} failed, nothing written")
        return results

    async def _committed(self, last: RawRow, lost: BaseException) -> bool:
        """Whether the transaction that wrote ``last`` committed before its
        connection was lost: the row is there, with its hash. Asked under the
        head's lock on a new connection, so the old transaction has ended
        (committed or rolled back) by the time the answer is read.

        :raises BackendError: if that cannot be found out either.
        """
        try:
            conn = await self._writer_connection()
            async with conn.transaction():
                await self._locked_state(conn, [])
                found = await conn.fetchval(
                    "SELECT hash FROM events WHERE position = $1", last[0]
                )
        except (*_DRIVER_ERRORS, BackendError) as exc:
            self._raise(
                lost, f"append to {self.location}: the connection was lost while committing,"
                f" and whether positions up to {last[0]} were written could not be checked"
                f" ({_describe(exc)}); read the log before trying again",
            )
        return bool(found == last[8])

    async def _import_rows(self, rows: list[RawRow]) -> dict[str, int]:
        # Only names a query can carry: check_continuation names the row of any other.
        streams = sorted({row[1] for row in rows if len(row) > 1 and _storable(row[1])})
        written = False
        async with self._write_lock:
            conn = await self._writer_connection()
            try:
                async with conn.transaction():
                    state = await self._locked_state(conn, streams)
                    problem = check_continuation(rows, (state.position, state.hash),
                                                 state.versions, self.chain.row_hash)
                    if problem is not None:
                        raise ImportRejectedError(problem.position, problem.reason)
                    written = True
                    await self._write_rows(conn, rows)
            except _DRIVER_ERRORS as exc:
                if not (written and conn.is_closed() and await self._committed(rows[-1], exc)):
                    self._raise(exc, f"import into {self.location} failed, nothing written")
        return {row[1]: row[2] for row in rows}

    # -- reading ---------------------------------------------------------

    async def _fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        async with self._read_lock:
            conn = await self._reader_connection()
            try:
                return await conn.fetch(sql, *args)
            except _DRIVER_ERRORS as exc:
                self._raise(exc, f"reading {self.location}")

    async def _select(
        self, columns: str, after: int, limit: int, filters: ReadFilter
    ) -> list[asyncpg.Record]:
        params: list[object] = [after, limit]
        clauses = ["position > $1"]

        def where(condition: str, value: object) -> None:
            params.append(value)
            clauses.append(condition.replace("?", f"${len(params)}"))

        if filters.until is not None:
            where("position <= ?", filters.until)
        if filters.types is not None:
            where("type = ANY(?::text[])", list(filters.types))
        if filters.stream is not None:
            where("stream = ?", filters.stream)
        if filters.since is not None:
            where("recorded_at >= ?", filters.since)
        if filters.before is not None:
            where("recorded_at < ?", filters.before)
        sql = (f"SELECT {columns} FROM events WHERE {' AND '.join(clauses)}"
               " ORDER BY position LIMIT $2")
        return await self._fetch(sql, *params)

    async def _read_page(self, after: int, limit: int, filters: ReadFilter) -> list[RawRow]:
        # A Record indexes, unpacks and compares like the tuple it stands for,
        # and sqlite3 binds it as one: a mirror's copy is ~6% faster without
        # copying each row into a tuple.
        return cast(list[RawRow], await self._select(_ALL_COLUMNS, after, limit, filters))

    async def _read_event_page(
        self, after: int, limit: int, filters: ReadFilter
    ) -> list[EventRow]:
        # Only read() unpacks these, and a Record unpacks like the tuple it
        # stands for: not copying each into a tuple is ~8% of a read.
        return cast(list[EventRow], await self._select(_EVENT_COLUMNS, after, limit, filters))

    async def _read_encoded_page(
        self, after: int, limit: int, filters: ReadFilter
    ) -> list[EncodedRow]:
        records = await self._select(_ENCODED_COLUMNS, after, limit, filters)
        return cast(list[EncodedRow], list(map(tuple, records)))

    async def _read_head(self) -> tuple[int, str]:
        rows = await self._fetch("SELECT position, hash FROM log_head WHERE id = 1")
        if not rows:
            raise LogCorruptedError(0, "the log_head row is missing")
        return int(rows[0][0]), str(rows[0][1])

    async def _read_header(self) -> str | None:
        rows = await self._fetch(
            "SELECT CASE WHEN to_regclass('log_header') IS NOT NULL THEN"
            " (SELECT header FROM log_header WHERE id = 1) END")
        return None if rows[0][0] is None else str(rows[0][0])

    async def _write_header(self, text: str, genesis: str, *, replace: bool = False) -> str:
        async with self._write_lock:
            conn = await self._writer_connection()
            try:
                async with conn.transaction():
                    # the head's lock: no append can come between the check and the write
                    await conn.execute("SELECT position FROM log_head WHERE id = 1 FOR UPDATE")
                    if await conn.fetchval("SELECT NOT EXISTS (SELECT 1 FROM events)"):
                        conflict = ("DO UPDATE SET header = excluded.header" if replace
                                    else "DO NOTHING")
                        written = await conn.fetchval(
                            "INSERT INTO log_header (id, header) VALUES (1, $1)"
                            f" ON CONFLICT (id) {conflict} RETURNING 1", text)
                        if written:
                            await conn.execute("UPDATE log_head SET hash = $1"
                                               " WHERE id = 1 AND position = 0", genesis)
                    return str(await conn.fetchval("SELECT header FROM log_header WHERE id = 1"))
            except _DRIVER_ERRORS as exc:
                self._raise(exc, f"writing the header of {self.location}")

    async def last_position(self) -> int:
        rows = await self._fetch("SELECT coalesce(max(position), 0) FROM events")
        return int(rows[0][0])

    async def stream_version(self, stream: str) -> int:
        rows = await self._fetch(
            "SELECT coalesce(max(stream_version), 0) FROM events WHERE stream = $1", stream
        )
        return int(rows[0][0])

    async def _now(self) -> str:
        if self._clock is not None:
            # read after the query, as the server's clock_timestamp() is
            (row,) = await self._fetch(f"SELECT {_NEWEST_STAMP}")
            return stamp_after(format_timestamp(self._clock()), row[0])
        (row,) = await self._fetch(f"SELECT {_SERVER_NOW}, {_NEWEST_STAMP}")
        return stamp_after(row[0], row[1])

    async def _event_types(self, after: int) -> list[str]:
        rows = await self._fetch("SELECT DISTINCT type FROM events WHERE position > $1", after)
        return [str(row[0]) for row in rows]


def _storable(name: object) -> bool:
    if not isinstance(name, str):
        return False
    try:
        check_name("stream name", name)
    except ValueError:
        return False
    return True


async def _close(conn: asyncpg.Connection | None) -> None:
    """Close politely; drop the socket when the server does not answer."""
    if conn is None or conn.is_closed():
        return
    try:
        await conn.close(timeout=5)
    except _DRIVER_ERRORS:
        conn.terminate()
    except BaseException:
        conn.terminate()
        raise


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncpg.PostgresError):
        text = f"{exc} (SQLSTATE {exc.sqlstate})"
        if exc.sqlstate == _LOCK_NOT_AVAILABLE:
            text += ": another writer held the log's write lock for longer than lock_timeout"
        return text
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror) and exc.strerror:
        return f"cannot resolve the host name: {exc.strerror}"
    if isinstance(exc, OSError) and exc.errno and exc.errno > 0:
        # "Connection refused" on asyncio and uvloop alike (their texts differ)
        return os.strerror(exc.errno)
    if isinstance(exc, OSError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
