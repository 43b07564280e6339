"""``verify``: the hash chain, then the causal consistency of executions.

Causal rules (a violation fails verification, naming its position):

- every ``ActionExecuting`` has at most one outcome (``ActionExecuted`` or
  ``ActionFailed`` with the same decision id, fencing token and create
  attempt); one with none is *in doubt* (reported, not a failure: a crash or
  a run in flight). The one exception is honest: an instance that lost its
  claim mid-action records what it did flagged ``stale_token``, besides the
  outcome recovery recorded for it after taking the claim over;
- every outcome follows its ``ActionExecuting`` (recovery's recovered and
  interrupted outcomes too: they answer one);
- every action event and approval names a decision recorded earlier by a
  ``DecisionMade`` about the same resource;
- approvals: an ``ActionExecuting`` of a decision recorded awaiting approval
  has an ``ApprovalGranted`` of that decision before it, unless the config
  changed since it was held (its last ``DecisionMade`` before the write-ahead
  has another ``config_hash`` than its last one awaiting approval). The
  safety gates read the approvals from a projection table, which no hash
  covers: this is how a delete let through by a forged row is found;
- a claim's token is its claim stream's version after ``ClaimAcquired``, and
  a ``ClaimRenewed`` renews the claim in force (same token and instance, not
  released): renewals move the stream's version, never the fencing token;
- fences: every ``ActionExecuting`` was recorded by the instance holding the
  resource's claim in force at that position, with that claim's token; and
  no ``ClaimAcquired`` gives a claim to one instance while another's is in
  force (not released, not expired by the new claim's ``claimed_at``) unless
  it says it takes that one over (``takeover_of``: the coordinator does so
  when the holder's process is gone, which it can tell only for a process of
  its own home, so an early takeover from another home is a violation);
- a write-ahead is recorded before its claim's ``expires_at`` (renewals
  counted); a ``ClaimReleased`` releases the claim in force, by its holder;
- a plain outcome (neither flagged ``stale_token`` nor recovery's recovered
  or interrupted one) is recorded by the instance that wrote ahead, under the
  claim in force: an outcome under a token taken over must say so.

Two type-filtered passes keep memory proportional to the actions, never to
the log: actions first, then only the decisions they named.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import msgspec

from eventstore import Anchor, EventStore
from ovi.events import (
    ActionExecuted,
    ActionExecuting,
    ActionFailed,
    ActionSkipped,
    ApprovalGranted,
    ClaimAcquired,
    ClaimReleased,
    ClaimRenewed,
    DecisionMade,
)
from ovi.model import DecisionStatus

__all__ = ["InDoubt", "Verification", "Violation", "verify_log"]

_ACTION_TYPES = ("ActionExecuting", "ActionExecuted", "ActionFailed", "ActionSkipped",
                 "ApprovalGranted")
_CLAIM_TYPES = ("ClaimAcquired", "ClaimRenewed", "ClaimReleased")


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
    head_hash: str = ""
    chain_problem: Violation | None = None
    #: anchors given, and how many were found where they were anchored
    anchors: int = 0
    anchors_checked: int = 0
    anchor_problem: Violation | None = None
    #: a keyed log; ``hashes_checked`` False when walked without its key
    keyed: bool = False
    hashes_checked: bool = True
    #: the file under the rows fails its integrity check (see VerifyReport)
    storage_problem: str | None = None
    #: the anchor problem is that none could be checked (keyed, no key)
    anchors_unchecked: bool = False
    actions: int = 0
    violations: list[Violation] = []
    in_doubt: list[InDoubt] = []

    @property
    def first_problem(self) -> Violation | None:
        found = [*self.violations, *([self.chain_problem] if self.chain_problem else []),
                 *([self.anchor_problem] if self.anchor_problem else [])]
        return min(found, key=lambda v: v.position) if found else None

    @property
    def ok(self) -> bool:
        return self.first_problem is None and self.storage_problem is None


class _Ref(msgspec.Struct, frozen=True):
    position: int
    type: str
    resource_id: str


class _Gates(msgspec.Struct):
    """What the approval check needs from the actions pass: each write-ahead
    (position, decision id) and each decision's first approval."""

    executing: list[tuple[int, str]] = []
    approved: dict[str, int] = {}


