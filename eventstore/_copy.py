"""Copying a log's rows into another log, verbatim and checked: the one step
behind a host's mirror of a shared log and behind ``replay copy``.

The target must already be a prefix of the source: its newest row is looked
up in the source (same position, same hash) before anything is copied, and
every copied row is checked again by :meth:`EventStore.import_rows` (each
``prev_hash`` the previous row's hash, each hash recomputed). So a mirror
that disagrees with its shared log stops the copy with the position, and is
never refolded over the difference.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable

from eventstore._exceptions import ImportRejectedError, MirrorMismatchError
from eventstore._store import EventStore
from eventstore._store_types import RawRow

__all__ = ["copy_new_rows"]

#: rows imported per target transaction: the source's pages (1,000 rows) are
#: gathered, since a SQLite commit costs more than reading another page
COPY_BATCH = 10_000


async def _newest_row(store: EventStore) -> RawRow | None:
    head = await store.last_position()
    if head == 0:
        return None
    async for page in store.read_raw(after=head - 1, limit=1):
        return page[0]
    return None


async def copy_new_rows(
    source: EventStore,
    target: EventStore,
    *,
    progress: Callable[[int], None] | None = None,
    batch: int = COPY_BATCH,
) -> int:
    """Copy every row of ``source`` past ``target``'s newest one into
    ``target``, verbatim (positions, hashes, times, writers); returns the
    number of rows copied. ``progress`` hears the position reached after
    each committed batch.

    Rows committed to ``source`` while this runs may or may not be copied:
    the next call copies them.

    An empty ``target`` is first given ``source``'s header
    (:meth:`EventStore.write_header`), so a keyed log's copy is keyed alike.

    :raises ChainKeyError: if ``source`` is keyed and ``target`` does not
        hold its key.
    :raises MirrorMismatchError: if ``target``'s newest row is not in
        ``source`` (another hash at that position, or ``source`` ends before
        it); nothing was copied.
    :raises ImportRejectedError: if a row of ``source`` does not continue the
        chain (its hash does not verify): rows before it are copied.
    :raises EventStoreError: if either store fails.
    """
    newest = await _newest_row(target)
    if newest is None:
        # An empty target takes the source's header first (keyed or not, and
        # by which key): the rows copied are checked, and later verified, by it.
        await target.write_header(await source.read_header())
    after = 0 if newest is None else newest[0] - 1
    pending: list[RawRow] = []
    checked = newest is None
    # Batches are imported while the next are read from the source: a mirror
    # catching up does both at once. In flight: the oldest first.
    in_flight: collections.deque[asyncio.Future[int]] = collections.deque()
    depth = 1
    copied = 0
    batches = 0
    async with contextlib.AsyncExitStack() as bulk:
        try:
            async for page in source.read_raw(after=after):
                if not checked:
                    checked = True
                    _check_same(newest, page[0], source, target)
                    page = page[1:]
                pending.extend(page)
                if len(pending) >= batch:
                    while len(in_flight) >= depth:
                        copied += await in_flight.popleft()
                    if batches == 1:
                        # More than one batch: a long copy, which the target
                        # may write faster (a mirror's pull of a few rows
                        # does not pay for setting that up).
                        depth = await bulk.enter_async_context(target.bulk_import())
                    before = in_flight[-1] if in_flight else None
                    in_flight.append(asyncio.ensure_future(
                        _import(target, pending, progress, before)))
                    batches += 1
                    pending = []
            while in_flight:
                copied += await in_flight.popleft()
        finally:
            if in_flight:  # a read or import failed: let the batches in flight end
                await asyncio.gather(*in_flight, return_exceptions=True)
        if not checked:
            assert newest is not None
            raise MirrorMismatchError(
                newest[0], f"{target.location} has this position, but {source.location} ends"
                f" at {await source.last_position()} (a log restored from an older backup, or"
                " another log)")
        if pending:
            copied += await _import(target, pending, progress)
    return copied


def _check_same(
    mine: RawRow | None, theirs: RawRow, source: EventStore, target: EventStore
) -> None:
    assert mine is not None
    if theirs[0] != mine[0]:
        raise MirrorMismatchError(
            mine[0], f"{target.location} has this position, but {source.location} ends"
            f" before it (a log restored from an older backup, or another log)")
    if theirs[8] != mine[8]:
        raise MirrorMismatchError(
            mine[0], f"hash {mine[8][:12]}… in {target.location} but {theirs[8][:12]}… in"
            f" {source.location}: they are not the same log")


async def _import(
    target: EventStore, rows: list[RawRow], progress: Callable[[int], None] | None,
    before: asyncio.Future[int] | None = None,
) -> int:
    """Import ``rows``; returns how many this call wrote. ``before`` is the
    import of the batch before, if it was still in flight when this one was
    sent: a rejection may then only say that batch was not in yet (or failed,
    which the copy raises first), so it is tried again once that one ended.

    Another process may copy into the same target at the same time (the
    service and an operator's command of one host share ``./ovi-mirror.db``):
    it then imports some of these rows first, and ours are rejected. So a
    rejection is looked at again: if the target has meanwhile grown over
    these positions with the same hashes, the rows it holds are dropped and
    the rest imported (the import's own transaction checks the continuation,
    so no check here can be raced); any other rejection stands.
    """
    copied = 0
    while rows:
        try:
            await target.import_rows(rows)
        except ImportRejectedError:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
                before = None
                continue
            head = await target.last_position()
            if head < rows[0][0]:
                raise  # nobody copied ahead of us: the row itself is bad
            await _check_present(target, rows, min(head, rows[-1][0]))
            rows = [row for row in rows if row[0] > head]
            continue
        copied += len(rows)
        break
    if progress is not None and copied:
        progress(rows[-1][0])
    return copied


async def _check_present(target: EventStore, rows: list[RawRow], position: int) -> None:
    """The target's row at ``position`` is the one of ``rows`` there (the chain
    then vouches for the target's rows before it)."""
    theirs = rows[position - rows[0][0]]
    async for page in target.read_raw(after=position - 1, limit=1):
        if page[0][8] == theirs[8]:
            return
        raise MirrorMismatchError(
            position, f"hash {page[0][8][:12]}… in {target.location} but {theirs[8][:12]}…"
            " in the log it copies: another process wrote other rows there")
    raise MirrorMismatchError(position, f"{target.location} lost this row while copying")
