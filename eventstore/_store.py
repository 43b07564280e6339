"""The backend-neutral event store contract.

:class:`EventStore` documents the contract once; backends (``SQLiteEventStore``,
``PostgresEventStore``) implement a handful of primitives (commit a group of
encoded appends, import copied rows, page raw rows, read the head and the
store's clock) and inherit the rest: encoding, group commit, decoding,
following and chain verification.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import socket
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import msgspec

from eventstore._anchors import Anchor
from eventstore._chain import (
    UNKEYED,
    Chain,
    ChainVerifier,
    LogHeader,
    check_batches,
    check_header_unchanged,
    check_name,
    decode_header,
    keyed_header,
)
from eventstore._events import ANY, Appended, Event, EventRegistry, RecordedEvent, StreamBatch
from eventstore._exceptions import (
    BackendError,
    ImportRejectedError,
    StoreClosedError,
    WrongExpectedVersion,
)
from eventstore._store_types import (
    ChainBreak,
    EncodedBatch,
    EncodedRow,
    EventRow,
    Head,
    RawRow,
    VerifyReport,
)

__all__ = ["EventStore", "ReadFilter", "format_timestamp", "parse_timestamp", "stamp_after"]

GroupResult = Appended | WrongExpectedVersion
_Row = TypeVar("_Row", bound=tuple[Any, ...])


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC text with fixed width, so that text order is time order."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text)


def utc_now() -> datetime:
    """This host's clock, for backends whose clock is the host's."""
    return datetime.now(UTC)


def stamp_after(now: str, newest: str | None) -> str:
    """The ``recorded_at`` of rows committed now: the clock's reading, but never
    earlier than the newest row's, so that time order follows position order
    even when clocks of several writers (or one clock) go backwards.

    Both are :func:`format_timestamp` text, whose order is time order.
    """
    return now if newest is None or now >= newest else newest


def process_home() -> str:
    """This boot of this machine, and this PID namespace: two processes with
    the same home and pid are the same process.

    The hostname alone does not name a machine (a standby cloned from the
    primary's image keeps it), nor does the PID namespace's inode (the
    initial namespace's is one kernel constant on every Linux machine): the
    boot id (random at every boot) does. Containers sharing a hostname often
    both run as pid 1, in different namespaces, hence the namespace too.
    """
    try:
        namespace = f"/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}{namespace}{_boot_mark()}"


@functools.cache
def _boot_mark() -> str:
    # An id written by another boot (or by an older Ovi, without this mark)
    # never matches: its holder then waits for its claim's expiry, the safe way.
    for source in ("/proc/sys/kernel/random/boot_id", "/etc/machine-id"):
        try:
            with open(source, encoding="ascii") as file:
                mark = file.read().strip().replace("-", "")[:12]
        except (OSError, UnicodeDecodeError):
            continue
        if mark:
            return f"/{mark}"
    return ""


def default_instance_id() -> str:
    """``home:pid:nonce`` — unique per process start, even across reused pids."""
    return f"{process_home()}:{os.getpid()}:{secrets.token_hex(3)}"


class ReadFilter:
    """The filters of one read, in the form backends turn into a query."""

    __slots__ = ("before", "since", "stream", "types", "until")

    def __init__(
        self,
        *,
        until: int | None,
        types: Collection[str] | None,
        stream: str | None,
        since: datetime | None,
        before: datetime | None,
    ) -> None:
        self.until = until
        if isinstance(types, str):
            # A bare string is a collection of characters: never what was meant.
            raise TypeError(f"types: expected a collection of type names, got {types!r}")
        self.types = tuple(types) if types is not None else None
        self.stream = stream
        self.since = format_timestamp(since) if since is not None else None
        self.before = format_timestamp(before) if before is not None else None


class _PendingAppend:
    __slots__ = ("batches", "future")

    def __init__(self, batches: tuple[EncodedBatch, ...], future: asyncio.Future[Appended]) -> None:
        self.batches = batches
        self.future = future


class EventStore(ABC):
    """An append-only, hash-chained log of events in streams.

    Every event has a global ``position`` (gap-free, in commit order: the MVCC
    revision) and a ``stream_version`` within its stream. Use as an async
    context manager, or call :meth:`open` and :meth:`aclose`.

    Appends from many tasks are committed together (group commit): each caller
    awaits its own durable commit, and a group costs one transaction.

    ``recorded_at`` is the store's clock (:meth:`now`), read inside the
    transaction that assigns the positions and never earlier than the newest
    row's, so time never runs against position order. ``clock`` replaces the
    store's own clock (tests); ``instance_id`` names the writer in every row
    (default :func:`default_instance_id`).

    ``chain_key`` makes the chain an HMAC chain (see :class:`~eventstore._chain.Chain`):
    a new log is created keyed with it; an existing keyed log needs it to be
    opened for writing and refuses another key; an unkeyed log refuses one.
    ``read_only`` opens an existing log for reading only: no schema is
    created, nothing can be appended, and a keyed log opens without its key
    (``verify`` then checks its structure only).
    """

    #: events read per round trip; bounds memory of every read
    page_size = 1000

    def __init__(
        self,
        registry: EventRegistry,
        *,
        instance_id: str | None = None,
        clock: Callable[[], datetime] | None = None,
        chain_key: bytes | None = None,
        read_only: bool = False,
    ) -> None:
        self.registry = registry
        self.read_only = read_only
        self._chain_key = chain_key
        self._chain = Chain(UNKEYED, None, "the log")
        #: the log was empty and unkeyed when opened: another writer may still
        #: make it keyed before its first row (see check_chain_unchanged)
        self._kind_may_change = False
        self.instance_id = instance_id or default_instance_id()
        check_name("instance id", self.instance_id)
        #: the test clock given, or None: each backend then uses its own clock
        self._clock = clock
        self._queue: list[_PendingAppend] = []
        self._flusher: asyncio.Task[None] | None = None
        self._appended = asyncio.Event()
        self._open = False

    # -- lifecycle -------------------------------------------------------

    async def open(self) -> Self:
        """Open the backend, creating its schema if needed (never when read-only).

        :raises ChainKeyError: if the key does not fit the log (see the class).
        """
        await self._open_backend()
        try:
            self._chain = await self._load_chain()
        except BaseException:
            await self._close_backend()
            raise
        self._open = True
        return self

    async def _load_chain(self) -> Chain:
        text = await self._read_header()
        stored = decode_header(text, self.location)
        key = self._chain_key
        if not self.read_only and await self.last_position() == 0:
            # No event yet: the log's kind is fixed now. A new log takes the
            # key's; an empty unkeyed one may still become keyed — never the
            # other way, and a keyed one is never given another key.
            wanted = keyed_header(key) if key is not None else UNKEYED
            if text is None or (wanted.keyed and not stored.keyed):
                genesis = Chain(wanted, key, self.location).genesis or ""
                text = await self._write_header(wanted.encode(), genesis,
                                                replace=text is not None)
                stored = decode_header(text, self.location)
        chain = Chain(stored, key, self.location)
        if not self.read_only:
            chain.require_key()
        self._kind_may_change = not stored.keyed and await self.last_position() == 0
        return chain

    async def check_chain_unchanged(self) -> None:
        """Refuse to go on reading a log as the kind it was when this store
        opened it, once it no longer is: a log opened empty and unkeyed may be
        made keyed by another writer before its first row, and a reader that
        still takes it for unkeyed would fold rows that nobody checked. Once
        the log holds a row its header is fixed, and this costs nothing more.

        :raises ChainKeyError: naming the header the log has now.
        """
        if not self._kind_may_change:
            return
        # Rows first: a header read after a row was seen is the final one.
        holds_rows = await self.last_position() > 0
        check_header_unchanged(self._chain, await self._read_header(),
                               consequence="reopen the log (with its chain key if it is keyed)")
        if holds_rows:
            self._kind_may_change = False

    @property
    def chain(self) -> Chain:
        """How this log's rows are hashed (its header, and the key if given)."""
        return self._chain

    async def read_header(self) -> LogHeader:
        """The log's header: whether it is keyed, and by which key (a
        fingerprint). A copy of the log must carry it (:meth:`write_header`)."""
        if not self._open:
            raise StoreClosedError("the event store is not open")
        return self._chain.header

    async def write_header(self, header: LogHeader) -> None:
        """Give this (empty) log ``header``, copied from the log it will mirror,
        so that the copied rows verify here: a keyed header needs this store to
        hold the same key. Nothing happens if the log has that header already.

        :raises ChainKeyError: if the key does not fit ``header``.
        :raises ImportRejectedError: if the log already has events, or
            another header.
        """
        if not self._open:
            raise StoreClosedError("the event store is not open")
        if header == self._chain.header:
            return
        chain = Chain(header, self._chain_key, self.location)
        chain.require_key()
        if await self.last_position():
            raise ImportRejectedError(1, f"{self.location} already has events: its header"
                                      " (keyed or not) cannot change")
        text = await self._write_header(header.encode(), chain.genesis or "", replace=True)
        if decode_header(text, self.location) != header:
            raise ImportRejectedError(1, f"{self.location} has another header: {text}")
        self._chain = chain

    def _writable(self) -> None:
        if not self._open:
            raise StoreClosedError("the event store is not open")
        if self.read_only:
            raise BackendError(f"{self.location} was opened read-only: nothing can be"
                               " appended")

    async def aclose(self) -> None:
        """Wait for commits in flight, then release the backend."""
        if not self._open:
            return
        self._open = False
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._close_backend()
        self._notify_appended()  # a waiting follower wakes, and finds the store closed

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- writing ---------------------------------------------------------

    async def append(
        self, stream: str, events: Sequence[Event], *, expected_version: int | None = ANY
    ) -> Appended:
        """Append events to one stream, atomically and durably.

        :param expected_version: ``ANY`` (no check), ``NO_STREAM`` (0: the stream
            must be empty) or the stream's exact current version.
        :raises WrongExpectedVersion: if the expectation does not hold; nothing written.
        :raises EventEncodingError: if an event can't be encoded; nothing written.
        :raises LogCorruptedError: if the log's head does not match its rows.
        :raises BackendError: if the database fails; nothing written.
        """
        return await self.append_streams([StreamBatch(stream, tuple(events), expected_version)])

    async def append_streams(self, batches: Iterable[StreamBatch]) -> Appended:
        """Append to several streams in one atomic transaction.

        Either every batch's expectation holds and all events are written, or
        nothing is. Raises as :meth:`append`.
        """
        self._writable()
        batches = tuple(batches)
        check_batches(batches)
        encode = self.registry._encode_many
        # A list, not a generator: most appends are of one batch, and a
        # generator's set-up costs more than encoding a small event.
        encoded = tuple([
            EncodedBatch(b.stream, b.expected_version, encode(b.events)) for b in batches
        ])
        future: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._queue.append(_PendingAppend(encoded, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        # One flusher at a time drains the queue: whatever piled up while a
        # commit was in flight goes into the next commit together.
        while self._queue:
            group, self._queue = self._queue, []
            try:
                results = await self._commit_group([p.batches for p in group])
            except BaseException as exc:
                for pending in group:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for pending, result in zip(group, results, strict=True):
                if pending.future.done():
                    continue
                if isinstance(result, WrongExpectedVersion):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)
            self._notify_appended()

    def _notify_appended(self) -> None:
        self._appended.set()
        self._appended = asyncio.Event()

    def bulk_import(self) -> AbstractAsyncContextManager[int]:
        """A block of many :meth:`import_rows` calls (a long copy), which a
        backend may write faster, with the same checks and one transaction
        per call (SQLite: by a helper process). It gives how many calls may
        be in flight at once, each after the one before (by default 1, and
        nothing changes)."""
        return contextlib.nullcontext(1)

    async def import_rows(self, rows: Sequence[RawRow]) -> Appended | None:
        """Append rows copied from another log *verbatim* — same positions,
        hashes, ``recorded_at`` and ``instance_id`` — in one transaction: to
        copy a log between backends, or to keep a mirror of a shared log.

        The rows must continue this log exactly: the first at the next
        position with ``prev_hash`` equal to the head's hash, each row's hash
        verifying, stream versions going on from the log's. Pass a page at a
        time (``read_raw`` pages): each call is one transaction. Returns what
        was written (``None`` for no rows).

        :raises ImportRejectedError: naming the first row that does not
            continue the log, and why; nothing of ``rows`` was written.
        :raises LogCorruptedError: if this log's head does not match its rows.
        :raises BackendError: if the database fails; nothing written.
        """
        self._writable()
        rows = list(rows)
        if not rows:
            return None
        versions = await self._import_rows(rows)
        self._notify_appended()
        return Appended(rows[0][0], rows[-1][0], versions)

    # -- reading ---------------------------------------------------------

    async def read(
        self,
        *,
        after: int = 0,
        until: int | None = None,
        types: Collection[str] | None = None,
        stream: str | None = None,
        since: datetime | None = None,
        before: datetime | None = None,
        limit: int | None = None,
    ) -> AsyncGenerator[RecordedEvent, None]:
        """Stream events with ``after < position ≤ until``, in position order.

        ``types`` and ``stream`` filter by type name and stream;
        ``since ≤ recorded_at < before`` by time. Memory stays bounded by
        :attr:`page_size` whatever the size of the log.
        """
        registry = self.registry
        # Straight to the type's msgspec decoder (it takes the column's str as
        # is); registry.decode only for what that can't handle.
        decoders = registry.strict_decodes
        fallback = registry.decode
        last_text = ""
        last_time = datetime.min
        async for page in self._pages(
            self._read_event_page, after=after, until=until, types=types, stream=stream,
            since=since, before=before, limit=limit,
        ):
            for position, stream_, version, type_, recorded_at, instance_id, data, hash_ in page:
                if recorded_at != last_text:
                    last_text, last_time = recorded_at, parse_timestamp(recorded_at)
                decode = decoders.get(type_)
                if decode is None:
                    event = fallback(type_, data)
                else:
                    try:
                        event = decode(data)
                    except msgspec.DecodeError:
                        event = fallback(type_, data)
                yield RecordedEvent(
                    position, stream_, version, type_, last_time, instance_id, event, hash_
                )

    async def read_raw(
        self,
        *,
        after: int = 0,
        until: int | None = None,
        types: Collection[str] | None = None,
        stream: str | None = None,
        since: datetime | None = None,
        before: datetime | None = None,
        limit: int | None = None,
    ) -> AsyncGenerator[list[RawRow], None]:
        """Like :meth:`read` but yields pages of undecoded rows."""
        async for page in self._pages(
            self._read_page, after=after, until=until, types=types, stream=stream,
            since=since, before=before, limit=limit,
        ):
            yield page

    async def read_encoded(
        self,
        *,
        after: int = 0,
        until: int | None = None,
        types: Collection[str] | None = None,
    ) -> AsyncGenerator[list[EncodedRow], None]:
        """Pages of rows with ``after < position ≤ until`` (of ``types``), in
        position order, each event's data left encoded (UTF-8 JSON bytes): for
        readers that decode only some events, or only some fields, themselves.
        """
        async for page in self._pages(
            self._read_encoded_page, after=after, until=until, types=types, stream=None,
            since=None, before=None, limit=None,
        ):
            yield page

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
        if not self._open:
            raise StoreClosedError("the event store is not open")
        filters = ReadFilter(until=until, types=types, stream=stream, since=since, before=before)
        remaining = limit
        position = after
        while remaining is None or remaining > 0:
            size = self.page_size if remaining is None else min(self.page_size, remaining)
            page = await fetch(position, size, filters)
            if not page:
                return
            yield page
            if remaining is not None:
                remaining -= len(page)
            if len(page) < size:
                return
            position = page[-1][0]

    async def follow(
        self,
        *,
        after: int = 0,
        types: Collection[str] | None = None,
        stream: str | None = None,
        poll_interval: float = 0.5,
    ) -> AsyncGenerator[RecordedEvent, None]:
        """Yield matching events after ``after``, then keep tailing new ones.

        Appends through this store wake the follower at once. Appends by other
        processes are seen within ``poll_interval`` seconds — or at once where
        the backend is told of them (PostgreSQL's NOTIFY; the poll is then
        only a safety net). Never returns: cancel the iterating task (or
        break) to stop. Closing the store ends it at once with
        :class:`StoreClosedError`.
        """
        position = after
        while True:
            if not self._open:
                raise StoreClosedError("the event store was closed")
            waiter = self._appended
            await self._refresh_reads()
            head = await self.last_position()
            if head > position:
                async for event in self.read(after=position, until=head, types=types,
                                             stream=stream):
                    yield event
                position = head
                continue
            try:
                await asyncio.wait_for(waiter.wait(), poll_interval)
            except TimeoutError:
                pass

    async def head(self) -> Head:
        """The recorded head (position and hash of the newest row): what to keep
        elsewhere as an anchor."""
        if not self._open:
            raise StoreClosedError("the event store is not open")
        position, hash_ = await self._read_head()
        recorded_at = None
        async for page in self.read_raw(after=position - 1, until=position, limit=1):
            recorded_at = page[0][4]
        return Head(position, hash_, recorded_at)

    async def verify(self, *, anchors: Iterable[Anchor] = ()) -> VerifyReport:
        """Walk the whole log and report the first position where it is broken,
        and the first of ``anchors`` (heads kept elsewhere) that the log no
        longer holds: a history rewritten with every hash recomputed.

        A keyed log opened without its key is walked for its structure only
        (the report's ``hashes_checked`` is False).
        """
        verifier = ChainVerifier(self._chain, anchors)
        head_position, head_hash = await self._read_head()
        # Walk only up to the head read first: rows committed while we walk are
        # not foreign rows. Those are found by reading the newest position and
        # *then* the head: an honest commit in between only moves the head on.
        async for page in self.read_raw(until=head_position):
            if not verifier.feed(page):
                break
        if verifier.problem is None and verifier.last_position == head_position:
            newest = await self.last_position()
            head_now, _ = await self._read_head()
            if newest > head_now:
                verifier.problem = ChainBreak(
                    head_now + 1, "rows beyond the recorded head (written outside the store)"
                )
        return verifier.finish(head_position, head_hash, await self._check_storage())

    async def check_served_rows(self) -> None:
        """Raise unless the rows reads are served from are this log's own.

        A backend that serves its own rows has nothing to check. A store that
        serves reads from a copy (:class:`~eventstore.MirroredStore`) walks
        the copy's chain. A fold of the whole log (a projection rebuilt from
        position 0) calls this first: an edited copy is refused, not refolded.

        :raises MirrorMismatchError: naming the first position that is not
            the log's.
        """
        if not self._open:
            raise StoreClosedError("the event store is not open")

    def local_clock(self) -> datetime | None:
        """The clock :meth:`now` reads, read here without a query: where that
        clock is this host's (SQLite's: the host's clock, or the test clock
        given), what ``now()`` would be but for its check against the newest
        row. None where it is another host's (PostgreSQL's: the server's),
        which only a query can tell. A reading of :meth:`now` can then be
        moved on by what this clock moved since it was asked for."""
        return None

    async def now(self) -> datetime:
        """The store's clock: the ``recorded_at`` an append would get now.

        That is the backend's clock (SQLite: this host's; PostgreSQL: the
        database server's) or the test clock given to the constructor, but
        never earlier than the newest row's ``recorded_at``. Time that decides
        between instances (claim expiry) is read here, so that two hosts'
        wall clocks are never compared.
        """
        if not self._open:
            raise StoreClosedError("the event store is not open")
        return parse_timestamp(await self._now())

    async def event_types(self, *, after: int = 0) -> frozenset[str]:
        """The distinct type names of the events with position > ``after``:
        an instance notices types it does not know (written by a newer
        version) without decoding the log."""
        if not self._open:
            raise StoreClosedError("the event store is not open")
        return frozenset(await self._event_types(after))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    # -- backend primitives ---------------------------------------------

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the log is, for messages: a path, or a DSN without its password."""

    @abstractmethod
    async def last_position(self) -> int:
        """Position of the newest event, 0 for an empty log."""

    @abstractmethod
    async def stream_version(self, stream: str) -> int:
        """Current version of a stream, 0 when it has no events."""

    @abstractmethod
    async def _open_backend(self) -> None: ...

    @abstractmethod
    async def _close_backend(self) -> None: ...

    @abstractmethod
    async def _commit_group(self, group: list[tuple[EncodedBatch, ...]]) -> list[GroupResult]:
        """Write every request of ``group`` whose expectations hold, in one
        durable transaction, chaining hashes; return per request what it wrote
        or the version conflict that kept it out.

        The rows' ``recorded_at`` is read once the transaction holds the log's
        write lock: :func:`stamp_after` of the clock and the newest row's.

        :raises LogCorruptedError: if the head does not match the rows.
        :raises BackendError: if the transaction failed (then nothing was written).
        """

    @abstractmethod
    async def _import_rows(self, rows: list[RawRow]) -> dict[str, int]:
        """Write ``rows`` verbatim in one transaction holding the write lock,
        once :func:`~eventstore._chain.check_continuation` accepts them against
        the head and stream versions read under that lock; return each
        stream's new version.

        :raises ImportRejectedError: if they do not continue the log.
        :raises LogCorruptedError: if the head does not match the rows.
        :raises BackendError: if the transaction failed (then nothing was written).
        """

    @abstractmethod
    async def _now(self) -> str:
        """:meth:`now` as :func:`format_timestamp` text."""

    @abstractmethod
    async def _event_types(self, after: int) -> Iterable[str]:
        """Type names of the rows with position > ``after`` (repeats allowed)."""

    @abstractmethod
    async def _read_page(self, after: int, limit: int, filters: ReadFilter) -> list[RawRow]:
        """Up to ``limit`` matching rows with position > ``after``, ordered."""

    async def _read_event_page(
        self, after: int, limit: int, filters: ReadFilter
    ) -> list[EventRow]:
        """:meth:`_read_page` without ``prev_hash``: the rows :meth:`read`
        decodes. Backends override it when not fetching the column saves time."""
        return [
            (position, stream, version, type_, recorded_at, instance_id, data, hash_)
            for position, stream, version, type_, recorded_at, instance_id, data, _, hash_
            in await self._read_page(after, limit, filters)
        ]

    async def _read_encoded_page(
        self, after: int, limit: int, filters: ReadFilter
    ) -> list[EncodedRow]:
        """:meth:`_read_event_page` with the data as UTF-8 bytes. Backends
        override it when they can hand the bytes over without a ``str``."""
        return [
            (position, stream, version, type_, recorded_at, instance_id, data.encode(), hash_)
            for position, stream, version, type_, recorded_at, instance_id, data, hash_
            in await self._read_event_page(after, limit, filters)
        ]

    @abstractmethod
    async def _read_head(self) -> tuple[int, str]:
        """The recorded head: last position and hash."""

    async def _refresh_reads(self) -> None:
        """Make the next reads see rows appended since the last ones, for a
        backend whose reads may be a snapshot (SQLite opened ``immutable``);
        :meth:`follow` calls it before each poll. The default does nothing."""
        return

    async def _check_storage(self) -> str | None:
        """What is wrong with the storage under the rows, that the chain walk
        cannot see (an index that disagrees with its table: reads through it
        miss rows the walk finds); None when nothing is. The default checks
        nothing: a backend that can be edited below its SQL says so."""
        return None

    @abstractmethod
    async def _read_header(self) -> str | None:
        """The log header's stored text; None when the log has none (a log
        from before headers is unkeyed)."""

    @abstractmethod
    async def _write_header(self, text: str, genesis: str, *, replace: bool = False) -> str:
        """Store the header ``text`` and set the empty head's hash to
        ``genesis``, in one transaction, only if the log has no events (and,
        unless ``replace``, no header); return the header stored afterwards
        (another process may have created the log first)."""
