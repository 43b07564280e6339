"""The hash chain that makes tampering with the log detectable.

Each row's ``hash`` is ``sha256(prev_hash || canonical bytes of the row)`` in hex,
where ``prev_hash`` is the previous row's hash as 64 ASCII hex digits (64 zeros
before the first row) and the canonical bytes are the compact JSON array
``[position, stream, stream_version, type, recorded_at, instance_id]``, a
newline, then the ``data`` column's UTF-8 bytes. Including the position makes
swapped or renumbered rows break the chain; the ``log_head`` row (last
position and hash, written in the same transaction as the events) makes a cut
tail visible.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import msgspec

from eventstore._events import Appended, StreamBatch
from eventstore._exceptions import WrongExpectedVersion
from eventstore._store_types import ChainBreak, EncodedBatch, RawRow, VerifyReport

__all__ = ["GENESIS_HASH", "ChainVerifier", "chain_group", "check_batches", "row_hash"]

GENESIS_HASH = "0" * 64

_encode = msgspec.json.encode


def row_hash(
    prev_hash: str,
    position: int,
    stream: str,
    stream_version: int,
    type_: str,
    recorded_at: str,
    instance_id: str,
    data: str,
) -> str:
    """Hash of one row chained onto ``prev_hash``."""
    header = _encode((position, stream, stream_version, type_, recorded_at, instance_id))
    digest = hashlib.sha256(prev_hash.encode())
    digest.update(header)
    digest.update(b"\n")
    digest.update(data.encode())
    return digest.hexdigest()


class ChainVerifier:
    """Walks rows in position order and remembers the first break."""

    def __init__(self) -> None:
        self.checked = 0
        self.last_position = 0
        self._prev_hash = GENESIS_HASH
        self.problem: ChainBreak | None = None

    def feed(self, rows: Iterable[RawRow]) -> bool:
        """Check a page of rows; return False once a break has been found."""
        for row in rows:
            position, stream, version, type_, recorded_at, instance_id, data, prev, hash_ = row
            expected_position = self.last_position + 1
            if position != expected_position:
                missing = (
                    f"position {expected_position}"
                    if position == expected_position + 1
                    else f"positions {expected_position}..{position - 1}"
                )
                self.problem = ChainBreak(expected_position, f"{missing} missing (row deleted?)")
                return False
            if prev != self._prev_hash:
                self.problem = ChainBreak(
                    position, "prev_hash does not match the previous row (rows reordered?)"
                )
                return False
            recomputed = row_hash(prev, position, stream, version, type_, recorded_at,
                                  instance_id, data)
            if recomputed != hash_:
                self.problem = ChainBreak(position, "hash does not match the row (row edited?)")
                return False
            self._prev_hash = hash_
            self.last_position = position
            self.checked += 1
        return True

    def finish(self, head_position: int, head_hash: str) -> VerifyReport:
        """Compare the walked chain with the recorded head and build the report."""
        if self.problem is None:
            if head_position > self.last_position:
                self.problem = ChainBreak(
                    self.last_position + 1,
                    f"log ends at position {self.last_position} but its head records "
                    f"position {head_position} (tail truncated)",
                )
            elif head_position < self.last_position:
                self.problem = ChainBreak(
                    head_position + 1, "rows beyond the recorded head (written outside the store)"
                )
            elif head_hash != self._prev_hash:
                self.problem = ChainBreak(head_position, "last hash differs from the recorded head")
        return VerifyReport(
            events_checked=self.checked,
            last_position=self.last_position,
            head_position=head_position,
            problem=self.problem,
        )


def check_batches(batches: Iterable[StreamBatch]) -> None:
    """Reject malformed append requests before anything is encoded."""
    for batch in batches:
        if not batch.stream:
            raise ValueError("stream name must not be empty")
        if batch.expected_version is not None and batch.expected_version < 0:
            raise ValueError(f"expected_version must be ≥ 0, got {batch.expected_version}")


def chain_group(
    group: list[tuple[EncodedBatch, ...]],
    versions: dict[str, int],
    head: tuple[int, str],
    recorded_at: str,
    instance_id: str,
) -> tuple[list[RawRow], list[Appended | WrongExpectedVersion]]:
    """Plan one group commit: check each request's expectations against the
    stream versions (``versions`` holds the current version of every stream the
    group touches and is updated in place) and chain the rows of the requests
    that pass onto ``head``. A request that fails contributes no row."""
    rows: list[RawRow] = []
    results: list[Appended | WrongExpectedVersion] = []
    position, prev = head
    for request in group:
        tentative: dict[str, int] = {}
        conflict: WrongExpectedVersion | None = None
        for batch in request:
            current = tentative.get(batch.stream, versions[batch.stream])
            expected = batch.expected_version
            if expected is not None and expected != current:
                conflict = WrongExpectedVersion(batch.stream, expected, current)
                break
            tentative[batch.stream] = current + len(batch.items)
        if conflict is not None:
            results.append(conflict)
            continue
        first = position + 1
        for batch in request:
            version = versions[batch.stream]
            stream = batch.stream
            for type_, data in batch.items:
                position += 1
                version += 1
                hash_ = row_hash(prev, position, stream, version, type_, recorded_at,
                                 instance_id, data)
                rows.append((position, stream, version, type_, recorded_at, instance_id, data,
                             prev, hash_))
                prev = hash_
            versions[stream] = version
        results.append(Appended(first, position, tentative))
    return rows, results
