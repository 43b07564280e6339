"""The hash chain that makes tampering with the log detectable.

Each row's ``hash`` is ``sha256(prev_hash || canonical bytes of the row)`` in hex,
where ``prev_hash`` is the previous row's hash as 64 ASCII hex digits (64 zeros
before the first row) and the canonical bytes are the compact JSON array
``[position, stream, stream_version, type, recorded_at, instance_id]``, a
newline, then the ``data`` column's UTF-8 bytes. Including the position makes
swapped or renumbered rows break the chain; the ``log_head`` row (last
position and hash, written in the same transaction as the events) makes a cut
tail visible.

Rows copied from another log (:func:`check_continuation`) are held to the
same chain: they must carry on from this log's head exactly.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from eventstore._events import Appended, StreamBatch
from eventstore._exceptions import LogCorruptedError, WrongExpectedVersion
from eventstore._store_types import ChainBreak, EncodedBatch, RawRow, VerifyReport

__all__ = [
    "GENESIS_HASH",
    "ChainVerifier",
    "chain_group",
    "check_batches",
    "check_continuation",
    "check_head",
    "check_name",
    "row_hash",
]

GENESIS_HASH = "0" * 64

_encode = msgspec.json.encode
# format_timestamp's output: fixed width, so that text order is time order.
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


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


def check_head(position: int, hash_: str, newest: int | None, hash_at_head: str | None) -> None:
    """Refuse to write after a head that does not match the newest row: appending
    after a cut or foreign tail would chain new events onto a lie.

    :raises LogCorruptedError: naming the first position that is wrong.
    """
    newest = newest or 0
    if newest != position:
        raise LogCorruptedError(
            min(newest, position) + 1,
            f"the newest row is at position {newest} but the head records {position}",
        )
    if position and hash_at_head != hash_:
        raise LogCorruptedError(position, "the newest row's hash differs from the head")


def check_name(what: str, name: str) -> None:
    """Refuse a stream name or instance id that not every backend can store
    as given: PostgreSQL text holds no NUL character, and neither backend
    stores a lone surrogate. (A log must copy between backends unchanged.)

    :raises ValueError: naming ``what`` and the problem.
    """
    if "\x00" in name:
        raise ValueError(f"{what} must not contain a NUL character, got {name!r}")
    try:
        name.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} must be valid Unicode text, got {name!r}: {exc.reason}") from exc


def check_batches(batches: Iterable[StreamBatch]) -> None:
    """Reject malformed append requests before anything is encoded."""
    for batch in batches:
        if not batch.stream:
            raise ValueError("stream name must not be empty")
        check_name("stream name", batch.stream)
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


def check_continuation(
    rows: Sequence[RawRow], head: tuple[int, str], versions: Mapping[str, int]
) -> ChainBreak | None:
    """Whether ``rows``, copied verbatim from another log, continue this one
    exactly: the next positions after ``head``, each ``prev_hash`` the previous
    row's hash (the head's for the first), each hash verifying, each stream's
    versions going on from ``versions`` (the current version of every stream
    the rows touch), timestamps in the log's format. Returns the first row
    that does not, and why; ``None`` when they all do.
    """
    position, prev = head
    current = dict(versions)
    # Names already checked: a page of a mirror's copy has few distinct streams
    # and writers (the checks and a generator per row were ~15% of an import).
    names_ok: set[str] = set()
    for row in rows:
        if len(row) != 9:
            return ChainBreak(position + 1, f"expected a row of 9 columns, got {len(row)}")
        at, stream, version, type_, recorded_at, instance_id, data, prev_hash, hash_ = row
        if not (isinstance(at, int) and isinstance(version, int) and isinstance(stream, str)
                and isinstance(type_, str) and isinstance(recorded_at, str)
                and isinstance(instance_id, str) and isinstance(data, str)
                and isinstance(prev_hash, str) and isinstance(hash_, str)):
            return ChainBreak(position + 1, "expected integer positions and versions, text"
                              " elsewhere (a RawRow)")
        if at != position + 1:
            return ChainBreak(
                position + 1, f"expected the row at position {position + 1}, got position {at}"
            )
        if prev_hash != prev:
            return ChainBreak(at, "its prev_hash is not the hash of the log's previous row")
        if not _TIMESTAMP.fullmatch(recorded_at):
            return ChainBreak(at, f"recorded_at {recorded_at!r} is not ISO-8601 UTC text")
        for what, name in (("stream name", stream), ("instance id", instance_id)):
            if name in names_ok:
                continue
            try:
                check_name(what, name)
            except ValueError as exc:
                return ChainBreak(at, str(exc))
            names_ok.add(name)
        expected_version = current.get(stream, 0) + 1
        if version != expected_version:
            return ChainBreak(
                at, f"stream {stream!r} is at version {expected_version - 1}, the row has"
                f" version {version}"
            )
        if row_hash(prev_hash, at, stream, version, type_, recorded_at, instance_id,
                    data) != hash_:
            return ChainBreak(at, "its hash does not match the row")
        current[stream] = version
        position, prev = at, hash_
    return None
