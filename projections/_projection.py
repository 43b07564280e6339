"""The contract every projection implements."""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from eventstore import RecordedEvent

__all__ = ["Projection"]


class Projection(ABC):
    """A read model folded from the event log into tables it owns.

    A :class:`~projections.ProjectionRunner` calls :meth:`create` when the
    projection is new or rebuilt, then :meth:`apply` with batches of events in
    position order. Both run on the runner's database thread *inside the
    runner's transaction*, which also moves the projection's checkpoint: so
    they must use plain ``execute``/``executemany`` calls and must never
    ``COMMIT``, ``ROLLBACK``, ``BEGIN`` or call ``executescript`` (which
    commits). Whatever they raise rolls the whole batch back.

    A projection must be a pure fold of the events it is given: rebuilding it
    from position 0 must give the same rows as applying the log batch by batch,
    whatever the batch boundaries. It must not read other projections' tables
    (their checkpoints may differ from its own).
    """

    #: unique name; the key of the checkpoint row
    name: ClassVar[str]
    #: bump when the tables or the fold change: the runner then rebuilds the
    #: projection from the log the next time it is opened
    schema_version: ClassVar[int]
    #: the tables (and only those) the projection owns; dropped on rebuild,
    #: with their indexes
    tables: ClassVar[tuple[str, ...]]
    #: the event type names folded; ``None`` folds every event. The checkpoint
    #: still advances over events of other types.
    event_types: ClassVar[frozenset[str] | None] = None
    #: lighter shapes for some of those types: ``apply`` then receives the
    #: event's data decoded as this msgspec type (fields it does not declare
    #: are skipped, which is several times faster for big events) instead of
    #: the full event; ``bytes`` gives the event's JSON as recorded (UTF-8),
    #: for a projection that decodes only some of those events. An event whose data
    #: does not fit the view stops the fold with
    #: :class:`~projections.ProjectionApplyError`.
    event_views: ClassVar[Mapping[str, type[Any]]] = {}
    #: the shape of every other event folded (``None``: the full event): a
    #: projection that reads only the row's columns (stream, version, type,
    #: time) of whatever it folds sets ``bytes`` and has nothing decoded
    default_event_view: ClassVar[type[Any] | None] = None

    @abstractmethod
    def create(self, db: sqlite3.Connection) -> None:
        """Create the projection's tables and indexes (they do not exist yet)."""

    @abstractmethod
    def apply(self, db: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        """Fold a non-empty batch of events, in position order, into the tables.

        Only events of :attr:`event_types` are passed (every event when it is
        ``None``). Aggregating the batch in memory and writing with one
        ``executemany`` is much faster than a statement per event.
        """
