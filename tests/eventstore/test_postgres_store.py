"""The PostgreSQL backend: the contract suite, plus what only a shared server
has (other connections and processes, NOTIFY, the schema, credentials)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TypeVar

import asyncpg
import pytest

from eventstore import EventRegistry, EventStore, format_timestamp, row_hash
from eventstore.postgres import PostgresEventStore
from tests.eventstore.contract import EventStoreContract, LogTamperer, StoreFactory
from tests.eventstore.sample_events import sample_registry
from tests.postgres import PostgresSchema

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
        ) -> EventStore:
            return PostgresEventStore(
                postgres_schema.server_dsn, registry or sample_registry(),
                schema=postgres_schema.name, clock=clock, instance_id=instance_id,
            )  # fmt: skip

        return make

    @pytest.fixture
    def tamperer(self, postgres_schema: PostgresSchema) -> LogTamperer:
        return PostgresTamperer(postgres_schema)
