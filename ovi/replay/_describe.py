"""One line of plain words per event, and which resource an event concerns."""

from __future__ import annotations

from typing import Any

import msgspec

from eventstore import UnknownEvent
from ovi._text import escaped
from ovi.events import (
    PAUSE_ALL,
    ActionExecuted,
    ActionExecuting,
    ActionFailed,
    ActionSkipped,
    Actor,
    AdoptionGranted,
    ApprovalGranted,
    AutomationPaused,
    AutomationResumed,
    ClaimAcquired,
    ClaimReleased,
    ClaimRenewed,
    ConfigLoaded,
    CycleFinished,
    CycleStarted,
    DecisionMade,
    DiffDetected,
    DiffResolved,
    NotificationSent,
    ObservationCompleted,
    ObservationFailed,
    ResourceDisappeared,
    ResourceObserved,
    RestartSettled,
)
from ovi.model import Resource
from ovi.replay._render import fmt_time

__all__ = ["cycle_of", "describe", "describe_resource", "resource_of", "resource_of_raw",
           "who"]

_STREAM_PREFIXES = ("resource/", "claim/", "pause/")


class _Ref(msgspec.Struct):
    resource_id: str | None = None


class _ResourceRef(msgspec.Struct):
    id: str | None = None


class _Probe(msgspec.Struct):
    """The few fields that say which cycle and resource an event concerns."""

    cycle_id: str | None = None
    resource_id: str | None = None
    diff: _Ref | None = None
    decision: _Ref | None = None
    resource: _ResourceRef | None = None


_decode_probe = msgspec.json.Decoder(_Probe).decode


def who(by: str, actor: Actor | None) -> str:
    """``--by`` and the OS account and host the command ran under (which the
    person could not choose); a log from before they were recorded has only
    ``--by``. All escaped (:func:`escaped`)."""
    if actor is None:
        return f"{escaped(by)} (OS user not recorded)"
    return (f"{escaped(by)} (user {escaped(actor.user)}, uid {actor.uid} on"
            f" {escaped(actor.host)})")


def probe(data: str) -> _Probe:
    """The cycle and resource fields of an event's JSON, whatever its type."""
    try:
        return _decode_probe(data)
    except msgspec.DecodeError:
        return _Probe()


def _probe_resource(found: _Probe) -> str | None:
    if found.resource_id:
        return found.resource_id
    for ref in (found.diff, found.decision):
        if ref is not None and ref.resource_id:
            return ref.resource_id
    return found.resource.id if found.resource is not None else None


def resource_of_raw(stream: str, data: str) -> str | None:
    """The resource an undecoded event concerns: its stream says so for the
    resource and claim streams; other streams' events are probed."""
    for prefix in _STREAM_PREFIXES:
        if stream.startswith(prefix):
            return stream[len(prefix):]
    if stream.startswith("cycle/"):
        return None  # cycle events concern a cycle or a scope, never one resource
    return _probe_resource(probe(data))


def resource_of(stream: str, event: Any) -> str | None:
    """:func:`resource_of_raw` for a decoded event."""
    for prefix in _STREAM_PREFIXES:
        if stream.startswith(prefix):
            return stream[len(prefix):]
    if isinstance(event, ResourceObserved):
        return event.resource.id
    if isinstance(event, DiffDetected):
        return event.diff.resource_id
    if isinstance(event, DecisionMade):
        return event.decision.resource_id
    rid = getattr(event, "resource_id", None)
    return rid if isinstance(rid, str) else None


def cycle_of(stream: str, event: Any) -> str | None:
    """The cycle an event belongs to (approvals and claims belong to none)."""
    if stream.startswith("cycle/"):
        return stream.removeprefix("cycle/")
    if isinstance(event, UnknownEvent):
        return probe(bytes(event.data).decode()).cycle_id
    found = getattr(event, "cycle_id", None)
    return found if isinstance(found, str) else None


def describe_resource(r: Resource) -> str:
    """``i-abc, ec2 t3.micro in us-east-1, running, owner ovi``."""
    size = f" {r.size}" if r.size else ""
    status = f", {r.status}" if r.status else ""
    owner = f", owner {r.owner}" if r.owner else ", not managed by Ovi"
    return f"{r.cloud_id}, {r.type}{size} in {r.region}{status}{owner}"


def _flags(event: ActionExecuted | ActionFailed) -> str:
    flags = []
    if isinstance(event, ActionExecuted) and event.recovered:
        flags.append("recovered at start-up")
    if isinstance(event, ActionFailed) and event.interrupted:
        flags.append("interrupted by a crash")
    if event.stale_token:
        flags.append("claim lost meanwhile (stale token)")
    return f" [{'; '.join(flags)}]" if flags else ""


