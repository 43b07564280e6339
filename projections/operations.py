"""What operators did to the service: pauses, and the findings already announced.

Tables::

    pauses(target PK, paused, reason, by, user, uid, host, at, version, rev)
        -- one row per target ever paused (a resource id, or ``*``: the whole
        -- estate); ``paused`` 0 once resumed; ``version`` is the target's pause
        -- stream version, the expected version that fences a write-ahead
    announcements(key PK, kind, resource_id, decision_id, rev)
        -- open findings already announced to the notification sinks

The engine reads the pause state at the start of a cycle; the executor then
appends each write-ahead expecting the pause streams to be at the versions
read, so a pause recorded by any process after that read stops the action.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import ClassVar

import msgspec

from eventstore import RecordedEvent, format_timestamp, parse_timestamp
from ovi.events import PAUSE_STREAM, AutomationPaused, AutomationResumed, NotificationSent
from projections._projection import Projection

__all__ = ["OperationsProjection", "Pause", "PauseState", "announced", "pause_state"]


class Pause(msgspec.Struct, frozen=True):
    """Automation paused on ``target``: by whom, when and why."""

    target: str
    reason: str
    by: str
    user: str
    uid: int
    host: str
    at: datetime

    def describe(self) -> str:
        """``paused by alice (uid 1000 on ops-1) at …: migration``."""
        who = self.by if self.by == self.user else f"{self.by} (user {self.user})"
        return (f"paused by {who}, uid {self.uid} on {self.host},"
                f" at {self.at.isoformat(timespec='seconds')}: {self.reason}")


class PauseState(msgspec.Struct, frozen=True):
    """The pauses in force, and the version of every pause stream (a target
    absent from ``versions`` has none: version 0)."""

    active: dict[str, Pause]
    versions: dict[str, int]


class OperationsProjection(Projection):
    name: ClassVar[str] = "operations"
    schema_version: ClassVar[int] = 1
    tables: ClassVar[tuple[str, ...]] = ("pauses", "announcements")
    event_types: ClassVar[frozenset[str] | None] = frozenset(
        {"AutomationPaused", "AutomationResumed", "NotificationSent"})

    def create(self, db: sqlite3.Connection) -> None:
        db.execute(
            """CREATE TABLE pauses (
                target  TEXT PRIMARY KEY,
                paused  INTEGER NOT NULL,
                reason  TEXT NOT NULL,
                by      TEXT NOT NULL,
                user    TEXT NOT NULL,
                uid     INTEGER NOT NULL,
                host    TEXT NOT NULL,
                at      TEXT NOT NULL,
                version INTEGER NOT NULL,
                rev     INTEGER NOT NULL
            )"""
        )
        db.execute(
            """CREATE TABLE announcements (
                key         TEXT PRIMARY KEY,
                kind        TEXT NOT NULL,
                resource_id TEXT NOT NULL,
                decision_id TEXT NOT NULL,
                rev         INTEGER NOT NULL
            ) WITHOUT ROWID"""
        )

    def apply(self, db: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        for recorded in events:
            event = recorded.event
            if isinstance(event, AutomationPaused | AutomationResumed):
                if not recorded.stream.startswith(PAUSE_STREAM):
                    raise ValueError(f"{recorded.type} at {recorded.position} is not in a"
                                     " pause stream")
                actor = event.actor
                db.execute(
                    "INSERT OR REPLACE INTO pauses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (event.target, int(isinstance(event, AutomationPaused)), event.reason,
                     actor.by, actor.user, actor.uid, actor.host, format_timestamp(event.at),
                     recorded.stream_version, recorded.position))
            elif isinstance(event, NotificationSent):
                db.execute("INSERT OR REPLACE INTO announcements VALUES (?, ?, ?, ?, ?)",
                           (event.key, event.kind, event.resource_id, event.decision_id,
                            recorded.position))


def pause_state(db: sqlite3.Connection) -> PauseState:
    """The pauses in force and the pause streams' versions."""
    active: dict[str, Pause] = {}
    versions: dict[str, int] = {}
    for target, paused, reason, by, user, uid, host, at, version in db.execute(
        "SELECT target, paused, reason, by, user, uid, host, at, version FROM pauses"
    ):
        versions[target] = version
        if paused:
            active[target] = Pause(target, reason, by, user, uid, host, parse_timestamp(at))
    return PauseState(active, versions)


def announced(db: sqlite3.Connection, keys: Iterable[str]) -> set[str]:
    """Which of ``keys`` were announced already."""
    wanted = sorted(set(keys))
    found: set[str] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        found.update(row[0] for row in db.execute(
            f"SELECT key FROM announcements WHERE key IN ({', '.join('?' * len(chunk))})",
            chunk))
    return found
