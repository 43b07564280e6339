"""Starts Ovi owes: resources a disruptive update stopped and may have left
stopped.

Table ``restarts_owed(resource_id PK, decision_id, token, cloud_id, begun_rev,
ended_rev)``. A row is opened by an ``ActionExecuting`` that recorded
``was_running`` (an EC2 resize of a running instance stops it) and stays
until Ovi knows the resource runs again or is gone:

- an ``ActionExecuted`` on the resource closes it (the resize finished, start
  included; or the start Ovi owed was made; or the resource was deleted);
- so does ``RestartSettled``: the engine saw it running in an observation
  that began after the action ended;
- so does ``ResourceDisappeared``: nothing is left to start.

``ended_rev`` is the position of the action's ``ActionFailed``; it is
``NULL`` while the action is in doubt (recovery resolves those).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import msgspec

from eventstore import RecordedEvent
from ovi.events import (
    ActionExecuted,
    ActionExecuting,
    ActionFailed,
    RestartSettled,
    stream_resource,
)
from projections._projection import Projection

__all__ = ["OwedRestart", "RestartsProjection", "owed_restarts"]


class OwedRestart(msgspec.Struct, frozen=True):
    """A resource Ovi stopped and has not seen running since."""

    resource_id: str
    decision_id: str
    token: int
    cloud_id: str | None
    begun_rev: int  # the ActionExecuting
    ended_rev: int | None  # its ActionFailed; None while in doubt


class RestartsProjection(Projection):
    name: ClassVar[str] = "restarts"
    schema_version: ClassVar[int] = 1
    tables: ClassVar[tuple[str, ...]] = ("restarts_owed",)
    event_types: ClassVar[frozenset[str] | None] = frozenset(
        {"ActionExecuting", "ActionExecuted", "ActionFailed", "RestartSettled",
         "ResourceDisappeared"})
    # Only the stream of a disappearance matters, and only for an owed resource.
    event_views: ClassVar[Mapping[str, type[Any]]] = {"ResourceDisappeared": bytes}

    def create(self, db: sqlite3.Connection) -> None:
        db.execute(
            """CREATE TABLE restarts_owed (
                resource_id TEXT PRIMARY KEY,
                decision_id TEXT NOT NULL,
                token       INTEGER NOT NULL,
                cloud_id    TEXT,
                begun_rev   INTEGER NOT NULL,
                ended_rev   INTEGER
            )"""
        )

    def apply(self, db: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        # resource id → [decision_id, token, cloud_id, begun_rev, ended_rev]
        owed: dict[str, list[Any]] = {
            row[0]: list(row[1:]) for row in db.execute(
                "SELECT resource_id, decision_id, token, cloud_id, begun_rev, ended_rev"
                " FROM restarts_owed")}
        before = set(owed)
        for recorded in events:
            event = recorded.event
            if isinstance(event, ActionExecuting):
                if event.was_running:
                    owed[event.resource_id] = [event.decision_id, event.token, event.cloud_id,
                                               recorded.position, None]
            elif isinstance(event, ActionExecuted):
                owed.pop(event.resource_id, None)
            elif isinstance(event, ActionFailed):
                row = owed.get(event.resource_id)
                if row is not None and (row[0], row[1]) == (event.decision_id, event.token):
                    row[4] = recorded.position
            elif isinstance(event, RestartSettled):
                row = owed.get(event.resource_id)
                if row is not None and (row[0], row[1]) == (event.decision_id, event.token):
                    del owed[event.resource_id]
            elif owed and recorded.type == "ResourceDisappeared":
                resource_id = stream_resource(recorded.stream)
                if resource_id is not None:
                    owed.pop(resource_id, None)
        db.executemany("DELETE FROM restarts_owed WHERE resource_id = ?",
                       [(r,) for r in before - set(owed)])
        db.executemany("INSERT OR REPLACE INTO restarts_owed VALUES (?, ?, ?, ?, ?, ?)",
                       [(r, *row) for r, row in owed.items()])


def owed_restarts(db: sqlite3.Connection) -> dict[str, OwedRestart]:
    """Every resource owed a start, by resource id."""
    return {
        row[0]: OwedRestart(*row)
        for row in db.execute("SELECT resource_id, decision_id, token, cloud_id, begun_rev,"
                              " ended_rev FROM restarts_owed ORDER BY resource_id")
    }
