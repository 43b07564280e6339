"""Event types, their registry, and the records the log hands back."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import msgspec

from eventstore._exceptions import EventEncodingError

__all__ = [
    "ANY",
    "NO_STREAM",
    "Appended",
    "Event",
    "EventRegistry",
    "RecordedEvent",
    "StreamBatch",
    "UnknownEvent",
]

#: ``expected_version`` value: append whatever the stream's current version.
ANY: None = None
#: ``expected_version`` value: the stream must not exist yet.
NO_STREAM = 0

# Built once: ``list | tuple`` in an isinstance call makes a new union each time.
_SEQUENCES = (list, tuple)


class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Base class of every event. The event's type name is its class name.

    ``gc=False`` (inherited): events are trees of values, never part of a
    reference cycle, and a long read keeps many alive at once; not tracking
    them spares the cyclic collector (~15% of a large rebuild)."""


class UnknownEvent(msgspec.Struct, frozen=True):
    """An event the reader cannot decode: an unregistered (older or newer) type,
    or data that no longer matches its registered type. Kept verbatim."""

    type: str
    data: msgspec.Raw
    reason: str = "unregistered event type"


class StreamBatch(msgspec.Struct, frozen=True):
    """Events to append to one stream, guarded by an expected version.

    ``expected_version``: :data:`ANY` (no check), :data:`NO_STREAM` (the stream
    must be empty) or the exact current version of the stream.
    """

    stream: str
    events: tuple[Event, ...]
    expected_version: int | None = ANY


class Appended(msgspec.Struct, frozen=True):
    """What one append wrote: its positions and each stream's new version."""

    first_position: int
    last_position: int
    versions: dict[str, int]


class RecordedEvent(msgspec.Struct, frozen=True, gc=False):
    """One row of the log, decoded."""

    position: int
    stream: str
    stream_version: int
    type: str
    recorded_at: datetime
    instance_id: str
    event: Any  # Event | UnknownEvent; ``Any`` keeps msgspec from building a union schema
    hash: str


E = TypeVar("E", bound=type[Event])


class EventRegistry:
    """Maps type names to event classes, and encodes/decodes event data."""

    def __init__(self, types: Iterable[type[Event]] = ()) -> None:
        self._decoders: dict[str, msgspec.json.Decoder[Any]] = {}
        #: each type's strict decode, bound once: a reader starts from it on
        #: every read (building it per read was ~6 % of a 1,000-action
        #: execution, which reads each create's stream once)
        self.strict_decodes: dict[str, Callable[[str | bytes], Any]] = {}
        self._types: dict[str, type[Event]] = {}
        self._encoder = msgspec.json.Encoder()
        for cls in types:
            self.register(cls)

    def register(self, cls: E) -> E:
        """Register an event class (usable as a decorator)."""
        name = cls.__name__
        known = self._types.get(name)
        if known is not None and known is not cls:
            raise ValueError(f"event type name {name!r} is already registered by {known!r}")
        self._types[name] = cls
        self._decoders[name] = msgspec.json.Decoder(cls)
        self.strict_decodes[name] = self._decoders[name].decode
        return cls

    def __contains__(self, name: object) -> bool:
        return name in self._types

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._types)

    def encode(self, event: Event) -> tuple[str, str]:
        """Return ``(type name, JSON text)`` for an event.

        :raises EventEncodingError: if the type is not registered or a value can't be encoded.
        """
        name = type(event).__name__
        if self._types.get(name) is not type(event):
            raise EventEncodingError(f"event type {name!r} is not registered")
        try:
            return name, self._encoder.encode(event).decode()
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            raise EventEncodingError(f"cannot encode {name}: {exc}") from exc

    def _encode_many(self, events: Iterable[Event]) -> tuple[tuple[str, str], ...]:
        """:meth:`encode` for many events, without a Python call per event."""
        if not isinstance(events, _SEQUENCES):
            events = tuple(events)
        types = self._types
        encode = self._encoder.encode
        encoded: list[tuple[str, str]] = []
        # A batch is mostly of one class: its registration is looked up once.
        checked: type | None = None
        name = ""
        try:
            for event in events:
                cls = type(event)
                if cls is not checked:
                    name = cls.__name__
                    if types.get(name) is not cls:
                        break
                    checked = cls
                encoded.append((name, encode(event).decode()))
            else:
                return tuple(encoded)
        except (TypeError, ValueError, msgspec.EncodeError):
            pass
        # Something is wrong: let encode() find the event and word the error.
        return tuple(self.encode(event) for event in events)

    def decoder(self, name: str) -> Callable[[str | bytes], Event | UnknownEvent]:
        """:meth:`decode` for one type name, for decoding many events of it:
        straight to the type's msgspec decoder, the fallbacks only when needed."""
        decoder = self._decoders.get(name)
        if decoder is None:
            return partial(self.decode, name)
        strict = decoder.decode

        def decode(data: str | bytes) -> Event | UnknownEvent:
            try:
                event: Event = strict(data)
            except msgspec.DecodeError:  # recorded by another version of the type
                return self.decode(name, data)
            return event

        return decode

    def decode(self, name: str, data: str | bytes) -> Event | UnknownEvent:
        """Decode one event's data; never raises for unknown or mismatched data."""
        decoder = self._decoders.get(name)
        raw = data.encode() if isinstance(data, str) else data
        if decoder is None:
            return UnknownEvent(name, msgspec.Raw(raw))
        try:
            event: Event = decoder.decode(raw)
        except msgspec.DecodeError as exc:
            return UnknownEvent(name, msgspec.Raw(raw), f"does not match {name}: {exc}")
        return event
