"""Resolve actions left in doubt by a crash, against what the cloud shows.

An ``ActionExecuting`` without an outcome means the process died between the
write-ahead record and the outcome. At start-up each such action (unless its
claim is still held by a live instance) is checked against reality: a create
whose resource now exists (found by its ``ovi:decision`` or ``ovi:id`` tag)
and a delete whose resource is gone get ``ActionExecuted`` (recovered);
everything else gets ``ActionFailed`` (interrupted) and the next cycle decides
afresh. A create is therefore never made twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from eventstore import EventStore, StreamBatch, WrongExpectedVersion
from ovi.coordinator import Claim, Coordinator, holder_is_gone
from ovi.events import ActionExecuted, ActionFailed, resource_stream
from ovi.model import DECISION_TAG, ID_TAG, Action, Resource
from ovi.providers.base import Provider, ProviderError
from projections import ProjectionRunner
from projections.claims import claim_states
from projections.findings import DecisionOutcome, decision_outcomes

__all__ = ["recover_in_doubt"]


async def recover_in_doubt(
    store: EventStore,
    views: ProjectionRunner,
    provider: Provider,
    coordinator: Coordinator,
    *,
    cycle_id: str,
    clock: Callable[[], datetime],
) -> list[ActionExecuted | ActionFailed]:
    """Resolve every action in doubt that nobody alive is still working on;
    return the outcomes recorded. An action whose scope can't be observed now
    stays in doubt (and is not retried) until a later start-up."""
    await views.catch_up()
    in_doubt = await views.query(lambda db: decision_outcomes(db, outcome="executing"))
    if not in_doubt:
        return []
    claims = await views.query(lambda db: claim_states(
        db, [o.decision.resource_id for o in in_doubt.values()]))
    now = clock()
    resolved: list[ActionExecuted | ActionFailed] = []
    for outcome in in_doubt.values():
        resource_id = outcome.decision.resource_id
        claim = claims.get(resource_id)
        if (claim is not None and claim.held_at(now)
                and claim.instance_id != coordinator.instance_id
                and not holder_is_gone(claim.instance_id)):
            continue  # a live instance is on it
        try:
            event = await _resolve(provider, outcome, cycle_id)
        except ProviderError:
            continue
        batches = [StreamBatch(resource_stream(resource_id), (event,))]
        if claim is not None and not claim.released and claim.token == outcome.token:
            # Release the dead holder's claim with the outcome, if still current.
            batches.append(coordinator.release_batch(Claim(resource_id, claim.token, now)))
        try:
            await store.append_streams(batches)
        except WrongExpectedVersion:
            await store.append_streams(batches[:1])
        resolved.append(event)
    return resolved


async def _resolve(provider: Provider, outcome: DecisionOutcome,
                   cycle_id: str) -> ActionExecuted | ActionFailed:
    decision = outcome.decision
    token = outcome.token or 0
    found = await provider.observe(decision.diff.scope)
    match = _find(found, decision.decision_id, decision.resource_id, decision.cloud_id)
    done = ((decision.action == Action.CREATE and match is not None)
            or (decision.action == Action.DELETE and match is None))
    if done:
        return ActionExecuted(
            cycle_id=cycle_id, decision_id=decision.decision_id, action=decision.action,
            resource_id=decision.resource_id,
            cloud_id=match.cloud_id if match is not None else decision.cloud_id,
            token=token, recovered=True)
    return ActionFailed(
        cycle_id=cycle_id, decision_id=decision.decision_id, action=decision.action,
        resource_id=decision.resource_id, cloud_id=decision.cloud_id, token=token,
        error="interrupted: the process stopped before recording the outcome, and the"
              " cloud does not show it done", retryable=True, interrupted=True)


def _find(resources: Sequence[Resource], decision_id: str, resource_id: str,
          cloud_id: str | None) -> Resource | None:
    for resource in resources:
        if (resource.tags.get(DECISION_TAG) == decision_id
                or resource.tags.get(ID_TAG) == resource_id
                or (cloud_id is not None and resource.cloud_id == cloud_id)):
            return resource
    return None
