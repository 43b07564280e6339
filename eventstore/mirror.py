"""A shared log read through a local SQLite mirror of it.

Several hosts share one log (PostgreSQL); each keeps a SQLite file holding
the same rows — same positions, same hashes, checked as they are copied
(:func:`~eventstore._copy.copy_new_rows`) — next to whatever it folds from
them (the projections join the ``events`` table of their own file). A
:class:`MirroredStore` is that pair behind the one :class:`EventStore`
contract:

- appends go to the shared log, and the mirror copies them before the
  append returns, so a writer reads its own writes;
- :meth:`~MirroredStore.last_position` first copies whatever other hosts
  appended (so a projection runner's ``catch_up`` folds the newest events),
  and so does a read that does not stop at a position the mirror already
  holds; every read is served by the mirror;
- the store's clock (:meth:`EventStore.now`) is the shared log's: the time
  claims are judged by is the same on every host.

The mirror file is an ordinary SQLite log: ``python -m ovi.replay --store
mirror.db`` reads it with no server at hand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Iterable
from datetime import datetime

from eventstore._anchors import Anchor
from eventstore._copy import copy_new_rows
from eventstore._events import RecordedEvent
from eventstore._exceptions import EventStoreError, MirrorMismatchError, StoreClosedError
from eventstore._store import EventStore, GroupResult, ReadFilter, _Row
from eventstore._store_types import EncodedBatch, EncodedRow, EventRow, RawRow, VerifyReport
from eventstore.sqlite import SQLiteEventStore

__all__ = ["MirroredStore"]

_log = logging.getLogger("eventstore")


class MirroredStore(EventStore):
    """``shared`` (any backend: PostgreSQL in practice) read through
    ``mirror``, a local SQLite copy of it. Opening it opens both and copies
    what the mirror lacks; closing it closes both.

    :raises MirrorMismatchError: (from any call that copies) if the mirror
        holds a row the shared log does not have at that position.
    """

    def __init__(self, shared: EventStore, mirror: SQLiteEventStore) -> None:
        # The pair hashes as the shared log does: its key, its header.
        super().__init__(shared.registry, instance_id=shared.instance_id,
                         chain_key=shared._chain_key, read_only=shared.read_only)
        self.shared = shared
        self.mirror = mirror
        self._pull_lock = asyncio.Lock()
        #: the newest position the mirror holds, as of the last copy
        self._mirrored = 0

    @property
    def location(self) -> str:
        return f"{self.shared.location} (mirror {self.mirror.location})"

    async def pull(self) -> int:
        """Copy the shared log's new rows into the mirror; returns how many."""
        if not self._open:
            raise StoreClosedError("the event store is not open")
        return await self._pull()

    async def _pull(self) -> int:
        async with self._pull_lock:
            copied = await copy_new_rows(self.shared, self.mirror)
            self._mirrored = await self.mirror.last_position()
        if copied:
            self._notify_appended()
        return copied

    async def _holding(self, filters: ReadFilter) -> None:
        # A read sees what was committed before it, by any host, as on the
        # server: copy first, unless it stops at a position the mirror holds.
        if filters.until is None or filters.until > self._mirrored:
            await self._pull()

    async def _pages(
        self,
        fetch: Callable[[int, int, ReadFilter], Awaitable[list[_Row]]],
        *,
        after: int,
        until: int | None,
        types: Collection[str] | None,
        stream: str | None,
        since: datetime | None,
        before: datetime | None,
        limit: int | None,
    ) -> AsyncGenerator[list[_Row], None]:
        # An open-ended read copies once, at its start, and then reads up to
        # what that copy brought (not once per page).
        if until is None and self._open:
            until = await self.last_position()
        async for page in super()._pages(fetch, after=after, until=until, types=types,
                                         stream=stream, since=since, before=before,
                                         limit=limit):
            yield page

    # -- lifecycle -------------------------------------------------------

    async def _open_backend(self) -> None:
        await self.shared.open()
        try:
            await self.mirror.open()
            # The mirror carries the shared log's header (keyed or not) before
            # any row: the rows it copies are checked against it.
            await self.mirror.write_header(await self.shared.read_header())
            # and is marked as a mirror: a plain SQLite log opened on the
            # file refuses appends (they belong to the shared log).
            await self.mirror.mark_as_mirror(self.shared.location)
            await self._pull()
        except BaseException:
            await self._close_backend()
            raise

    async def _close_backend(self) -> None:
        try:
            await self.mirror.aclose()
        finally:
            await self.shared.aclose()

    # -- writing ---------------------------------------------------------

    async def _commit_group(self, group: list[tuple[EncodedBatch, ...]]) -> list[GroupResult]:
        results = await self.shared._commit_group(group)
        await self._copy_after_write()
        return results

    async def _import_rows(self, rows: list[RawRow]) -> dict[str, int]:
        versions = await self.shared._import_rows(rows)
        await self._copy_after_write()
        return versions

    async def _copy_after_write(self) -> None:
        # The rows are durable in the shared log: the append succeeded even if
        # the mirror cannot copy them now. Any read past what the mirror holds
        # copies first (and raises what stops it), so none misses this write.
        try:
            await self._pull()
        except EventStoreError as exc:
            _log.warning("%s: appended, but the mirror could not copy it yet: %s",
                         self.location, exc)

    # -- reading ---------------------------------------------------------

    async def last_position(self) -> int:
        """The newest position of the shared log, once the mirror holds it."""
        await self._pull()
        return self._mirrored

    async def stream_version(self, stream: str) -> int:
        await self._pull()  # as the shared log has it now, like any read
        return await self.mirror.stream_version(stream)

    async def _now(self) -> str:
        return await self.shared._now()

    async def _read_header(self) -> str | None:
        return await self.shared._read_header()

    async def _write_header(self, text: str, genesis: str, *, replace: bool = False) -> str:
        return await self.shared._write_header(text, genesis, replace=replace)

    async def _event_types(self, after: int) -> Iterable[str]:
        await self._pull()
        return await self.mirror._event_types(after)

    async def _read_page(self, after: int, limit: int, filters: ReadFilter) -> list[RawRow]:
        await self._holding(filters)
        return await self.mirror._read_page(after, limit, filters)

    async def _read_event_page(
        self, after: int, limit: int, filters: ReadFilter
    ) -> list[EventRow]:
        await self._holding(filters)
        return await self.mirror._read_event_page(after, limit, filters)

    async def _read_encoded_page(
        self, after: int, limit: int, filters: ReadFilter
    ) -> list[EncodedRow]:
        await self._holding(filters)
        return await self.mirror._read_encoded_page(after, limit, filters)

    async def _read_head(self) -> tuple[int, str]:
        return await self.mirror._read_head()

    async def verify(self, *, anchors: Iterable[Anchor] = ()) -> VerifyReport:
        """The shared log's chain (and ``anchors``), walked on the server: the
        log every host trusts. (The mirror's rows were checked against it as
        they were copied, and its newest row is checked again at every copy.)"""
        if not self._open:
            raise StoreClosedError("the event store is not open")
        report = await self.shared.verify(anchors=anchors)
        if report.ok:
            await self._pull()  # and the mirror is a copy of it
        return report

    async def check_served_rows(self) -> None:
        """Walk the mirror's own chain, then check its newest row against the
        shared log: together they say every row it serves is the shared
        log's (an edit in place breaks the chain; rewriting every hash after
        it changes the newest one)."""
        await super().check_served_rows()
        report = await self.mirror.verify()
        if report.problem is not None:
            raise MirrorMismatchError(
                report.problem.position,
                f"{self.mirror.location} is not a copy of {self.shared.location}:"
                f" {report.problem.reason}; move it aside (keep it: it is evidence) and"
                " run again to copy the shared log afresh")
        await self._pull()

    async def follow(
        self,
        *,
        after: int = 0,
        types: Collection[str] | None = None,
        stream: str | None = None,
        poll_interval: float = 0.5,
    ) -> AsyncGenerator[RecordedEvent, None]:
        """As :meth:`EventStore.follow`; woken by this store's appends and by
        the shared log's (PostgreSQL's NOTIFY from other hosts)."""
        position = after
        while True:
            if not self._open:
                raise StoreClosedError("the event store was closed")
            waiters = (self._appended, self.shared._appended)
            head = await self.last_position()
            if head > position:
                async for event in self.read(after=position, until=head, types=types,
                                             stream=stream):
                    yield event
                position = head
                continue
            tasks = [asyncio.ensure_future(waiter.wait()) for waiter in waiters]
            try:
                await asyncio.wait(tasks, timeout=poll_interval,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
