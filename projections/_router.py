"""Decoding one read of the log for several projections at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import msgspec

from eventstore import EncodedRow, EventRegistry, RecordedEvent, parse_timestamp
from projections._exceptions import ProjectionApplyError
from projections._projection import Projection

__all__ = ["Router"]

Decode = Callable[[bytes], Any]
#: per event type, the projections (by index in the group) that fold it, and how
#: each wants the event decoded (``None``: not at all, the JSON as recorded)
Route = tuple[tuple[int, Decode | None], ...]


class Router:
    """Sorts raw log rows into one batch per projection of a group.

    Each projection gets the events of its :attr:`~Projection.event_types`,
    decoded as its :attr:`~Projection.event_views` say (the full event
    otherwise; the JSON's bytes as recorded for a view of ``bytes``). A row
    two projections want in the same shape is decoded once.
    """

    def __init__(self, registry: EventRegistry, group: Sequence[Projection]) -> None:
        self._registry = registry
        self._group = tuple(group)
        self._routes: dict[str, tuple[Route, str]] = {}  # and the type's shared name
        self._batches: list[list[RecordedEvent]] = [[] for _ in self._group]
        self._views: dict[type[Any], Decode] = {}
        self._full: dict[str, Decode] = {}
        self._names: dict[str, str] = {}  # instance ids seen
        self._last_text = ""
        self._last_time = datetime.min
        wanted: set[str] = set()
        for projection in self._group:
            if projection.event_types is None:
                self.types: frozenset[str] | None = None
                break
            wanted |= projection.event_types
        else:
            self.types = frozenset(wanted)

    def route(self, rows: Sequence[EncodedRow], limit: int) -> tuple[int, int]:
        """Decode and sort rows until ``limit`` events were added to the
        batches; returns (events added, rows used)."""
        # Per row: one lookup for the type's route and its shared name, and
        # the decoding inline (this loop is most of a fold's own work).
        routes = self._routes
        batches = self._batches
        names = self._names
        added = used = 0
        last_text, last_time = self._last_text, self._last_time
        event: Any
        for used, (position, stream, version, type_, recorded_at, instance_id, data,  # noqa: B007
                   hash_) in enumerate(rows, 1):
            known = routes.get(type_)
            if known is None:
                known = routes[type_] = (self._route_for(type_), type_)
            route, type_ = known
            if not route:
                continue
            if recorded_at != last_text:
                last_text, last_time = recorded_at, parse_timestamp(recorded_at)
            # A batch holds its events: share the few distinct type names and
            # instance ids instead of keeping a copy per event.
            instance = names.get(instance_id)
            if instance is None:
                instance = names[instance_id] = instance_id
            if len(route) == 1:  # the usual case: one projection folds this type
                index, decode = route[0]
                if decode is None:
                    event = data
                else:
                    try:
                        event = decode(data)
                    except msgspec.DecodeError as exc:
                        raise self._view_error(index, position, type_, exc) from exc
                batches[index].append(RecordedEvent(
                    position, stream, version, type_, last_time, instance, event, hash_))
            else:
                decoded: dict[Decode, Any] = {}
                for index, decode in route:
                    if decode is None:
                        event = data
                    elif (event := decoded.get(decode)) is None:
                        try:
                            event = decoded[decode] = decode(data)
                        except msgspec.DecodeError as exc:
                            raise self._view_error(index, position, type_, exc) from exc
                    batches[index].append(RecordedEvent(
                        position, stream, version, type_, last_time, instance, event, hash_))
            added += 1
            if added >= limit:
                break
        self._last_text, self._last_time = last_text, last_time
        return added, used

    def take(self) -> list[list[RecordedEvent]]:
        """The batches routed so far (one per projection); starts new ones."""
        batches, self._batches = self._batches, [[] for _ in self._group]
        return batches

    def _route_for(self, type_: str) -> Route:
        route: list[tuple[int, Decode | None]] = []
        for index, projection in enumerate(self._group):
            types = projection.event_types
            if types is not None and type_ not in types:
                continue
            view = projection.event_views.get(type_, projection.default_event_view)
            if view is None:
                route.append((index, self._full_decoder(type_)))
            elif view is bytes:
                route.append((index, None))
            else:
                decode = self._views.get(view)
                if decode is None:
                    decode = self._views[view] = msgspec.json.Decoder(view).decode
                route.append((index, decode))
        return tuple(route)

    def _full_decoder(self, type_: str) -> Decode:
        full = self._full.get(type_)
        if full is None:
            full = self._full[type_] = self._registry.decoder(type_)
        return full

    def _view_error(self, index: int, position: int, type_: str,
                    exc: msgspec.DecodeError) -> ProjectionApplyError:
        # Only a view can fail (the full decoder falls back to UnknownEvent):
        # folding on without the event would leave the projection wrong.
        return ProjectionApplyError(
            self._group[index].name, position, position,
            f"the {type_} event does not match the projection's view of it: {exc}",
        )
