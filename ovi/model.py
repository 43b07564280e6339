"""Pure data of the reconcile domain: resources, diffs, decisions.

No I/O and no clock here: everything that needs the time is passed it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum

import msgspec

__all__ = [
    "BLESSED_TAG",
    "DECISION_TAG",
    "ID_TAG",
    "MANAGED_TAG",
    "OWNER_TAG",
    "RUNNING_STATUSES",
    "Action",
    "CycleMode",
    "Decision",
    "DecisionStatus",
    "DesiredResource",
    "Diff",
    "DiffType",
    "FieldChange",
    "Outcome",
    "Resource",
    "ResourceType",
    "Scope",
    "SkipReason",
    "decision_id_for",
    "observed_set_digest",
    "resource_fingerprint",
]

ID_TAG = "ovi:id"
MANAGED_TAG = "ovi:managed"
OWNER_TAG = "ovi:owner"
BLESSED_TAG = "ovi:blessed"
DECISION_TAG = "ovi:decision"
#: observed statuses of a resource that is up or on its way up (EC2's names)
RUNNING_STATUSES = frozenset({"pending", "running"})


class ResourceType(StrEnum):
    EC2 = "ec2"
    RDS = "rds"
    S3 = "s3"


class DiffType(StrEnum):
    MISSING = "missing"  # desired, not observed
    UNWANTED = "unwanted"  # observed, managed by us, not desired
    DRIFTED = "drifted"  # desired and observed, differing
    UNMANAGED = "unmanaged"  # observed, not managed by us, not desired


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    NOTIFY = "notify"


class CycleMode(StrEnum):
    """What a cycle may do: ``plan`` never executes; ``apply`` (one cycle) and
    ``run`` (the service) execute what is ready."""

    PLAN = "plan"
    APPLY = "apply"
    RUN = "run"


class Outcome(StrEnum):
    """What became of an action: the last of these recorded for a decision."""

    SKIPPED = "skipped"  # not attempted (ActionSkipped, or not recorded at all)
    EXECUTING = "executing"  # write-ahead recorded, no outcome yet: in doubt
    EXECUTED = "executed"
    FAILED = "failed"


class DecisionStatus(StrEnum):
    """Where a decision stands this cycle."""

    READY = "ready"  # may be executed now
    INFORMATIONAL = "informational"  # a notify: nothing to execute
    AWAITING_APPROVAL = "awaiting_approval"
    GRACE_PERIOD = "grace_period"  # unwanted, but not for long enough yet
    MAINTENANCE_WINDOW = "maintenance_window"  # destructive, outside the window
    CAPPED = "capped"  # over max_deletes_per_cycle
    PAUSED = "paused"  # automation paused on the resource or the whole estate (ovi pause)


class SkipReason(StrEnum):
    """Why an action was not attempted this cycle (``ActionSkipped.reason``)."""

    # The decision is held back: the values of the DecisionStatus that holds it.
    AWAITING_APPROVAL = "awaiting_approval"
    GRACE_PERIOD = "grace_period"
    MAINTENANCE_WINDOW = "maintenance_window"
    CAPPED = "capped"
    PAUSED = "paused"  # also: paused by another process after the cycle read its state
    # The executor's own reasons.
    DRY_RUN = "dry-run"
    CLAIMED = "claimed"  # another live instance holds the resource
    STALE = "stale"  # an action on it was recorded after the observation relied on
    CLAIM_EXPIRED = "claim-expired"  # waited for a slot until the claim ran out
    CLAIM_LOST = "claim-lost"  # the claim was taken over before the write-ahead
    ALREADY_EXECUTED = "already-executed"
    IN_DOUBT = "in-doubt"  # an earlier attempt has no outcome yet; recovery decides
    FAILED_PERMANENTLY = "failed-permanently"
    DRAINING = "draining"  # the service is stopping: no new action starts

    @classmethod
    def holding(cls, status: DecisionStatus) -> SkipReason:
        """The reason a decision held with ``status`` is not executed."""
        return cls(status.value)


class Scope(msgspec.Struct, frozen=True, order=True, gc=False):
    """One unit of observation: a provider's resources of one type in one region."""

    provider: str
    region: str
    type: ResourceType

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.region}/{self.type}"


