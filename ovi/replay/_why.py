"""``why``: the causal chain behind one decision, gathered from the log.

observation → finding (diff) → decision (rule, config, cycle) → approval →
claim → execution and outcome → what was observed afterwards. Reads the
resource's own streams, the few observation events the decision cites as
evidence, the decision's cycle and the config version it ran under.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from eventstore import EventStore, RecordedEvent
from ovi.events import (
    PAUSE_ALL,
    ActionExecuted,
    ActionExecuting,
    ActionFailed,
    ActionSkipped,
    AdoptionGranted,
    ApprovalGranted,
    AutomationPaused,
    AutomationResumed,
    ClaimAcquired,
    ClaimReleased,
    ClaimRenewed,
    ConfigLoaded,
    CycleStarted,
    DecisionMade,
    DiffDetected,
    DiffResolved,
    ObservationCompleted,
    ResourceDisappeared,
    ResourceObserved,
    claim_stream,
    cycle_stream,
    pause_stream,
    resource_stream,
)
from ovi.model import Action, Decision, Diff, Resource
from ovi.replay._describe import describe
from ovi.replay._errors import ReplayError

__all__ = ["Chain", "Step", "explain"]

_ACTIONS = (ActionExecuting, ActionExecuted, ActionFailed, ActionSkipped)


class Step(msgspec.Struct, kw_only=True):
    """One recorded event of the chain, with what it says."""

    position: int
    recorded_at: datetime
    type: str
    instance_id: str
    cycle_id: str | None = None
    says: str = ""
    event: Any = None  # the event itself (JSON: its recorded fields)


class Chain(msgspec.Struct, kw_only=True):
    """Everything ``why`` shows; ``decision`` is the latest version recorded."""

    resource_id: str
    cloud_id: str | None
    decision: Decision
    decided: list[Step]  # every DecisionMade of this decision: its status history
    finding: Step | None = None  # the DiffDetected the decision answers
    evidence: list[Step] = []  # observations the latest DecisionMade relied on
    config_source: Step | None = None  # the ConfigLoaded of the decision's config hash
    cycle: Step | None = None  # the CycleStarted of the latest DecisionMade
    approvals: list[Step] = []
    claims: list[Step] = []
    actions: list[Step] = []  # skipped / executing / executed / failed, in order
    afterwards: list[Step] = []  # disappearance or closed finding after the last outcome
    other_decisions: list[str] = []  # the resource's other decision ids, oldest first
    pauses: list[Step] = []  # pauses and resumes of the resource or the whole estate


def _step(recorded: RecordedEvent) -> Step:
    event = recorded.event
    cycle = getattr(event, "cycle_id", None)
    return Step(position=recorded.position, recorded_at=recorded.recorded_at,
                type=recorded.type, instance_id=recorded.instance_id,
                cycle_id=cycle if isinstance(cycle, str) else None, says=describe(event),
                event=event)


async def _decision_ids(store: EventStore, resource_id: str) -> list[str]:
    ids: list[str] = []
    async for recorded in store.read(stream=resource_stream(resource_id),
                                     types=("DecisionMade",)):
        event = recorded.event
        if isinstance(event, DecisionMade) and event.decision.decision_id not in ids:
            ids.append(event.decision.decision_id)
    return ids


async def _at(store: EventStore, position: int) -> RecordedEvent | None:
    async for recorded in store.read(after=position - 1, until=position, limit=1):
        return recorded
    return None


class _Walk:
    """State of one pass over the resource's stream."""

    def __init__(self, decision_id: str) -> None:
        self.decision_id = decision_id
        self.decided: list[Step] = []
        self.latest: DecisionMade | None = None
        self.findings: list[tuple[RecordedEvent, DiffDetected]] = []
        self.approvals: list[Step] = []
        self.actions: list[Step] = []
        self.afterwards: list[Step] = []
        self.tokens: set[int] = set()
        self.grant: Step | None = None

    def feed(self, recorded: RecordedEvent) -> None:
        event = recorded.event
        started = bool(self.decided)
        if isinstance(event, DecisionMade) and event.decision.decision_id == self.decision_id:
            self.decided.append(_step(recorded))
            self.latest = event
        elif isinstance(event, DiffDetected) and not started:
            # Only the last one before the decision matters; keep it small.
            self.findings = [*self.findings[-1:], (recorded, event)]
        elif isinstance(event, ApprovalGranted) and event.decision_id == self.decision_id:
            self.approvals.append(_step(recorded))
        elif isinstance(event, AdoptionGranted) and not started:
            self.grant = _step(recorded)  # the latest one before the decision
        elif isinstance(event, _ACTIONS) and event.decision_id == self.decision_id:
            self.actions.append(_step(recorded))
            if isinstance(event, ActionExecuting):
                self.tokens.add(event.token)
            if not isinstance(event, ActionSkipped):
                self.afterwards = []  # what follows the *last* outcome
        elif started and isinstance(event, ResourceDisappeared | DiffResolved | DiffDetected):
            if all(s.type != recorded.type for s in self.afterwards):
                self.afterwards.append(_step(recorded))

    def finding_for(self, diff: Diff) -> Step | None:
        fingerprint = diff.fingerprint
        for recorded, event in reversed(self.findings):
            if event.fingerprint == fingerprint:
                return _step(recorded)
        return _step(self.findings[-1][0]) if self.findings else None


