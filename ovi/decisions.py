"""From diffs to decisions: the base rules, then a chain of policies.

Base rules (docs/architecture.md, "Identity, diffs and decisions"): missing →
create; drifted → update, except a change that needs a replacement (type,
provider, region; size unless ``allow_resize``) → notify; unmanaged → notify;
unwanted → delete, except blessed → notify and ``skip_destructive`` → notify;
conflict → adopt when taking the resource over was asked for (``adopt: true``,
``ovi adopt``) or the log shows Ovi made it and no other owner has claimed it
since, else notify. A delete carries its
provenance (did the log see Ovi create or adopt it?). Policies then hold
decisions back (see :mod:`ovi.policies`); they can never make one bolder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ovi._exceptions import PolicyError
from ovi.config import Rules
from ovi.model import (
    Action,
    Decision,
    DecisionStatus,
    Diff,
    DiffType,
    Provenance,
    decision_id_for,
)
from ovi.policies import DecisionContext, Policy, default_policies

if TYPE_CHECKING:
    from ovi.config import Config

__all__ = ["DecisionContext", "DecisionMaker", "Policy"]

_REPLACEMENT_FIELDS = frozenset({"type", "provider", "region"})


class DecisionMaker:
    """Decides what to do about each diff. ``policies=None`` builds the default
    chain from ``rules``; pass a sequence to replace it (``[]`` for none).
    ``owner`` is this Ovi's owner (the config's)."""

    def __init__(self, rules: Rules, policies: Sequence[Policy] | None = None, *,
                 owner: str = "ovi") -> None:
        self.rules = rules
        self.owner = owner
        self.policies: tuple[Policy, ...] = tuple(
            default_policies(rules) if policies is None else policies
        )

    @classmethod
    def from_config(cls, config: Config) -> DecisionMaker:
        """The decision maker a config asks for, with the default policy chain."""
        return cls(config.rules, owner=config.owner)

    def decide(self, diffs: Sequence[Diff], ctx: DecisionContext) -> list[Decision]:
        """One decision per diff, in the order of ``diffs``.

        :raises PolicyError: if a policy relaxed, dropped or reordered a decision.
        """
        decisions = [self._base(diff, ctx) for diff in diffs]
        for policy in self.policies:
            after = policy.apply(list(decisions), ctx)
            _check_more_cautious(policy, decisions, after)
            decisions = after
        return decisions

    def _base(self, diff: Diff, ctx: DecisionContext) -> Decision:
        action, status, rule, reason = self._rule(diff, ctx)
        provenance = ctx.origin(diff) if action is Action.DELETE else None
        if provenance is Provenance.UNRECORDED:
            reason = f"{reason}; the log has no record of Ovi creating or adopting it"
        return Decision(
            decision_id=decision_id_for(diff, action, ctx.detected(diff.resource_id)),
            action=action, resource_id=diff.resource_id, resource_type=diff.resource_type,
            reason=reason, status=status, rule=rule, diff=diff, cloud_id=diff.cloud_id,
            provenance=provenance,
        )

    def _rule(self, diff: Diff, ctx: DecisionContext) -> tuple[Action, DecisionStatus, str, str]:
        ready, info = DecisionStatus.READY, DecisionStatus.INFORMATIONAL
        if diff.type is DiffType.MISSING:
            return Action.CREATE, ready, "missing→create", diff.reason
        if diff.type is DiffType.UNMANAGED:
            return Action.NOTIFY, info, "unmanaged→notify", diff.reason
        if diff.type is DiffType.CONFLICT:
            return _conflict(diff, ctx, self.owner)
        if diff.type is DiffType.DRIFTED:
            fields = {c.field for c in diff.changes}
            if fields == {"status"}:  # the comparator's word for a start Ovi owes
                return Action.UPDATE, ready, "restart-owed→start", diff.reason
            if needs := sorted(fields & _REPLACEMENT_FIELDS):
                why = f"{diff.reason}; reported, not done: {', '.join(needs)} needs a replacement"
                return Action.NOTIFY, info, "drift-needs-replacement", why
            if "size" in fields and not self.rules.allow_resize:
                why = (f"{diff.reason}; reported, not done: a resize may replace the resource "
                       "(rules.allow_resize is off)")
                return Action.NOTIFY, info, "resize-needs-replacement", why
            return Action.UPDATE, ready, "drifted→update", diff.reason
        if diff.observed is not None and diff.observed.blessed:
            why = f"{diff.reason}; blessed (ovi:blessed=true), so reported, never deleted"
            return Action.NOTIFY, info, "blessed", why
        if self.rules.skip_destructive:
            why = f"{diff.reason}; reported, not deleted (rules.skip_destructive is on)"
            return Action.NOTIFY, info, "skip_destructive", why
        return Action.DELETE, ready, "unwanted→delete", diff.reason


def _conflict(diff: Diff, ctx: DecisionContext,
              owner: str) -> tuple[Action, DecisionStatus, str, str]:
    """Adopt the resource in the way when that was asked for or it is Ovi's
    own (the log says so, and no other owner's tag says otherwise: another
    installation may have taken it over, and two that take it back from each
    other never stop); otherwise only say how to ask for it."""
    want, holder = diff.desired, diff.observed
    notify = (Action.NOTIFY, DecisionStatus.INFORMATIONAL)
    if want is None or holder is None:
        return (*notify, "name-conflict", diff.reason)
    if holder.scope != want.scope:
        return (*notify, "adoption-elsewhere",
                f"{diff.reason}; not adopted: {holder.id} is not a {want.type} in"
                f" {want.region}, where {want.id} is desired")
    ready = (Action.ADOPT, DecisionStatus.READY)
    if ctx.grants.get(want.id) == holder.id:
        return (*ready, "adoption-granted", f"{diff.reason}; taking it over (ovi adopt)")
    if ctx.provenance.get((want.id, holder.cloud_id)) in (Provenance.CREATED,
                                                           Provenance.ADOPTED) \
            and holder.owner in (None, owner):
        return (*ready, "own-untagged",
                f"{diff.reason}; the log shows Ovi made it {want.id}: tagging it again")
    if want.adopt and holder.owner is None:
        return (*ready, "adopt", f"{diff.reason}; taking it over (adopt: true)")
    how = f"ovi adopt {holder.id} --as {want.id}"
    if holder.owner is not None:
        hint = f"nothing is touched; to take it over from that owner run: {how}"
    else:
        hint = f"nothing is touched; to take it over set adopt: true on its spec, or run: {how}"
    return (*notify, "name-conflict", f"{diff.reason}; {hint}")


def _check_more_cautious(policy: Policy, before: list[Decision], after: list[Decision]) -> None:
    name = getattr(policy, "name", type(policy).__name__)
    if len(after) != len(before):
        raise PolicyError(name, f"returned {len(after)} decisions for {len(before)}")
    for b, a in zip(before, after, strict=True):
        if (a.decision_id, a.action, a.resource_id) != (b.decision_id, b.action, b.resource_id):
            raise PolicyError(name, f"changed or reordered decision {b.decision_id}")
        if a.status is DecisionStatus.READY and b.status is not DecisionStatus.READY:
            raise PolicyError(name, f"released held decision {b.decision_id} ({b.status})")
        if (a.status is DecisionStatus.INFORMATIONAL) != (b.status is DecisionStatus.INFORMATIONAL):
            raise PolicyError(name, f"changed whether {b.decision_id} is informational")
