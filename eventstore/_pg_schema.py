"""The PostgreSQL log's tables, created on first use by whichever process
opens a fresh database (or schema) first.

Several processes may open a fresh log at the same moment: ``CREATE … IF NOT
EXISTS`` is not safe against itself (two sessions both find the table missing,
and the second fails on a catalog unique index), so the DDL runs in one
transaction under a transaction-scoped advisory lock keyed by the schema's
name, and each opener checks again once it holds the lock. An opener that
finds everything in place takes no lock at all.
"""

from __future__ import annotations

import hashlib

import asyncpg

from eventstore._chain import GENESIS_HASH
from eventstore._exceptions import BackendError

__all__ = ["SCHEMA_VERSION", "channel_for", "prepare_schema", "quote_ident"]

#: 2 added ``log_header`` (an older Ovi refuses the log rather than append
#: unkeyed rows to a keyed one)
SCHEMA_VERSION = 2

#: first key of the advisory lock around the DDL (the second: the schema's name)
_DDL_LOCK = 0x6F76_6931  # "ovi1"
_TRIGGERS = ("events_append_only", "events_no_truncate")
_MAX_IDENTIFIER = 63  # bytes: PostgreSQL's NAMEDATALEN - 1


def quote_ident(name: str) -> str:
    """``name`` as an SQL identifier, whatever characters it holds."""
    return '"' + name.replace('"', '""') + '"'


def channel_for(schema: str) -> str:
    """The NOTIFY channel of the log in ``schema``: readable when it fits in
    an identifier, a digest of the name when it does not."""
    channel = f"eventstore.{schema}"
    if len(channel.encode()) > _MAX_IDENTIFIER:
        channel = "eventstore." + hashlib.sha256(schema.encode()).hexdigest()[:32]
    return channel


def _ddl(schema: str, create_schema: bool) -> str:
    s = quote_ident(schema)
    # COLLATE "C": text compares byte by byte, as in SQLite, so recorded_at
    # order is time order and the (stream, stream_version) index is cheap.
    return f"""
{f"CREATE SCHEMA IF NOT EXISTS {s};" if create_schema else ""}
CREATE TABLE IF NOT EXISTS {s}.events (
    position       BIGINT PRIMARY KEY,
    stream         TEXT COLLATE "C" NOT NULL,
    stream_version BIGINT NOT NULL,
    type           TEXT COLLATE "C" NOT NULL,
    recorded_at    TEXT COLLATE "C" NOT NULL,
    instance_id    TEXT NOT NULL,
    data           TEXT NOT NULL,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL,
    UNIQUE (stream, stream_version)
);
CREATE TABLE IF NOT EXISTS {s}.log_head (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    position BIGINT NOT NULL,
    hash     TEXT   NOT NULL
);
INSERT INTO {s}.log_head (id, position, hash) VALUES (1, 0, '{GENESIS_HASH}')
    ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS {s}.log_header (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    header TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.log_schema (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO {s}.log_schema (id, version) VALUES (1, {SCHEMA_VERSION})
    ON CONFLICT (id) DO UPDATE SET version = excluded.version;
CREATE OR REPLACE FUNCTION {s}.events_refuse_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'the event log is append-only'; END $$;
-- What an appender needs once it holds the head's lock, in one round trip.
-- Two statements: in READ COMMITTED each sees what was committed before it
-- began, so the second sees the rows of the writer the first waited for
-- (one statement that also took the lock would not: its snapshot predates
-- the wait).
CREATE OR REPLACE FUNCTION {s}.log_lock_head(
    streams text[],
    OUT head_position bigint, OUT head_hash text, OUT newest_position bigint,
    OUT newest_hash text, OUT newest_recorded_at text, OUT server_now text,
    OUT stream_versions bigint[]
) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    SELECT h.position, h.hash INTO head_position, head_hash
        FROM {s}.log_head AS h WHERE h.id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT (SELECT max(n.position) FROM {s}.events AS n), e.hash, e.recorded_at,
           to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
           ARRAY(SELECT coalesce((SELECT max(v.stream_version) FROM {s}.events AS v
                                  WHERE v.stream = u.name), 0)
                 FROM unnest(streams) WITH ORDINALITY AS u(name, i) ORDER BY u.i)
        INTO newest_position, newest_hash, newest_recorded_at, server_now, stream_versions
        FROM (SELECT head_position AS position) AS h
        LEFT JOIN {s}.events AS e ON e.position = h.position;
END $$;
DROP TRIGGER IF EXISTS events_append_only ON {s}.events;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON {s}.events
    FOR EACH ROW EXECUTE FUNCTION {s}.events_refuse_change();
DROP TRIGGER IF EXISTS events_no_truncate ON {s}.events;
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON {s}.events
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.events_refuse_change();
"""


async def _installed(conn: asyncpg.Connection, schema: str) -> int | None:
    """The schema version installed in ``schema``, or None if anything is missing
    or older (tables, the lock function, or the append-only triggers someone
    dropped)."""
    row = await conn.fetchrow(
        "SELECT to_regclass(format('%I.log_schema', $1::text)) IS NOT NULL"
        " AND to_regclass(format('%I.log_head', $1::text)) IS NOT NULL"
        " AND to_regprocedure(format('%I.log_lock_head(text[])', $1::text)) IS NOT NULL,"
        " (SELECT count(*) FROM pg_trigger"
        "  WHERE tgrelid = to_regclass(format('%I.events', $1::text)) AND tgname = ANY($2))",
        schema, list(_TRIGGERS),
    )
    assert row is not None
    tables, triggers = row
    if not tables:
        return None
    version = await conn.fetchval(f"SELECT max(version) FROM {quote_ident(schema)}.log_schema")
    if version is not None and version > SCHEMA_VERSION:
        return int(version)  # newer: the caller refuses it, whatever else it finds
    if version != SCHEMA_VERSION or triggers != len(_TRIGGERS):
        return None
    return SCHEMA_VERSION


async def prepare_schema(conn: asyncpg.Connection, schema: str, *, create_schema: bool) -> None:
    """Make sure ``schema`` holds the log's tables and triggers at
    :data:`SCHEMA_VERSION`, creating what is missing.

    :raises BackendError: if the schema is of a newer version than this code knows.
    :raises asyncpg.PostgresError: if the database refuses (the caller translates).
    """
    version = await _installed(conn, schema)
    if version is None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _DDL_LOCK, schema)
            version = await _installed(conn, schema)
            if version is None:
                await conn.execute(_ddl(schema, create_schema))
                version = SCHEMA_VERSION
    if version > SCHEMA_VERSION:
        raise BackendError(
            f"the event log has schema version {version}; this Ovi knows up to {SCHEMA_VERSION}"
        )
