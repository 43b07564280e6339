"""Policies: the gates a decision passes after the base rules.

A policy takes the decisions of a cycle and may only make them more cautious:
it can hold a ``READY`` decision back (grace period, approval, maintenance
window, blast-radius cap, a pause) and say why, but it never releases a held decision,
never changes an action and never turns a notify into an action. The
:class:`~ovi.decisions.DecisionMaker` enforces that contract.

Three policies are always in the chain, whatever the rules switch off: a
delete of a resource the log never saw Ovi create or adopt waits for a
person's approval (:class:`UnrecordedOrigin`), and both deletes and creates
are capped per cycle (:class:`BlastRadius`, :class:`CreateCap`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta
from typing import Protocol

import msgspec

from ovi.config import Rules, TimeWindow
from ovi.events import PAUSE_ALL
from ovi.model import ID_TAG, Action, Decision, DecisionStatus, Diff, Provenance

__all__ = [
    "ApprovalForSizes",
    "BlastRadius",
    "CreateCap",
    "DecisionContext",
    "GracePeriod",
    "MaintenanceWindow",
    "Paused",
    "Policy",
    "RequireApproval",
    "ResizeCap",
    "UnrecordedOrigin",
    "default_policies",
    "hold",
]


class DecisionContext(msgspec.Struct, frozen=True):
    """What the decision maker knows besides the diffs; supplied by the engine.

    ``detected_at`` maps a resource id to when its current finding was first
    recorded in the log (a finding new this cycle is absent or ``now``);
    ``approved`` holds the decision ids with a valid approval; ``paused``
    maps a paused target (a resource id, or ``*`` for the whole estate) to
    why, in words. ``provenance`` maps (resource id, cloud id) to how the log
    saw Ovi come to own it (an executed create or adoption); ``grants`` maps a
    desired id to the identity of the existing resource an operator allowed
    Ovi to adopt as it.
    """

    now: datetime
    detected_at: Mapping[str, datetime] = {}
    approved: frozenset[str] = frozenset()
    paused: Mapping[str, str] = {}
    provenance: Mapping[tuple[str, str], Provenance] = {}
    grants: Mapping[str, str] = {}

    def detected(self, resource_id: str) -> datetime:
        """When the finding behind ``resource_id`` was first recorded."""
        return self.detected_at.get(resource_id, self.now)

    def origin(self, diff: Diff) -> Provenance:
        """How the resource ``diff`` observed came to be Ovi's, by the log: made
        under the diff's id, or under the ``ovi:id`` it carries (a duplicate
        Ovi created is still Ovi's)."""
        observed = diff.observed
        if observed is None:
            return Provenance.UNRECORDED
        for resource_id in (diff.resource_id, observed.tags.get(ID_TAG)):
            found = self.provenance.get((resource_id or "", observed.cloud_id))
            if found is not None:
                return found
        return Provenance.UNRECORDED


class Policy(Protocol):
    """One gate in the chain. ``apply`` returns the decisions in the same order,
    each unchanged or held back (status, rule and reason changed only)."""

    name: str

    def apply(self, decisions: list[Decision], ctx: DecisionContext) -> list[Decision]:
        """The decisions after this policy."""
        ...


def hold(decision: Decision, status: DecisionStatus, rule: str, why: str) -> Decision:
    """``decision`` held back with ``status`` by ``rule``, ``why`` added to its reason."""
    return msgspec.structs.replace(
        decision, status=status, rule=rule, reason=f"{decision.reason}; {why}"
    )


def _ready(decision: Decision, *actions: Action) -> bool:
    return decision.status is DecisionStatus.READY and decision.action in actions