class Resource(msgspec.Struct, frozen=True, gc=False):
    """A resource as observed in the cloud.

    ``id`` is the ``ovi:id`` tag for resources Ovi manages, else the cloud id.
    """

    id: str
    cloud_id: str
    type: ResourceType
    provider: str
    region: str
    size: str | None = None
    status: str = ""
    tags: dict[str, str] = {}

    @property
    def scope(self) -> Scope:
        return Scope(self.provider, self.region, self.type)

    @property
    def owner(self) -> str | None:
        """The owning Ovi: ``ovi:owner``, else "ovi" when only ``ovi:managed=true``."""
        owner = self.tags.get(OWNER_TAG)
        if owner:
            return owner
        if self.tags.get(MANAGED_TAG) == "true":
            return "ovi"
        return None

    @property
    def managed(self) -> bool:
        return self.owner is not None

    @property
    def blessed(self) -> bool:
        return self.tags.get(BLESSED_TAG) == "true"


class DesiredResource(msgspec.Struct, frozen=True, gc=False):
    """A resource the config asks for, with its desired id."""

    id: str
    type: ResourceType
    provider: str
    region: str
    size: str | None = None
    image: str | None = None
    engine: str | None = None
    tags: dict[str, str] = {}  # declared tags only (not ovi:*)

    @property
    def scope(self) -> Scope:
        return Scope(self.provider, self.region, self.type)


class FieldChange(msgspec.Struct, frozen=True, gc=False):
    """One difference between desired and observed: ``field`` is e.g. ``size``
    or ``tags.team``; ``None`` means absent."""

    field: str
    desired: str | None
    observed: str | None


class Diff(msgspec.Struct, frozen=True, gc=False):
    """One finding of the comparator."""

    type: DiffType
    resource_id: str
    resource_type: ResourceType
    scope: Scope
    reason: str
    cloud_id: str | None = None
    desired: DesiredResource | None = None
    observed: Resource | None = None
    changes: tuple[FieldChange, ...] = ()

    @property
    def fingerprint(self) -> str:
        """Identity of the finding: same fingerprint = same finding, so it is
        not recorded again. Observed status is left out, and so are undeclared
        tags, except for an unwanted resource, whose every tag is part of what
        an approval to delete it approves."""
        observed: tuple[str | None, list[tuple[str, str]]] | None = None
        if self.type == DiffType.UNWANTED and self.observed is not None:
            # What an operator approves deleting is the resource as it was seen.
            observed = (self.observed.size, sorted(self.observed.tags.items()))
        parts = msgspec.json.encode(
            (self.type, self.resource_id, self.cloud_id, self.resource_type, self.scope.key,
             self.changes, self.desired, observed)
        )
        return hashlib.sha256(parts).hexdigest()[:16]


class Decision(msgspec.Struct, frozen=True, gc=False):
    """What Ovi decided about one diff, and where that decision stands."""

    decision_id: str
    action: Action
    resource_id: str
    resource_type: ResourceType
    reason: str
    status: DecisionStatus
    rule: str  # the rule or policy that produced the action/status
    diff: Diff
    cloud_id: str | None = None


def decision_id_for(diff: Diff, action: Action, detected_at: datetime) -> str:
    """Deterministic decision id: stable while the finding stays the same, new
    when it changes or recurs later (so an approval never outlives its finding)."""
    seed = f"{diff.fingerprint}|{action}|{detected_at.isoformat()}"
    return "d-" + hashlib.sha256(seed.encode()).hexdigest()[:12]


def resource_fingerprint(resource: Resource) -> str:
    """Digest of everything observed about a resource; a change means a new
    ``ResourceObserved`` event."""
    return hashlib.sha256(msgspec.json.encode(resource)).hexdigest()[:24]


def observed_set_digest(fingerprints: dict[str, str]) -> str:
    """Digest of a whole observed set (resource id → fingerprint), order-free."""
    digest = hashlib.sha256()
    for resource_id in sorted(fingerprints):
        digest.update(f"{resource_id}\x00{fingerprints[resource_id]}\n".encode())
    return digest.hexdigest()