def _attempts(n: int) -> str:
    return f"{n} attempt" + ("" if n == 1 else "s")


def describe(event: Any) -> str:
    """What an event says, in one line a newcomer can read; escaped
    (:func:`escaped`): a reason or an error can carry what a cloud tag or a
    log row says."""
    return escaped(_says(event))


def _says(event: Any) -> str:
    match event:
        case CycleStarted():
            return f"cycle started ({event.mode}), config {event.config_hash[:12]}"
        case ConfigLoaded():
            return f"config {event.config_hash[:12]} loaded from {event.source}"
        case ResourceObserved():
            return f"observed {describe_resource(event.resource)}"
        case ResourceDisappeared():
            if event.now_known_as:
                return f"{event.cloud_id} is known as {event.now_known_as} from now on"
            return f"{event.cloud_id} is gone from {event.scope.key}"
        case ObservationCompleted():
            unread = (f", {len(event.unreadable)} unreadable"
                      f" ({', '.join(u.cloud_id for u in event.unreadable)})"
                      if event.unreadable else "")
            return f"observed all of {event.scope.key}: {event.count} resources{unread}"
        case ObservationFailed():
            return f"could not observe {event.scope.key}: {event.error}"
        case DiffDetected():
            return f"finding {event.diff.type}: {event.diff.reason}"
        case DiffResolved():
            return f"finding closed ({event.reason})"
        case DecisionMade():
            d = event.decision
            return f"decided {d.action}: {d.status} (rule {event.rule}) {d.decision_id}"
        case ApprovalGranted():
            return (f"{event.decision_id} approved by {who(event.by, event.actor)} at"
                    f" {fmt_time(event.at)}")
        case AutomationPaused() | AutomationResumed():
            verb = "paused" if isinstance(event, AutomationPaused) else "resumed"
            what = "the whole estate" if event.target == PAUSE_ALL else event.target
            why = f": {escaped(event.reason)}" if event.reason else ""
            return f"{what} {verb} by {who(event.actor.by, event.actor)}{why}"
        case NotificationSent():
            return (f"announced {event.kind} about {event.resource_id} to"
                    f" {', '.join(event.sinks)}")
        case AdoptionGranted():
            return (f"{event.identity} may be adopted as {event.resource_id}: granted by"
                    f" {who(event.by, event.actor)} at {fmt_time(event.at)}")
        case ClaimAcquired():
            took = f", taking over from {event.takeover_of}" if event.takeover_of else ""
            return (f"claimed by {event.instance_id} until {fmt_time(event.expires_at)},"
                    f" token {event.token}{took}")
        case ClaimReleased():
            return f"claim released by {event.instance_id}, token {event.token}"
        case ClaimRenewed():
            return (f"claim renewed by {event.instance_id} until {fmt_time(event.expires_at)},"
                    f" token {event.token}")
        case ActionExecuting():
            notes = ""
            if event.create_attempt > 1:
                notes += f", attempt {event.create_attempt}"
            if event.was_running is not None:
                notes += ", was running" if event.was_running else ", was not running"
            return f"executing {event.action} {event.decision_id} (token {event.token}{notes})"
        case RestartSettled():
            return (f"start no longer owed ({event.decision_id}): seen {event.status} after"
                    f" position {event.ended_rev}")
        case ActionExecuted():
            return (f"{event.action} done {event.decision_id}, {_attempts(event.attempts)}"
                    f"{_flags(event)}")
        case ActionFailed():
            again = "may retry" if event.retryable else "will not retry"
            return (f"{event.action} failed {event.decision_id} after"
                    f" {_attempts(event.attempts)} ({again}): {event.error}{_flags(event)}")
        case ActionSkipped():
            detail = f" ({event.detail})" if event.detail else ""
            return f"{event.action} not run {event.decision_id}: {event.reason}{detail}"
        case CycleFinished():
            failed = (f", observation failed for {', '.join(event.failed_scopes)}"
                      if event.failed_scopes else "")
            return (f"cycle finished in {event.duration_ms:.0f} ms: {event.resources_found}"
                    f" resources, {event.diffs_detected} diffs, {event.decisions_made}"
                    f" decisions, {event.execution_errors} errors{failed}")
        case UnknownEvent():
            return f"(not readable by this Ovi: {event.reason})"
    return type(event).__name__