async def explain(store: EventStore, resource_id: str, decision_id: str | None = None) -> Chain:
    """The chain behind ``decision_id`` (default: the resource's latest decision).

    :raises ReplayError: if the resource has no decision, or not that one.
    """
    ids = await _decision_ids(store, resource_id)
    if not ids:
        raise ReplayError(f"{resource_id}: Ovi never recorded a decision about it"
                          " (`timeline` lists what the log holds)")
    target = decision_id or ids[-1]
    if target not in ids:
        raise ReplayError(f"{resource_id}: no decision {target!r} about it"
                          f" (its decisions: {', '.join(ids)})")
    walk = _Walk(target)
    async for recorded in store.read(stream=resource_stream(resource_id)):
        walk.feed(recorded)
    latest, last_step = walk.latest, walk.decided[-1]
    assert latest is not None
    # An adoption an operator granted is the approval behind it.
    granted = ([walk.grant] if walk.grant is not None
               and latest.decision.action is Action.ADOPT else [])
    chain = Chain(resource_id=resource_id, cloud_id=latest.decision.cloud_id,
                  decision=latest.decision, decided=walk.decided,
                  finding=walk.finding_for(latest.decision.diff),
                  approvals=granted + walk.approvals,
                  actions=walk.actions, afterwards=walk.afterwards,
                  other_decisions=[i for i in ids if i != target])
    for position in latest.evidence:
        found = await _at(store, position)
        if found is not None and isinstance(found.event, ResourceObserved | ObservationCompleted):
            chain.evidence.append(_step(found))
    chain.cloud_id = chain.cloud_id or _cloud_id(chain)
    chain.config_source = await _config_source(store, latest.config_hash, last_step.position)
    chain.cycle = await _cycle_start(store, latest.cycle_id)
    for target in (resource_id, PAUSE_ALL):
        async for recorded in store.read(stream=pause_stream(target)):
            if isinstance(recorded.event, AutomationPaused | AutomationResumed):
                chain.pauses.append(_step(recorded))
    chain.pauses.sort(key=lambda step: step.position)
    if walk.tokens:
        async for recorded in store.read(stream=claim_stream(resource_id)):
            event = recorded.event
            if isinstance(event, ClaimAcquired | ClaimRenewed | ClaimReleased) \
                    and event.token in walk.tokens:
                chain.claims.append(_step(recorded))
    return chain


def _cloud_id(chain: Chain) -> str | None:
    for step in chain.evidence:
        if isinstance(step.event, ResourceObserved):
            resource: Resource = step.event.resource
            return resource.cloud_id
    return None


async def _config_source(store: EventStore, config_hash: str, before: int) -> Step | None:
    """The ConfigLoaded that introduced ``config_hash`` last before ``before``."""
    found: Step | None = None
    async for recorded in store.read(until=before, types=("ConfigLoaded",)):
        event = recorded.event
        if isinstance(event, ConfigLoaded) and event.config_hash == config_hash:
            found = _step(recorded)
    return found


async def _cycle_start(store: EventStore, cycle_id: str) -> Step | None:
    async for recorded in store.read(stream=cycle_stream(cycle_id), types=("CycleStarted",),
                                     limit=1):
        if isinstance(recorded.event, CycleStarted):
            return _step(recorded)
    return None
