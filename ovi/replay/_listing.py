"""``log``, ``timeline`` and ``follow``: events as JSON lines or aligned text.

Filters go to SQL where the store can take them (type, stream, time, position
range); the rest (cycle, a resource's two streams) is checked row by row, so
memory stays bounded by the store's page size whatever the log's length.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncGenerator
from contextlib import aclosing
from datetime import datetime
from typing import Any

import msgspec

from eventstore import EventStore, RawRow, RecordedEvent, UnknownEvent, format_timestamp
from ovi._text import escaped
from ovi.events import claim_stream, cycle_stream, pause_stream, resource_stream
from ovi.replay._describe import cycle_of, describe, probe, resource_of, resource_of_raw
from ovi.replay._errors import ReplayError
from ovi.replay._render import Output, fmt_time

__all__ = ["Filters", "follow_events", "list_events"]

_TYPE_COLOURS = {"ActionExecuted": "green", "ActionFailed": "red", "ObservationFailed": "red",
                 "DecisionMade": "yellow", "ActionSkipped": "dim", "ApprovalGranted": "blue"}


class Filters(msgspec.Struct, kw_only=True):
    """What to list. ``resource`` is a resolved resource id."""

    since: datetime | None = None
    until: datetime | None = None
    types: frozenset[str] | None = None
    resource: str | None = None
    cycle: str | None = None
    limit: int | None = None


class _Range(msgspec.Struct):
    after: int = 0
    until: int | None = None


async def _cycle_range(store: EventStore, cycle_id: str) -> _Range:
    """Every event of a cycle lies between its first and last event in its
    own stream (an unfinished cycle: from its first event on)."""
    first = last = 0
    finished = False
    async for page in store.read_raw(stream=cycle_stream(cycle_id)):
        for row in page:
            first = first or row[0]
            last = row[0]
            finished = row[3] == "CycleFinished"
    if not first:
        raise ReplayError(f"no cycle {cycle_id!r} in the log")
    return _Range(first - 1, last if finished else None)


async def _merge(*sources: AsyncGenerator[Any, None]) -> AsyncGenerator[Any, None]:
    """Merge position-ordered sources (``item[0]`` or ``.position``) into one."""
    def key(item: Any) -> int:
        return item[0] if isinstance(item, tuple) else int(item.position)

    heap: list[tuple[int, int, Any]] = []
    try:
        for index, source in enumerate(sources):
            first = await anext(source, None)
            if first is not None:
                heap.append((key(first), index, first))
        heapq.heapify(heap)
        while heap:
            _, index, item = heapq.heappop(heap)
            yield item
            following = await anext(sources[index], None)
            if following is not None:
                heapq.heappush(heap, (key(following), index, following))
    finally:
        for source in sources:
            await source.aclose()


async def _rows(store: EventStore, f: Filters, span: _Range, stream: str | None,
                limit: int | None) -> AsyncGenerator[RawRow, None]:
    async for page in store.read_raw(after=span.after, until=span.until, types=f.types,
                                     stream=stream, since=f.since, before=f.until, limit=limit):
        for row in page:
            yield row


async def _events(store: EventStore, f: Filters, span: _Range, stream: str | None,
                  limit: int | None) -> AsyncGenerator[RecordedEvent, None]:
    async for recorded in store.read(after=span.after, until=span.until, types=f.types,
                                     stream=stream, since=f.since, before=f.until, limit=limit):
        yield recorded


async def _plan(store: EventStore, f: Filters) -> tuple[_Range, tuple[str | None, ...],
                                                          int | None]:
    span = await _cycle_range(store, f.cycle) if f.cycle else _Range()
    streams: tuple[str | None, ...] = (None,)
    if f.resource is not None:
        streams = (resource_stream(f.resource), claim_stream(f.resource),
                   pause_stream(f.resource))
    # The store can stop early only when no row is dropped after it.
    limit = f.limit if f.cycle is None and f.resource is None else None
    return span, streams, limit


def raw_record(row: RawRow, resource_id: str | None) -> dict[str, Any]:
    """The documented JSON line of one event; ``data`` is the recorded JSON as is."""
    record: dict[str, Any] = {"position": row[0], "recorded_at": row[4], "type": row[3],
                              "stream": row[1], "instance_id": row[5]}
    if resource_id is not None:
        record["resource_id"] = resource_id
    record["data"] = msgspec.Raw(row[6].encode())
    return record


def text_line(out: Output, recorded: RecordedEvent, resource_id: str | None,
              width: int) -> str:
    """``position  time  type  resource  what it says``, in fixed columns."""
    kind = out.paint(escaped(recorded.type).ljust(20), _TYPE_COLOURS.get(recorded.type))
    return (f"{recorded.position:>{width}}  {fmt_time(recorded.recorded_at)}  {kind}  "
            f"{escaped(resource_id or '-'):<16}  {describe(recorded.event)}")


async def list_events(store: EventStore, f: Filters, out: Output) -> int:
    """Write the matching events; return how many."""
    span, streams, limit = await _plan(store, f)
    shown = 0
    if out.as_json:
        async with aclosing(_merge(*(_rows(store, f, span, s, limit) for s in streams))) as rows:
            async for row in rows:
                if f.cycle is not None and _raw_cycle(row) != f.cycle:
                    continue
                out.json(raw_record(row, resource_of_raw(row[1], row[6])))
                shown += 1
                if f.limit is not None and shown >= f.limit:
                    break
        return shown
    width = len(str(await store.last_position()))
    async with aclosing(_merge(*(_events(store, f, span, s, limit) for s in streams))) as events:
        async for recorded in events:
            if f.cycle is not None and cycle_of(recorded.stream, recorded.event) != f.cycle:
                continue
            resource_id = resource_of(recorded.stream, recorded.event)
            out.write(text_line(out, recorded, resource_id, width))
            shown += 1
            if f.limit is not None and shown >= f.limit:
                break
    return shown


def _raw_cycle(row: RawRow) -> str | None:
    stream = row[1]
    if stream.startswith("cycle/"):
        return stream.removeprefix("cycle/")
    return probe(row[6]).cycle_id


async def follow_events(store: EventStore, f: Filters, out: Output, *, after: int,
                        poll_interval: float = 0.2) -> int:
    """Write matching events after position ``after`` as they are appended,
    until cancelled or ``f.limit`` are shown; return how many were."""
    shown = 0
    width = 8
    async for recorded in store.follow(after=after, types=f.types,
                                       poll_interval=poll_interval):
        resource_id = resource_of(recorded.stream, recorded.event)
        if f.resource is not None and resource_id != f.resource:
            continue
        if f.cycle is not None and cycle_of(recorded.stream, recorded.event) != f.cycle:
            continue
        if f.since is not None and recorded.recorded_at < f.since:
            continue
        if out.as_json:
            out.json(_record_of(recorded, resource_id))
        else:
            out.write(text_line(out, recorded, resource_id, width))
        out.flush()
        shown += 1
        if f.limit is not None and shown >= f.limit:
            break
    return shown


def _record_of(recorded: RecordedEvent, resource_id: str | None) -> dict[str, Any]:
    """:func:`raw_record` of a decoded event (the same JSON: one encoder wrote both)."""
    event = recorded.event
    data: Any = (msgspec.Raw(bytes(event.data)) if isinstance(event, UnknownEvent)
                 else msgspec.to_builtins(event))
    record: dict[str, Any] = {
        "position": recorded.position, "recorded_at": format_timestamp(recorded.recorded_at),
        "type": recorded.type, "stream": recorded.stream, "instance_id": recorded.instance_id,
    }
    if resource_id is not None:
        record["resource_id"] = resource_id
    record["data"] = data
    return record
