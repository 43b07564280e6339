"""Folding a batch of events into the findings projection's tables.

The batch is folded in memory and written with a few ``executemany`` calls:
a statement per event cost most of a rebuild. Only what the tables need is
decoded of the two big events (``DiffDetected`` and ``DecisionMade`` carry
whole resources).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

import msgspec

from eventstore import RecordedEvent, format_timestamp
from ovi.events import (
    ActionExecuted,
    ActionExecuting,
    ActionFailed,
    ActionSkipped,
    ResourceDisappeared,
    stream_resource,
)
from ovi.model import Action, Outcome, Provenance, Scope

__all__ = ["DecisionMadeView", "FindingsFold"]


class _DiffView(msgspec.Struct, gc=False):
    type: str
    resource_id: str
    scope: Scope


class _Detected(msgspec.Struct, gc=False):
    """The fields of ``DiffDetected`` the projection folds."""

    diff: _DiffView
    fingerprint: str
    detected_at: datetime


_decode_detected = msgspec.json.Decoder(_Detected).decode


class _DecisionDiffView(msgspec.Struct, gc=False):
    scope: Scope


class _DecisionView(msgspec.Struct, gc=False):
    decision_id: str
    action: str
    resource_id: str
    status: str
    diff: _DecisionDiffView


class DecisionMadeView(msgspec.Struct, gc=False):
    """The fields of ``DecisionMade`` the projection folds."""

    cycle_id: str
    decision: _DecisionView
    config_hash: str
    rule: str


# [resource_id, detected_rev, fingerprint, diff_type, scope, detected_at,
#  resolved_rev, resolution, decision_rev]
_Finding = list[object]

_UPSERT_DECISION = (
    "INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, NULL,"
    " ?)"
    " ON CONFLICT (decision_id) DO UPDATE SET status = excluded.status,"
    " rule = excluded.rule, cycle_id = excluded.cycle_id,"
    " config_hash = excluded.config_hash, last_rev = excluded.last_rev"
)
# An action in doubt stays in doubt until an outcome with its own token
# arrives: a peer's ActionSkipped, or an outcome an instance recorded after
# losing the claim, must not hide it from recovery.
_RECORD_OUTCOME = (
    "UPDATE decisions SET outcome = ?, outcome_reason = ?, outcome_rev = ?,"
    " outcome_instance = ?, outcome_token = ?, outcome_retryable = ?"
    " WHERE decision_id = ? AND (outcome IS NOT 'executing' OR ? = 'executing'"
    "  OR (? <> 'skipped' AND outcome_token = ?))"
)
_ORIGINS = {Action.CREATE: Provenance.CREATED, Action.ADOPT: Provenance.ADOPTED}
_OUTCOMES = {"ActionSkipped": Outcome.SKIPPED, "ActionExecuting": Outcome.EXECUTING,
             "ActionExecuted": Outcome.EXECUTED, "ActionFailed": Outcome.FAILED}


class FindingsFold:
    """One batch's changes to the findings tables, written by :meth:`write`.

    A resource's new finding replaces its row, closing the one before; a
    resolution closes it. What the batch does to a finding it did not open is
    an ``UPDATE`` of the resource's row if that finding is still open.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._new: dict[str, _Finding] = {}  # the latest finding opened in this batch
        self._closed_before: dict[str, tuple[int, str]] = {}  # older open one: closed how
        self._decided_before: dict[str, int] = {}  # older open one: its last decision
        self._decisions: dict[str, list[object]] = {}  # upserts not yet written
        self._times: dict[datetime, str] = {}

    def add(self, recorded: RecordedEvent) -> None:
        type_ = recorded.type
        event = recorded.event
        rev = recorded.position
        if type_ == "DiffDetected":
            # Only the resource's latest finding of the batch is decoded (in
            # write()): the event's JSON waits in the fingerprint's place.
            resource_id = stream_resource(recorded.stream)
            if resource_id is None:
                raise ValueError(f"DiffDetected at {rev} is not in a resource stream")
            self._close(resource_id, rev, "superseded")
            self._new[resource_id] = [resource_id, rev, event, "", "", "", None, None, None]
        elif type_ == "DiffResolved":
            self._close(event.resource_id, rev, event.reason)
        elif type_ == "DecisionMade":
            self._decided(event, rev)
        elif type_ in _OUTCOMES:
            self._outcome(recorded, _OUTCOMES[type_])
        elif type_ == "ResourceDisappeared":
            self._disappeared(event)
        elif type_ == "AdoptionGranted":
            self._db.execute("INSERT OR REPLACE INTO adoption_grants VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (event.resource_id, event.identity, event.cloud_id, event.by,
                              self._text(event.at), rev, event.owner_seen))
        elif type_ == "ApprovalGranted":
            self._db.execute("INSERT OR REPLACE INTO approvals VALUES (?, ?, ?, ?, ?)",
                             (event.decision_id, event.resource_id, event.by,
                              self._text(event.at), rev))
        elif type_ == "ConfigLoaded":
            self._db.execute(
                "INSERT INTO config_versions VALUES (?, ?, ?, ?) ON CONFLICT (config_hash)"
                " DO UPDATE SET last_rev = excluded.last_rev, source = excluded.source",
                (event.config_hash, rev, rev, event.source))

    def write(self) -> None:
        db = self._db
        self._write_decisions()
        # A row this batch replaces needs no update first.
        new = self._new
        decided = [(rev, r) for r, rev in self._decided_before.items() if r not in new]
        if decided:
            db.executemany("UPDATE findings SET decision_rev = ?"
                           " WHERE resource_id = ? AND resolved_rev IS NULL", decided)
        closed = [(rev, how, r) for r, (rev, how) in self._closed_before.items() if r not in new]
        if closed:
            db.executemany("UPDATE findings SET resolved_rev = ?, resolution = ?"
                           " WHERE resource_id = ? AND resolved_rev IS NULL", closed)
        if new:
            rows = [new[r] for r in sorted(new)]
            for row in rows:
                detected = _decode_detected(row[2])  # type: ignore[arg-type]
                diff = detected.diff
                row[2:6] = [detected.fingerprint, diff.type, diff.scope.key,
                            self._text(detected.detected_at)]
            db.executemany("INSERT OR REPLACE INTO findings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           rows)

    def _close(self, resource_id: str, rev: int, how: str) -> None:
        finding = self._new.get(resource_id)
        if finding is not None:
            if finding[6] is None:
                finding[6], finding[7] = rev, how
        elif resource_id not in self._closed_before:
            # The first close in the batch: it closes the finding opened
            # before the batch, if that one is still open.
            self._closed_before[resource_id] = (rev, how)

    def _decided(self, event: DecisionMadeView, rev: int) -> None:
        decision = event.decision
        resource_id = decision.resource_id
        finding = self._new.get(resource_id)
        if finding is not None:
            if finding[6] is None:  # still open
                finding[8] = rev
        elif resource_id not in self._closed_before:
            self._decided_before[resource_id] = rev
        row = self._decisions.get(decision.decision_id)
        first = rev if row is None else row[7]
        self._decisions[decision.decision_id] = [
            decision.decision_id, resource_id, decision.action, decision.status, event.rule,
            event.cycle_id, event.config_hash, first, rev, decision.diff.scope.key]

    def _outcome(self, recorded: RecordedEvent, outcome: Outcome) -> None:
        event = recorded.event
        reason: str | None = None
        token: int | None = None
        retryable: int | None = None
        if isinstance(event, ActionSkipped):
            reason = event.reason
        elif isinstance(event, ActionExecuting):
            token = event.token
        else:
            token = event.token
            if isinstance(event, ActionFailed):
                reason, retryable = event.error, int(event.retryable)
        # The outcome depends on the decision's row as it stands: write the
        # decisions folded so far first (outcomes are few).
        self._write_decisions()
        self._db.execute(_RECORD_OUTCOME, (
            outcome, reason, recorded.position, recorded.instance_id, token, retryable,
            event.decision_id, outcome, outcome, token))
        if not isinstance(event, ActionExecuted) or not event.cloud_id:
            return
        origin = _ORIGINS.get(event.action)
        if origin is not None:
            self._provenance(event, origin, recorded.position)
        elif event.action is Action.DELETE:
            self._forget(self._scope_of(event.decision_id), event.cloud_id)

    def _disappeared(self, event: ResourceDisappeared) -> None:
        # Gone, not merely known by another identity: whatever later takes
        # its cloud id (a bucket name freed and reused) is another resource.
        if event.now_known_as is None:
            self._forget(event.scope.key, event.cloud_id)

    def _forget(self, scope: str, cloud_id: str) -> None:
        """What Ovi made at ``cloud_id`` in ``scope`` no longer exists: the log's
        word that Ovi made it must not pass to the next resource of that name."""
        self._db.execute("DELETE FROM provenance WHERE scope = ? AND cloud_id = ?",
                         (scope, cloud_id))

    def _scope_of(self, decision_id: str) -> str:
        row = self._db.execute("SELECT scope FROM decisions WHERE decision_id = ?",
                               (decision_id,)).fetchone()
        return str(row[0]) if row is not None else ""

    def _provenance(self, event: ActionExecuted, origin: Provenance, rev: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO provenance VALUES (?, ?, ?, ?, ?, ?)",
                         (event.resource_id, event.cloud_id, origin, event.decision_id,
                          self._scope_of(event.decision_id), rev))
        if origin is Provenance.ADOPTED:  # the grant, if any, is used up
            self._db.execute("DELETE FROM adoption_grants WHERE resource_id = ?",
                             (event.resource_id,))

    def _write_decisions(self) -> None:
        if self._decisions:
            self._db.executemany(_UPSERT_DECISION, self._decisions.values())
            self._decisions = {}

    def _text(self, moment: datetime) -> str:
        text = self._times.get(moment)
        if text is None:
            text = self._times[moment] = format_timestamp(moment)
        return text
