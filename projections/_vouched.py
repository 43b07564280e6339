"""What a runner on a keyed log has checked, so that what it folds is that.

A runner opened with a keyed log's key checks each row's HMAC before it folds
anything of it (the safety gates read the projections, and a row written by
someone with write access but not the key must not be acted on). The check is
incremental, once per row per runner; but a row is read again when it is
folded, and a projection that lags or is rebuilt folds rows checked long ago.
Someone who can write the file can, in between, drop its triggers and edit an
already-checked row in place (leaving its hash column alone). So each checked
row's hash is remembered, 8 bytes of it, and each row read for a fold is hashed
again with the key and must give the hash that was checked: what is folded is
then exactly what was vouched for, whenever it is read.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

from eventstore import ChainBreak, EncodedRow, EventStore, LogCorruptedError, RawRow
from eventstore._chain import ChainVerifier

__all__ = ["Vouched"]

#: bytes of each checked row's hash kept (64 bits: a forger without the key
#: cannot aim at them, and a 1M-row log costs 8 MB)
_KEPT = 8


class Vouched:
    """The rows of a keyed log checked so far, and the hash each had."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._verifier = ChainVerifier(store.chain)
        self._row_hash = store.chain.row_hash
        # Row p's kept bytes at [(p - 1) * _KEPT, p * _KEPT): positions are gap-free from 1.
        self._hashes = bytearray()

    @property
    def last_position(self) -> int:
        return self._verifier.last_position

    async def check_up_to(self, head: int) -> None:
        """Check the chain of the rows after the last checked, up to ``head``.

        :raises LogCorruptedError: at the first row that does not verify (and
            from then on, whatever is asked).
        """
        verifier = self._verifier
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
                    verifier.last_position + 1, f"the log's head is at {head} but its rows"
                    f" end at {verifier.last_position} (rows deleted?)")
        if verifier.problem is not None:
            raise LogCorruptedError(verifier.problem.position, verifier.problem.reason)

    def _keep(self, page: Sequence[RawRow]) -> None:
        hashes = self._hashes
        for row in page:
            hashes += bytes.fromhex(row[8][: 2 * _KEPT])

    async def read_encoded(
        self, *, after: int, until: int, types: frozenset[str] | None
    ) -> AsyncGenerator[list[EncodedRow], None]:
        """The store's :meth:`~eventstore.EventStore.read_encoded`, each row
        hashed again and matched with the hash checked at its position.

        :raises LogCorruptedError: at a row that is not what was checked (or
            was never checked: read only up to :attr:`last_position`).
        """
        hashes, row_hash, checked = self._hashes, self._row_hash, self.last_position
        pages = self._store.read_raw(after=after, until=until, types=types)
        try:
            async for page in pages:
                encoded: list[EncodedRow] = []
                for position, stream, version, type_, at, instance, data, prev, hash_ in page:
                    start = (position - 1) * _KEPT
                    try:
                        same = 0 < position <= checked and bytes.fromhex(row_hash(
                            prev, position, stream, version, type_, at, instance, data,
                        )[: 2 * _KEPT]) == hashes[start:start + _KEPT]
                    except (TypeError, AttributeError):
                        same = False  # a column not of its type (SQLite keeps any)
                    if not same:
                        raise LogCorruptedError(
                            position, "the row is not the one whose chain was checked"
                            " (edited in place since?)")
                    encoded.append((position, stream, version, type_, at, instance,
                                    data.encode(), hash_))
                yield encoded
        finally:
            await pages.aclose()
