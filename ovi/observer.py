"""Observe every scope, give every resource its identity, record what changed.

Three steps, in this order, because which copy of a resource keeps its
desired id is decided across all scopes of the cycle (the copy the log
recorded may be in another region): observe every scope concurrently, then
assign identities (:func:`ovi.model.identify`), then record scope by scope.

Only changes are logged: ``ResourceObserved`` for a resource that is new or
whose fingerprint moved, ``ResourceDisappeared`` for one that is gone, then one
``ObservationCompleted`` with the count and digest of the whole observed set
(and the resources that could not be read). A scope's events go in one atomic
append, so a scope is either fully recorded or not at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anyio
import msgspec

from eventstore import Event, EventStore, StreamBatch
from ovi.events import (
    ObservationCompleted,
    ObservationFailed,
    ResourceDisappeared,
    ResourceObserved,
    cycle_stream,
    resource_stream,
)
from ovi.model import (
    Location,
    Resource,
    ResourceType,
    Scope,
    Unreadable,
    identify,
    observed_set_digest,
    resource_fingerprint,
)
from ovi.providers.base import Provider, ProviderError

__all__ = ["KnownResource", "Observation", "ScopeObservation", "observe", "recorded_locations"]


class KnownResource(msgspec.Struct, frozen=True):
    """What the log already says about an existing resource."""

    id: str
    cloud_id: str
    fingerprint: str
    rev: int  # position of its latest ResourceObserved


class ScopeObservation(msgspec.Struct):
    """A scope observed in full this cycle."""

    scope: Scope
    resources: list[Resource]
    completed_position: int
    observed_positions: dict[str, int]  # resource id → its latest ResourceObserved
    observed_after: int  # the log head when the provider call started
    unreadable: list[Unreadable] = []


class Observation(msgspec.Struct):
    """Everything observed in one cycle."""

    scopes: dict[Scope, ScopeObservation]
    failed: dict[Scope, str]

    @property
    def resources(self) -> list[Resource]:
        return [r for s in self.scopes.values() for r in s.resources]

    @property
    def unreadable(self) -> list[Location]:
        """Every resource listed this cycle that could not be read."""
        return [Location(s.scope, u.cloud_id) for s in self.scopes.values()
                for u in s.unreadable]


def recorded_locations(known: Mapping[str, Mapping[str, KnownResource]]) -> dict[str, Location]:
    """Where the log last saw each existing resource, by identity."""
    found: dict[str, Location] = {}
    for key, resources in known.items():
        provider, region, type_ = key.split("/", 2)
        scope = Scope(provider, region, ResourceType(type_))
        for resource_id, resource in resources.items():
            found[resource_id] = Location(scope, resource.cloud_id)
    return found


class _Listed(msgspec.Struct):
    observed_after: int
    resources: list[Resource]
    unreadable: list[Unreadable]


async def observe(
    store: EventStore,
    provider: Provider,
    scopes: Sequence[Scope],
    known: Mapping[str, Mapping[str, KnownResource]],
    *,
    cycle_id: str,
    max_concurrency: int,
    owner: str,
) -> Observation:
    """Observe every scope concurrently (at most ``max_concurrency`` provider
    calls at once), give every resource its identity for ``owner``, and record
    the changes. A scope whose provider call fails gets ``ObservationFailed``
    and is left out of :attr:`Observation.scopes`."""
    result = Observation(scopes={}, failed={})
    listed: dict[Scope, _Listed] = {}
    limiter = anyio.CapacityLimiter(max_concurrency)

    async def one(scope: Scope) -> None:
        try:
            async with limiter:
                observed_after = await store.last_position()
                found = await provider.observe(scope)
        except ProviderError as exc:
            result.failed[scope] = str(exc)
            await store.append(cycle_stream(cycle_id),
                               [ObservationFailed(cycle_id=cycle_id, scope=scope, error=str(exc))])
            return
        listed[scope] = _Listed(
            observed_after,
            [r for r in found if isinstance(r, Resource)],
            sorted((u for u in found if isinstance(u, Unreadable)), key=lambda u: u.cloud_id))

    async with anyio.create_task_group() as group:
        for scope in scopes:
            group.start_soon(one, scope)

    unreadable = {Location(s, u.cloud_id) for s, seen in listed.items() for u in seen.unreadable}
    identified = identify(
        (r for seen in listed.values() for r in seen.resources), owner=owner,
        recorded=recorded_locations(known), complete=set(listed), unreadable=unreadable,
    )
    by_scope: dict[Scope, list[Resource]] = {scope: [] for scope in listed}
    counted = 0
    for scope, seen in listed.items():  # identify keeps the order it was given
        size = len(seen.resources)
        by_scope[scope] = identified[counted:counted + size]
        counted += size
    assigned = {r.id for r in identified}
    for scope in sorted(listed):
        resources = sorted(by_scope[scope], key=lambda r: r.id)
        result.scopes[scope] = await _record(
            store, scope, resources, listed[scope], known.get(scope.key, {}), cycle_id,
            assigned, unreadable)
    return result


async def _record(
    store: EventStore,
    scope: Scope,
    resources: list[Resource],
    listed: _Listed,
    known: Mapping[str, KnownResource],
    cycle_id: str,
    assigned: set[str],
    unreadable: set[Location],
) -> ScopeObservation:
    fingerprints = {r.id: resource_fingerprint(r) for r in resources}
    batches: list[StreamBatch] = []
    changed: list[str] = []
    for resource in resources:
        fingerprint = fingerprints[resource.id]
        previous = known.get(resource.id)
        if previous is None or previous.fingerprint != fingerprint:
            batches.append(StreamBatch(resource_stream(resource.id), (ResourceObserved(
                cycle_id=cycle_id, scope=scope, resource=resource, fingerprint=fingerprint),)))
            changed.append(resource.id)
    renamed = {r.cloud_id: r.id for r in resources}
    for gone in sorted(set(known) - set(fingerprints)):
        cloud_id = known[gone].cloud_id
        if gone in assigned or Location(scope, cloud_id) in unreadable:
            # Seen in another scope this cycle (that scope records it), or
            # there but unreadable: not gone.
            continue
        event: Event = ResourceDisappeared(cycle_id=cycle_id, scope=scope, resource_id=gone,
                                           cloud_id=cloud_id, now_known_as=renamed.get(cloud_id))
        batches.append(StreamBatch(resource_stream(gone), (event,)))
    completed = ObservationCompleted(cycle_id=cycle_id, scope=scope, count=len(resources),
                                     digest=observed_set_digest(fingerprints),
                                     observed_after=listed.observed_after,
                                     unreadable=tuple(listed.unreadable))
    batches.append(StreamBatch(cycle_stream(cycle_id), (completed,)))
    appended = await store.append_streams(batches)
    # Positions follow the order of the batches (one event each).
    positions = {r.id: known[r.id].rev for r in resources if r.id in known}
    for offset, resource_id in enumerate(changed):
        positions[resource_id] = appended.first_position + offset
    return ScopeObservation(scope, resources, appended.last_position, positions,
                            listed.observed_after, listed.unreadable)
