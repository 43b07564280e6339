"""Resolve actions left in doubt by a crash, against what the cloud shows.

An ``ActionExecuting`` without an outcome means the process died between the
write-ahead record and the outcome. At start-up each such action (unless its
claim is still held by a live instance) is checked against reality:

- a create whose resource now exists (found by its ``ovi:decision`` tag; or,
  for a resource named after its desired id like an S3 bucket, one of that
  name with no tags at all made after the write-ahead record: the crash fell
  between the create and its tagging), an adoption whose resource carries the
  decision's tag and a delete whose resource is gone get ``ActionExecuted``
  (recovered);
- an update whose write-ahead says the resource was running (a resize stops
  it) first has the resource started again if it is not running: a crash
  between stop and start must not leave it stopped; unless it, or the whole
  estate, has been paused since (then the start stays owed until the pause
  is lifted: a paused resource is not touched, not even to undo). An update whose every
  change is now in effect gets ``ActionExecuted`` (recovered);
- everything else gets ``ActionFailed`` (interrupted) and the next cycle
  decides afresh. A create is therefore never made twice, and if starting a
  stopped resource fails here, the start is still owed (the restarts
  projection) and a later cycle makes it. An action whose resource is listed
  but unreadable stays in doubt.

An action is read again once claimed: another instance may have resolved
it between our first read and our claim, and it is never resolved twice.

The claims are kept (renewed) while recovery works: starting an instance and
waiting for it may take longer than a claim lives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import aclosing
from datetime import datetime, timedelta

from eventstore import EventStore, RecordedEvent, StreamBatch, WrongExpectedVersion
from ovi.coordinator import Coordinator
from ovi.events import (
    PAUSE_ALL,
    ActionExecuted,
    ActionExecuting,
    ActionFailed,
    resource_stream,
)
from ovi.model import (
    DECISION_TAG,
    RUNNING_STATUSES,
    Action,
    Decision,
    DesiredResource,
    FieldChange,
    Outcome,
    Resource,
    Unreadable,
)
from ovi.providers.base import Provider, ProviderError
from projections import ProjectionRunner
from projections.findings import DecisionOutcome, decision_outcomes
from projections.operations import Pause, pause_state

__all__ = ["recover_in_doubt"]

_TAGS = "tags."


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
    # Another instance may have resolved some between our read and our claim
    # (its outcome came with the release we claimed after): read them again,
    # now that nobody else can move them, and resolve only what is still open.
    await views.catch_up()
    again = await views.query(lambda db: decision_outcomes(db, decision_ids=in_doubt))
    pauses = (await views.query(pause_state)).active
    open_ = {d: o for d, o in in_doubt.items() if _still_open(o, again.get(d))}
    for resource_id in {o.decision.resource_id for o in in_doubt.values()} - {
            o.decision.resource_id for o in open_.values()}:
        claim = claimed.held.get(resource_id)
        if claim is not None:
            await coordinator.release(claim)
    resolved: list[ActionExecuted | ActionFailed] = []
    async with coordinator.keeping(claimed.held.values()):
        for outcome in open_.values():
            resource_id = outcome.decision.resource_id
            claim = claimed.held.get(resource_id)
            if claim is None:
                continue  # a live instance is on it
            written = await _write_ahead(views, outcome)
            try:
                event = await _resolve(provider, outcome, written, cycle_id,
                                       paused=_paused(outcome.decision, pauses))
            except ProviderError:
                await coordinator.release(claim)
                continue
            try:
                await coordinator.append_releasing(
                    claim, [StreamBatch(resource_stream(resource_id), (event,))])
            except WrongExpectedVersion:
                continue  # lost the claim meanwhile: whoever holds it resolves it
            resolved.append(event)
    return resolved


# S3 creation dates have whole seconds, and AWS's clock is not ours.
_CLOCK_SLACK = timedelta(seconds=1)


def _still_open(before: DecisionOutcome, now: DecisionOutcome | None) -> bool:
    """Whether the action in doubt read before claiming still is."""
    return now is not None and now.outcome is Outcome.EXECUTING and now.rev == before.rev


async def _write_ahead(views: ProjectionRunner,
                       outcome: DecisionOutcome) -> RecordedEvent | None:
    """The ``ActionExecuting`` left in doubt (the decision's last outcome), as recorded."""
    if outcome.rev is None:
        return None
    # Checked as the projections' rows are: recovery acts on what it says.
    async with aclosing(views.read_checked(after=outcome.rev - 1, until=outcome.rev)) as rows:
        async for recorded in rows:
            if isinstance(recorded.event, ActionExecuting):
                return recorded
    return None


def _paused(decision: Decision, pauses: Mapping[str, Pause]) -> Pause | None:
    """The pause in force on what ``decision`` acts on, or on the whole estate."""
    return next((pauses[t] for t in decision.subjects if t in pauses), pauses.get(PAUSE_ALL))


async def _resolve(provider: Provider, outcome: DecisionOutcome,
                   written: RecordedEvent | None, cycle_id: str, *, paused: Pause | None = None,
                   ) -> ActionExecuted | ActionFailed:
    decision = outcome.decision
    token = outcome.token or 0
    executing: ActionExecuting | None = written.event if written is not None else None
    began = written.recorded_at if written is not None else None
    attempt = executing.create_attempt if executing is not None else 1
    listed = await provider.observe(decision.diff.scope)
    found = [r for r in listed if isinstance(r, Resource)]
    desired = decision.diff.desired
    name = provider.natural_id(desired) if desired is not None else None
    targets = {decision.cloud_id, name} - {None}
    if any(isinstance(u, Unreadable) and u.cloud_id in targets for u in listed):
        raise ProviderError(f"{decision.resource_id}: cannot be read now: stays in doubt")
    why = ("interrupted: the process stopped before recording the outcome, and the cloud does"
           " not show it done")
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
        if decision.action == Action.UPDATE and match is not None:
            started = True
            left_stopped = (executing is not None and executing.was_running
                            and match.status not in RUNNING_STATUSES)
            if left_stopped and paused is not None:
                # Hands off, even to undo our own stop: whoever paused it may
                # be working on it stopped. The start stays owed, and a cycle
                # makes it once the pause is lifted.
                started = False
                why = ("interrupted, and the resource it stopped was not started again:"
                       f" {paused.describe()} (the start is still owed)")
            elif left_stopped:
                try:
                    match = await _start(provider, decision.diff.desired, match)
                except ProviderError as exc:
                    # Not done, whatever else is in effect: an ActionExecuted
                    # would settle the start still owed.
                    started = False
                    why = (f"interrupted, and the resource it stopped could not be started"
                           f" again: {exc} (the start is still owed)")
            done = started and _in_effect(decision.diff.changes, match)
    if done:
        return ActionExecuted(
            cycle_id=cycle_id, decision_id=decision.decision_id, action=decision.action,
            resource_id=decision.resource_id,
            cloud_id=match.cloud_id if match is not None else decision.cloud_id,
            token=token, recovered=True, create_attempt=attempt)
    return ActionFailed(
        cycle_id=cycle_id, decision_id=decision.decision_id, action=decision.action,
        resource_id=decision.resource_id, cloud_id=decision.cloud_id, token=token,
        error=why, retryable=True, interrupted=True, create_attempt=attempt)


async def _start(provider: Provider, desired: DesiredResource | None,
                 current: Resource) -> Resource:
    """Start ``current`` again (restorative: no window or approval applies)."""
    if desired is None:
        raise ProviderError(f"{current.id}: the decision lacks the desired resource")
    return await provider.update(desired, current,
                                 [FieldChange("status", "running", current.status)])


def _in_effect(changes: Sequence[FieldChange], resource: Resource) -> bool:
    """Whether every change of an update shows in ``resource``."""
    for change in changes:
        if change.field == "size":
            ok = resource.size == change.desired
        elif change.field == "status":
            ok = change.desired != "running" or resource.status in RUNNING_STATUSES
        elif change.field.startswith(_TAGS):
            ok = resource.tags.get(change.field.removeprefix(_TAGS)) == change.desired
        else:
            ok = False
        if not ok:
            return False
    return True


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
