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

A *keyed* log (:class:`Chain` with a key) hashes each row with HMAC-SHA256
under the key instead, over the same bytes; its header (:class:`LogHeader`,
written when the log is created) says so and names the key by a fingerprint,
and the first row's ``prev_hash`` is the HMAC of the header, so the header is
part of what the chain commits to. Whoever can write the log but lacks the key
cannot make a row that verifies. A log is keyed from its first row or never.

Anchors (:mod:`eventstore._anchors`) pin the chain from outside: the walk
checks that each anchored position still holds the anchored hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import msgspec

from eventstore._anchors import Anchor
from eventstore._events import Appended, StreamBatch
from eventstore._exceptions import ChainKeyError, LogCorruptedError, WrongExpectedVersion
from eventstore._store_types import ChainBreak, EncodedBatch, RawRow, VerifyReport

__all__ = [
    "GENESIS_HASH",
    "UNKEYED",
    "Chain",
    "ChainVerifier",
    "LogHeader",
    "chain_group",
    "check_batches",
    "check_chained",
    "check_continuation",
    "check_head",
    "check_header_unchanged",
    "check_joins",
    "check_name",
    "check_versions",
    "row_hash",
]

GENESIS_HASH = "0" * 64

_encode = msgspec.json.encode
_sha256 = hashlib.sha256
# format_timestamp's output: fixed width, so that text order is time order.
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


RowHasher = Callable[[str, int, str, int, str, str, str, str], str]

#: the ``chain`` of a header whose rows are plain SHA-256
SHA256 = "sha256"
#: the ``chain`` of a keyed header: HMAC-SHA256 under the log's key
HMAC_SHA256 = "hmac-sha256"
#: a chain key shorter than this is refused (HMAC-SHA256 wants 32 random bytes)
MIN_KEY_BYTES = 16


