"""Who holds which resource: the claims projection.

Table ``claims(resource_id PK, instance_id, claimed_at, expires_at, token,
version, released, takeover_of)``. ``version`` is the claim stream's version
(the expected version for the next claim); the claim is held when it is not
released and ``expires_at`` is in the future. A renewal (``ClaimRenewed``)
moves ``expires_at`` and ``version``, never ``token``: the fencing token is
the version the stream had right after ``ClaimAcquired``. The projection may lag the log:
that is safe, because claiming appends with the expected version, and a stale
read only makes the append fail.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import ClassVar

import msgspec

from eventstore import RecordedEvent, format_timestamp, parse_timestamp
from ovi.events import ClaimAcquired, ClaimReleased, ClaimRenewed
from projections._projection import Projection

__all__ = ["ClaimState", "ClaimsProjection", "claim_states", "held_claims"]


class ClaimState(msgspec.Struct, frozen=True):
    """The latest claim on a resource."""

    resource_id: str
    instance_id: str
    claimed_at: datetime
    expires_at: datetime
    token: int
    version: int  # claim stream version, the next claim's expected version
    released: bool

    def held_at(self, now: datetime) -> bool:
        return not self.released and self.expires_at > now


class ClaimsProjection(Projection):
    name: ClassVar[str] = "claims"
    schema_version: ClassVar[int] = 2  # 2: renewals
    tables: ClassVar[tuple[str, ...]] = ("claims",)
    event_types: ClassVar[frozenset[str] | None] = frozenset(
        {"ClaimAcquired", "ClaimReleased", "ClaimRenewed"})

    def create(self, db: sqlite3.Connection) -> None:
        db.execute(
            """CREATE TABLE claims (
                resource_id TEXT PRIMARY KEY,
                instance_id TEXT NOT NULL,
                claimed_at  TEXT NOT NULL,
                expires_at  TEXT NOT NULL,
                token       INTEGER NOT NULL,
                version     INTEGER NOT NULL,
                released    INTEGER NOT NULL,
                takeover_of TEXT
            )"""
        )

    def apply(self, db: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        for recorded in events:
            event = recorded.event
            if isinstance(event, ClaimAcquired):
                db.execute(
                    "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                    (event.resource_id, event.instance_id, format_timestamp(event.claimed_at),
                     format_timestamp(event.expires_at), event.token, recorded.stream_version,
                     event.takeover_of),
                )
            elif isinstance(event, ClaimReleased):
                db.execute(
                    "UPDATE claims SET released = 1, version = ? WHERE resource_id = ?",
                    (recorded.stream_version, event.resource_id),
                )
            elif isinstance(event, ClaimRenewed):
                # Appended expecting the stream's version, so it always renews
                # the claim in force; the token check only guards odd logs.
                db.execute(
                    "UPDATE claims SET version = ?, expires_at = CASE WHEN token = ?"
                    " AND released = 0 THEN ? ELSE expires_at END WHERE resource_id = ?",
                    (recorded.stream_version, event.token,
                     format_timestamp(event.expires_at), event.resource_id),
                )


_COLUMNS = "resource_id, instance_id, claimed_at, expires_at, token, version, released"


def _state(row: tuple[str, str, str, str, int, int, int]) -> ClaimState:
    resource_id, instance_id, claimed_at, expires_at, token, version, released = row
    return ClaimState(resource_id, instance_id, parse_timestamp(claimed_at),
                      parse_timestamp(expires_at), token, version, bool(released))


def claim_states(db: sqlite3.Connection, resource_ids: Iterable[str]) -> dict[str, ClaimState]:
    """The latest claim of each given resource that was ever claimed."""
    ids = sorted(set(resource_ids))
    states: dict[str, ClaimState] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ", ".join("?" * len(chunk))
        for row in db.execute(
            f"SELECT {_COLUMNS} FROM claims WHERE resource_id IN ({marks})", chunk
        ):
            states[row[0]] = _state(row)
    return states


def held_claims(db: sqlite3.Connection, now: datetime) -> list[ClaimState]:
    """Every claim held at ``now``."""
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM claims WHERE released = 0 AND expires_at > ?"
        " ORDER BY resource_id",
        (format_timestamp(now),),
    )
    return [_state(row) for row in rows]
