"""``why`` for a person: the chain as numbered steps in plain words."""

from __future__ import annotations

from ovi._text import escaped
from ovi.events import (
    ActionExecuted,
    ActionExecuting,
    ActionFailed,
    ActionSkipped,
    AdoptionGranted,
    ApprovalGranted,
    ClaimAcquired,
    ConfigLoaded,
    CycleStarted,
    DecisionMade,
    DiffDetected,
    ObservationCompleted,
    ResourceDisappeared,
    ResourceObserved,
)
from ovi.model import DecisionStatus, DiffType, Provenance
from ovi.replay._describe import describe_resource, who
from ovi.replay._render import Output, fmt_time
from ovi.replay._why import Chain, Step

__all__ = ["render_chain"]

_STATUS_WORDS = {
    DecisionStatus.READY: "ready to run",
    DecisionStatus.INFORMATIONAL: "only reported (nothing to execute)",
    DecisionStatus.AWAITING_APPROVAL: "waiting for a person's approval",
    DecisionStatus.GRACE_PERIOD: "waiting out the grace period",
    DecisionStatus.MAINTENANCE_WINDOW: "waiting for the maintenance window",
    DecisionStatus.CAPPED: "held back by the cap on deletes or creates per cycle",
    DecisionStatus.PAUSED: "held: automation paused (ovi pause)",
}
_DIFF_WORDS = {
    DiffType.MISSING: "wanted by the config but not found in the cloud",
    DiffType.UNWANTED: "managed by Ovi but no longer in the config",
    DiffType.DRIFTED: "different from what the config says",
    DiffType.UNMANAGED: "found in the cloud but not managed by this Ovi",
    DiffType.CONFLICT: "wanted by the config, and an existing resource not Ovi's takes its place",
}
_PROVENANCE_WORDS = {
    Provenance.CREATED: "created (the log shows Ovi creating it)",
    Provenance.ADOPTED: "adopted (the log shows Ovi adopting it)",
    Provenance.UNRECORDED: "unrecorded (the log never saw Ovi create or adopt it:"
    " a person must approve its delete)",
}
_PAD = " " * 14


def _label(out: Output, number: int, name: str) -> str:
    """The left column: `` 3 decision   `` (14 characters), bold."""
    return out.paint(f"{number:>2} {name:<11}", "bold")


def _where(step: Step) -> str:
    cycle = f", cycle {step.cycle_id}" if step.cycle_id else ""
    return f"{fmt_time(step.recorded_at)} (position {step.position}{cycle})"


def _outcome(chain: Chain) -> tuple[str, str | None]:
    """The headline: what finally became of the decision."""
    decision = chain.decision
    last = chain.actions[-1].event if chain.actions else None
    if isinstance(last, ActionExecuted):
        return f"done: {decision.action} executed at {fmt_time(chain.actions[-1].recorded_at)}", \
            "green"
    if isinstance(last, ActionFailed):
        return f"failed: {last.error}", "red"
    if isinstance(last, ActionExecuting):
        return "in doubt: execution started, no outcome recorded (yet)", "yellow"
    if isinstance(last, ActionSkipped):
        return f"not executed: {last.reason}", "yellow"
    return f"not executed (none recorded): {_STATUS_WORDS[decision.status]}", None


def _lines(out: Output, label: str, lines: list[str]) -> None:
    for i, line in enumerate(lines):
        out.write((label if i == 0 else _PAD) + line)


def _observed(out: Output, chain: Chain) -> None:
    lines: list[str] = []
    for step in chain.evidence:
        event = step.event
        if isinstance(event, ResourceObserved):
            tags = ", ".join(f"{k}={v}" for k, v in sorted(event.resource.tags.items()))
            lines += [describe_resource(event.resource), f"tags: {tags or '(none)'}",
                      f"recorded like this at {_where(step)}, unchanged since"]
        elif isinstance(event, ObservationCompleted):
            lines.append(f"all of {event.scope.key} was observed at {_where(step)}:"
                         f" {event.count} resources")
    if not chain.evidence:
        missing = chain.decision.diff.type == DiffType.MISSING
        lines.append("the decision cites no observation event"
                     + (" (it is missing: nothing of it was seen)" if missing else ""))
    _lines(out, _label(out, 1, "observed"), lines)