class LogHeader(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What kind of chain a log has, fixed when it is created."""

    format: int = 1
    chain: str = SHA256
    #: fingerprint of the key of a keyed log (never the key)
    key_id: str | None = None

    @property
    def keyed(self) -> bool:
        return self.chain != SHA256

    def encode(self) -> str:
        return _encode(self).decode()


#: the header of an unkeyed log (also what a log written before headers has)
UNKEYED = LogHeader()
_decode_header = msgspec.json.Decoder(LogHeader).decode


def decode_header(text: str | None, location: str) -> LogHeader:
    """The header stored as ``text`` (None: a log from before headers, unkeyed).

    :raises LogCorruptedError: if it is not a header this code knows.
    """
    if text is None:
        return UNKEYED
    try:
        header = _decode_header(text)
    except msgspec.DecodeError as exc:
        raise LogCorruptedError(0, f"the log header of {location} is unreadable: {exc}") from exc
    if header.format != 1 or header.chain not in (SHA256, HMAC_SHA256) or (
            header.keyed and not header.key_id):
        raise LogCorruptedError(0, f"the log header of {location} is not one this code knows:"
                                f" {text}")
    return header


def key_fingerprint(key: bytes) -> str:
    """Names a key without revealing it: an HMAC of a constant under the key."""
    return hmac.new(key, b"ovi chain key id", hashlib.sha256).hexdigest()[:16]


def keyed_header(key: bytes) -> LogHeader:
    return LogHeader(chain=HMAC_SHA256, key_id=key_fingerprint(key))


class Chain:
    """How one log's rows are hashed: its header and, for a keyed log, the key.

    A keyed log opened without its key (a read-only audit) can still be walked
    for its structure — gap-free positions, each ``prev_hash`` linking to the
    row before, the head, anchors — but not have its row hashes checked:
    :attr:`checks_hashes` is then False.

    :raises ChainKeyError: if a key is given for an unkeyed log, or a key
        other than the log's for a keyed one.
    """

    def __init__(self, header: LogHeader, key: bytes | None, location: str) -> None:
        if key is not None and not header.keyed:
            raise ChainKeyError(
                f"{location}: a chain key was given but this log is not keyed (a log is"
                " keyed from its first event or never): leave the key out, or if the log"
                " was created keyed, its header was rewritten"
            )
        if key is not None and key_fingerprint(key) != header.key_id:
            raise ChainKeyError(
                f"{location}: wrong chain key: the log was created with key"
                f" {header.key_id}, the key given is {key_fingerprint(key)} (or its header"
                " was rewritten)"
            )
        self.header = header
        self.location = location
        self._key = key
        #: hashes one row as this log does (:meth:`row_hash`), bound once: it
        #: is called for every row appended, copied or verified, and a method
        #: that looks up the key and the header each time cost ~0.3 µs a row
        self.row_hash: RowHasher = _hasher(header, key, location)

    @property
    def keyed(self) -> bool:
        return self.header.keyed

    @property
    def checks_hashes(self) -> bool:
        return not self.header.keyed or self._key is not None

    @property
    def genesis(self) -> str | None:
        """The first row's ``prev_hash``; None for a keyed log without its key."""
        if not self.header.keyed:
            return GENESIS_HASH
        if self._key is None:
            return None
        return hmac.new(self._key, self.header.encode().encode(), hashlib.sha256).hexdigest()

    def require_key(self) -> None:
        """:raises ChainKeyError: if this is a keyed log and no key was given."""
        if self.header.keyed and self._key is None:
            raise ChainKeyError(
                f"{self.location}: the log is keyed (key {self.header.key_id}) and no chain"
                " key was given: give --chain-key-file, or the ovi-chain-key credential"
            )


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
    # One buffer hashed in one call: ~0.15 µs a row less than four updates.
    return _sha256(prev_hash.encode()
                   + _encode((position, stream, stream_version, type_, recorded_at, instance_id))
                   + b"\n" + data.encode()).hexdigest()


def _hasher(header: LogHeader, key: bytes | None, location: str) -> RowHasher:
    """How a log with ``header`` (and ``key``) hashes one row: :func:`row_hash`
    for an unkeyed log, HMAC-SHA256 under the key over the same bytes for a
    keyed one."""
    if key is None:
        if not header.keyed:
            return row_hash

        def keyless(*_: object) -> str:
            raise ChainKeyError(f"{location}: cannot hash rows of a keyed log without its key")

        return keyless
    # The key's inner and outer pads are absorbed once; each row copies them
    # (a fresh hmac.new per row was ~0.7 µs more).
    keyed = hmac.new(key, digestmod=hashlib.sha256)

    def keyed_row_hash(prev_hash: str, position: int, stream: str, stream_version: int,
                       type_: str, recorded_at: str, instance_id: str, data: str) -> str:
        digest = keyed.copy()
        digest.update(prev_hash.encode()
                      + _encode((position, stream, stream_version, type_, recorded_at,
                                 instance_id))
                      + b"\n" + data.encode())
        return digest.hexdigest()

    return keyed_row_hash


class ChainVerifier:
    """Walks rows in position order and remembers the first break, and the
    first anchor the log no longer holds."""

    def __init__(self, chain: Chain | None = None, anchors: Iterable[Anchor] = ()) -> None:
        self.checked = 0
        self.last_position = 0
        self._chain = chain
        self._prev_hash = GENESIS_HASH if chain is None else chain.genesis
        self.problem: ChainBreak | None = None
        self._anchors: dict[int, str] = {}
        self.anchors_checked = 0
        self._last_good_anchor = 0
        self.anchor_problem: ChainBreak | None = None
        #: the anchor problem is that no anchor could be checked (no key)
        self.anchors_unchecked = False
        for anchor in anchors:
            known = self._anchors.setdefault(anchor.position, anchor.hash)
            if known != anchor.hash and self.anchor_problem is None:
                # Two heads for one position: the log was cut back and written
                # on, and both histories were anchored; this is the proof.
                self.anchor_problem = ChainBreak(
                    anchor.position, f"two anchors disagree about position {anchor.position}"
                    f" ({known[:16]}… and {anchor.hash[:16]}…): the log's history was"
                    f" rewritten at or before position {anchor.position}")
        if self._anchors and chain is not None and not chain.checks_hashes:
            # A keyed log walked without its key: its hashes are HMACs nobody
            # here can recompute, so a row edited with its hash left alone still
            # "matches" its anchor; and whether a log is keyed is said by its
            # header, which a forger writes too. An anchor then vouches for nothing.
            position = min(self._anchors)
            self.anchors_unchecked = self.anchor_problem is None
            self.anchor_problem = self.anchor_problem or ChainBreak(
                position, f"the log says it is keyed (key {chain.header.key_id}) and no"
                " chain key was given: without the key no row hash can be recomputed, so"
                " the anchors (from position"
                f" {position}) cannot be checked; give the chain key (and if the log was"
                " not created keyed, its header was rewritten)")
        # Position 0 is the empty log: its "hash" is the genesis.
        if 0 in self._anchors and self._prev_hash is not None:
            self._anchor(0, self._prev_hash)

    def _anchor(self, position: int, hash_: str) -> None:
        expected = self._anchors.get(position)
        if expected is None or self.anchor_problem is not None:
            return
        if expected == hash_:
            self.anchors_checked += 1
            self._last_good_anchor = position
            return
        since = (f"after position {self._last_good_anchor}, the last anchor that still matches"
                 if self.anchors_checked else "no earlier anchor matches")
        self.anchor_problem = ChainBreak(
            position, f"the row at position {position} no longer has the anchored hash"
            f" {expected[:16]}… (it has {hash_[:16]}…): history was rewritten at or before"
            f" position {position} ({since})")

    def feed(self, rows: Iterable[RawRow]) -> bool:
        """Check a page of rows; return False once a break has been found."""
        chain = self._chain
        if chain is None:
            hash_row: RowHasher | None = row_hash
        else:
            hash_row = chain.row_hash if chain.checks_hashes else None
        # Kept in locals for the walk (a verify walks every row of the log)
        # and stored back at the end, and wherever the walk stops.
        last, prev_hash, checked = self.last_position, self._prev_hash, self.checked
        anchored = bool(self._anchors)
        try:
            for row in rows:
                position, stream, version, type_, recorded_at, instance_id, data, prev, hash_ = row
                if not (type(position) is int and type(version) is int and type(stream) is str
                        and type(type_) is str and type(recorded_at) is str
                        and type(instance_id) is str and type(data) is str
                        and type(prev) is str and type(hash_) is str):
                    # SQLite keeps whatever type is written into a column (a BLOB
                    # in the TEXT data column reads the same to every reader): no
                    # hash of this code's can match it, so say where, not crash.
                    self.problem = ChainBreak(
                        position if isinstance(position, int) else last + 1,
                        "the row's columns are not of their types (integer position and"
                        f" version, text elsewhere): {_column_types(row)}")
                    return False
                if position != last + 1:
                    expected_position = last + 1
                    missing = (
                        f"position {expected_position}"
                        if position == expected_position + 1
                        else f"positions {expected_position}..{position - 1}"
                    )
                    self.problem = ChainBreak(expected_position,
                                              f"{missing} missing (row deleted?)")
                    return False
                if prev_hash is not None and prev != prev_hash:
                    self.problem = ChainBreak(
                        position, "prev_hash does not match the previous row (rows reordered?)"
                    )
                    return False
                # A keyed log without its key is walked for its structure only.
                if hash_row is not None and hash_row(prev, position, stream, version, type_,
                                                     recorded_at, instance_id, data) != hash_:
                    self.problem = ChainBreak(position, "hash does not match the row (row"
                                              " edited?)" if chain is None or not chain.keyed
                                              else "its HMAC does not verify under the log's"
                                              " key (row edited or forged without the key?)")
                    return False
                if anchored:
                    self._anchor(position, hash_)
                prev_hash = hash_
                last = position
                checked += 1
        finally:
            self.last_position, self._prev_hash, self.checked = last, prev_hash, checked
        return True

    def finish(self, head_position: int, head_hash: str,
               storage_problem: str | None = None) -> VerifyReport:
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
            elif head_hash != (self._prev_hash or head_hash):
                self.problem = ChainBreak(head_position, "last hash differs from the recorded head")
        if self.problem is None and self.anchor_problem is None:
            beyond = [p for p in self._anchors if p > self.last_position]
            if beyond:
                position = min(beyond)
                self.anchor_problem = ChainBreak(
                    self.last_position + 1, f"the log ends at position {self.last_position}"
                    f" but an anchor records position {position}: rows were cut (and the"
                    " history maybe rewritten)")
        return VerifyReport(
            events_checked=self.checked,
            last_position=self.last_position,
            head_position=head_position,
            problem=self.problem,
            head_hash=head_hash,
            anchors_checked=self.anchors_checked,
            anchor_problem=self.anchor_problem,
            keyed=self._chain is not None and self._chain.keyed,
            hashes_checked=self._chain is None or self._chain.checks_hashes,
            storage_problem=storage_problem,
            anchors_unchecked=self.anchors_unchecked,
        )


def _column_types(row: RawRow) -> str:
    names = ("position", "stream", "stream_version", "type", "recorded_at", "instance_id",
             "data", "prev_hash", "hash")
    return ", ".join(f"{name} is {type(value).__name__}" for name, value in zip(names, row,
                                                                                  strict=True)
                     if type(value) is not (int if name in ("position", "stream_version")
                                            else str))


def check_header_unchanged(
    chain: Chain, text: str | None, *,
    consequence: str = "nothing was written: reopen the log (with its chain key if it is keyed)",
) -> None:
    """Refuse to append to a log whose header is no longer the one this store
    read when it opened the log: another writer made it keyed while it was
    still empty (and may have appended since), and a row hashed the old way
    would make the log half one kind, half the other. Call it in every append
    transaction, under the write lock.

    :raises ChainKeyError: naming the header the log has now.
    """
    now = decode_header(text, chain.location)
    if now != chain.header:
        raise ChainKeyError(
            f"{chain.location}: the log's header changed since this store opened it empty"
            f" (it is now {'keyed, key ' + str(now.key_id) if now.keyed else 'unkeyed'});"
            f" {consequence}"
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
    hash_row: RowHasher | None = None,
) -> tuple[list[RawRow], list[Appended | WrongExpectedVersion]]:
    """Plan one group commit: check each request's expectations against the
    stream versions (``versions`` holds the current version of every stream the
    group touches and is updated in place) and chain the rows of the requests
    that pass onto ``head``. A request that fails contributes no row."""
    hash_row = hash_row or row_hash
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
                hash_ = hash_row(prev, position, stream, version, type_, recorded_at,
                                 instance_id, data)
                rows.append((position, stream, version, type_, recorded_at, instance_id, data,
                             prev, hash_))
                prev = hash_
            versions[stream] = version
        results.append(Appended(first, position, tentative))
    return rows, results


def check_continuation(
    rows: Sequence[RawRow], head: tuple[int, str], versions: Mapping[str, int],
    hash_row: RowHasher | None = None,
) -> ChainBreak | None:
    """Whether ``rows``, copied verbatim from another log, continue this one
    exactly: the next positions after ``head``, each ``prev_hash`` the previous
    row's hash (the head's for the first), each hash verifying, each stream's
    versions going on from ``versions`` (the current version of every stream
    the rows touch), timestamps in the log's format. Returns the first
    problem found, and why; ``None`` when they all do. ``hash_row`` is the
    target log's (:meth:`Chain.row_hash`): rows of a log keyed otherwise fail.

    A copy made by a helper process (:mod:`eventstore._import_worker`) runs
    :func:`check_chained` without the versions where the rows were read, and
    :func:`check_joins` and :func:`check_versions` where they are written,
    under the target's write lock.
    """
    return check_chained(rows, head, hash_row, versions)


def check_chained(
    rows: Sequence[RawRow], head: tuple[int, str] | None, hash_row: RowHasher | None = None,
    versions: Mapping[str, int] | None = None,
) -> ChainBreak | None:
    """What :func:`check_continuation` checks: the rows' shape, positions,
    links, hashes, times and names, and with ``versions`` their stream
    versions (checked before a row's hash: an edited version is named as
    such). With ``head`` None the first row's position and ``prev_hash`` are
    taken as they are (whoever writes the rows checks them against its head:
    :func:`check_joins`, and the versions: :func:`check_versions`)."""
    hash_row = hash_row or row_hash
    position, prev = head if head is not None else (0, "")
    current = None if versions is None else dict(versions)
    joined = head is not None
    # Names already checked: a page of a mirror's copy has few distinct streams
    # and writers (the checks and a generator per row were ~15% of an import).
    names_ok: set[str] = set()
    last_time = ""
    for row in rows:
        if len(row) != 9:
            return ChainBreak(position + 1, f"expected a row of 9 columns, got {len(row)}")
        at, stream, version, type_, recorded_at, instance_id, data, prev_hash, hash_ = row
        # Exact types (a bool is not a position, a str subclass not text).
        if not (type(at) is int and type(version) is int and type(stream) is str
                and type(type_) is str and type(recorded_at) is str
                and type(instance_id) is str and type(data) is str
                and type(prev_hash) is str and type(hash_) is str):
            return ChainBreak(position + 1, "expected integer positions and versions, text"
                              " elsewhere (a RawRow)")
        if not joined:
            joined = True
            position, prev = at - 1, prev_hash
        if at != position + 1:
            return ChainBreak(
                position + 1, f"expected the row at position {position + 1}, got position {at}"
            )
        if prev_hash != prev:
            return ChainBreak(at, "its prev_hash is not the hash of the log's previous row")
        # The rows of one commit share their time: checked when it changes.
        if recorded_at != last_time:
            if not _TIMESTAMP.fullmatch(recorded_at):
                return ChainBreak(at, f"recorded_at {recorded_at!r} is not ISO-8601 UTC text")
            last_time = recorded_at
        for what, name in (("stream name", stream), ("instance id", instance_id)):
            if name in names_ok:
                continue
            try:
                check_name(what, name)
            except ValueError as exc:
                return ChainBreak(at, str(exc))
            names_ok.add(name)
        if current is not None:
            expected_version = current.get(stream, 0) + 1
            if version != expected_version:
                return _version_break(at, stream, expected_version, version)
            current[stream] = version
        if hash_row(prev_hash, at, stream, version, type_, recorded_at, instance_id,
                    data) != hash_:
            return ChainBreak(at, "its hash does not match the row")
        position, prev = at, hash_
    return None


def _version_break(at: int, stream: str, expected: int, version: int) -> ChainBreak:
    return ChainBreak(at, f"stream {stream!r} is at version {expected - 1}, the row has"
                      f" version {version}")


def check_joins(first: RawRow, head: tuple[int, str]) -> ChainBreak | None:
    """Whether ``first`` (a row :func:`check_chained` accepted) is the next
    row after ``head``: its position and ``prev_hash``."""
    position, prev = head
    if first[0] != position + 1:
        return ChainBreak(
            position + 1, f"expected the row at position {position + 1}, got position {first[0]}")
    if first[7] != prev:
        return ChainBreak(first[0], "its prev_hash is not the hash of the log's previous row")
    return None


def check_versions(rows: Sequence[RawRow], versions: Mapping[str, int]) -> ChainBreak | None:
    """Whether each row's stream version goes on from ``versions`` (the current
    version of every stream the rows touch) and from the rows before it; the
    first row that does not, and why. ``rows`` passed :func:`check_chained`."""
    current = dict(versions)
    for row in rows:
        at, stream, version = row[0], row[1], row[2]
        expected_version = current.get(stream, 0) + 1
        if version != expected_version:
            return _version_break(at, stream, expected_version, version)
        current[stream] = version
    return None
