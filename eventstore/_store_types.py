"""Plain values shared by the store contract and its backends."""

from __future__ import annotations

import msgspec

__all__ = ["ChainBreak", "EncodedBatch", "EncodedRow", "EventRow", "Head", "RawRow", "VerifyReport"]

#: A log row as stored: position, stream, stream_version, type, recorded_at,
#: instance_id, data, prev_hash, hash.
RawRow = tuple[int, str, int, str, str, str, str, str, str]
#: A log row as :meth:`EventStore.read` decodes it: a :data:`RawRow` without
#: ``prev_hash``.
EventRow = tuple[int, str, int, str, str, str, str, str]
#: A log row for a reader that decodes the data itself: an :data:`EventRow`
#: whose data is the JSON's UTF-8 bytes (msgspec decodes them faster than text,
#: and the backend need not build a ``str``).
EncodedRow = tuple[int, str, int, str, str, str, bytes, str]


class EncodedBatch(msgspec.Struct, frozen=True):
    """One stream's events, already encoded to ``(type, JSON text)`` pairs."""

    stream: str
    expected_version: int | None
    items: tuple[tuple[str, str], ...]


class ChainBreak(msgspec.Struct, frozen=True):
    """The first position where the log is not what its chain says, and why."""

    position: int
    reason: str


class Head(msgspec.Struct, frozen=True):
    """The newest row as the log records it: what an anchor keeps."""

    position: int
    hash: str
    #: ``recorded_at`` of the row at ``position``; None for the empty log
    recorded_at: str | None = None


class VerifyReport(msgspec.Struct, frozen=True):
    """Result of walking the whole hash chain."""

    events_checked: int
    last_position: int
    head_position: int
    problem: ChainBreak | None = None
    #: the recorded head's hash
    head_hash: str = ""
    #: anchors found where they were anchored
    anchors_checked: int = 0
    #: the first anchor the log no longer holds (a rewritten or cut history)
    anchor_problem: ChainBreak | None = None
    #: the log is keyed (its rows are HMACs under a key)
    keyed: bool = False
    #: False for a keyed log walked without its key: structure only
    hashes_checked: bool = True
    #: the storage under the rows is damaged or was tampered with (SQLite:
    #: ``PRAGMA integrity_check``, an index the store did not create): reads
    #: through an index may then miss rows the walk found
    storage_problem: str | None = None
    #: ``anchor_problem`` is that the anchors could not be checked at all (a
    #: keyed log walked without its key), not that one no longer matches
    anchors_unchecked: bool = False

    @property
    def ok(self) -> bool:
        return (self.problem is None and self.anchor_problem is None
                and self.storage_problem is None)
