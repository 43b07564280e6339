"""Desired against observed: the five kinds of finding.

A pure function of data. Observed resources arrive with their identities
(:func:`ovi.model.identify`): Ovi's own by desired id, everything else by
``provider/region/type/cloud id``, so an S3 bucket named ``web-0`` is never the
desired ``web-0``. Where the estate is unknown this cycle (a scope whose
observation failed, a resource that could not be read, the scope where the
log last saw a desired id) nothing is reported that depends on it: a desired
resource is *missing* only when every place it may be was seen in full.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Protocol

import msgspec

from ovi.model import (
    ID_TAG,
    RUNNING_STATUSES,
    DesiredResource,
    Diff,
    DiffType,
    FieldChange,
    Location,
    Resource,
    Scope,
)

if TYPE_CHECKING:
    from ovi.config import Config

__all__ = ["Comparator", "Context", "DefaultComparator", "Grant", "grants_in_force"]


class Context(msgspec.Struct, frozen=True):
    """What the comparator knows besides desired and observed; supplied by the engine.

    ``last_seen``: where the log last saw each id existing. ``unreadable``:
    resources listed this cycle that could not be read. ``natural_ids``: the
    cloud id a create of a desired id would take, where the cloud names
    resources after it (an S3 bucket, an RDS identifier). ``grants``: desired
    id → the identity of an existing resource an operator allowed Ovi to adopt
    as it (``ovi adopt``). ``restart_owed``: ids of resources an interrupted
    update of Ovi's stopped and Ovi has not seen running since. ``made``:
    desired id → where the resources are that the log shows Ovi created or
    adopted as it (they may have lost Ovi's tags since).
    """

    last_seen: Mapping[str, Location] = {}
    unreadable: Collection[Location] = frozenset()
    natural_ids: Mapping[str, str] = {}
    grants: Mapping[str, str] = {}
    restart_owed: Collection[str] = frozenset()
    made: Mapping[str, Collection[Location]] = {}


_NOTHING_KNOWN = Context()


class Grant(msgspec.Struct, frozen=True):
    """An ``ovi adopt`` grant not used yet: the identity of the resource and
    the ``ovi:owner`` it carried when the person granted it."""

    identity: str
    owner_seen: str | None = None


def grants_in_force(grants: Mapping[str, Grant],
                    observed: Iterable[Resource]) -> dict[str, str]:
    """Desired id → identity, for the grants whose resource still carries the
    owner the person saw (or was not seen this cycle): a resource another
    installation tagged as its own since is not taken by the older grant; the
    person has to grant it again, seeing the new owner."""
    owners = {r.id: r.owner for r in observed}
    return {rid: g.identity for rid, g in grants.items()
            if owners.get(g.identity, g.owner_seen) == g.owner_seen}


class Comparator(Protocol):
    """Turns desired and observed resources into diffs.

    Implementations must be pure and deterministic: the same input gives the
    same diffs in the same order (by scope key, then resource id), each
    resource id at most once.
    """

    def compare(
        self,
        desired: Sequence[DesiredResource],
        observed: Sequence[Resource],
        *,
        unknown_scopes: Collection[Scope] = (),
        context: Context = _NOTHING_KNOWN,
    ) -> list[Diff]:
        """Every finding, sorted by scope key then resource id. Resources in
        ``unknown_scopes`` (observation failed) get no diff at all. A desired
        resource in ``context.restart_owed`` (one an interrupted update of Ovi's
        stopped, from the log) that is not running drifts in ``status`` only:
        it is started again before anything else is changed."""
        ...


class DefaultComparator:
    """The rules of docs/architecture.md ("Identity, diffs and decisions"):
    missing, unwanted, drifted, unmanaged, conflict.

    ``owner`` is this Ovi's owner; resources of other owners are unmanaged
    here. Tag keys matching an ``ignore_tags`` glob are never drift.
    """

    def __init__(self, owner: str = "ovi", ignore_tags: Sequence[str] = ("aws:*",)) -> None:
        self.owner = owner
        self.ignore_tags = tuple(ignore_tags)

    @classmethod
    def from_config(cls, config: Config) -> DefaultComparator:
        """The comparator a config asks for."""
        return cls(config.owner, config.rules.ignore_tags)

    def compare(
        self,
        desired: Sequence[DesiredResource],
        observed: Sequence[Resource],
        *,
        unknown_scopes: Collection[Scope] = (),
        context: Context = _NOTHING_KNOWN,
    ) -> list[Diff]:
        """See :meth:`Comparator.compare`."""
        unknown = set(unknown_scopes)
        wanted = {d.id: d for d in desired}
        # A desired resource whose home scope is unknown may exist there: any
        # copy seen elsewhere can be neither judged drifted nor unwanted.
        blind = {d.id for d in desired if d.scope in unknown} if unknown else set()
        seen = [r for r in observed if r.scope not in unknown] if unknown else list(observed)
        keepers: dict[str, Resource] = {}
        copies: defaultdict[str, list[Resource]] = defaultdict(list)
        foreign: list[Resource] = []
        nameless: list[Resource] = []  # ours by owner, but with no ovi:id
        diffs: list[Diff] = []
        for r in seen:
            tagged = r.tags.get(ID_TAG)
            if not r.managed_by(self.owner):
                foreign.append(r)
            elif tagged is None:
                nameless.append(r)
            elif tagged in blind:
                continue
            elif r.id == tagged:
                keepers[tagged] = r
            else:
                copies[tagged].append(r)
        for key, dups in copies.items():
            # A copy is unwanted only next to its keeper: when the keeper was
            # not seen this cycle (its scope failed), nothing destructive.
            if key in keepers:
                diffs.extend(_unwanted(d, f"duplicate of {key}") for d in dups)
        for key, primary in keepers.items():
            want = wanted.get(key)
            if want is None:
                reason = f"{key} is managed by {self.owner!r} but no longer desired"
                diffs.append(_unwanted(primary, reason))
            elif key in context.restart_owed and primary.status not in RUNNING_STATUSES:
                diffs.append(_restart(want, primary))
            elif changes := self._changes(want, primary):
                diffs.append(self._drifted(want, primary, changes))
        paired = self._absent(desired, keepers, copies, [*foreign, *nameless], unknown,
                              context, diffs)
        diffs.extend(self._unmanaged(r) for r in foreign if r.id not in paired)
        # Ours, but matchable to nothing (never guessed from the cloud id)
        # unless a conflict above holds it in a desired id's place.
        diffs.extend(
            _unwanted(r, f"{r.cloud_id} is managed by {self.owner!r} but has no {ID_TAG} tag")
            for r in nameless if r.id not in paired)
        diffs.sort(key=lambda d: (d.scope.key, d.resource_id, d.type, d.cloud_id or ""))
        return diffs

    def _absent(
        self,
        desired: Sequence[DesiredResource],
        keepers: Mapping[str, Resource],
        copies: Mapping[str, list[Resource]],
        holders: Sequence[Resource],
        unknown: Collection[Scope],
        context: Context,
        diffs: list[Diff],
    ) -> set[str]:
        """Missing and conflicting desired resources; returns the identities of
        the resources without a desired id of ours (``holders``) that a
        conflict reports. A holder is in a desired id's place when it has the
        name a create would take, an operator granted it, or the log shows Ovi
        made it that id (its tags were removed or changed since): reported or
        adopted, never made a second time."""
        by_id = {r.id: r for r in holders}
        by_name = {(r.scope, r.cloud_id): r for r in holders}
        unreadable = set(context.unreadable)
        paired: set[str] = set()
        for d in desired:
            if d.id in keepers or d.id in copies or d.scope in unknown:
                continue
            last = context.last_seen.get(d.id)
            if last is not None and (last.scope in unknown or last in unreadable):
                continue  # it may be where the log last saw it: not known to be missing
            name = context.natural_ids.get(d.id)
            if name is not None and Location(d.scope, name) in unreadable:
                continue  # the resource of its name cannot be read: ours or not, unknown
            granted = by_id.get(context.grants.get(d.id, ""))
            holder = granted or (by_name.get((d.scope, name)) if name is not None else None)
            if holder is None:
                holder = next((by_name[place.scope, place.cloud_id]
                               for place in context.made.get(d.id, ())
                               if (place.scope, place.cloud_id) in by_name), None)
            if holder is not None and holder.id not in paired:
                paired.add(holder.id)
                diffs.append(self._conflict(d, holder, granted is not None))
                continue
            diffs.append(Diff(
                type=DiffType.MISSING, resource_id=d.id, resource_type=d.type, scope=d.scope,
                reason=f"{d.id} is desired but was not observed", desired=d,
            ))
        return paired

    def _conflict(self, want: DesiredResource, holder: Resource, granted: bool) -> Diff:
        if holder.managed_by(self.owner):
            whose = f"is tagged as {self.owner!r}'s but has no {ID_TAG} tag"
        elif holder.owner:
            whose = f"belongs to Ovi owner {holder.owner!r}"
        else:
            whose = "carries no Ovi owner"
        if granted:
            reason = f"{want.id} is desired, and adopting {holder.id} as it was granted"
        else:
            reason = (f"{want.id} is desired, but {holder.type} {holder.cloud_id} already exists"
                      f" in {holder.region} and {whose}")
        return Diff(
            type=DiffType.CONFLICT, resource_id=want.id, resource_type=want.type,
            scope=want.scope, reason=reason, cloud_id=holder.cloud_id, desired=want,
            observed=holder,
        )

    def _changes(self, want: DesiredResource, have: Resource) -> list[FieldChange]:
        tags = have.tags
        if (  # the common case, an estate in sync, without building anything
            want.type == have.type and want.provider == have.provider
            and want.region == have.region and want.size in (None, have.size)
            and all(tags.get(k) == v for k, v in want.tags.items())
        ):
            return []
        changes = [
            FieldChange(name, str(w), str(h))
            for name, w, h in (
                ("type", want.type, have.type),
                ("provider", want.provider, have.provider),
                ("region", want.region, have.region),
            )
            if w != h
        ]
        # No size in the config means "whatever the provider picked".
        if want.size is not None and want.size != have.size:
            changes.append(FieldChange("size", want.size, have.size))
        changes.extend(
            FieldChange(f"tags.{key}", value, have.tags.get(key))
            for key, value in sorted(want.tags.items())
            if have.tags.get(key) != value and not self._ignored(key)
        )
        return changes

    def _ignored(self, key: str) -> bool:
        return any(fnmatchcase(key, glob) for glob in self.ignore_tags)

    def _drifted(
        self, want: DesiredResource, have: Resource, changes: list[FieldChange]
    ) -> Diff:
        shown = ", ".join(
            f"{c.field} {c.observed or '(absent)'} → {c.desired or '(absent)'}" for c in changes
        )
        return Diff(
            type=DiffType.DRIFTED, resource_id=want.id, resource_type=have.type,
            scope=have.scope, reason=f"{want.id} differs from the config: {shown}",
            cloud_id=have.cloud_id, desired=want, observed=have, changes=tuple(changes),
        )

    def _unmanaged(self, r: Resource) -> Diff:
        if r.owner is None:
            reason = f"{r.cloud_id} is not managed by Ovi"
        else:
            reason = f"{r.cloud_id} belongs to Ovi owner {r.owner!r}, not {self.owner!r}"
        return Diff(
            type=DiffType.UNMANAGED, resource_id=r.id, resource_type=r.type,
            scope=r.scope, reason=reason, cloud_id=r.cloud_id, observed=r,
        )


def _restart(want: DesiredResource, have: Resource) -> Diff:
    # Only the start: other changes (the size the update was making, say)
    # are decided afresh once it runs, under their own rules.
    change = FieldChange("status", "running", have.status or None)
    return Diff(
        type=DiffType.DRIFTED, resource_id=want.id, resource_type=have.type, scope=have.scope,
        reason=f"{want.id} is {have.status or 'not running'}: an update of Ovi's stopped it and"
               " did not finish, so Ovi starts it again",
        cloud_id=have.cloud_id, desired=want, observed=have, changes=(change,),
    )


def _unwanted(r: Resource, reason: str) -> Diff:
    return Diff(
        type=DiffType.UNWANTED, resource_id=r.id, resource_type=r.type, scope=r.scope,
        reason=reason, cloud_id=r.cloud_id, observed=r,
    )
