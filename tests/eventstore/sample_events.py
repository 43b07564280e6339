"""Event types the event store tests write; shared with the child processes."""

from __future__ import annotations

from eventstore import Event, EventRegistry

__all__ = ["Note", "Ping", "Secret", "sample_registry"]


class Ping(Event, frozen=True):
    n: int


class Note(Event, frozen=True):
    text: str


class Secret(Event, frozen=True):
    """A type that some readers' registries do not know."""

    code: str
    level: int = 0


def sample_registry() -> EventRegistry:
    return EventRegistry([Ping, Note, Secret])
