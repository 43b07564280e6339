"""Findings, decisions, approvals and config versions, with their lifecycle.

Tables::

    findings(resource_id, detected_rev, fingerprint, diff_type, scope, detected_at,
             resolved_rev, resolution, diff)            -- open: resolved_rev IS NULL
    decisions(decision_id PK, resource_id, action, status, rule, cycle_id,
              config_hash, first_rev, last_rev, decision,
              outcome, outcome_reason, outcome_rev, outcome_instance, outcome_token,
              outcome_retryable)  -- outcome: skipped | executing | executed | failed
    approvals(decision_id PK, resource_id, by, at, rev)
    config_versions(config_hash PK, first_rev, last_rev, source)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import ClassVar

import msgspec

from eventstore import RecordedEvent, format_timestamp, parse_timestamp
from ovi.events import (
    ActionExecuted,
    ActionExecuting,
    ActionFailed,
    ActionSkipped,
    ApprovalGranted,
    ConfigLoaded,
    DecisionMade,
    DiffDetected,
    DiffResolved,
)
from ovi.model import Decision
from projections._projection import Projection

__all__ = [
    "DecisionOutcome",
    "FindingsProjection",
    "OpenFinding",
    "approved_decisions",
    "decision_outcomes",
    "find_decision",
    "latest_config_hash",
    "open_findings",
]

_encode = msgspec.json.encode
_decode_decision = msgspec.json.Decoder(Decision).decode


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
    schema_version: ClassVar[int] = 2
    tables: ClassVar[tuple[str, ...]] = ("findings", "decisions", "approvals", "config_versions")
    event_types: ClassVar[frozenset[str] | None] = frozenset(
        {"DiffDetected", "DiffResolved", "DecisionMade", "ApprovalGranted", "ConfigLoaded",
         "ActionSkipped", "ActionExecuting", "ActionExecuted", "ActionFailed"}
    )

    def create(self, db: sqlite3.Connection) -> None:
        db.execute(
            """CREATE TABLE findings (
                resource_id  TEXT NOT NULL,
                detected_rev INTEGER NOT NULL,
                fingerprint  TEXT NOT NULL,
                diff_type    TEXT NOT NULL,
                scope        TEXT NOT NULL,
                detected_at  TEXT NOT NULL,
                resolved_rev INTEGER,
                resolution   TEXT,
                diff         TEXT NOT NULL,
                PRIMARY KEY (resource_id, detected_rev)
            )"""
        )
        db.execute("CREATE INDEX findings_open ON findings (resolved_rev, resource_id)")
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
                decision    TEXT NOT NULL,
                outcome           TEXT,
                outcome_reason    TEXT,
                outcome_rev       INTEGER,
                outcome_instance  TEXT,
                outcome_token     INTEGER,
                outcome_retryable INTEGER
            )"""
        )
        db.execute("CREATE INDEX decisions_resource ON decisions (resource_id, last_rev)")
        db.execute("CREATE INDEX decisions_outcome ON decisions (outcome)")
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
            """CREATE TABLE config_versions (
                config_hash TEXT PRIMARY KEY,
                first_rev   INTEGER NOT NULL,
                last_rev    INTEGER NOT NULL,
                source      TEXT NOT NULL
            )"""
        )

    def apply(self, db: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        for recorded in events:
            event = recorded.event
            rev = recorded.position
            if isinstance(event, DiffDetected):
                # A new finding for a resource supersedes the open one.
                db.execute(
                    "UPDATE findings SET resolved_rev = ?, resolution = 'superseded'"
                    " WHERE resource_id = ? AND resolved_rev IS NULL",
                    (rev, event.diff.resource_id),
                )
                db.execute(
                    "INSERT INTO findings VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, ?)",
                    (event.diff.resource_id, rev, event.fingerprint, event.diff.type,
                     event.diff.scope.key, format_timestamp(event.detected_at),
                     _encode(event.diff).decode()),
                )
            elif isinstance(event, DiffResolved):
                db.execute(
                    "UPDATE findings SET resolved_rev = ?, resolution = ?"
                    " WHERE resource_id = ? AND resolved_rev IS NULL",
                    (rev, event.reason, event.resource_id),
                )
            elif isinstance(event, DecisionMade):
                decision = event.decision
                db.execute(
                    "INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                    " NULL, NULL, NULL, NULL, NULL, NULL)"
                    " ON CONFLICT (decision_id) DO UPDATE SET status = excluded.status,"
                    " rule = excluded.rule, cycle_id = excluded.cycle_id,"
                    " config_hash = excluded.config_hash, last_rev = excluded.last_rev,"
                    " decision = excluded.decision",
                    (decision.decision_id, decision.resource_id, decision.action,
                     decision.status, event.rule, event.cycle_id, event.config_hash, rev, rev,
                     _encode(decision).decode()),
                )
            elif isinstance(event, ActionSkipped | ActionExecuting | ActionExecuted | ActionFailed):
                _outcome(db, recorded, event)
            elif isinstance(event, ApprovalGranted):
                db.execute(
                    "INSERT OR REPLACE INTO approvals VALUES (?, ?, ?, ?, ?)",
                    (event.decision_id, event.resource_id, event.by,
                     format_timestamp(event.at), rev),
                )
            elif isinstance(event, ConfigLoaded):
                db.execute(
                    "INSERT INTO config_versions VALUES (?, ?, ?, ?) ON CONFLICT (config_hash)"
                    " DO UPDATE SET last_rev = excluded.last_rev, source = excluded.source",
                    (event.config_hash, rev, rev, event.source),
                )


