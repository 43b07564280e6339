"""The PostgreSQL backend: the contract suite, plus what only a shared server
has (other connections and processes, NOTIFY, the schema, credentials)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import pytest

from eventstore import (
    GENESIS_HASH,
    BackendError,
    EventRegistry,
    EventStore,
    SQLiteEventStore,
    format_timestamp,
    row_hash,
    store_for,
)
from eventstore.postgres import SCHEMA_VERSION, PostgresEventStore
from tests.eventstore.contract import (
    EventStoreContract,
    LogTamperer,
    StoreFactory,
    assert_intact,
    following,
    next_events,
    read_all,
)
from tests.eventstore.sample_events import Note, Ping, sample_registry
from tests.eventstore.support import child, read_line, tell
from tests.fake_postgres import cutting_proxy, password_refusing_server
from tests.postgres import PostgresSchema, drop_schema, with_search_path

T = TypeVar("T")
COLUMNS = (
    "position", "stream", "stream_version", "type", "recorded_at",
    "instance_id", "data", "prev_hash", "hash",
)  # fmt: skip


class PostgresTamperer:
    """Edits the log with plain SQL, dropping the append-only triggers first."""

    def __init__(self, schema: PostgresSchema) -> None:
        self.schema = schema

    async def _edit(self, change: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        conn = await self.schema.connect()
        try:
            async with conn.transaction():
                await conn.execute("DROP TRIGGER IF EXISTS events_append_only ON events")
                return await change(conn)
        finally:
            await conn.close()

    async def set_data(self, position: int, data: str, *, rehash: bool = False) -> None:
        async def change(db: asyncpg.Connection) -> None:
            await db.execute("UPDATE events SET data = $1 WHERE position = $2", data, position)
            if rehash:
                row = await db.fetchrow(
                    "SELECT prev_hash, position, stream, stream_version, type, recorded_at,"
                    " instance_id, data FROM events WHERE position = $1",
                    position,
                )
                assert row is not None
                await db.execute(
                    "UPDATE events SET hash = $1 WHERE position = $2", row_hash(*row), position
                )

        await self._edit(change)

    async def forge(self, position: int, data: str, *, header: str | None = None) -> None:
        async def change(db: asyncpg.Connection) -> None:
            await db.execute("UPDATE events SET data = $1 WHERE position = $2", data, position)
            start = position
            if header is not None:
                await db.execute("INSERT INTO log_header (id, header) VALUES (1, $1)"
                                 " ON CONFLICT (id) DO UPDATE SET header = excluded.header",
                                 header)
                start = 1
            rows = await db.fetch(
                "SELECT position, stream, stream_version, type, recorded_at, instance_id, data,"
                " prev_hash FROM events WHERE position >= $1 ORDER BY position", start)
            prev = GENESIS_HASH if header is not None else rows[0][7]
            for at, *fields, _ in rows:
                new = row_hash(prev, at, *fields)
                await db.execute("UPDATE events SET prev_hash = $1, hash = $2"
                                 " WHERE position = $3", prev, new, at)
                prev = new
            await db.execute("UPDATE log_head SET hash = $1 WHERE id = 1", prev)

        await self._edit(change)

    async def delete(self, *positions: int) -> None:
        async def change(db: asyncpg.Connection) -> None:
            await db.execute("DELETE FROM events WHERE position = ANY($1::bigint[])",
                             list(positions))

        await self._edit(change)

    async def swap(self, first: int, second: int) -> None:
        columns = COLUMNS[1:]
        select = f"SELECT {', '.join(columns)} FROM events WHERE position = $1"
        assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, 1))
        update = f"UPDATE events SET {assignments} WHERE position = ${len(columns) + 1}"

        async def change(db: asyncpg.Connection) -> None:
            a = await db.fetchrow(select, first)
            b = await db.fetchrow(select, second)
            assert a is not None and b is not None
            # free (stream, stream_version) of the first row for the duration of the swap
            await db.execute("UPDATE events SET stream_version = -1 WHERE position = $1", first)
            await db.execute(update, *a, second)
            await db.execute(update, *b, first)

        await self._edit(change)

    async def insert_after_head(self, stream: str, type_: str, data: str) -> int:
        async def change(db: asyncpg.Connection) -> int:
            newest = await db.fetchrow(
                "SELECT position + 1, hash FROM events ORDER BY position DESC LIMIT 1"
            )
            assert newest is not None
            position, prev = newest
            version = await db.fetchval(
                "SELECT coalesce(max(stream_version), 0) + 1 FROM events WHERE stream = $1",
                stream,
            )
            recorded_at = format_timestamp(datetime.now(UTC))
            row = (position, stream, version, type_, recorded_at, "intruder", data)
            await db.execute(
                f"INSERT INTO events ({', '.join(COLUMNS)})"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                *row, prev, row_hash(prev, *row),
            )
            return int(position)

        return await self._edit(change)

    @asynccontextmanager
    async def holding_write_lock(self) -> AsyncIterator[None]:
        conn = await self.schema.connect()
        try:
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM log_head WHERE id = 1 FOR UPDATE")
                yield
        finally:
            await conn.close()


class TestPostgresEventStore(EventStoreContract):
    @pytest.fixture
    def store_factory(self, postgres_schema: PostgresSchema) -> StoreFactory:
        def make(
            registry: EventRegistry | None = None,
            *,
            clock: Callable[[], datetime] | None = None,
            instance_id: str | None = None,
            chain_key: bytes | None = None,
            read_only: bool = False,
        ) -> EventStore:
            return PostgresEventStore(
                postgres_schema.server_dsn, registry or sample_registry(),
                schema=postgres_schema.name, clock=clock, instance_id=instance_id,
                chain_key=chain_key, read_only=read_only,
            )  # fmt: skip

        return make

    @pytest.fixture
    def tamperer(self, postgres_schema: PostgresSchema) -> LogTamperer:
        return PostgresTamperer(postgres_schema)


# -- the schema -------------------------------------------------------------


def pg_store(schema: PostgresSchema, **options: Any) -> PostgresEventStore:
    return PostgresEventStore(schema.server_dsn, sample_registry(), schema=schema.name, **options)


@pytest.mark.asyncio
async def test_tables_have_the_documented_columns_and_refuse_changes(
    postgres_schema: PostgresSchema,
) -> None:
    async with pg_store(postgres_schema) as store:
        await store.append("s", [Ping(n=1), Note(text="ü")])
        last = (await read_all(store))[-1]
    db = await postgres_schema.connect()
    try:
        columns = await db.fetch(
            "SELECT column_name, data_type, is_nullable, collation_name"
            " FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'events'"
            " ORDER BY ordinal_position",
            postgres_schema.name,
        )
        assert [tuple(c) for c in columns] == [
            ("position", "bigint", "NO", None),
            ("stream", "text", "NO", "C"),
            ("stream_version", "bigint", "NO", None),
            ("type", "text", "NO", "C"),
            ("recorded_at", "text", "NO", "C"),
            ("instance_id", "text", "NO", None),
            ("data", "text", "NO", None),
            ("prev_hash", "text", "NO", None),
            ("hash", "text", "NO", None),
        ]
        unique = await db.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'events'::regclass AND contype = 'u'"
        )
        assert unique == "UNIQUE (stream, stream_version)"
        head = await db.fetchrow("SELECT position, hash FROM log_head")
        assert head is not None and tuple(head) == (2, last.hash)
        assert await db.fetchval("SELECT version FROM log_schema") == SCHEMA_VERSION
        rows = await db.fetch("SELECT recorded_at, data FROM events ORDER BY position")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", rows[0][0])
        assert [row[1] for row in rows] == ['{"n":1}', '{"text":"ü"}']
        for statement in ("UPDATE events SET data = '{}' WHERE position = 1",
                          "DELETE FROM events WHERE position = 2", "TRUNCATE events"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await db.execute(statement)
    finally:
        await db.close()
    async with pg_store(postgres_schema) as store:
        await assert_intact(store, 2)


@pytest.mark.asyncio
async def test_dropped_triggers_are_restored_when_the_log_is_opened(
    postgres_schema: PostgresSchema,
) -> None:
    async with pg_store(postgres_schema) as store:
        await store.append("s", [Ping(n=1)])
    db = await postgres_schema.connect()
    try:
        await db.execute("DROP TRIGGER events_append_only ON events;"
                         " DROP TRIGGER events_no_truncate ON events")
        async with pg_store(postgres_schema):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await db.execute("DELETE FROM events")
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await db.execute("TRUNCATE events")
    finally:
        await db.close()


@pytest.mark.asyncio
async def test_a_newer_schema_is_refused(postgres_schema: PostgresSchema) -> None:
    async with pg_store(postgres_schema) as store:
        await store.append("s", [Ping(n=1)])
    db = await postgres_schema.connect()
    try:
        await db.execute("UPDATE log_schema SET version = $1", SCHEMA_VERSION + 1)
    finally:
        await db.close()
    with pytest.raises(BackendError, match=f"schema version {SCHEMA_VERSION + 1}"):
        await pg_store(postgres_schema).open()


@pytest.mark.asyncio
async def test_several_stores_opening_a_fresh_schema_at_once_all_work(
    postgres_schema: PostgresSchema,
) -> None:
    fresh = PostgresSchema(postgres_schema.server_dsn, postgres_schema.name + "_fresh")
    stores = [pg_store(fresh, instance_id=f"opener-{i}") for i in range(6)]
    try:
        # Without the advisory lock around the DDL, the losers of this race
        # fail on the catalogs' unique indexes (pg_namespace, pg_type).
        await asyncio.gather(*(store.open() for store in stores))
        await asyncio.gather(*(store.append(f"s{i}", [Ping(n=i)])
                               for i, store in enumerate(stores)))
        await assert_intact(stores[0], 6)
        db = await fresh.connect()
        try:
            assert await db.fetchval("SELECT count(*) FROM log_head") == 1
            assert await db.fetchval("SELECT count(*) FROM log_schema") == 1
        finally:
            await db.close()
    finally:
        for store in stores:
            await store.aclose()
        await drop_schema(fresh.server_dsn, fresh.name)


@pytest.mark.asyncio
async def test_the_dsns_search_path_chooses_the_schema(
    postgres_schema: PostgresSchema,
) -> None:
    store = store_for(postgres_schema.dsn, sample_registry())
    assert isinstance(store, PostgresEventStore)
    async with store:
        await store.append("s", [Ping(n=1)])
    async with pg_store(postgres_schema) as same:  # the very log, named by schema=
        await assert_intact(same, 1)
    missing = with_search_path(postgres_schema.server_dsn, postgres_schema.name + "_missing")
    with pytest.raises(BackendError, match="no schema to keep the event log in"):
        await store_for(missing, sample_registry()).open()


# -- ordering and waking across connections and processes -------------------


@pytest.mark.asyncio
async def test_two_processes_append_and_a_tailing_reader_sees_no_gap_or_reordering(
    postgres_schema: PostgresSchema,
) -> None:
    count = 150
    async with pg_store(postgres_schema) as store:
        await store.append("setup", [Ping(n=0)])
        seen_by_sql: list[int] = []

        async def tail_with_sql(total: int) -> None:
            # The same question asked with plain SQL, as any reader would:
            # what is there after the last position I saw?
            db = await postgres_schema.connect()
            try:
                while not seen_by_sql or seen_by_sql[-1] < total:
                    after = seen_by_sql[-1] if seen_by_sql else 0
                    rows = await db.fetch(
                        "SELECT position FROM events WHERE position > $1 ORDER BY position",
                        after,
                    )
                    seen_by_sql.extend(row[0] for row in rows)
            finally:
                await db.close()

        races = count // 10  # see SHARED_EVERY in _child.py
        total = 1 + 2 * count + races
        async with (
            child("hammer", postgres_schema.dsn, "left", str(count)) as left,
            child("hammer", postgres_schema.dsn, "right", str(count)) as right,
            # a long poll: only NOTIFY can keep this follower up to date
            following(store, poll_interval=60) as received,
        ):
            for process in (left, right):
                assert await read_line(process) == "ready"
            sql_tail = asyncio.create_task(tail_with_sql(total))
            for process in (left, right):
                await tell(process, "go")
            summaries = [json.loads(await read_line(process, within=90))
                         for process in (left, right)]
            assert [await process.wait() for process in (left, right)] == [0, 0]
            followed = [e.position for e in await next_events(received, total, within=30)]
            async with asyncio.timeout(30):
                await sql_tail
        assert followed == list(range(1, total + 1))
        assert seen_by_sql == list(range(1, total + 1))
        assert sum(s["wins"] for s in summaries) == races
        assert sum(s["conflicts"] for s in summaries) == races
        await assert_intact(store, total)
        for tag in ("left", "right"):
            events = await read_all(store, stream=tag)
            assert [(e.stream_version, e.event) for e in events] == [
                (n + 1, Ping(n=n)) for n in range(count)
            ]
        stamps = [e.recorded_at for e in await read_all(store)]
        assert stamps == sorted(stamps)


@pytest.mark.asyncio
async def test_notify_from_another_connection_wakes_a_follower(
    postgres_schema: PostgresSchema,
) -> None:
    db = await postgres_schema.connect()
    heard: asyncio.Queue[str] = asyncio.Queue()
    await db.add_listener(f"eventstore.{postgres_schema.name}",
                          lambda *args: heard.put_nowait(args[3]))
    try:
        async with pg_store(postgres_schema) as store, pg_store(postgres_schema) as other:
            async with following(store, poll_interval=60) as received:
                for n in range(3):
                    await asyncio.sleep(0.05)
                    await other.append("s", [Ping(n=n), Ping(n=-n)])
                    # the channel carries the new head, sent at commit
                    assert await asyncio.wait_for(heard.get(), 5) == str(2 * n + 2)
                    events = await next_events(received, 2, within=5)
                    assert [e.position for e in events] == [2 * n + 1, 2 * n + 2]
    finally:
        await db.close()


@pytest.mark.asyncio
async def test_the_store_reconnects_after_the_server_drops_its_connections(
    postgres_schema: PostgresSchema,
) -> None:
    async with pg_store(postgres_schema) as store, pg_store(postgres_schema) as other:
        await store.append("s", [Ping(n=1)])
        reader = store._reader
        assert reader is not None
        pids = [store._writer_pid, reader.get_server_pid()]
        async with following(store, after=1, poll_interval=60) as received:
            await asyncio.sleep(0.05)
            db = await postgres_schema.connect()
            try:
                terminated = await db.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
                    " FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids,
                )
            finally:
                await db.close()
            assert terminated == 2
            await asyncio.sleep(0.2)
            # the follower, woken by the drop, listens again on a new connection
            await other.append("s", [Ping(n=2)])
            (event,) = await next_events(received, 1, within=5)
            assert event.position == 2
            assert (await store.append("s", [Ping(n=3)], expected_version=2)).last_position == 3
            (event,) = await next_events(received, 1, within=5)
            assert event.position == 3
        assert store._writer_pid not in pids
        await assert_intact(store, 3)


@pytest.mark.asyncio
async def test_an_append_that_waits_too_long_for_the_lock_fails_and_writes_nothing(
    postgres_schema: PostgresSchema,
) -> None:
    async with pg_store(postgres_schema, lock_timeout=0.3) as store:
        await store.append("s", [Ping(n=1)])
        async with PostgresTamperer(postgres_schema).holding_write_lock():
            with pytest.raises(BackendError, match="lock_timeout") as caught:
                await store.append("s", [Ping(n=2)])
        assert "55P03" in str(caught.value)
        assert isinstance(caught.value.__cause__, asyncpg.LockNotAvailableError)
        assert (await store.append("s", [Ping(n=2)], expected_version=1)).last_position == 2
        await assert_intact(store, 2)


@pytest.mark.parametrize(
    ("marker", "forward", "written"),
    [
        pytest.param(b"COMMIT", True, True, id="lost-after-commit-was-sent"),
        # the rows' Bind message: the statement was prepared by the first append
        pytest.param(b'{"n":424242}', False, False, id="lost-before-commit"),
    ],
)
@pytest.mark.asyncio
async def test_an_append_whose_connection_drops_reports_what_happened(
    postgres_schema: PostgresSchema, marker: bytes, forward: bool, written: bool
) -> None:
    server = urlsplit(postgres_schema.server_dsn)
    assert server.hostname is not None and server.port is not None
    async with cutting_proxy(server.hostname, server.port) as proxy:
        via_proxy = postgres_schema.server_dsn.replace(
            server.netloc.rsplit("@", 1)[-1], f"127.0.0.1:{proxy.listen_port}"
        )
        store = PostgresEventStore(via_proxy, sample_registry(), schema=postgres_schema.name)
        async with store:
            await store.append("s", [Ping(n=0)])  # the statements are prepared by now
            proxy.cut_at(marker, forward=forward)
            appended = None
            try:
                appended = await store.append("t", [Ping(n=1), Ping(n=424242)])
            except BackendError as exc:
                assert "nothing written" in str(exc)
            assert proxy.cuts == 1
            # committed: the append says so, it is not reported as failed (a
            # retry would write it twice); lost before: it failed, and nothing
            # of it is there, nor is the lock left held
            assert (appended is not None) == written
            count = 3 if written else 1
            await assert_intact(store, count)
            next_ = await store.append("t", [Ping(n=3)], expected_version=count - 1)
            assert next_.last_position == count + 1


# -- the server's clock, and copies ----------------------------------------


@pytest.mark.asyncio
async def test_recorded_at_and_now_are_the_servers_clock(
    postgres_schema: PostgresSchema,
) -> None:
    db = await postgres_schema.connect()
    try:
        async with pg_store(postgres_schema) as store:
            before = await db.fetchval("SELECT clock_timestamp()")
            now = await store.now()
            await store.append("s", [Ping(n=1)])
            after = await db.fetchval("SELECT clock_timestamp()")
            (event,) = await read_all(store)
    finally:
        await db.close()
    assert before <= now <= event.recorded_at <= after


@pytest.mark.asyncio
async def test_a_postgres_log_copies_into_sqlite_with_the_same_hashes(
    postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    async with pg_store(postgres_schema) as shared:
        await shared.append("a", [Ping(n=1), Note(text="naïve ✓ 🚀")])
        await shared.append("b", [Ping(n=i) for i in range(50)])
        shared.page_size = 16
        async with SQLiteEventStore(tmp_path / "mirror.db", sample_registry()) as mirror:
            async for page in shared.read_raw():
                await mirror.import_rows(page)
            copied = [row async for page in mirror.read_raw() for row in page]
            assert copied == [row async for page in shared.read_raw() for row in page]
            await assert_intact(mirror, 52)


# -- credentials ------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_no_secret(error: BaseException, *secrets: str) -> None:
    """Neither the error nor anything chained to it quotes a secret."""
    cause: BaseException | None = error
    while cause is not None:
        for secret in secrets:
            assert secret not in str(cause)
            assert secret not in repr(cause)
        cause = cause.__cause__ or cause.__context__


@pytest.mark.asyncio
async def test_a_wrong_password_is_reported_without_the_password() -> None:
    async with password_refusing_server() as server:
        dsn = f"postgresql://ovi:s3cr%40t-pw@127.0.0.1:{server.port}/ovi?sslmode=disable"
        store = store_for(dsn, sample_registry())
        for shown in (repr(store), store.location):
            assert "s3cr" not in shown
        with pytest.raises(BackendError) as caught:
            await store.open()
    message = str(caught.value)
    assert message.startswith(f"cannot connect to postgresql://ovi:***@127.0.0.1:{server.port}/ovi")
    assert "password authentication failed" in message and "28P01" in message
    assert server.passwords == ["s3cr@t-pw"]  # the password was sent, to the server only
    assert_no_secret(caught.value, "s3cr@t-pw", "s3cr%40t-pw")


@pytest.mark.asyncio
async def test_an_unreachable_server_is_reported_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGPASSWORD", "env-secret-pw")
    port = closed_port()
    store = store_for(f"postgresql://ovi:dsn-secret-pw@127.0.0.1:{port}/ovi", sample_registry())
    with pytest.raises(BackendError) as caught:
        await store.open()
    assert str(caught.value).startswith(f"cannot connect to postgresql://ovi:***@127.0.0.1:{port}")
    assert str(caught.value).endswith(": Connection refused")
    assert isinstance(caught.value.__cause__, OSError)
    assert_no_secret(caught.value, "dsn-secret-pw", "env-secret-pw")


@pytest.mark.asyncio
async def test_a_server_that_never_answers_times_out_after_connect_timeout() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # and never a word back

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        dsn = f"postgresql://ovi:pw-123@127.0.0.1:{port}/ovi?connect_timeout=0.3"
        with pytest.raises(BackendError, match="timed out") as caught:
            async with asyncio.timeout(10):
                await store_for(dsn, sample_registry()).open()
        assert_no_secret(caught.value, "pw-123")
        assert accepted  # it did reach the server, which kept quiet
    finally:
        server.close()
        for writer in accepted:
            writer.close()
            await writer.wait_closed()
        await server.wait_closed()


def test_a_dsn_is_required_and_shown_masked() -> None:
    with pytest.raises(ValueError, match="expected a postgresql:// or postgres:// URL"):
        PostgresEventStore("host=db password=hunter2", sample_registry())
    try:
        PostgresEventStore("mysql://u:hunter2@db/x", sample_registry())
    except ValueError as exc:
        assert "hunter2" not in str(exc)
    store = PostgresEventStore("postgres://u:hunter2@db/x", sample_registry(), schema="ovi")
    assert repr(store) == "PostgresEventStore('postgres://u:***@db/x (schema ovi)')"
