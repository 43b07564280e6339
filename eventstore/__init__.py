"""A generic, append-only, hash-chained event log. Knows nothing about clouds."""

from __future__ import annotations

from eventstore._chain import GENESIS_HASH, row_hash
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
    BackendError,
    EventEncodingError,
    EventStoreError,
    LogCorruptedError,
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
from eventstore._store_types import ChainBreak, EncodedRow, RawRow, VerifyReport
from eventstore.sqlite import SQLiteEventStore

__all__ = [
    "ANY",
    "GENESIS_HASH",
    "NO_STREAM",
    "Appended",
    "BackendError",
    "ChainBreak",
    "EncodedRow",
    "Event",
    "EventEncodingError",
    "EventRegistry",
    "EventStore",
    "EventStoreError",
    "LogCorruptedError",
    "RawRow",
    "RecordedEvent",
    "SQLiteEventStore",
    "StoreClosedError",
    "StreamBatch",
    "UnknownEvent",
    "VerifyReport",
    "WrongExpectedVersion",
    "default_instance_id",
    "format_timestamp",
    "parse_timestamp",
    "process_home",
    "row_hash",
]