def _when(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


class Paused:
    """Nothing is executed on a paused resource, nor anywhere while the whole
    estate is paused (``ovi pause``): its decisions, waiting or ready, are held
    as ``paused`` (an adoption too when the resource it would take over is
    paused under its own identity); notifications still go out. First in the chain, so the
    blast-radius cap counts only deletes that could really run."""

    name = "paused"

    def apply(self, decisions: list[Decision], ctx: DecisionContext) -> list[Decision]:
        """Hold every actionable decision on a paused target."""
        if not ctx.paused:
            return decisions
        estate = ctx.paused.get(PAUSE_ALL)
        out: list[Decision] = []
        for d in decisions:
            why = next((ctx.paused[t] for t in d.subjects if t in ctx.paused), estate)
            if why is not None and d.status is not DecisionStatus.INFORMATIONAL:
                d = hold(d, DecisionStatus.PAUSED, self.name, why)
            out.append(d)
        return out


class GracePeriod:
    """A delete waits until its resource has been unwanted for ``period``,
    measured from when the finding was first recorded in the log."""

    name = "grace_period"

    def __init__(self, period: timedelta) -> None:
        self.period = period

    def apply(self, decisions: list[Decision], ctx: DecisionContext) -> list[Decision]:
        """Hold deletes whose grace period has not run out."""
        out: list[Decision] = []
        for d in decisions:
            ends = ctx.detected(d.resource_id) + self.period
            if _ready(d, Action.DELETE) and ctx.now < ends:
                why = f"grace period until {_when(ends)}"
                d = hold(d, DecisionStatus.GRACE_PERIOD, self.name, why)
            out.append(d)
        return out


class RequireApproval:
    """A delete waits for ``ovi approve <decision-id>``."""

    name = "require_approval"

    def apply(self, decisions: list[Decision], ctx: DecisionContext) -> list[Decision]:
        """Hold deletes that have no approval."""
        return [
            hold(d, DecisionStatus.AWAITING_APPROVAL, self.name,
                 f"needs approval: ovi approve {d.decision_id}")
            if _ready(d, Action.DELETE) and d.decision_id not in ctx.approved else d
            for d in decisions
        ]


class UnrecordedOrigin:
    """A delete of a resource the log has no record of Ovi creating or
    adopting waits for a person's approval, whatever ``require_approval``
    says: tags alone (anyone can write them) never make a resource Ovi's to
    delete."""

    name = "unrecorded_origin"

    def apply(self, decisions: list[Decision], ctx: DecisionContext) -> list[Decision]:
        """Hold deletes of unrecorded provenance that have no approval."""
        return [
            hold(d, DecisionStatus.AWAITING_APPROVAL, self.name,
                 f"needs a person's approval: ovi approve {d.decision_id}")
            if _ready(d, Action.DELETE) and d.provenance is not Provenance.CREATED
            and d.provenance is not Provenance.ADOPTED and d.decision_id not in ctx.approved
            else d
            for d in decisions
        ]


class ApprovalForSizes:
    """Creating a resource of one of ``sizes``, or resizing one to it, waits for
    an approval (expensive sizes are a human's call)."""

    name = "approval_for_sizes"

    def __init__(self, sizes: Collection[str]) -> None:
        self.sizes = frozenset(sizes)

    def apply(self, decisions: list[Decision], ctx: DecisionContext) -> list[Decision]:
        """Hold creates and resizes to a listed size that have no approval."""
        return [
            hold(d, DecisionStatus.AWAITING_APPROVAL, self.name,
                 f"size {self._size(d)} needs approval: ovi approve {d.decision_id}")
            if self._size(d) is not None and d.decision_id not in ctx.approved else d
            for d in decisions
        ]

    def _size(self, d: Decision) -> str | None:
        """The listed size ``d`` would bring about, if any."""
        desired = d.diff.desired
        if not _ready(d, Action.CREATE, Action.UPDATE) or desired is None:
            return None
        if desired.size not in self.sizes:
            return None
        # A tag-only update of a resource already that size brings nothing new about.
        if d.action is Action.UPDATE and all(c.field != "size" for c in d.diff.changes):
            return None
        return desired.size


class MaintenanceWindow:
    """Deletes and disruptive changes happen only inside the weekly ``window``
    (UTC). A disruptive change is an update that changes a size: an EC2
    resize stops and starts the instance, an RDS one is applied immediately
    (``ApplyImmediately``). A start Ovi owes after an interrupted resize (a
    ``status`` change only) is restorative and never waits."""

    name = "maintenance_window"

    def __init__(self, window: TimeWindow) -> None:
        self.window = window

    def apply(self, decisions: list[Decision], ctx: DecisionContext) -> list[Decision]:
        """Hold deletes and resizes while ``ctx.now`` is outside the window."""
        if self.window.contains(ctx.now):
            return decisions
        return [
            hold(d, DecisionStatus.MAINTENANCE_WINDOW, self.name,
                 "outside the maintenance window")
            if _ready(d, Action.DELETE) or _disruptive(d) else d
            for d in decisions
        ]


def _disruptive(decision: Decision) -> bool:
    """A ready update that changes a size (it stops or reboots the resource)."""
    return _ready(decision, Action.UPDATE) and any(
        c.field == "size" for c in decision.diff.changes)


def _cap(decisions: list[Decision], counted: Callable[[Decision], bool], limit: int,
         rule: str, why: str) -> list[Decision]:
    """Hold the ``counted`` decisions beyond ``limit``, chosen in a fixed
    order (scope key, resource id) so every instance agrees."""
    ready = sorted(
        (i for i, d in enumerate(decisions) if counted(d)),
        key=lambda i: (decisions[i].diff.scope.key, decisions[i].resource_id),
    )
    capped = set(ready[limit:])
    return [
        hold(d, DecisionStatus.CAPPED, rule, why) if i in capped else d
        for i, d in enumerate(decisions)
    ]


class BlastRadius:
    """At most ``limit`` deletes are ready in one cycle; the rest are capped,
    chosen in a fixed order (scope key, resource id) so every instance agrees."""

    name = "blast_radius"

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def apply(self, decisions: list[Decision], ctx: DecisionContext) -> list[Decision]:
        """Cap the ready deletes beyond the limit."""
        return _cap(decisions, lambda d: _ready(d, Action.DELETE), self.limit, self.name,
                    f"over the cap of {self.limit} deletes per cycle")


class CreateCap:
    """At most ``limit`` creates are ready in one cycle (a typo in ``count``
    must not launch a thousand instances at once); the rest wait for the next
    cycles, chosen in the same fixed order as capped deletes."""

    name = "create_cap"

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def apply(self, decisions: list[Decision], ctx: DecisionContext) -> list[Decision]:
        """Cap the ready creates beyond the limit."""
        return _cap(decisions, lambda d: _ready(d, Action.CREATE), self.limit, self.name,
                    f"over the cap of {self.limit} creates per cycle: waits for the next cycle")


class ResizeCap:
    """At most ``limit`` resizes are ready in one cycle: each stops an EC2
    instance or reboots a database, and a size mistyped in a spec of
    ``count: 40`` must not take the whole fleet down at once. The rest wait
    for the next cycles, chosen in the same fixed order as capped deletes."""

    name = "resize_cap"

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def apply(self, decisions: list[Decision], ctx: DecisionContext) -> list[Decision]:
        """Cap the ready resizes beyond the limit."""
        return _cap(decisions, _disruptive, self.limit, self.name,
                    f"over the cap of {self.limit} resizes per cycle: waits for the next cycle")


def default_policies(rules: Rules) -> list[Policy]:
    """The chain the rules ask for, in order: pauses (always), grace period,
    approval for a delete of unrecorded provenance (always), approval, approval
    for sizes, maintenance window, the caps on deletes, creates and resizes
    (always; last, so they count only what would really run)."""
    chain: list[Policy] = [Paused(), GracePeriod(rules.grace_period), UnrecordedOrigin()]
    if rules.require_approval:
        chain.append(RequireApproval())
    if rules.approval_for_sizes:
        chain.append(ApprovalForSizes(rules.approval_for_sizes))
    if rules.maintenance_window is not None:
        chain.append(MaintenanceWindow(rules.maintenance_window))
    chain.append(BlastRadius(rules.max_deletes_per_cycle))
    chain.append(CreateCap(rules.max_creates_per_cycle))
    chain.append(ResizeCap(rules.max_resizes_per_cycle))
    return chain
