"""Findings, decisions, approvals and config versions, with their lifecycle.

Tables::

    findings(resource_id PK, detected_rev, fingerprint, diff_type, scope, detected_at,
             resolved_rev, resolution, decision_rev)   -- open: resolved_rev IS NULL
    decisions(decision_id PK, resource_id, action, status, rule, cycle_id,
              config_hash, first_rev, last_rev,
              outcome, outcome_reason, outcome_rev, outcome_instance, outcome_token,
              outcome_retryable)  -- outcome: skipped | executing | executed | failed
    approvals(decision_id PK, resource_id, by, at, rev)
    config_versions(config_hash PK, first_rev, last_rev, source)
    provenance(resource_id, cloud_id, origin, decision_id, scope, rev,
               PK (resource_id, cloud_id))  -- origin: created | adopted
    adoption_grants(resource_id PK, identity, cloud_id, by, at, rev, owner_seen)

``findings`` holds each resource's latest finding: open, or how it was closed
(``superseded`` by a newer one, or the resolution's reason); earlier ones are
in the log. Like the resources projection, this one indexes the log instead of
copying it: a finding's diff is the ``DiffDetected`` event at
``detected_rev``, a decision the ``DecisionMade`` event at its ``last_rev``,
and ``decision_rev`` is the last decision made about the resource while its
finding was open. The queries read those events from the log's ``events``
table, in the same file.

``provenance`` is what the log says Ovi made its own: every executed create
(recovered ones too) and adoption, with the decision's scope, for as long as
that resource exists: an executed delete of it, or its disappearance (not a
change of identity), removes the row, so a resource that later takes the same
cloud id (a bucket name freed and reused) is not Ovi's. A delete of anything
else waits for a person. ``adoption_grants`` holds the ``ovi adopt``
grants not used yet (an executed adoption of that id uses it up).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

import msgspec

from eventstore import RecordedEvent, parse_timestamp
from ovi.model import Decision, Location, Outcome, Provenance, ResourceType, Scope
from projections._findings_fold import DecisionMadeView, FindingsFold
from projections._projection import Projection

__all__ = [
    "AdoptionGrant",
    "DecisionOutcome",
    "FindingsProjection",
    "OpenFinding",
    "adoption_grants",
    "approved_decisions",
    "decision_outcomes",
    "find_decision",
    "latest_config_hash",
    "made_locations",
    "open_findings",
    "provenance",
    "provenance_scopes",
]

class _MadeDecision(msgspec.Struct, gc=False):
    """What the queries read of a ``DecisionMade`` event's data."""

    decision: Decision


_decode_made = msgspec.json.Decoder(_MadeDecision).decode


def _decision(data: str) -> Decision:
    return _decode_made(data).decision


class OpenFinding(msgspec.Struct, frozen=True):
    """A finding not yet resolved, with the decision last recorded for it."""

    resource_id: str
    fingerprint: str
    diff_type: str
    scope: str
    detected_at: datetime
    detected_rev: int
    decision: Decision | None = None
    decision_rev: int | None = None


