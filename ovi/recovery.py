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

from eventstore import EventStore, StreamBatch, WrongExpectedVersion
from ovi.coordinator import Coordinator
from ovi.events import ActionExecuted, ActionFailed, resource_stream
from ovi.model import DECISION_TAG, Action, Outcome
from ovi.providers.base import Provider, ProviderError
from projections import ProjectionRunner
from projections.findings import DecisionOutcome, decision_outcomes

__all__ = ["recover_in_doubt"]


async def recover_in_doubt(
    store: EventStore,
    views: ProjectionRunner,
    provider: Provider,
    coordinator: Coordinator,
    *,
    cycle_id: str,
) -> list[ActionExecuted | ActionFailed]:
    """Resolve every action in doubt that nobody alive is still working on;
    return the outcomes recorded. An action whose scope can't be observed now
    stays in doubt (and is not retried) until a later start-up."""
    await views.catch_up()
    in_doubt = await views.query(lambda db: decision_outcomes(db, outcome=Outcome.EXECUTING))
    if not in_doubt:
        return []
    # Take the claims first (an expired one is taken over): a holder that is
    # in fact still alive then finds its claim gone and writes nothing more.
    claimed = await coordinator.claim(o.decision.resource_id for o in in_doubt.values())
    resolved: list[ActionExecuted | ActionFailed] = []
    for outcome in in_doubt.values():
        resource_id = outcome.decision.resource_id
        claim = claimed.held.get(resource_id)
        if claim is None:
            continue  # a live instance is on it
        try:
            event = await _resolve(provider, outcome, cycle_id)
        except ProviderError:
            await coordinator.release(claim)
            continue
        try:
            await store.append_streams([StreamBatch(resource_stream(resource_id), (event,)),
                                        coordinator.release_batch(claim)])
        except WrongExpectedVersion:
            continue  # lost the claim meanwhile: whoever holds it resolves it
        resolved.append(event)
    return resolved


async def _resolve(provider: Provider, outcome: DecisionOutcome,
                   cycle_id: str) -> ActionExecuted | ActionFailed:
    decision = outcome.decision
    token = outcome.token or 0
    found = await provider.observe(decision.diff.scope)
    if decision.action == Action.CREATE:
        # Only what this decision made counts: another owner's resource may
        # carry the same ovi:id.
        match = next((r for r in found if r.tags.get(DECISION_TAG) == decision.decision_id),
                     None)
        done = match is not None
    else:
        match = next((r for r in found if r.cloud_id == decision.cloud_id), None)
        done = decision.action == Action.DELETE and match is None
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

