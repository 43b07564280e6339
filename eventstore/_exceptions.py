"""Errors raised by the event store.

Every error an adapter can raise derives from :class:`EventStoreError`; driver
exceptions (``sqlite3.Error``, ``asyncpg`` errors, ``msgspec`` errors, …) are
translated at the boundary and chained with ``from``; no message carries a
database password (DSNs are shown through :func:`eventstore.mask_dsn`)::

    EventStoreError
     ├── WrongExpectedVersion   optimistic concurrency: the stream moved on
     ├── EventEncodingError     an event could not be encoded (unregistered type, bad value)
     ├── LogCorruptedError      the log's hash chain or head is inconsistent; appends refused
     ├── ImportRejectedError    copied rows do not continue the log exactly; nothing imported
     ├── MirrorMismatchError    a mirror disagrees with the log it copies (a position, a hash)
     ├── AnchorError            an anchor (or anchor file) is malformed or cannot be read/written
     ├── ChainKeyError          the chain key is missing, wrong or unreadable for this log
     ├── StoreClosedError       the store was used after ``aclose()``
     └── BackendError           the database failed (I/O error, lock timeout, …)
"""

from __future__ import annotations

__all__ = [
    "AnchorError",
    "BackendError",
    "ChainKeyError",
    "EventEncodingError",
    "EventStoreError",
    "ImportRejectedError",
    "LogCorruptedError",
    "MirrorMismatchError",
    "StoreClosedError",
    "WrongExpectedVersion",
]


class EventStoreError(Exception):
    """Root of every error the event store raises."""


class WrongExpectedVersion(EventStoreError):
    """The stream's current version is not the one the caller expected.

    Nothing of the append that raised it was written.
    """

    def __init__(self, stream: str, expected: int | None, actual: int) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        wanted = "no stream" if expected == 0 else f"version {expected}"
        super().__init__(f"stream {stream!r}: expected {wanted}, found version {actual}")


class EventEncodingError(EventStoreError):
    """An event could not be turned into a log row."""


class LogCorruptedError(EventStoreError):
    """The log is not what its hash chain says; nothing is appended after it."""

    def __init__(self, position: int, reason: str) -> None:
        self.position = position
        self.reason = reason
        super().__init__(f"event log corrupted at position {position}: {reason}")


class ImportRejectedError(EventStoreError):
    """Rows given to :meth:`~eventstore.EventStore.import_rows` do not continue
    the log exactly (position, ``prev_hash``, hash, stream version); nothing of
    them was written."""

    def __init__(self, position: int, reason: str) -> None:
        self.position = position
        self.reason = reason
        super().__init__(f"cannot import the row at position {position}: {reason}")


class MirrorMismatchError(EventStoreError):
    """A copy of a log (a host's mirror, the target of a copy) holds a row that
    the log it copies does not: same position, another hash, or a position the
    source does not have. Nothing was copied; the copy is never refolded
    silently over the difference."""

    def __init__(self, position: int, reason: str) -> None:
        self.position = position
        self.reason = reason
        super().__init__(f"position {position}: {reason}")


class StoreClosedError(EventStoreError):
    """The store was used after it was closed (or before it was opened)."""


class BackendError(EventStoreError):
    """The storage backend failed; the operation had no effect."""


class AnchorError(EventStoreError):
    """An anchor given on a command line, or a line of an anchor file, is not
    a position and hash; or the anchor file cannot be read or written."""


class ChainKeyError(EventStoreError):
    """The log is keyed and no key (or another key) was given, or a key was
    given for a log that is not keyed, or the key file cannot be read."""
