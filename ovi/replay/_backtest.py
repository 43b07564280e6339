"""``backtest``: what another config would have decided, cycle by cycle.

For every recorded cycle the observed set is rebuilt from the change events
(checked against each scope's ``ObservationCompleted`` digest), together with
the scopes that failed, the findings open and the approvals granted as of
then. The comparator and decision maker of the new config run on it with
``now`` = the cycle's start, and per resource the ``(action, status)`` they
give is compared with the one recorded as in force at the end of that cycle.

The facts the engine hands the comparator and decision maker besides the
observation are folded too: where the log last saw each id, the resources
that could not be read, provenance (executed creates and adoptions, until
the resource is deleted or disappears) and the ``ovi adopt`` grants not used
yet.

With the recorded config itself the backtest finds no difference: that is
how it is tested. Detection times (grace periods, decision ids, hence
approvals) come from the recorded finding when the new diff is the same
finding, else from the backtest's own earlier cycles.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from eventstore import EventStore
from ovi.comparator import Context, DefaultComparator, Grant, grants_in_force
from ovi.config import Config
from ovi.decisions import DecisionContext, DecisionMaker
from ovi.events import (
    ActionExecuted,
    AdoptionGranted,
    ApprovalGranted,
    CycleFinished,
    CycleStarted,
    DecisionMade,
    DiffDetected,
    DiffResolved,
    ObservationCompleted,
    ObservationFailed,
    ResourceDisappeared,
    ResourceObserved,
)
from ovi.model import (
    Action,
    Decision,
    Diff,
    Location,
    Provenance,
    Resource,
    ResourceType,
    Scope,
    observed_set_digest,
)
from ovi.providers._naming import natural_id
from ovi.replay._render import Progress

__all__ = ["BacktestReport", "Difference", "DigestMismatch", "Verdict", "backtest"]

_TYPES = ("CycleStarted", "CycleFinished", "ResourceObserved", "ResourceDisappeared",
          "ObservationCompleted", "ObservationFailed", "DiffDetected", "DiffResolved",
          "DecisionMade", "ApprovalGranted", "AdoptionGranted", "ActionExecuted")
_ORIGINS = {Action.CREATE: Provenance.CREATED, Action.ADOPT: Provenance.ADOPTED}


class Verdict(msgspec.Struct, frozen=True):
    """A decision reduced to what the comparison looks at, plus why."""

    action: str
    status: str
    rule: str
    reason: str = ""

    @classmethod
    def of(cls, decision: Decision) -> Verdict:
        return cls(decision.action.value, decision.status.value, decision.rule, decision.reason)

    @property
    def key(self) -> tuple[str, str]:
        return self.action, self.status


class Difference(msgspec.Struct, kw_only=True):
    """One resource whose decision differed, over a run of consecutive cycles."""

    resource_id: str
    recorded: Verdict | None  # None: nothing was in force
    backtest: Verdict | None  # None: the new config finds nothing to do
    first_cycle: str
    last_cycle: str
    first_at: datetime
    last_at: datetime
    cycles: int = 1


class DigestMismatch(msgspec.Struct, frozen=True):
    """A scope whose rebuilt observed set is not the one its cycle recorded."""

    cycle_id: str
    scope: str
    position: int
    recorded_count: int
    rebuilt_count: int


class BacktestReport(msgspec.Struct, kw_only=True):
    config_hash: str
    cycles_replayed: int = 0
    cycles_compared: int = 0
    unfinished_cycles: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None
    differences: list[Difference] = []
    digest_mismatches: list[DigestMismatch] = []


class _Finding(msgspec.Struct):
    fingerprint: str
    detected_at: datetime
    scope: str
    verdict: Verdict | None = None


class _Cycle(msgspec.Struct):
    cycle_id: str
    position: int
    started_at: datetime
    observed: dict[Scope, list[Resource]] = {}
    failed: set[Scope] = set()
    unreadable: set[Location] = set()


class _Backtest:
    def __init__(self, config: Config, since: datetime | None) -> None:
        self.config = config
        self.since = since
        self.comparator = DefaultComparator.from_config(config)
        self.maker = DecisionMaker.from_config(config)
        self.desired = config.desired_resources()
        self.scopes = {Scope(config.provider, config.region, t) for t in ResourceType}
        self.scopes.update(d.scope for d in self.desired)
        self.estate: dict[Scope, dict[str, tuple[Resource, str]]] = {}
        self.recorded: dict[str, _Finding] = {}
        self.simulated: dict[str, _Finding] = {}
        self.approvals: dict[str, int] = {}
        self.provenance: dict[tuple[str, str], Provenance] = {}
        self.made: dict[tuple[str, str], Location] = {}  # where each provenance row's resource is
        self.action_scopes: dict[str, Scope] = {}  # decision id → scope, for actions
        self.grants: dict[str, Grant] = {}
        self.natural = {d.id: n for d in self.desired if (n := natural_id(d)) is not None}
        self.cycles: dict[str, _Cycle] = {}
        self.runs: dict[str, Difference] = {}
        self.report = BacktestReport(config_hash=config.config_hash)

    def feed(self, position: int, event: object) -> None:
        match event:
            case CycleStarted():
                self.cycles[event.cycle_id] = _Cycle(event.cycle_id, position, event.started_at)
            case ResourceObserved():
                scope = self.estate.setdefault(event.scope, {})
                scope[event.resource.id] = (event.resource, event.fingerprint)
            case ResourceDisappeared():
                self.estate.get(event.scope, {}).pop(event.resource_id, None)
                if event.now_known_as is None:
                    self._forget(Location(event.scope, event.cloud_id))
            case ObservationCompleted():
                self._completed(position, event)
            case ObservationFailed():
                if (cycle := self.cycles.get(event.cycle_id)) is not None:
                    cycle.failed.add(event.scope)
            case DiffDetected():
                self.recorded[event.diff.resource_id] = _Finding(
                    event.fingerprint, event.detected_at, event.diff.scope.key)
            case DiffResolved():
                self.recorded.pop(event.resource_id, None)
            case DecisionMade():
                found = self.recorded.get(event.decision.resource_id)
                if found is not None:
                    found.verdict = Verdict.of(event.decision)
                if event.decision.action is not Action.NOTIFY:
                    self.action_scopes[event.decision.decision_id] = event.decision.diff.scope
            case ApprovalGranted():
                self.approvals.setdefault(event.decision_id, position)
            case AdoptionGranted():
                self.grants[event.resource_id] = Grant(event.identity, event.owner_seen)
            case ActionExecuted():
                origin = _ORIGINS.get(event.action)
                acted_in = self.action_scopes.get(event.decision_id)
                if origin is not None and event.cloud_id:
                    self.provenance[event.resource_id, event.cloud_id] = origin
                    if acted_in is not None:
                        self.made[event.resource_id, event.cloud_id] = Location(
                            acted_in, event.cloud_id)
                    if origin is Provenance.ADOPTED:
                        self.grants.pop(event.resource_id, None)
                elif event.action is Action.DELETE and event.cloud_id and acted_in is not None:
                    self._forget(Location(acted_in, event.cloud_id))
            case CycleFinished():
                if (cycle := self.cycles.pop(event.cycle_id, None)) is not None:
                    self._evaluate(cycle)

    def _forget(self, gone: Location) -> None:
        """As the findings projection does: what Ovi made there no longer exists."""
        for key in [k for k, where in self.made.items() if where == gone]:
            del self.made[key]
            self.provenance.pop(key, None)

    def _completed(self, position: int, event: ObservationCompleted) -> None:
        members = self.estate.get(event.scope, {})
        if event.unreadable:  # known, but not read this time: not in the observed set
            unread = {u.cloud_id for u in event.unreadable}
            members = {rid: m for rid, m in members.items() if m[0].cloud_id not in unread}
        fingerprints = {rid: fp for rid, (_, fp) in members.items()}
        if len(fingerprints) != event.count or observed_set_digest(fingerprints) != event.digest:
            self.report.digest_mismatches.append(DigestMismatch(
                event.cycle_id, event.scope.key, position, event.count, len(fingerprints)))
        cycle = self.cycles.get(event.cycle_id)
        if cycle is not None:
            cycle.observed[event.scope] = sorted((r for r, _ in members.values()),
                                                 key=lambda r: r.cloud_id)
            cycle.unreadable.update(Location(event.scope, u.cloud_id) for u in event.unreadable)

    def _detected(self, diff: Diff, now: datetime) -> datetime:
        for findings in (self.recorded, self.simulated):
            found = findings.get(diff.resource_id)
            if found is not None and found.fingerprint == diff.fingerprint:
                return found.detected_at
        return now

    def _evaluate(self, cycle: _Cycle) -> None:
        report = self.report
        report.cycles_replayed += 1
        unknown = cycle.failed | (self.scopes - set(cycle.observed))
        observed = [r for scope in sorted(cycle.observed) for r in cycle.observed[scope]]
        last_seen = {rid: Location(scope, r.cloud_id) for scope, members in self.estate.items()
                     for rid, (r, _) in members.items()}
        made: dict[str, list[Location]] = {}
        for (rid, _), where in sorted(self.made.items(),
                                      key=lambda m: (m[0][0], m[1].scope.key, m[1].cloud_id)):
            made.setdefault(rid, []).append(where)
        grants = grants_in_force(self.grants, observed)
        diffs = self.comparator.compare(
            self.desired, observed, unknown_scopes=tuple(unknown),
            context=Context(last_seen=last_seen, unreadable=frozenset(cycle.unreadable),
                            natural_ids=self.natural, grants=grants, made=made))
        detected = {d.resource_id: self._detected(d, cycle.started_at) for d in diffs}
        approved = frozenset(d for d, p in self.approvals.items() if p < cycle.position)
        context = DecisionContext(now=cycle.started_at, detected_at=detected, approved=approved,
                                  provenance=self.provenance, grants=grants)
        decisions = self.maker.decide(diffs, context)
        unknown_keys = {s.key for s in unknown}
        # Resources listed but unreadable: their findings stay open, undecided.
        unread = {rid for rid, where in last_seen.items() if where in cycle.unreadable}
        current = {d.resource_id for d in diffs}
        for diff in diffs:
            self.simulated[diff.resource_id] = _Finding(diff.fingerprint,
                                                        detected[diff.resource_id],
                                                        diff.scope.key)
        for gone in [r for r, f in self.simulated.items()
                     if r not in current and f.scope not in unknown_keys and r not in unread]:
            del self.simulated[gone]
        if self.since is not None and cycle.started_at < self.since:
            return
        report.cycles_compared += 1
        report.first_at = report.first_at or cycle.started_at
        report.last_at = cycle.started_at
        new = {d.resource_id: Verdict.of(d) for d in decisions}
        old = {rid: f.verdict for rid, f in self.recorded.items()
               if f.verdict is not None and f.scope not in unknown_keys and rid not in unread}
        differing = set()
        for rid in sorted(new.keys() | old.keys()):
            before, after = old.get(rid), new.get(rid)
            if (before and before.key) != (after and after.key):
                differing.add(rid)
                self._differs(rid, before, after, cycle)
        for rid in [r for r in self.runs if r not in differing]:
            report.differences.append(self.runs.pop(rid))

    def _differs(self, rid: str, before: Verdict | None, after: Verdict | None,
                 cycle: _Cycle) -> None:
        run = self.runs.get(rid)
        if run is not None and (run.recorded and run.recorded.key) == (before and before.key) \
                and (run.backtest and run.backtest.key) == (after and after.key):
            run.last_cycle, run.last_at, run.cycles = (cycle.cycle_id, cycle.started_at,
                                                       run.cycles + 1)
            return
        if run is not None:
            self.report.differences.append(run)
        self.runs[rid] = Difference(resource_id=rid, recorded=before, backtest=after,
                                    first_cycle=cycle.cycle_id, last_cycle=cycle.cycle_id,
                                    first_at=cycle.started_at, last_at=cycle.started_at)

    def finish(self) -> BacktestReport:
        report = self.report
        report.differences.extend(self.runs.values())
        report.differences.sort(key=lambda d: (d.first_at, d.resource_id))
        report.unfinished_cycles = len(self.cycles)
        return report


async def backtest(store: EventStore, config: Config, *,
                   since: datetime | None = None) -> BacktestReport:
    """Replay every recorded cycle through ``config``'s comparator and
    decision maker; report where its decisions differ from the recorded ones
    (for cycles started at or after ``since``)."""
    state = _Backtest(config, since)
    progress = Progress("backtest", total=await store.last_position())
    async for recorded in store.read(types=_TYPES):
        state.feed(recorded.position, recorded.event)
        progress.update(recorded.position)
    progress.done()
    return state.finish()
