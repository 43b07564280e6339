"""``verify``: the hash chain, then the causal consistency of executions.

Causal rules (a violation fails verification, naming its position):

- every ``ActionExecuting`` has at most one outcome (``ActionExecuted`` or
  ``ActionFailed`` with the same decision id and fencing token); one with
  none is *in doubt* (reported, not a failure: a crash or a run in flight);
- every outcome follows its ``ActionExecuting`` (recovery's recovered and
  interrupted outcomes too: they answer one);
- every action event and approval names a decision recorded earlier by a
  ``DecisionMade`` about the same resource.

Two type-filtered passes keep memory proportional to the actions, never to
the log: actions first, then only the decisions they named.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from eventstore import EventStore
from ovi.events import (
    ActionExecuted,
    ActionExecuting,
    ActionFailed,
    ActionSkipped,
    ApprovalGranted,
    DecisionMade,
)

__all__ = ["InDoubt", "Verification", "Violation", "verify_log"]

_ACTION_TYPES = ("ActionExecuting", "ActionExecuted", "ActionFailed", "ActionSkipped",
                 "ApprovalGranted")


class Violation(msgspec.Struct, frozen=True):
    position: int
    type: str
    reason: str


class InDoubt(msgspec.Struct, frozen=True):
    position: int
    decision_id: str
    resource_id: str
    action: str
    token: int
    instance_id: str
    recorded_at: datetime


class Verification(msgspec.Struct, kw_only=True):
    events_checked: int
    head_position: int
    chain_problem: Violation | None = None
    actions: int = 0
    violations: list[Violation] = []
    in_doubt: list[InDoubt] = []

    @property
    def first_problem(self) -> Violation | None:
        found = [*self.violations, *([self.chain_problem] if self.chain_problem else [])]
        return min(found, key=lambda v: v.position) if found else None

    @property
    def ok(self) -> bool:
        return self.first_problem is None


class _Ref(msgspec.Struct, frozen=True):
    position: int
    type: str
    resource_id: str


async def verify_log(store: EventStore, *, max_violations: int = 50) -> Verification:
    """Check the chain, then causality over the part of the log the chain vouches for."""
    report = await store.verify()
    result = Verification(events_checked=report.events_checked,
                          head_position=report.head_position)
    until: int | None = None
    if report.problem is not None:
        result.chain_problem = Violation(report.problem.position, "hash chain",
                                         report.problem.reason)
        until = report.problem.position - 1  # nothing after a break is trusted
    needed = await _actions(store, result, until, max_violations)
    if needed:
        await _decisions(store, result, needed, max_violations)
    result.violations.sort(key=lambda v: v.position)
    del result.violations[max_violations:]
    return result


async def _actions(store: EventStore, result: Verification, until: int | None,
                   cap: int) -> dict[str, _Ref]:
    """Pair executions with outcomes; return the decisions they depend on."""
    open_: dict[tuple[str, int], tuple[int, Any, str, datetime]] = {}
    closed: dict[tuple[str, int], int] = {}
    needed: dict[str, _Ref] = {}

    def bad(position: int, type_: str, reason: str) -> None:
        if len(result.violations) < cap:
            result.violations.append(Violation(position, type_, reason))

    async for recorded in store.read(until=until, types=_ACTION_TYPES):
        event, position, type_ = recorded.event, recorded.position, recorded.type
        if not isinstance(event, ActionExecuting | ActionExecuted | ActionFailed
                          | ActionSkipped | ApprovalGranted):
            bad(position, type_, "the event's data does not match its type")
            continue
        first = needed.setdefault(event.decision_id, _Ref(position, type_, event.resource_id))
        if first.resource_id != event.resource_id:
            bad(position, type_, f"decision {event.decision_id} concerns {event.resource_id}"
                f" here but {first.resource_id} at position {first.position}")
        if isinstance(event, ActionExecuting):
            result.actions += 1
            key = (event.decision_id, event.token)
            if key in open_ or key in closed:
                bad(position, type_, f"decision {event.decision_id} executed again under the"
                    f" same claim token {event.token}")
                continue
            open_[key] = (position, event, recorded.instance_id, recorded.recorded_at)
        elif isinstance(event, ActionExecuted | ActionFailed):
            key = (event.decision_id, event.token)
            if key in open_:
                closed[key] = position
                del open_[key]
            elif key in closed:
                bad(position, type_, f"a second outcome for decision {event.decision_id}"
                    f" (token {event.token}); the first is at position {closed[key]}")
            else:
                bad(position, type_, f"an outcome for decision {event.decision_id} (token"
                    f" {event.token}) without an ActionExecuting before it")
    for (decision_id, token), (position, event, instance, at) in open_.items():
        result.in_doubt.append(InDoubt(position, decision_id, event.resource_id,
                                       str(event.action), token, instance, at))
    result.in_doubt.sort(key=lambda d: d.position)
    return needed


async def _decisions(store: EventStore, result: Verification, needed: dict[str, _Ref],
                     cap: int) -> None:
    """Every decision an action or approval names was recorded before it."""
    last = max(ref.position for ref in needed.values())
    found: dict[str, tuple[int, str]] = {}
    async for recorded in store.read(until=last, types=("DecisionMade",)):
        event = recorded.event
        if isinstance(event, DecisionMade):
            decision = event.decision
            if decision.decision_id in needed and decision.decision_id not in found:
                found[decision.decision_id] = (recorded.position, decision.resource_id)
    for decision_id, ref in needed.items():
        made = found.get(decision_id)
        if made is None or made[0] > ref.position:
            reason = f"names decision {decision_id}, which no earlier DecisionMade recorded"
        elif made[1] != ref.resource_id:
            reason = (f"names decision {decision_id} about {made[1]}, but concerns"
                      f" {ref.resource_id}")
        else:
            continue
        if len(result.violations) < cap * 2:
            result.violations.append(Violation(ref.position, ref.type, reason))
