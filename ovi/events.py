"""Ovi's events: the audit contract. Type names never change once released.

Streams: ``cycle/<cycle_id>`` holds a cycle's own events; ``resource/<id>``
everything about one resource (observations, findings, decisions, approvals,
executions); ``claim/<id>`` the claims on it; ``pause/<target>`` the pauses and
resumes of automation on one resource (``pause/*``: the whole estate).
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from eventstore import Event, EventRegistry
from ovi.model import Action, CycleMode, Decision, Diff, Resource, Scope, SkipReason, Unreadable

__all__ = [
    "OVI_EVENTS",
    "PAUSE_ALL",
    "PAUSE_STREAM",
    "RESOURCE_STREAM",
    "ActionExecuted",
    "ActionExecuting",
    "ActionFailed",
    "ActionSkipped",
    "Actor",
    "AdoptionGranted",
    "ApprovalGranted",
    "AutomationPaused",
    "AutomationResumed",
    "ClaimAcquired",
    "ClaimReleased",
    "ClaimRenewed",
    "ConfigLoaded",
    "CycleFinished",
    "CycleStarted",
    "DecisionMade",
    "DiffDetected",
    "DiffResolved",
    "NotificationSent",
    "ObservationCompleted",
    "ObservationFailed",
    "ResourceDisappeared",
    "ResourceObserved",
    "RestartSettled",
    "claim_stream",
    "cycle_stream",
    "pause_stream",
    "registry",
    "resource_stream",
    "stream_resource",
]


def cycle_stream(cycle_id: str) -> str:
    return f"cycle/{cycle_id}"


#: the prefix of a resource's stream: ``resource/<id>``
RESOURCE_STREAM = "resource/"


def resource_stream(resource_id: str) -> str:
    return f"{RESOURCE_STREAM}{resource_id}"


def claim_stream(resource_id: str) -> str:
    return f"claim/{resource_id}"


#: the prefix of a pause stream: ``pause/<resource id>``, or ``pause/*``
PAUSE_STREAM = "pause/"
#: the pause target that stands for the whole estate
PAUSE_ALL = "*"


def pause_stream(target: str) -> str:
    """The stream of the pauses of ``target``: a resource id or :data:`PAUSE_ALL`."""
    return f"{PAUSE_STREAM}{target}"


def stream_resource(stream: str) -> str | None:
    """The resource a ``resource/<id>`` stream is about (``None`` for other streams)."""
    return stream.removeprefix(RESOURCE_STREAM) if stream.startswith(RESOURCE_STREAM) else None


class CycleStarted(Event, frozen=True):
    cycle_id: str
    mode: CycleMode
    config_hash: str
    started_at: datetime


class ConfigLoaded(Event, frozen=True):
    """A config version seen for the first time (or again after another one)."""

    cycle_id: str
    config_hash: str
    source: str
    config: dict[str, object]  # the parsed config, canonical form


class ResourceObserved(Event, frozen=True):
    """A resource seen for the first time, or with changed attributes."""

    cycle_id: str
    scope: Scope
    resource: Resource
    fingerprint: str


class ResourceDisappeared(Event, frozen=True):
    """A resource seen before is no longer in its (successfully observed) scope.

    ``now_known_as`` is set when the resource is still there but known by
    another identity from now on (adopted; or keyed by cloud id in a log
    written before identities were ``provider/region/type/cloud id``)."""

    cycle_id: str
    scope: Scope
    resource_id: str
    cloud_id: str
    now_known_as: str | None = None


class ObservationCompleted(Event, frozen=True):
    """A scope observed in full: with the change events, enough to rebuild and
    check the exact observed set of this cycle."""

    cycle_id: str
    scope: Scope
    count: int
    digest: str
    # The log's last position when the provider call started: an action on one
    # of these resources recorded after it is news this observation may miss.
    # None in an older log's observations, which did not record it (an empty
    # log's is 0: the call started before anything was recorded).
    observed_after: int | None = None
    # Listed but not readable (AccessDenied on their tags): neither counted nor
    # in the digest, and nothing is decided about them.
    unreadable: tuple[Unreadable, ...] = ()


class ObservationFailed(Event, frozen=True):
    """A scope could not be observed: no decision is taken for it this cycle."""

    cycle_id: str
    scope: Scope
    error: str


class DiffDetected(Event, frozen=True):
    cycle_id: str
    diff: Diff
    fingerprint: str
    detected_at: datetime


class DiffResolved(Event, frozen=True):
    cycle_id: str
    resource_id: str
    fingerprint: str
    reason: str


class DecisionMade(Event, frozen=True):
    """A decision, recorded when new or when its status changes."""

    cycle_id: str
    decision: Decision
    config_hash: str
    rule: str
    evidence: tuple[int, ...]  # positions of the observation events it relied on


class Actor(msgspec.Struct, frozen=True, kw_only=True):
    """Who did something by hand: the free text they gave (``--by``, else the
    user name), and the OS account and host the command ran under, which they
    cannot choose."""

    by: str
    user: str
    uid: int
    host: str


class ApprovalGranted(Event, frozen=True):
    decision_id: str
    resource_id: str
    by: str
    at: datetime
    actor: Actor | None = None  # absent in logs written before it was recorded


class AutomationPaused(Event, frozen=True):
    """No action runs on ``target`` (a resource id, or ``*``: the whole estate)
    until it is resumed; it is still observed and reported."""

    target: str
    reason: str
    actor: Actor
    at: datetime


class AutomationResumed(Event, frozen=True):
    target: str
    reason: str
    actor: Actor
    at: datetime


class NotificationSent(Event, frozen=True):
    """A finding was announced (``kind``: notify, awaiting_approval, failed) to
    the sinks: recorded so that a restart does not announce it again. ``key``
    names the open finding (resource, position of its ``DiffDetected``)."""

    key: str
    kind: str
    resource_id: str
    decision_id: str
    sinks: tuple[str, ...]
    at: datetime


class AdoptionGranted(Event, frozen=True):
    """A person allows Ovi to take over the existing resource ``identity``
    (cloud id ``cloud_id``) as the desired ``resource_id`` (``ovi adopt``):
    the next cycle that finds it unmanaged and ``resource_id`` missing adopts it.
    ``owner_seen`` is the ``ovi:owner`` tag it carried when the person granted
    it (None: no owner): the grant holds only while the resource still carries
    that owner, so it never takes over a resource another installation claimed
    since."""

    resource_id: str
    identity: str
    cloud_id: str
    by: str
    at: datetime
    owner_seen: str | None = None
    actor: Actor | None = None  # absent in logs written before it was recorded


class ClaimAcquired(Event, frozen=True):
    """An instance holds a resource until ``expires_at``. ``token`` is the claim
    stream's version after this event: the fencing token."""

    resource_id: str
    instance_id: str
    claimed_at: datetime
    expires_at: datetime
    token: int
    takeover_of: str | None = None  # the instance whose expired claim this replaces