class FindingsProjection(Projection):
    name: ClassVar[str] = "findings"
    schema_version: ClassVar[int] = 6
    tables: ClassVar[tuple[str, ...]] = ("findings", "decisions", "approvals", "config_versions",
                                         "provenance", "adoption_grants")
    event_types: ClassVar[frozenset[str] | None] = frozenset(
        {"DiffDetected", "DiffResolved", "DecisionMade", "ApprovalGranted", "ConfigLoaded",
         "ActionSkipped", "ActionExecuting", "ActionExecuted", "ActionFailed",
         "AdoptionGranted", "ResourceDisappeared"}
    )
    event_views: ClassVar[Mapping[str, type[Any]]] = {
        "DiffDetected": bytes, "DecisionMade": DecisionMadeView}

    def create(self, db: sqlite3.Connection) -> None:
        db.execute(
            """CREATE TABLE findings (
                resource_id  TEXT PRIMARY KEY,
                detected_rev INTEGER NOT NULL,
                fingerprint  TEXT NOT NULL,
                diff_type    TEXT NOT NULL,
                scope        TEXT NOT NULL,
                detected_at  TEXT NOT NULL,
                resolved_rev INTEGER,
                resolution   TEXT,
                decision_rev INTEGER
            ) WITHOUT ROWID"""
        )
        db.execute(
            """CREATE TABLE decisions (
                decision_id TEXT PRIMARY KEY,
                resource_id TEXT NOT NULL,
                action      TEXT NOT NULL,
                status      TEXT NOT NULL,
                rule        TEXT NOT NULL,
                cycle_id    TEXT NOT NULL,
                config_hash TEXT NOT NULL,
                first_rev   INTEGER NOT NULL,
                last_rev    INTEGER NOT NULL,
                outcome           TEXT,
                outcome_reason    TEXT,
                outcome_rev       INTEGER,
                outcome_instance  TEXT,
                outcome_token     INTEGER,
                outcome_retryable INTEGER,
                scope             TEXT NOT NULL
            ) WITHOUT ROWID"""
        )
        db.execute("CREATE INDEX decisions_outcome ON decisions (outcome, outcome_rev)"
                   " WHERE outcome IS NOT NULL")
        db.execute(
            """CREATE TABLE approvals (
                decision_id TEXT PRIMARY KEY,
                resource_id TEXT NOT NULL,
                by          TEXT NOT NULL,
                at          TEXT NOT NULL,
                rev         INTEGER NOT NULL
            )"""
        )
        db.execute(
            """CREATE TABLE provenance (
                resource_id TEXT NOT NULL,
                cloud_id    TEXT NOT NULL,
                origin      TEXT NOT NULL,
                decision_id TEXT NOT NULL,
                scope       TEXT NOT NULL,
                rev         INTEGER NOT NULL,
                PRIMARY KEY (resource_id, cloud_id)
            ) WITHOUT ROWID"""
        )
        db.execute(
            """CREATE TABLE adoption_grants (
                resource_id TEXT PRIMARY KEY,
                identity    TEXT NOT NULL,
                cloud_id    TEXT NOT NULL,
                by          TEXT NOT NULL,
                at          TEXT NOT NULL,
                rev         INTEGER NOT NULL,
                owner_seen  TEXT
            )"""
        )
        db.execute(
            """CREATE TABLE config_versions (
                config_hash TEXT PRIMARY KEY,
                first_rev   INTEGER NOT NULL,
                last_rev    INTEGER NOT NULL,
                source      TEXT NOT NULL
            )"""
        )

    def apply(self, db: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        fold = FindingsFold(db)
        for recorded in events:
            fold.add(recorded)
        fold.write()


class DecisionOutcome(msgspec.Struct, frozen=True):
    """The last thing that happened to a decision's action."""

    decision: Decision
    outcome: Outcome | None
    reason: str | None  # the skip reason, or the error of a failure
    rev: int | None
    instance_id: str | None
    token: int | None
    retryable: bool | None


def decision_outcomes(
    db: sqlite3.Connection, *, decision_ids: Iterable[str] | None = None,
    outcome: Outcome | None = None,
) -> dict[str, DecisionOutcome]:
    """Decisions with their last outcome: the given ids, or those whose last
    outcome is ``outcome`` (``executing`` = in doubt)."""
    sql = ("SELECT d.decision_id, e.data, d.outcome, d.outcome_reason, d.outcome_rev,"
           " d.outcome_instance, d.outcome_token, d.outcome_retryable"
           " FROM decisions d JOIN events e ON e.position = d.last_rev")
    rows: list[tuple[str, str, str | None, str | None, int | None, str | None, int | None,
                     int | None]] = []
    if decision_ids is not None:
        ids = sorted(set(decision_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows.extend(db.execute(
                f"{sql} WHERE d.decision_id IN ({', '.join('?' * len(chunk))})", chunk))
    elif outcome is not None:
        outcome = Outcome(outcome)  # a closed set: anything else is a bug, refused here
        # Spelled out (an Outcome value) so that the partial index serves it.
        rows.extend(db.execute(
            f"{sql} WHERE d.outcome = '{outcome.value}' AND d.outcome IS NOT NULL"
            " ORDER BY d.outcome_rev"))
    else:
        rows.extend(db.execute(sql))
    return {
        row[0]: DecisionOutcome(_decision(row[1]), None if row[2] is None else Outcome(row[2]),
                                row[3], row[4], row[5],
                                row[6], None if row[7] is None else bool(row[7]))
        for row in rows
    }


def find_decision(db: sqlite3.Connection, decision_id: str) -> Decision | None:
    """A recorded decision by id."""
    row = db.execute("SELECT e.data FROM decisions d JOIN events e ON e.position = d.last_rev"
                     " WHERE d.decision_id = ?", (decision_id,)).fetchone()
    return None if row is None else _decision(row[0])


def open_findings(db: sqlite3.Connection) -> dict[str, OpenFinding]:
    """Open findings by resource id, each with its latest decision (if any)."""
    rows = db.execute(
        "SELECT f.resource_id, f.fingerprint, f.diff_type, f.scope, f.detected_at,"
        " f.detected_rev, e.data, f.decision_rev"
        " FROM findings f LEFT JOIN events e ON e.position = f.decision_rev"
        " WHERE f.resolved_rev IS NULL"
    )
    return {
        resource_id: OpenFinding(
            resource_id, fingerprint, diff_type, scope, parse_timestamp(detected_at),
            detected_rev, _decision(decision) if decision is not None else None, decision_rev,
        )
        for resource_id, fingerprint, diff_type, scope, detected_at, detected_rev, decision,
        decision_rev in rows
    }


def approved_decisions(db: sqlite3.Connection) -> frozenset[str]:
    """Ids of decisions that have an approval."""
    return frozenset(row[0] for row in db.execute("SELECT decision_id FROM approvals"))


def latest_config_hash(db: sqlite3.Connection) -> str | None:
    """The config version recorded last, if any."""
    row = db.execute(
        "SELECT config_hash FROM config_versions ORDER BY last_rev DESC LIMIT 1"
    ).fetchone()
    return None if row is None else str(row[0])


class AdoptionGrant(msgspec.Struct, frozen=True):
    """An ``ovi adopt`` grant not used yet."""

    resource_id: str  # the desired id the resource is to become
    identity: str  # the resource's identity (provider/region/type/cloud id)
    cloud_id: str
    by: str
    at: datetime
    owner_seen: str | None = None  # the ovi:owner tag it carried when granted


def provenance(db: sqlite3.Connection) -> dict[tuple[str, str], Provenance]:
    """(resource id, cloud id) → how Ovi came to own it (an executed create or
    adoption)."""
    return {(rid, cloud_id): Provenance(origin) for rid, cloud_id, origin
            in db.execute("SELECT resource_id, cloud_id, origin FROM provenance")}


def made_locations(db: sqlite3.Connection) -> dict[str, tuple[Location, ...]]:
    """Desired id → where the resources are that Ovi created or adopted as it
    (and that still exist, as far as the log knows)."""
    found: dict[str, list[Location]] = {}
    for resource_id, cloud_id, scope in db.execute(
            "SELECT resource_id, cloud_id, scope FROM provenance WHERE scope <> ''"
            " ORDER BY resource_id, scope, cloud_id"):
        provider, region, type_ = str(scope).split("/", 2)
        found.setdefault(resource_id, []).append(
            Location(Scope(provider, region, ResourceType(type_)), cloud_id))
    return {rid: tuple(where) for rid, where in found.items()}


def provenance_scopes(db: sqlite3.Connection) -> set[str]:
    """The scopes where Ovi ever created or adopted something (they are
    observed even when the config names them no more)."""
    return {row[0] for row in db.execute("SELECT DISTINCT scope FROM provenance") if row[0]}


def adoption_grants(db: sqlite3.Connection) -> dict[str, AdoptionGrant]:
    """Unused ``ovi adopt`` grants by the desired id they name."""
    return {
        row[0]: AdoptionGrant(row[0], row[1], row[2], row[3], parse_timestamp(row[4]), row[5])
        for row in db.execute(
            "SELECT resource_id, identity, cloud_id, by, at, owner_seen FROM adoption_grants")
    }
