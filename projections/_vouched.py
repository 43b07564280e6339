"""What a runner on a keyed log has checked, so that what it folds is that.

A runner opened with a keyed log's key checks each row's HMAC before it folds
anything of it (the safety gates read the projections, and a row written by
someone with write access but not the key must not be acted on). The check is
incremental, once per row per runner; but a row is read again when it is
folded, and a projection that lags or is rebuilt folds rows checked long ago.
Someone who can write the file can, in between, drop its triggers and edit an
already-checked row in place (leaving its hash column alone), delete it, or
retype it out of a fold's type filter. So each checked row's hash (8 bytes of
it), type and stream are remembered; each row read for a fold is hashed again
with the key and must give the hash that was checked, and the read must bring
every checked position of the types (and the stream) it asked for, no more,
no fewer: what is folded is then exactly what was vouched for, whenever it is
read.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import AsyncGenerator, Collection, Iterator, Sequence

import anyio

from eventstore import ChainBreak, EncodedRow, EventStore, LogCorruptedError, RawRow
from eventstore._chain import ChainVerifier

__all__ = ["Vouched"]

#: bytes of each checked row's hash kept (64 bits: a forger without the key
#: cannot aim at them; with its type, a 1M-row log costs 9 MB)
_KEPT = 8
#: type numbers fit a byte; a log of more types than that is read unfiltered
_MAX_TYPES = 255
_CHANGED = "the row is not the one whose chain was checked (edited in place since?)"
_GONE = ("a row whose chain was checked is gone from the log, or changed type (deleted or"
         " edited since?)")


class Vouched:
    """The rows of a keyed log checked so far: each one's hash and type."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._verifier = ChainVerifier(store.chain)
        self._row_hash = store.chain.row_hash
        # Row p's kept bytes at [(p - 1) * _KEPT, p * _KEPT), its type's number
        # at [p - 1]: positions are gap-free from 1.
        self._hashes = bytearray()
        self._types = bytearray()
        self._numbers: dict[str, int] = {}
        # Each stream's checked positions, ascending: a read of one stream
        # must bring all of them (of the types asked for).
        self._streams: dict[str, array[int]] = {}
        self._checking = anyio.Lock()

    @property
    def last_position(self) -> int:
        return self._verifier.last_position

    async def check_up_to(self, head: int, *, log_ends: int | None = None) -> None:
        """Check the chain of the rows after the last checked, up to ``head``;
        ``log_ends``, where the caller read it, is the log's last position
        now: below a row already checked, the log was cut short.

        :raises LogCorruptedError: at the first row that does not verify (and
            from then on, whatever is asked).
        """
        verifier = self._verifier
        # One check at a time: a fold and a checked read may ask at once, and
        # the same rows fed twice would read as a broken chain.
        async with self._checking:
            if (verifier.problem is None and log_ends is not None
                    and log_ends < verifier.last_position):
                verifier.problem = ChainBreak(
                    log_ends + 1, f"the log ends at {log_ends} but its rows up to"
                    f" {verifier.last_position} were checked (rows deleted?)")
            if verifier.problem is None and verifier.last_position < head:
                pages = self._store.read_raw(after=verifier.last_position, until=head)
                try:
                    async for page in pages:
                        if not verifier.feed(page):
                            break
                        self._keep(page)
                finally:
                    await pages.aclose()
                if verifier.problem is None and verifier.last_position < head:
                    verifier.problem = ChainBreak(
                        verifier.last_position + 1, f"the log's head is at {head} but its"
                        f" rows end at {verifier.last_position} (rows deleted?)")
        if verifier.problem is not None:
            raise LogCorruptedError(verifier.problem.position, verifier.problem.reason)

    def _keep(self, page: Sequence[RawRow]) -> None:
        hashes, types, numbers, streams = self._hashes, self._types, self._numbers, self._streams
        for row in page:
            hashes += bytes.fromhex(row[8][: 2 * _KEPT])
            positions = streams.get(row[1])
            if positions is None:
                positions = streams[row[1]] = array("Q")
            positions.append(row[0])
            number = numbers.get(row[3])
            if number is None:
                # 0 for every type past the first 255: such logs read unfiltered.
                number = numbers[row[3]] = len(numbers) + 1 if len(numbers) < _MAX_TYPES else 0
            types.append(number)

    def _wanted(self, types: Collection[str] | None) -> bytes | None:
        """A table marking (with 1) the type numbers of ``types``; None for
        every type."""
        if types is None or 0 in self._numbers.values():
            return None
        table = bytearray(256)
        for name in types:
            number = self._numbers.get(name)
            if number is not None:
                table[number] = 1
        return bytes(table)

    def _expected_between(self, wanted: bytes | None, after: int, before: int) -> int | None:
        """The first checked position in ``(after, before)`` that a read of
        the wanted types must bring; None if there is none."""
        if before <= after + 1:
            return None
        if wanted is None:
            return after + 1
        found = self._types[after:before - 1].translate(wanted).find(1)
        return None if found < 0 else after + 1 + found

    def _of_stream(self, stream: str, wanted: bytes | None, after: int,
                   until: int) -> Iterator[int]:
        """The checked positions in ``(after, until]`` of ``stream`` that a
        read of the wanted types must bring, ascending."""
        positions = self._streams.get(stream, array("Q"))
        types = self._types
        for position in positions[bisect_right(positions, after):bisect_right(positions, until)]:
            if wanted is None or wanted[types[position - 1]]:
                yield position

    async def read_encoded(
        self, *, after: int, until: int, types: Collection[str] | None,
        stream: str | None = None,
    ) -> AsyncGenerator[list[EncodedRow], None]:
        """The store's :meth:`~eventstore.EventStore.read_encoded` of the
        checked rows ``after < position ≤ until`` of ``types`` (and of
        ``stream``, unless None): each row hashed again and matched with the
        hash checked at its position, and none missing that was checked.

        :raises LogCorruptedError: at a row that is not what was checked, or
            was never checked (read only up to :attr:`last_position`), or at a
            checked one of the types asked for that the read did not bring
            (deleted or retyped since).
        """
        if until > self.last_position:
            raise LogCorruptedError(self.last_position + 1, "not checked yet: cannot be folded")
        wanted = self._wanted(types)
        hashes, row_hash = self._hashes, self._row_hash
        # Read unfiltered where the types cannot be told apart here.
        pages = self._store.read_raw(after=after, until=until, stream=stream,
                                     types=types if wanted is not None or types is None
                                     else None)
        # One stream: the positions it must bring, in order (the next one
        # due first); the whole log: the gaps between the rows it brings.
        due = None if stream is None else self._of_stream(stream, wanted, after, until)
        next_due = None if due is None else next(due, None)
        previous = after
        try:
            async for page in pages:
                encoded: list[EncodedRow] = []
                for position, stream_, version, type_, at, instance, data, prev, hash_ in page:
                    if type(position) is not int or position <= previous:
                        # read twice, out of order, or not a position at all
                        raise LogCorruptedError(previous + 1, _CHANGED)
                    if due is None:
                        missing = self._expected_between(wanted, previous, position)
                    else:
                        missing = next_due if next_due is not None and next_due < position else (
                            None)
                        if missing is None and next_due != position:
                            # not a checked row of this stream (a look-alike's)
                            raise LogCorruptedError(position, _CHANGED)
                        next_due = next(due, None)
                    if missing is not None:
                        raise LogCorruptedError(missing, _GONE)
                    previous = position
                    start = (position - 1) * _KEPT
                    try:
                        computed = row_hash(prev, position, stream_, version, type_, at,
                                            instance, data)
                        same = (after < position <= until and computed == hash_
                                and bytes.fromhex(computed[: 2 * _KEPT])
                                == hashes[start:start + _KEPT])
                    except (TypeError, AttributeError, ValueError):
                        same = False  # a column not of its type (SQLite keeps any)
                    if not same:
                        raise LogCorruptedError(position, _CHANGED)
                    if types is not None and type_ not in types:
                        continue  # read unfiltered: not of this fold
                    encoded.append((position, stream_, version, type_, at, instance,
                                    data.encode(), hash_))
                yield encoded
            missing = (self._expected_between(wanted, previous, until + 1) if due is None
                       else next_due)
            if missing is not None:
                raise LogCorruptedError(missing, _GONE)
        finally:
            await pages.aclose()