class ClaimReleased(Event, frozen=True):
    resource_id: str
    instance_id: str
    token: int


class ClaimRenewed(Event, frozen=True):
    """The holder of the claim with fencing token ``token`` still works on the
    resource: the claim now runs until ``expires_at``. Appended to the claim
    stream expecting its version, like a claim, so a renewal never extends a
    claim that was taken over; the fencing token does not change."""

    resource_id: str
    instance_id: str
    token: int
    renewed_at: datetime
    expires_at: datetime


class ActionExecuting(Event, frozen=True):
    """Written durably before the provider is called (write-ahead)."""

    cycle_id: str
    decision_id: str
    action: Action
    resource_id: str
    cloud_id: str | None
    token: int  # the claim's fencing token
    # A disruptive update (an EC2 resize stops the instance): whether the
    # resource was running in the observation the decision relied on. True
    # means Ovi owes a start until the action ends in ActionExecuted.
    was_running: bool | None = None
    # Creates: the attempt, which makes the idempotency token (the decision
    # id, then ``<decision id>.<attempt>``); a new attempt only once the
    # resource of the one before is known to be gone.
    create_attempt: int = 1


class ActionExecuted(Event, frozen=True):
    cycle_id: str
    decision_id: str
    action: Action
    resource_id: str
    cloud_id: str | None
    token: int
    attempts: int = 1
    recovered: bool = False  # resolved at start-up from what the cloud shows
    stale_token: bool = False  # the claim was lost mid-action: flagged, not hidden
    create_attempt: int = 1  # the ActionExecuting this answers (creates)
    #: a create's, update's or adoption's resource as the provider's response
    #: described it (what Ovi knew before observing it); absent in older logs
    resource: Resource | None = None


class ActionFailed(Event, frozen=True):
    cycle_id: str
    decision_id: str
    action: Action
    resource_id: str
    cloud_id: str | None
    token: int
    error: str
    retryable: bool
    attempts: int = 1  # provider calls made; 0: not attempted after the write-ahead
    interrupted: bool = False  # found in doubt at start-up
    stale_token: bool = False
    create_attempt: int = 1  # the ActionExecuting this answers (creates)


class RestartSettled(Event, frozen=True):
    """Ovi no longer owes a start to a resource that a disruptive update
    (``ActionExecuting.was_running``) stopped and that did not end in
    ``ActionExecuted``: an observation that began after that action ended
    (position ≥ ``ended_rev``) saw it running."""

    cycle_id: str
    resource_id: str
    decision_id: str  # the update that owed the start
    token: int
    ended_rev: int
    status: str  # as observed


class ActionSkipped(Event, frozen=True):
    """An action not attempted: dry-run, stale, claimed elsewhere, or waiting
    (approval, grace period, maintenance window, blast-radius cap)."""

    cycle_id: str
    decision_id: str
    action: Action
    resource_id: str
    reason: SkipReason
    detail: str = ""


class CycleFinished(Event, frozen=True):
    cycle_id: str
    resources_found: int
    diffs_detected: int
    decisions_made: int
    execution_errors: int
    duration_ms: float
    failed_scopes: tuple[str, ...] = ()


OVI_EVENTS: tuple[type[Event], ...] = (
    CycleStarted,
    ConfigLoaded,
    ResourceObserved,
    ResourceDisappeared,
    ObservationCompleted,
    ObservationFailed,
    DiffDetected,
    DiffResolved,
    DecisionMade,
    ApprovalGranted,
    ClaimAcquired,
    ClaimReleased,
    ClaimRenewed,
    ActionExecuting,
    ActionExecuted,
    ActionFailed,
    ActionSkipped,
    RestartSettled,
    CycleFinished,
    AutomationPaused,
    AutomationResumed,
    NotificationSent,
    AdoptionGranted,
)


def registry() -> EventRegistry:
    """A registry that knows every Ovi event type."""
    return EventRegistry(OVI_EVENTS)
