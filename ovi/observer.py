"""Observe scopes concurrently and record what changed, scope by scope.

Only changes are logged: ``ResourceObserved`` for a resource that is new or
whose fingerprint moved, ``ResourceDisappeared`` for one that is gone, then one
``ObservationCompleted`` with the count and digest of the whole observed set.
A scope's events go in one atomic append, so a scope is either fully recorded
or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

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
from ovi.model import Resource, Scope, observed_set_digest, resource_fingerprint
from ovi.providers.base import Provider, ProviderError

__all__ = ["KnownResource", "Observation", "ScopeObservation", "observe"]


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


class Observation(msgspec.Struct):
    """Everything observed in one cycle."""

    scopes: dict[Scope, ScopeObservation]
    failed: dict[Scope, str]

    @property
    def resources(self) -> list[Resource]:
        return [r for s in self.scopes.values() for r in s.resources]


def disambiguate(resources: Iterable[Resource]) -> list[Resource]:
    """Give every resource a unique id: when several carry the same ``ovi:id``
    (a create that ran twice), the one with the smallest cloud id keeps it and
    the others are known by their cloud id."""
    ordered = sorted(resources, key=lambda r: r.cloud_id)
    seen: set[str] = set()
    out: list[Resource] = []
    for resource in ordered:
        if resource.id in seen:
            resource = msgspec.structs.replace(resource, id=resource.cloud_id)
        seen.add(resource.id)
        out.append(resource)
    return out


async def observe(
    store: EventStore,
    provider: Provider,
    scopes: Sequence[Scope],
    known: Mapping[str, Mapping[str, KnownResource]],
    *,
    cycle_id: str,
    max_concurrency: int,
) -> Observation:
    """Observe every scope concurrently (at most ``max_concurrency`` provider
    calls at once) and record the changes. A scope whose provider call fails
    gets ``ObservationFailed`` and is left out of :attr:`Observation.scopes`."""
    result = Observation(scopes={}, failed={})
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
        result.scopes[scope] = await _record(
            store, scope, disambiguate(found), known.get(scope.key, {}), cycle_id, observed_after
        )

    async with anyio.create_task_group() as group:
        for scope in scopes:
            group.start_soon(one, scope)
    return result


async def _record(
    store: EventStore,
    scope: Scope,
    resources: list[Resource],
    known: Mapping[str, KnownResource],
    cycle_id: str,
    observed_after: int,
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
    for gone in sorted(set(known) - set(fingerprints)):
        event: Event = ResourceDisappeared(cycle_id=cycle_id, scope=scope, resource_id=gone,
                                           cloud_id=known[gone].cloud_id)
        batches.append(StreamBatch(resource_stream(gone), (event,)))
    completed = ObservationCompleted(cycle_id=cycle_id, scope=scope, count=len(resources),
                                     digest=observed_set_digest(fingerprints),
                                     observed_after=observed_after)
    batches.append(StreamBatch(cycle_stream(cycle_id), (completed,)))
    appended = await store.append_streams(batches)
    # Positions follow the order of the batches (one event each).
    positions = {r.id: known[r.id].rev for r in resources if r.id in known}
    for offset, resource_id in enumerate(changed):
        positions[resource_id] = appended.first_position + offset
    return ScopeObservation(scope, resources, appended.last_position, positions, observed_after)