async def verify_log(store: EventStore, *, max_violations: int = 50,
                     anchors: Iterable[Anchor] = ()) -> Verification:
    """Check the chain (against ``anchors``, heads kept elsewhere), then
    causality over the part of the log the chain vouches for."""
    anchors = list(anchors)
    report = await store.verify(anchors=anchors)
    result = Verification(events_checked=report.events_checked,
                          head_position=report.head_position, head_hash=report.head_hash,
                          anchors=len({a.position for a in anchors}),
                          anchors_checked=report.anchors_checked,
                          keyed=report.keyed, hashes_checked=report.hashes_checked,
                          storage_problem=report.storage_problem,
                          anchors_unchecked=report.anchors_unchecked)
    if report.anchor_problem is not None:
        result.anchor_problem = Violation(report.anchor_problem.position, "anchor",
                                          report.anchor_problem.reason)
    until: int | None = None
    if report.problem is not None:
        result.chain_problem = Violation(report.problem.position, "hash chain",
                                         report.problem.reason)
        until = report.problem.position - 1  # nothing after a break is trusted
    gates = _Gates()
    needed = await _actions(store, result, until, max_violations, gates)
    if needed:
        await _decisions(store, result, needed, max_violations, gates)
    result.violations.sort(key=lambda v: v.position)
    del result.violations[max_violations:]
    return result


async def _actions(store: EventStore, result: Verification, until: int | None,
                   cap: int, gates: _Gates) -> dict[str, _Ref]:
    """Pair executions with outcomes, check claim histories; return the
    decisions the actions depend on."""
    open_: dict[tuple[str, int, int], tuple[int, Any, str, datetime]] = {}
    closed: dict[tuple[str, int, int], tuple[int, ActionExecuted | ActionFailed]] = {}
    needed: dict[str, _Ref] = {}
    claims: dict[str, _Held | None] = {}  # resource → the claim in force

    def bad(position: int, type_: str, reason: str) -> None:
        if len(result.violations) < cap:
            result.violations.append(Violation(position, type_, reason))

    async for recorded in store.read(until=until, types=_ACTION_TYPES + _CLAIM_TYPES):
        event, position, type_ = recorded.event, recorded.position, recorded.type
        if type_ in _CLAIM_TYPES:
            _claim(recorded.event, recorded.stream_version, claims, position, type_, bad)
            continue
        if not isinstance(event, ActionExecuting | ActionExecuted | ActionFailed
                          | ActionSkipped | ApprovalGranted):
            bad(position, type_, "the event's data does not match its type")
            continue
        first = needed.setdefault(event.decision_id, _Ref(position, type_, event.resource_id))
        if first.resource_id != event.resource_id:
            bad(position, type_, f"decision {event.decision_id} concerns {event.resource_id}"
                f" here but {first.resource_id} at position {first.position}")
        if isinstance(event, ApprovalGranted):
            gates.approved.setdefault(event.decision_id, position)
        if isinstance(event, ActionExecuting):
            result.actions += 1
            gates.executing.append((position, event.decision_id))
            _fenced(event, recorded.instance_id, recorded.recorded_at,
                    claims.get(event.resource_id), position, type_, bad)
            key = (event.decision_id, event.token, event.create_attempt)
            if key in open_ or key in closed:
                bad(position, type_, f"decision {event.decision_id} executed again under the"
                    f" same claim token {event.token}{_attempt(event)}")
                continue
            open_[key] = (position, event, recorded.instance_id, recorded.recorded_at)
        elif isinstance(event, ActionExecuted | ActionFailed):
            key = (event.decision_id, event.token, event.create_attempt)
            ahead = open_.get(key)
            if ahead is not None and not event.stale_token and not _recovery(event):
                _plain_outcome(event, recorded.instance_id, ahead[0], ahead[2],
                               claims.get(event.resource_id), position, type_, bad)
            if key in open_:
                closed[key] = (position, event)
                del open_[key]
            elif key in closed:
                if not _both_honest(closed[key][1], event):
                    bad(position, type_, f"a second outcome for decision {event.decision_id}"
                        f" (token {event.token}{_attempt(event)}); the first is at position"
                        f" {closed[key][0]}")
            else:
                bad(position, type_, f"an outcome for decision {event.decision_id} (token"
                    f" {event.token}{_attempt(event)}) without an ActionExecuting before it")
    for (decision_id, token, _), (position, event, instance, at) in open_.items():
        result.in_doubt.append(InDoubt(position, decision_id, event.resource_id,
                                       str(event.action), token, instance, at))
    result.in_doubt.sort(key=lambda d: d.position)
    return needed


