"""A PostgreSQL schema of its own for every test that needs a database.

Tests find the server through ``$OVI_TEST_POSTGRES_DSN`` (e.g.
``postgresql://postgres@127.0.0.1:5432/test``) and skip, saying so, without
it. Each test gets a fresh schema, dropped with everything in it afterwards,
so tests never see each other's tables and can run against a shared server.
Any suite (event store, projections, engine) asks for ``postgres_schema``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import asyncpg
import msgspec
import pytest
import pytest_asyncio

from eventstore import EventRegistry, MirroredStore, SQLiteEventStore
from eventstore.postgres import PostgresEventStore

__all__ = ["LOG_BACKENDS", "POSTGRES_DSN_VARIABLE", "PostgresSchema", "create_schema",
           "drop_schema", "log_backend", "mirrored_log", "postgres_schema", "quote_ident",
           "temporary_schema"]

POSTGRES_DSN_VARIABLE = "OVI_TEST_POSTGRES_DSN"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresSchema(msgspec.Struct, frozen=True):
    """A test's schema on the test server."""

    #: the server's DSN, as given in ``$OVI_TEST_POSTGRES_DSN``
    server_dsn: str
    #: the schema's name (it exists when the test starts)
    name: str

    @property
    def dsn(self) -> str:
        """A DSN whose sessions use this schema (``options=-csearch_path=…``),
        for code that takes only a DSN (``store_for``, child processes)."""
        return with_search_path(self.server_dsn, self.name)

    async def connect(self) -> asyncpg.Connection:
        """A plain connection in this schema, as an operator's ``psql`` would have."""
        return await asyncpg.connect(self.dsn)


def with_search_path(dsn: str, schema: str) -> str:
    separator = "&" if "?" in dsn else "?"
    return f"{dsn}{separator}options={quote(f'-csearch_path={quote_ident(schema)}', safe='')}"


async def drop_schema(server_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")
    finally:
        await conn.close()


async def create_schema() -> PostgresSchema:
    """A new, empty schema on the test server (drop it with :func:`drop_schema`);
    skips the test when there is no server to test against."""
    server_dsn = os.environ.get(POSTGRES_DSN_VARIABLE)
    if not server_dsn:
        pytest.skip(f"${POSTGRES_DSN_VARIABLE} is not set: no PostgreSQL server to test against")
    schema = PostgresSchema(server_dsn, f"test_{secrets.token_hex(6)}")
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {quote_ident(schema.name)}")
    finally:
        await conn.close()
    return schema


@asynccontextmanager
async def temporary_schema() -> AsyncIterator[PostgresSchema]:
    """A new, empty schema on the test server, dropped on leaving; skips the
    test when there is no server to test against."""
    schema = await create_schema()
    try:
        yield schema
    finally:
        await drop_schema(schema.server_dsn, schema.name)


#: the logs the store-touching suites (engine, projections) run on: a SQLite
#: file, or a PostgreSQL log read through a SQLite mirror (``log_backend``)
LOG_BACKENDS = ("sqlite", "postgres-mirror")


@asynccontextmanager
async def mirrored_log(
    mirror: Path, registry: EventRegistry, *, instance_id: str | None = None,
    clock: Callable[[], datetime] | None = None,
) -> AsyncIterator[MirroredStore]:
    """An open :class:`MirroredStore`: a PostgreSQL log in a schema of its own
    (dropped afterwards) read through the SQLite file ``mirror``."""
    async with temporary_schema() as schema:
        shared = PostgresEventStore(schema.server_dsn, registry, schema=schema.name,
                                    instance_id=instance_id, clock=clock)
        local = SQLiteEventStore(mirror, registry, instance_id=shared.instance_id,
                                 synchronous="NORMAL")
        async with MirroredStore(shared, local) as store:
            yield store


@pytest.fixture(params=LOG_BACKENDS)
def log_backend(request: pytest.FixtureRequest) -> str:
    """The log a store-touching test runs on: ``sqlite`` or ``postgres-mirror``
    (skipped, saying why, without ``$OVI_TEST_POSTGRES_DSN``)."""
    return str(request.param)


@pytest_asyncio.fixture
async def postgres_schema() -> AsyncIterator[PostgresSchema]:
    """A new, empty schema on the test server; dropped after the test."""
    async with temporary_schema() as schema:
        yield schema
