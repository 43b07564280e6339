"""Resolve actions left in doubt by a crash, against what the cloud shows.

An ``ActionExecuting`` without an outcome means the process died between the
write-ahead record and the outcome. At start-up each such action (unless its
claim is still held by a live instance) is checked against reality: a create
whose resource now exists (found by its ``ovi:decision`` tag; or, for a
resource named after its desired id like an S3 bucket, one of that name with
no tags at all made after the write-ahead record: the crash fell between the
create and its tagging), an adoption whose resource carries the decision's tag
and a delete whose resource is gone get ``ActionExecuted`` (recovered);
everything else gets ``ActionFailed`` (interrupted) and the next cycle decides
afresh. A create is therefore never made twice. An action whose resource is
listed but unreadable stays in doubt.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from eventstore import EventStore, StreamBatch, WrongExpectedVersion
from ovi.coordinator import Coordinator
from ovi.events import ActionExecuted, ActionFailed, resource_stream
from ovi.model import DECISION_TAG, Action, Outcome, Resource, Unreadable
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
            event = await _resolve(provider, outcome, cycle_id,
                                   await _recorded_at(store, outcome.rev))
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


# S3 creation dates have whole seconds, and AWS's clock is not ours.
_CLOCK_SLACK = timedelta(seconds=1)


async def _recorded_at(store: EventStore, position: int | None) -> datetime | None:
    """When the write-ahead record at ``position`` was written."""
    if position is None:
        return None
    async for recorded in store.read(after=position - 1, until=position, limit=1):
        return recorded.recorded_at
    return None


async def _resolve(provider: Provider, outcome: DecisionOutcome, cycle_id: str,
                   began: datetime | None) -> ActionExecuted | ActionFailed:
    decision = outcome.decision
    token = outcome.token or 0
    listed = await provider.observe(decision.diff.scope)
    found = [r for r in listed if isinstance(r, Resource)]
    desired = decision.diff.desired
    name = provider.natural_id(desired) if desired is not None else None
    targets = {decision.cloud_id, name} - {None}
    if any(isinstance(u, Unreadable) and u.cloud_id in targets for u in listed):
        raise ProviderError(f"{decision.resource_id}: cannot be read now: stays in doubt")
    match: Resource | None
    if decision.action in (Action.CREATE, Action.ADOPT):
        # Only what this decision made counts: another owner's resource may
        # carry the same ovi:id.
        match = next((r for r in found if r.tags.get(DECISION_TAG) == decision.decision_id),
                     None)
        if match is None and decision.action is Action.CREATE and name is not None:
            match = next((r for r in found if r.cloud_id == name and _made_by_us(r, began)),
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


def _made_by_us(resource: Resource, began: datetime | None) -> bool:
    """Did the interrupted create make ``resource`` (of the name it was to
    take) before it could tag it? Only if it has no tags of its own and was
    made after the write-ahead record (no earlier than its clock allows): the
    create decision was taken on an observation that did not show it, so it
    is not one that was there before."""
    if began is None or resource.created_at is None:
        return False
    own = [k for k in resource.tags if not k.startswith("aws:")]
    return not own and resource.created_at >= began - _CLOCK_SLACK