def _attempt(event: ActionExecuting | ActionExecuted | ActionFailed) -> str:
    return f", create attempt {event.create_attempt}" if event.create_attempt > 1 else ""


def _recovery(event: ActionExecuted | ActionFailed) -> bool:
    """An outcome recovery recorded for another instance's execution."""
    return event.recovered if isinstance(event, ActionExecuted) else event.interrupted


def _both_honest(first: ActionExecuted | ActionFailed,
                 second: ActionExecuted | ActionFailed) -> bool:
    """Two outcomes of one execution that are both true: recovery's, recorded
    after taking the claim over, and the late holder's own, flagged stale."""
    return ((first.stale_token and _recovery(second))
            or (second.stale_token and _recovery(first)))


def _plain_outcome(event: ActionExecuted | ActionFailed, instance_id: str, ahead_at: int,
                   ahead_by: str, held: _Held | None, position: int, type_: str,
                   bad: Callable[[int, str, str], None]) -> None:
    """A plain outcome is the write-ahead's instance's, under the claim in
    force (the executor records it before releasing the claim, and flags it
    ``stale_token`` when the claim moved on meanwhile)."""
    what = f"{instance_id} records the outcome of decision {event.decision_id}"
    if instance_id != ahead_by:
        bad(position, type_, f"{what}, written ahead by {ahead_by} at position {ahead_at}:"
            " only the instance that wrote ahead records a plain outcome (recovery's is"
            " flagged recovered or interrupted)")
    elif held is None or held.token != event.token:
        in_force = (f"token {held.token} of {held.instance_id} (acquired at position"
                    f" {held.position})" if held is not None else "no claim")
        bad(position, type_, f"{what} under claim token {event.token}, but {in_force} is"
            " in force, and the outcome is not flagged stale_token")


class _Held(msgspec.Struct):
    """The claim in force on a resource, where it was acquired, and until when."""

    claim: ClaimAcquired
    position: int
    expires_at: datetime

    @property
    def token(self) -> int:
        return self.claim.token

    @property
    def instance_id(self) -> str:
        return self.claim.instance_id


def _fenced(event: ActionExecuting, instance_id: str, recorded_at: datetime,
            held: _Held | None, position: int, type_: str,
            bad: Callable[[int, str, str], None]) -> None:
    """An execution is written ahead by the claim's holder, under its token,
    before the claim runs out."""
    what = f"{instance_id} executes decision {event.decision_id} on {event.resource_id}"
    if held is None:
        bad(position, type_, f"{what} under claim token {event.token}, but no claim on it is"
            " in force (never acquired, or released)")
    elif (held.instance_id, held.token) != (instance_id, event.token):
        bad(position, type_, f"{what} under claim token {event.token}, but the claim in force"
            f" is token {held.token} of {held.instance_id} (acquired at position"
            f" {held.position})")
    elif recorded_at >= held.expires_at:
        bad(position, type_, f"{what} under claim token {event.token} at"
            f" {recorded_at.isoformat()}, but that claim (acquired at position"
            f" {held.position}) ran out at {held.expires_at.isoformat()}: written ahead"
            " without a claim")


def _home(instance_id: str) -> str | None:
    """The home (host and PID namespace) of a ``home:pid:nonce`` instance id."""
    parts = instance_id.rsplit(":", 2)
    return parts[0] if len(parts) == 3 and parts[1].isdigit() else None


