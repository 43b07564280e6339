"""Desired against observed: the four kinds of finding.

A pure function of data. Matching is by the ``ovi:id`` tag of resources this
owner manages, never by cloud id (an S3 bucket named ``web-0`` is not the
desired ``web-0`` unless it carries the tag). Where observation failed this
cycle the estate is unknown, so nothing there is reported at all.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Protocol

from ovi.model import (
    ID_TAG,
    RUNNING_STATUSES,
    DesiredResource,
    Diff,
    DiffType,
    FieldChange,
    Resource,
    Scope,
)

if TYPE_CHECKING:
    from ovi.config import Config

__all__ = ["Comparator", "DefaultComparator"]


class Comparator(Protocol):
    """Turns desired and observed resources into diffs.

    Implementations must be pure and deterministic: the same input gives the
    same diffs in the same order (by scope key, then resource id).
    """

    def compare(
        self,
        desired: Sequence[DesiredResource],
        observed: Sequence[Resource],
        *,
        unknown_scopes: Collection[Scope] = (),
        restart_owed: Collection[str] = (),
    ) -> list[Diff]:
        """Every finding, sorted by scope key then resource id. Resources in
        ``unknown_scopes`` (observation failed) get no diff at all. A desired
        resource in ``restart_owed`` (one an interrupted update of Ovi's
        stopped, from the log) that is not running drifts in ``status`` only:
        it is started again before anything else is changed."""
        ...


class DefaultComparator:
    """The rules of docs/architecture.md ("Identity, diffs and decisions"):
    missing, unwanted, drifted, unmanaged.

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
        restart_owed: Collection[str] = (),
    ) -> list[Diff]:
        """See :meth:`Comparator.compare`."""
        unknown = set(unknown_scopes)
        wanted = {d.id: d for d in desired}
        # A desired resource whose home scope is unknown may exist there: any
        # copy seen elsewhere can be neither judged drifted nor unwanted.
        blind = {d.id for d in desired if d.scope in unknown} if unknown else set()
        ours: defaultdict[str, list[Resource]] = defaultdict(list)
        diffs: list[Diff] = []
        for r in observed:
            if unknown and r.scope in unknown:
                continue
            if r.owner != self.owner:
                diffs.append(self._unmanaged(r))
                continue
            key = r.tags.get(ID_TAG)
            if key is None:  # ours, but matchable to nothing: never guess from the cloud id
                reason = f"{r.cloud_id} is managed by {self.owner!r} but has no {ID_TAG} tag"
                diffs.append(_unwanted(r, r.cloud_id, reason))
            elif key not in blind:
                ours[key].append(r)
        for key, copies in ours.items():
            primary = copies[0]
            if len(copies) > 1:
                primary, *duplicates = sorted(copies, key=lambda r: r.cloud_id)
                diffs.extend(
                    _unwanted(dup, dup.cloud_id, f"duplicate of {key}") for dup in duplicates
                )
            want = wanted.get(key)
            if want is None:
                reason = f"{key} is managed by {self.owner!r} but no longer desired"
                diffs.append(_unwanted(primary, key, reason))
            elif key in restart_owed and primary.status not in RUNNING_STATUSES:
                diffs.append(_restart(want, primary))
            elif changes := self._changes(want, primary):
                diffs.append(self._drifted(want, primary, changes))
        diffs.extend(
            Diff(
                type=DiffType.MISSING, resource_id=d.id, resource_type=d.type, scope=d.scope,
                reason=f"{d.id} is desired but was not observed", desired=d,
            )
            for d in desired
            if d.id not in ours and d.id not in blind
        )
        diffs.sort(key=lambda d: (d.scope.key, d.resource_id, d.type, d.cloud_id or ""))
        return diffs

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
        # Keyed by cloud id: another owner's ovi:id may equal one of ours.
        return Diff(
            type=DiffType.UNMANAGED, resource_id=r.cloud_id, resource_type=r.type,
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


def _unwanted(r: Resource, resource_id: str, reason: str) -> Diff:
    return Diff(
        type=DiffType.UNWANTED, resource_id=resource_id, resource_type=r.type, scope=r.scope,
        reason=reason, cloud_id=r.cloud_id, observed=r,
    )
