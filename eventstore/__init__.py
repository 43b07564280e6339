"""A generic, append-only, hash-chained event log. Knows nothing about clouds.

Two backends implement :class:`EventStore`: :class:`SQLiteEventStore` (one
file, embedded) and :class:`PostgresEventStore` (one database shared by
several hosts); :class:`MirroredStore` reads a shared log through a local
SQLite copy of it; :func:`store_for` picks one from a path or a DSN, and
:func:`copy_new_rows` copies a log's rows into another, checked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventstore._anchors import Anchor, append_anchor, parse_anchor, read_anchors
from eventstore._chain import GENESIS_HASH, MIN_KEY_BYTES, UNKEYED, Chain, LogHeader, row_hash
from eventstore._copy import copy_new_rows
from eventstore._dsn import is_postgres_dsn, looks_like_conninfo, mask_dsn
from eventstore._events import (
    ANY,
    NO_STREAM,
    Appended,
    Event,
    EventRegistry,
    RecordedEvent,
    StreamBatch,
    UnknownEvent,
)
from eventstore._exceptions import (
    AnchorError,
    BackendError,
    ChainKeyError,
    EventEncodingError,
    EventStoreError,
    ImportRejectedError,
    LogCorruptedError,
    MirrorMismatchError,
    StoreClosedError,
    WrongExpectedVersion,
)
from eventstore._store import (
    EventStore,
    default_instance_id,
    format_timestamp,
    parse_timestamp,
    process_home,
)
from eventstore._store_for import conninfo_refusal, store_for
from eventstore._store_types import ChainBreak, EncodedRow, Head, RawRow, VerifyReport
from eventstore.mirror import MirroredStore
from eventstore.sqlite import SQLiteEventStore

if TYPE_CHECKING:
    from eventstore.postgres import PostgresEventStore
else:

    def __getattr__(name: str) -> object:
        # The PostgreSQL driver is imported when first asked for, so that a
        # program using only SQLite logs does not pay for loading it. (Hidden
        # from mypy, which would otherwise accept any name from this package.)
        if name == "PostgresEventStore":
            from eventstore.postgres import PostgresEventStore

            return PostgresEventStore
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ANY",
    "GENESIS_HASH",
    "MIN_KEY_BYTES",
    "NO_STREAM",
    "UNKEYED",
    "Anchor",
    "AnchorError",
    "Appended",
    "BackendError",
    "Chain",
    "ChainBreak",
    "ChainKeyError",
    "EncodedRow",
    "Event",
    "EventEncodingError",
    "EventRegistry",
    "EventStore",
    "EventStoreError",
    "Head",
    "ImportRejectedError",
    "LogCorruptedError",
    "LogHeader",
    "MirrorMismatchError",
    "MirroredStore",
    "PostgresEventStore",
    "RawRow",
    "RecordedEvent",
    "SQLiteEventStore",
    "StoreClosedError",
    "StreamBatch",
    "UnknownEvent",
    "VerifyReport",
    "WrongExpectedVersion",
    "append_anchor",
    "conninfo_refusal",
    "copy_new_rows",
    "default_instance_id",
    "format_timestamp",
    "is_postgres_dsn",
    "looks_like_conninfo",
    "mask_dsn",
    "parse_anchor",
    "parse_timestamp",
    "process_home",
    "read_anchors",
    "row_hash",
    "store_for",
]

