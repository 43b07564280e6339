"""Pure data of the reconcile domain: resources, diffs, decisions.

No I/O and no clock here: everything that needs the time is passed it.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
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
    "Location",
    "Outcome",
    "Provenance",
    "Resource",
    "ResourceType",
    "Scope",
    "SkipReason",
    "Unreadable",
    "decision_id_for",
    "foreign_key",
    "identify",
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
    # desired, not observed as ours, and a resource Ovi does not manage holds
    # its place: the name a create would take, or an operator's adoption grant
    CONFLICT = "conflict"


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    NOTIFY = "notify"
    ADOPT = "adopt"  # tag an existing resource as Ovi's (explicitly asked for)


class Provenance(StrEnum):
    """What the log says about where a resource came from (for deletes)."""

    CREATED = "created"  # an executed create of this id made it (recovered ones count)
    ADOPTED = "adopted"  # an executed adoption made it Ovi's
    UNRECORDED = "unrecorded"  # tagged as Ovi's, but the log never saw Ovi make it so


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
    CAPPED = "capped"  # over max_deletes_per_cycle, max_creates_… or max_resizes_…
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
    # The log holds event types this Ovi does not know, found after the cycle
    # began (a newer Ovi on another host wrote them): it could be a pause.
    UNKNOWN_EVENTS = "unknown-events"

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

    ``id`` is its identity (see :func:`identify`): the desired id for Ovi's
    own, :func:`foreign_key` for anything else. Providers leave it empty; the
    observer assigns it, in one place, for every scope of a cycle at once.
    ``created_at`` is when the cloud says it was made (EC2 LaunchTime, RDS
    InstanceCreateTime, S3 CreationDate), if it says.
    """

    id: str
    cloud_id: str
    type: ResourceType
    provider: str
    region: str
    size: str | None = None
    status: str = ""
    tags: dict[str, str] = {}
    created_at: datetime | None = None

    @property
    def scope(self) -> Scope:
        return Scope(self.provider, self.region, self.type)

    @property
    def owner(self) -> str | None:
        """The ``ovi:owner`` tag, if any (``ovi:managed`` alone names no owner)."""
        return self.tags.get(OWNER_TAG) or None

    def managed_by(self, owner: str) -> bool:
        """Is this resource ``owner``'s? Only its ``ovi:owner`` tag says so."""
        return self.tags.get(OWNER_TAG) == owner

    @property
    def blessed(self) -> bool:
        return self.tags.get(BLESSED_TAG) == "true"

    @property
    def key(self) -> str:
        """:func:`foreign_key` of this resource."""
        return foreign_key(self.provider, self.region, self.type, self.cloud_id)


class Location(msgspec.Struct, frozen=True, gc=False):
    """Where a resource is: its scope and cloud id."""

    scope: Scope
    cloud_id: str


class Unreadable(msgspec.Struct, frozen=True, gc=False):
    """A resource a provider listed but could not read (its tags, say): its
    owner and id are unknown, so nothing is decided about it."""

    cloud_id: str
    error: str


def foreign_key(provider: str, region: str, type_: ResourceType | str, cloud_id: str) -> str:
    """The identity of a resource that is not one of Ovi's own:
    ``aws/us-east-1/s3/web-0``. No desired id can equal it (those have no ``/``)."""
    return f"{provider}/{region}/{type_}/{cloud_id}"


def _age(resource: Resource) -> tuple[bool, datetime | None, str]:
    """Oldest first; a resource whose creation time is unknown counts as newest."""
    return (resource.created_at is None, resource.created_at, resource.cloud_id)


def identify(
    observed: Iterable[Resource],
    *,
    owner: str,
    recorded: Mapping[str, Location] = {},
    complete: Collection[Scope] | None = None,
    unreadable: Collection[Location] = (),
) -> list[Resource]:
    """Give every observed resource its identity (``Resource.id``), across all
    scopes of a cycle at once.

    A resource ``owner`` manages (``ovi:owner`` equal to it) that carries an
    ``ovi:id`` is known by that desired id; everything else by
    :func:`foreign_key`. When several copies carry one ``ovi:id``, one keeps
    it: the copy the log recorded under it (``recorded``: where the log last
    saw each id), else the oldest (creation time, then cloud id). The others
    are known by their foreign keys. When the recorded copy could not be seen
    this cycle (its scope is not in ``complete``, the scopes observed in full;
    or it is ``unreadable``), none of the copies takes the id: the keeper is
    elsewhere, unseen. ``complete=None`` means every scope was observed.
    """
    resources = list(observed)
    claims: defaultdict[str, list[int]] = defaultdict(list)
    ids: list[str | None] = [None] * len(resources)
    for i, r in enumerate(resources):
        tags = r.tags
        desired_id = tags.get(ID_TAG)
        if desired_id and tags.get(OWNER_TAG) == owner:
            claims[desired_id].append(i)
    blind = set(unreadable)
    for desired_id, copies in claims.items():
        where = recorded.get(desired_id)
        keeper: int | None = None
        if where is not None:
            if where in blind or (complete is not None and where.scope not in complete):
                continue  # the recorded copy may still be there: nobody else takes its id
            place = where.scope
            keeper = next((i for i in copies if resources[i].cloud_id == where.cloud_id
                           and resources[i].region == place.region
                           and resources[i].type == place.type
                           and resources[i].provider == place.provider), None)
        if keeper is None:
            keeper = copies[0] if len(copies) == 1 else min(
                copies, key=lambda i: _age(resources[i]))
        ids[keeper] = desired_id
    out: list[Resource] = []
    for r, assigned in zip(resources, ids, strict=True):
        identity = assigned if assigned is not None else r.key
        out.append(r if r.id == identity else msgspec.structs.replace(r, id=identity))
    return out


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
    adopt: bool = False  # the spec's ``adopt: true``: take over an existing resource of its name

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
    # For a delete: whether the log saw Ovi create or adopt the resource.
    provenance: Provenance | None = None

    @property
    def subjects(self) -> tuple[str, ...]:
        """The identities this decision acts on: its resource id and, for a
        conflict, the identity of the existing resource it would adopt (a
        pause of either holds it)."""
        observed = self.diff.observed
        if observed is None or not observed.id or observed.id == self.resource_id:
            return (self.resource_id,)
        return (self.resource_id, observed.id)


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