_OUTCOMES = {
    ActionSkipped: "skipped", ActionExecuting: "executing",
    ActionExecuted: "executed", ActionFailed: "failed",
}


def _outcome(
    db: sqlite3.Connection,
    recorded: RecordedEvent,
    event: ActionSkipped | ActionExecuting | ActionExecuted | ActionFailed,
) -> None:
    reason: str | None = None
    token: int | None = None
    retryable: int | None = None
    if isinstance(event, ActionSkipped):
        reason = event.reason
    else:
        token = event.token
    if isinstance(event, ActionFailed):
        reason, retryable = event.error, int(event.retryable)
    # An action in doubt stays in doubt until an outcome with its own token
    # arrives: a peer's ActionSkipped, or an outcome an instance recorded
    # after losing the claim, must not hide it from recovery.
    db.execute(
        "UPDATE decisions SET outcome = ?, outcome_reason = ?, outcome_rev = ?,"
        " outcome_instance = ?, outcome_token = ?, outcome_retryable = ?"
        " WHERE decision_id = ? AND (outcome IS NOT 'executing' OR ? = 'executing'"
        "  OR (? <> 'skipped' AND outcome_token = ?))",
        (_OUTCOMES[type(event)], reason, recorded.position, recorded.instance_id, token,
         retryable, event.decision_id, _OUTCOMES[type(event)], _OUTCOMES[type(event)], token),
    )


class DecisionOutcome(msgspec.Struct, frozen=True):
    """The last thing that happened to a decision's action."""

    decision: Decision
    outcome: str | None
    reason: str | None
    rev: int | None
    instance_id: str | None
    token: int | None
    retryable: bool | None


def decision_outcomes(
    db: sqlite3.Connection, *, decision_ids: Iterable[str] | None = None,
    outcome: str | None = None,
) -> dict[str, DecisionOutcome]:
    """Decisions with their last outcome: the given ids, or those whose last
    outcome is ``outcome`` (``executing`` = in doubt)."""
    sql = ("SELECT decision_id, decision, outcome, outcome_reason, outcome_rev,"
           " outcome_instance, outcome_token, outcome_retryable FROM decisions")
    rows: list[tuple[str, str, str | None, str | None, int | None, str | None, int | None,
                     int | None]] = []
    if decision_ids is not None:
        ids = sorted(set(decision_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows.extend(db.execute(
                f"{sql} WHERE decision_id IN ({', '.join('?' * len(chunk))})", chunk))
    elif outcome is not None:
        rows.extend(db.execute(f"{sql} WHERE outcome = ? ORDER BY outcome_rev", (outcome,)))
    else:
        rows.extend(db.execute(sql))
    return {
        row[0]: DecisionOutcome(_decode_decision(row[1]), row[2], row[3], row[4], row[5],
                                row[6], None if row[7] is None else bool(row[7]))
        for row in rows
    }


def find_decision(db: sqlite3.Connection, decision_id: str) -> Decision | None:
    """A recorded decision by id."""
    row = db.execute("SELECT decision FROM decisions WHERE decision_id = ?",
                     (decision_id,)).fetchone()
    return None if row is None else _decode_decision(row[0])


def open_findings(db: sqlite3.Connection) -> dict[str, OpenFinding]:
    """Open findings by resource id, each with its latest decision (if any)."""
    rows = db.execute(
        "SELECT f.resource_id, f.fingerprint, f.diff_type, f.scope, f.detected_at,"
        " f.detected_rev,"
        " (SELECT d.decision FROM decisions d WHERE d.resource_id = f.resource_id"
        "  AND d.last_rev >= f.detected_rev ORDER BY d.last_rev DESC LIMIT 1),"
        " (SELECT d.last_rev FROM decisions d WHERE d.resource_id = f.resource_id"
        "  AND d.last_rev >= f.detected_rev ORDER BY d.last_rev DESC LIMIT 1)"
        " FROM findings f WHERE f.resolved_rev IS NULL"
    )
    return {
        resource_id: OpenFinding(
            resource_id, fingerprint, diff_type, scope, parse_timestamp(detected_at),
            detected_rev,
            _decode_decision(decision) if decision is not None else None, decision_rev,
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