def _finding(out: Output, chain: Chain) -> None:
    diff = chain.decision.diff
    lines = [f"{diff.type}: {_DIFF_WORDS[diff.type]}", diff.reason]
    lines += [f"  {c.field}: {c.observed or '(absent)'} in the cloud,"
              f" {c.desired or '(absent)'} in the config" for c in diff.changes]
    if chain.finding is not None and isinstance(chain.finding.event, DiffDetected):
        lines.append(f"first recorded at {_where(chain.finding)}")
    _lines(out, _label(out, 2, "finding"), lines)


def _decided(out: Output, chain: Chain) -> None:
    d = chain.decision
    lines = [f"{d.action} {d.resource_id}, decision {d.decision_id}"]
    if d.provenance is not None:
        lines.append(f"provenance: {_PROVENANCE_WORDS[d.provenance]}")
    for i, step in enumerate(chain.decided):
        event = step.event
        assert isinstance(event, DecisionMade)
        lines.append(f"{'made' if i == 0 else 'then'}: {_STATUS_WORDS[event.decision.status]}"
                     f" (rule {event.rule}) at {_where(step)} by {step.instance_id}")
    lines.append(f"because: {d.reason}")
    lines += [f"{step.says} ({_where(step)})" for step in chain.pauses]
    last = chain.decided[-1].event
    assert isinstance(last, DecisionMade)
    source = chain.config_source
    loaded = (f"from {source.event.source}, loaded at {_where(source)}"
              if source is not None and isinstance(source.event, ConfigLoaded)
              else "(no ConfigLoaded event for it in the log)")
    lines.append(f"config version {last.config_hash[:16]} {loaded}")
    if chain.cycle is not None and isinstance(chain.cycle.event, CycleStarted):
        started = chain.cycle.event
        article = "an" if started.mode[:1] in "aeiou" else "a"
        lines.append(f"last decided in cycle {started.cycle_id}, {article} {started.mode}"
                     f" cycle started at {fmt_time(started.started_at)}")
    _lines(out, _label(out, 3, "decision"), lines)


def _approved(out: Output, chain: Chain) -> None:
    lines = []
    for step in chain.approvals:
        event = step.event
        assert isinstance(event, ApprovalGranted | AdoptionGranted)
        what = (f"adopting {event.identity} " if isinstance(event, AdoptionGranted) else "")
        shown = escaped(event.by)
        by = who(event.by, event.actor).replace(shown, out.paint(shown, "bold"), 1)
        lines.append(f"{what}granted by {by} at {fmt_time(event.at)}"
                     f" (recorded at position {step.position})")
    if not lines:
        waits = chain.decision.status == DecisionStatus.AWAITING_APPROVAL
        lines.append("none yet: the decision waits for one" if waits else "none needed")
    _lines(out, _label(out, 4, "approval"), lines)


def _executed(out: Output, chain: Chain) -> None:
    claims = [f"{step.says} (position {step.position})" for step in chain.claims
              if isinstance(step.event, ClaimAcquired)]
    _lines(out, _label(out, 5, "claim"), claims or ["none (nothing was executed)"])
    lines = [f"{fmt_time(step.recorded_at)} {step.says}" for step in chain.actions]
    last = chain.actions[-1] if chain.actions else None
    if last is not None:
        lines.append(f"(last: position {last.position}, cycle {last.cycle_id},"
                     f" by {last.instance_id})")
    _lines(out, _label(out, 6, "execution"), lines or ["none recorded"])


def _after(out: Output, chain: Chain) -> None:
    lines = []
    for step in chain.afterwards:
        event = step.event
        says = (f"{event.cloud_id} was no longer found in {event.scope.key}"
                if isinstance(event, ResourceDisappeared) else step.says)
        lines.append(f"{says}, at {_where(step)}")
    if lines:
        _lines(out, _label(out, 7, "afterwards"), lines)


def render_chain(out: Output, chain: Chain) -> None:
    """The chain, top to bottom, on one screen."""
    d = chain.decision
    cloud = f" (cloud id {chain.cloud_id})" if chain.cloud_id else ""
    out.write(out.paint(f"Why Ovi decided to {d.action} {d.resource_id}{cloud}", "bold"))
    headline, colour = _outcome(chain)
    out.write("  " + out.paint(headline, colour))
    out.write()
    _observed(out, chain)
    _finding(out, chain)
    _decided(out, chain)
    _approved(out, chain)
    _executed(out, chain)
    _after(out, chain)
    others = chain.other_decisions
    if others:
        shown = ", ".join(reversed(others[-5:])) + (", …" if len(others) > 5 else "")
        out.write()
        out.write(out.paint(f"{len(others)} other decision(s) about {d.resource_id}, latest"
                            f" first: {shown} (why {d.resource_id} --decision ID)", "dim"))