def _claim(event: object, version: int, claims: dict[str, _Held | None],
           position: int, type_: str, bad: Callable[[int, str, str], None]) -> None:
    """Follow one claim stream: tokens are stream versions, renewals renew
    the claim in force, and one instance's claim never overlaps another's."""
    if isinstance(event, ClaimAcquired):
        if event.token != version:
            bad(position, type_, f"claim token {event.token} on {event.resource_id} is not the"
                f" claim stream's version ({version})")
        held = claims.get(event.resource_id)
        if (held is not None and held.instance_id != event.instance_id
                and event.claimed_at < held.expires_at):
            # Early takeover is honest only from the holder's home: the
            # coordinator can tell a gone process only on its own host.
            home = _home(held.instance_id)
            if event.takeover_of != held.instance_id:
                bad(position, type_, f"{event.instance_id} acquires the claim on"
                    f" {event.resource_id} while {held.instance_id} holds token {held.token}"
                    f" (acquired at position {held.position}) until"
                    f" {held.expires_at.isoformat()}: two instances held one claim at once")
            elif home is None or home != _home(event.instance_id):
                bad(position, type_, f"{event.instance_id} takes over the claim on"
                    f" {event.resource_id} from {held.instance_id} (token {held.token},"
                    f" acquired at position {held.position}) before it ran out at"
                    f" {held.expires_at.isoformat()}, from another host: only an instance"
                    " of the holder's own home can know its process is gone")
        claims[event.resource_id] = _Held(event, position, event.expires_at)
    elif isinstance(event, ClaimRenewed):
        held = claims.get(event.resource_id)
        if held is not None and (held.token, held.instance_id) == (event.token,
                                                                    event.instance_id):
            held.expires_at = max(held.expires_at, event.expires_at)
        else:
            in_force = (f"token {held.token} of {held.instance_id}" if held is not None
                        else "no claim")
            bad(position, type_, f"{event.instance_id} renews claim token {event.token} on"
                f" {event.resource_id}, but {in_force} is in force")
    elif isinstance(event, ClaimReleased):
        held = claims.get(event.resource_id)
        if held is None or (held.token, held.instance_id) != (event.token, event.instance_id):
            in_force = (f"token {held.token} of {held.instance_id} (acquired at position"
                        f" {held.position})" if held is not None else "no claim")
            bad(position, type_, f"{event.instance_id} releases claim token {event.token} on"
                f" {event.resource_id}, but {in_force} is in force: only a claim's holder"
                " releases it")
        if held is not None and held.instance_id == event.instance_id:
            claims[event.resource_id] = None  # a foreign release frees nothing
    else:
        bad(position, type_, "the event's data does not match its type")


async def _decisions(store: EventStore, result: Verification, needed: dict[str, _Ref],
                     cap: int, gates: _Gates) -> None:
    """Every decision an action or approval names was recorded before it, and
    one held for approval was approved before it was executed."""
    last = max(ref.position for ref in needed.values())
    last = max([last, *(position for position, _ in gates.executing)])
    found: dict[str, tuple[int, str]] = {}
    # Per decision executed: (position, status, config hash) of its records.
    history: dict[str, list[tuple[int, str, str]]] = {d: [] for _, d in gates.executing}
    async for recorded in store.read(until=last, types=("DecisionMade",)):
        event = recorded.event
        if isinstance(event, DecisionMade):
            decision = event.decision
            if decision.decision_id in needed and decision.decision_id not in found:
                found[decision.decision_id] = (recorded.position, decision.resource_id)
            records = history.get(decision.decision_id)
            if records is not None:
                records.append((recorded.position, decision.status, event.config_hash))
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
    for position, decision_id in gates.executing:
        unapproved = _unapproved(position, decision_id, history[decision_id], gates.approved)
        if unapproved is not None and len(result.violations) < cap * 2:
            result.violations.append(Violation(position, "ActionExecuting", unapproved))


def _unapproved(position: int, decision_id: str, records: list[tuple[int, str, str]],
                approved: dict[str, int]) -> str | None:
    """Why the write-ahead at ``position`` lacks the approval its decision
    awaited, or None when it does not."""
    before = [r for r in records if r[0] < position]
    held = [r for r in before if r[1] == DecisionStatus.AWAITING_APPROVAL]
    if not held or before[-1][2] != held[-1][2]:
        return None  # never held for approval, or released by a change of config
    granted = approved.get(decision_id)
    if granted is not None and granted < position:
        return None
    later = f" (the first ApprovalGranted is at position {granted})" if granted else ""
    return (f"decision {decision_id} is executed, but it awaited approval (DecisionMade at"
            f" position {held[-1][0]}) and no ApprovalGranted of it comes before the"
            f" write-ahead{later}: a hold lifted without an approval in the log")
