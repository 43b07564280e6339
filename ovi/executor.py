"""Turn decisions into provider calls: claimed, write-ahead, bounded, fenced.

Per action: claim → ``ActionExecuting`` (durable; if it can't be written the
provider is not called) → a call slot, and the claim checked again → provider
call with retries → ``ActionExecuted`` or ``ActionFailed`` appended together
with the claim's release (expecting the claim stream's version, so a lost
claim is flagged). Claims are renewed while the actions run. Decisions that
must wait record ``ActionSkipped`` with their reason once, not every cycle.

The write-ahead says what a retry, a recovery or a later cycle needs to finish
the action safely: whether a disruptive update found the resource running
(``was_running``: it is started again), and which attempt of a create this
is (``create_attempt``: its idempotency token).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream

from eventstore import Event, EventStore, EventStoreError, StreamBatch, WrongExpectedVersion
from ovi._shielded import STOP_GRACE_SECONDS, finish_shielded
from ovi.coordinator import Claim, ClaimResult, Coordinator, KeptClaims
from ovi.events import (
    PAUSE_STREAM,
    ActionExecuted,
    ActionExecuting,
    ActionFailed,
    ActionSkipped,
    resource_stream,
)
from ovi.model import (
    RUNNING_STATUSES,
    Action,
    Decision,
    DecisionStatus,
    Outcome,
    Resource,
    ResourceType,
    SkipReason,
)
from ovi.observer import Observation
from ovi.providers.base import CreatedResourceGone, Provider, ProviderError
from ovi.retry import Attempted, RetryPolicy, call_with_retries
from projections import ProjectionError, ProjectionRunner
from projections.findings import DecisionOutcome, decision_outcomes

__all__ = ["Execution", "Executor"]


class Execution(msgspec.Struct, frozen=True):
    """What became of one action this cycle."""

    decision_id: str
    action: Action
    resource_id: str
    cloud_id: str | None
    outcome: Outcome  # executed | failed | skipped
    reason: SkipReason | None = None  # why skipped
    error: str | None = None


def _execution(decision: Decision, outcome: Outcome, *, reason: SkipReason | None = None,
               error: str | None = None, cloud_id: str | None = None) -> Execution:
    return Execution(decision.decision_id, decision.action, decision.resource_id,
                     cloud_id or decision.cloud_id, outcome, reason, error)


class Executor:
    """Executes a cycle's ready decisions, at most ``max_concurrency`` at once."""

    def __init__(
        self,
        store: EventStore,
        views: ProjectionRunner,
        provider: Provider,
        coordinator: Coordinator,
        *,
        retry: RetryPolicy | None = None,
        stopping: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.views = views
        self.provider = provider
        self.coordinator = coordinator
        self.retry = retry or RetryPolicy()
        #: true once the service drains: no action starts after that
        self.stopping: Callable[[], bool] = stopping or _never
        self._fences: Callable[[Decision], Sequence[StreamBatch]] = _no_fences

    async def execute(
        self,
        decisions: Sequence[Decision],
        observation: Observation,
        *,
        cycle_id: str,
        owner: str,
        max_concurrency: int,
        dry_run: bool = False,
        fences: Callable[[Decision], Sequence[StreamBatch]] | None = None,
        refused: str | None = None,
    ) -> list[Execution]:
        """Execute what may run now; record why the rest waits. ``fences``
        gives, per decision, empty batches appended with its write-ahead: if
        one's expected version no longer holds (a pause recorded since the
        cycle read its state), the action is skipped. ``refused`` says why
        nothing may run this cycle (the log holds event types this Ovi does
        not know): every ready action is skipped with that detail."""
        self._fences = fences or _no_fences
        actionable = [d for d in decisions if d.action != Action.NOTIFY]
        if not actionable:
            return []
        ids = [d.decision_id for d in actionable]
        outcomes = await self.views.query(lambda db: decision_outcomes(db, decision_ids=ids))
        executions: list[Execution] = []
        skips: list[tuple[Decision, SkipReason, str]] = []
        ready: list[Decision] = []
        for decision in actionable:
            scope = observation.scopes.get(decision.diff.scope)
            waiting = _why_not_now(decision, outcomes.get(decision.decision_id),
                                   scope.observed_after if scope is not None else 0)
            if waiting is None:
                ready.append(decision)
                continue
            reason, record = waiting
            executions.append(_execution(decision, Outcome.SKIPPED, reason=reason))
            if record:
                skips.append((decision, reason, ""))
        if dry_run or refused is not None:
            why = SkipReason.DRY_RUN if dry_run else SkipReason.UNKNOWN_EVENTS
            for decision in ready:
                executions.append(_execution(decision, Outcome.SKIPPED, reason=why))
                skips.append((decision, why, refused or ""))
            await self._record_skips(cycle_id, skips)
            return executions
        await self._record_skips(cycle_id, skips)

        # Semaphores taken without a trip through the event loop when a slot
        # is free (anyio's CapacityLimiter checkpoints on every acquire: ~8 %
        # of a 1,000-action execution).
        calls = anyio.Semaphore(max_concurrency, fast_acquire=True)
        # Write-ahead runs at most one "wave" ahead of the calls: when a call
        # slot frees, the next action's ActionExecuting is already durable.
        ahead = anyio.Semaphore(2 * max_concurrency, fast_acquire=True)
        results: list[Execution] = []
        # A share is claimed once the actions of the last have been taken up
        # (the sends wait while the queue is full): the claims' work falls
        # between the waves of calls instead of holding one up.
        send, receive = anyio.create_memory_object_stream[tuple[list[Decision], Claim]](
            max_buffer_size=max_concurrency)
        acted = _ActedSince(self.views, min(
            (observation.scopes[d.diff.scope].observed_after for d in ready
             if d.diff.scope in observation.scopes), default=0))

        async def worker(queue: MemoryObjectReceiveStream[tuple[list[Decision], Claim]]) -> None:
            # A resource's decisions one after another, in order, under its
            # one claim, which the last one's outcome gives back.
            async with queue:
                async for group, claim in queue:
                    done: Execution | None = None
                    for n, decision in enumerate(group, 1):
                        if done is not None and (claim.released or claim.in_doubt):
                            # An earlier decision gave the claim back without
                            # acting (paused, not attempted), or its outcome
                            # could not be recorded (in doubt, for recovery:
                            # the claim must not go back with a later outcome):
                            # the rest wait for a later cycle, reported alike.
                            results.append(_execution(decision, done.outcome,
                                                      reason=done.reason, error=done.error))
                            continue
                        done = await self._run(decision, claim, cycle_id, owner, ahead,
                                               calls, last=n == len(group))
                        results.append(done)

        # The resources are claimed a share at a time, each share no bigger
        # than two waves of calls (the first, one), and each share's actions
        # start as soon as it is claimed: claiming a thousand at once kept
        # every call waiting ~20 ms. Enough workers to fill both limiters and
        # record outcomes meanwhile, not a task per action (starting a
        # thousand up front delayed the first call by ~25 ms). The claims are
        # renewed while the actions run: an action may outlast the claim's TTL
        # (a resize waits for a stop and a start), and actions queued behind
        # slow ones wait for slots.
        unclaimed: EventStoreError | ProjectionError | None = None
        kept: KeptClaims | None = None
        try:
            async with self.coordinator.keeping() as kept, anyio.create_task_group() as group:
                async with send:
                    for _ in range(min(len(ready), 3 * max_concurrency)):
                        group.start_soon(worker, receive.clone())
                    receive.close()
                    for share in _shares(ready, max_concurrency):
                        if self.stopping():  # draining: claim nothing more
                            executions.extend(_execution(d, Outcome.SKIPPED,
                                                         reason=SkipReason.DRAINING)
                                              for d in share)
                            continue
                        try:
                            runnable = await self._claim_share(share, observation, outcomes,
                                                               cycle_id, executions, acted)
                        except (EventStoreError, ProjectionError) as exc:
                            # The actions already under way finish and record
                            # their outcomes; none more starts.
                            unclaimed = exc
                            break
                        kept.add(claim for _, claim in runnable)
                        for item in runnable:
                            await send.send(item)
        except BaseExceptionGroup as failed:
            # What a worker raised goes to the caller as it was (the service
            # catches the store's errors by their type), not wrapped in a group.
            if len(failed.exceptions) == 1:
                raise failed.exceptions[0] from None
            raise
        finally:
            # Cancelled (a drain that timed out) or failed: the claims with no
            # write-ahead open under them are given back, not left to block
            # other instances until they expire. Shielded, and bounded: a
            # store that does not answer must not hold the stop up.
            if kept is not None:
                with anyio.move_on_after(STOP_GRACE_SECONDS, shield=True):
                    await self._give_back_unused(kept.claims)
        if unclaimed is not None:
            raise unclaimed
        return executions + results

    async def _give_back_unused(self, claims: list[Claim]) -> None:
        """Release every claim of ``claims`` still ours with no write-ahead
        open under it (concurrently: the store commits them together)."""
        unused = [c for c in claims if c.renewable and not c.in_doubt]
        if not unused:
            return
        async with anyio.create_task_group() as group:
            for claim in unused:
                group.start_soon(self._release_quietly, claim)

    async def _claim_share(
        self, share: list[Decision], observation: Observation,
        outcomes: dict[str, DecisionOutcome], cycle_id: str, executions: list[Execution],
        acted: _ActedSince,
    ) -> list[tuple[list[Decision], Claim]]:
        """Claim the resources of ``share``; the decisions that may run now,
        each resource's in order, with its claim. Those whose resource another
        instance holds, or on which an action was recorded since the
        observation, are skipped
        (recorded, added to ``executions``)."""
        # Shielded, for a while: claims recorded by an append that a
        # cancellation cut short would be held with no handle to give them back
        # by. Answered within the grace, they are given back before the
        # cancellation goes on; a store that does not answer in that time does
        # not hold the stop up: what it may have recorded expires on its own.
        claims = await finish_shielded(
            self.coordinator.claim(d.resource_id for d in share),
            lambda claimed: self._give_back_unused(list(claimed.held.values())))
        try:
            return await self._sort_share(share, claims, observation, outcomes, cycle_id,
                                          executions, acted)
        except BaseException:
            # Not one of them will be used: given back, not left to expire.
            with anyio.move_on_after(STOP_GRACE_SECONDS, shield=True):
                await self._give_back_unused(list(claims.held.values()))
            raise

    async def _sort_share(
        self, share: list[Decision], claims: ClaimResult, observation: Observation,
        outcomes: dict[str, DecisionOutcome], cycle_id: str, executions: list[Execution],
        acted: _ActedSince,
    ) -> list[tuple[list[Decision], Claim]]:
        skips: list[tuple[Decision, SkipReason, str]] = []
        for decision in share:
            holder = claims.blocked.get(decision.resource_id)
            if holder is not None:
                executions.append(_execution(decision, Outcome.SKIPPED,
                                             reason=SkipReason.CLAIMED))
                last = outcomes.get(decision.decision_id)
                if not (last and last.outcome == Outcome.SKIPPED
                        and last.reason == SkipReason.CLAIMED):
                    skips.append((decision, SkipReason.CLAIMED, f"held by {holder}"))
        held = [d for d in share if d.resource_id in claims.held]
        await acted.read_on()
        stale = {d.resource_id for d in held if d.diff.scope in observation.scopes
                 and acted.last.get(d.resource_id, 0)
                 > observation.scopes[d.diff.scope].observed_after}
        for decision in held:
            if decision.resource_id in stale:
                executions.append(_execution(decision, Outcome.SKIPPED,
                                             reason=SkipReason.STALE))
                skips.append((decision, SkipReason.STALE, "another action on this resource was"
                               " recorded after the observation this decision relied on"))
        await self._record_skips(cycle_id, skips)
        for resource_id in {d.resource_id for d in held if d.resource_id in stale}:
            await self.coordinator.release(claims.held[resource_id])
        runnable: dict[str, list[Decision]] = {}
        for decision in held:
            if decision.resource_id not in stale:
                runnable.setdefault(decision.resource_id, []).append(decision)
        return [(group, claims.held[resource_id]) for resource_id, group in runnable.items()]

    async def _record_skips(
        self, cycle_id: str, skips: list[tuple[Decision, SkipReason, str]]
    ) -> None:
        if not skips:
            return
        events: dict[str, list[Event]] = {}
        for decision, reason, detail in skips:
            events.setdefault(resource_stream(decision.resource_id), []).append(ActionSkipped(
                cycle_id=cycle_id, decision_id=decision.decision_id, action=decision.action,
                resource_id=decision.resource_id, reason=reason, detail=detail))
        await self.store.append_streams(StreamBatch(s, tuple(e)) for s, e in events.items())

    async def _run(self, decision: Decision, claim: Claim, cycle_id: str, owner: str,
                   ahead: anyio.Semaphore, calls: anyio.Semaphore, *,
                   last: bool = True) -> Execution:
        """Execute one decision under ``claim``; ``last``: the last of its
        resource's decisions this cycle, whose outcome gives the claim back."""
        stream = resource_stream(decision.resource_id)
        resource: Resource | None = None
        failure: ProviderError | EventStoreError | None = None
        unkept: SkipReason | None = None
        unconfirmed: EventStoreError | None = None
        drained = False
        outcome: ActionExecuted | ActionFailed
        try:
            progress = await self._progress(decision)
        except (EventStoreError, ProjectionError) as exc:
            await self._release_quietly(claim)
            return _execution(decision, Outcome.FAILED, error="not attempted: cannot read its"
                              f" earlier attempts from the log: {exc}")
        # The outcome is recorded after both slots are freed, so the next
        # action's call overlaps this one's commit.
        async with ahead:
            try:
                checked = await self.coordinator.reading()
            except EventStoreError as exc:
                await self._release_quietly(claim)
                return _execution(decision, Outcome.FAILED, error="not attempted: cannot read"
                                  f" the log's clock: {exc}")
            checked_at = checked.at
            if not await self.coordinator.usable(claim, now=checked_at):
                # Waited so long for a slot that the claim ran out, or it could
                # not be renewed: another instance may hold it now. Leave it
                # to a later cycle.
                await self._release_quietly(claim)
                return _execution(decision, Outcome.SKIPPED, reason=_unkept(claim))
            if self.stopping():
                await self._release_quietly(claim)
                return _execution(decision, Outcome.SKIPPED, reason=SkipReason.DRAINING)
            try:
                # Fenced: written only while the claim stream is still where
                # our claim left it (nobody took the claim over) and the pause
                # streams are where this cycle read them (nobody paused since).
                await self.coordinator.append_fenced(claim, [StreamBatch(stream, (
                    self._executing(decision, claim, cycle_id, progress.attempt),)),
                    *self._fences(decision)], checked_at=checked_at)
            except WrongExpectedVersion as exc:
                if exc.stream.startswith(PAUSE_STREAM):
                    # Paused (or resumed) by someone after this cycle read the pauses.
                    await self._release_quietly(claim)
                    return _execution(decision, Outcome.SKIPPED, reason=SkipReason.PAUSED)
                return _execution(decision, Outcome.SKIPPED, reason=SkipReason.CLAIM_LOST)
            except EventStoreError as exc:
                # Write-ahead failed: the provider is not called.
                await self._release_quietly(claim)
                return _execution(decision, Outcome.FAILED, error=f"not attempted: cannot record"
                                  f" ActionExecuting: {exc}")
            async with calls:
                # Checked again now: the service may be stopping, the wait for
                # a slot may have outlasted the claim, or a renewal may have
                # found it taken over.
                try:
                    confirmed = not self.stopping() and await self.coordinator.confirm(
                        claim, after=checked)
                except EventStoreError as exc:
                    # Written ahead, but not started: closed below as not attempted.
                    confirmed, unconfirmed = False, exc
                if self.stopping():
                    drained = True  # written ahead, but not started: it never will
                elif confirmed:
                    try:
                        resource = await self._call_attempts(decision, claim, cycle_id, owner,
                                                             progress)
                    except (ProviderError, EventStoreError) as exc:
                        failure = exc
                elif unconfirmed is None:
                    unkept = _unkept(claim)
        if drained:
            outcome = ActionFailed(
                cycle_id=cycle_id, decision_id=decision.decision_id, action=decision.action,
                resource_id=decision.resource_id, cloud_id=decision.cloud_id,
                token=claim.token, error="not started: the service was stopping",
                retryable=True, attempts=0, create_attempt=progress.attempt)
            execution = _execution(decision, Outcome.SKIPPED, reason=SkipReason.DRAINING)
        elif unconfirmed is not None:
            error = f"not attempted: cannot confirm the claim: {unconfirmed}"
            outcome = ActionFailed(
                cycle_id=cycle_id, decision_id=decision.decision_id, action=decision.action,
                resource_id=decision.resource_id, cloud_id=decision.cloud_id,
                token=claim.token, error=error, retryable=True, attempts=0,
                create_attempt=progress.attempt)
            execution = _execution(decision, Outcome.FAILED, error=error)
        elif unkept is not None:
            outcome = ActionFailed(
                cycle_id=cycle_id, decision_id=decision.decision_id, action=decision.action,
                resource_id=decision.resource_id, cloud_id=decision.cloud_id,
                token=claim.token, error=f"not attempted: the claim was {_LOST[unkept]} while"
                " the action waited for a call slot", retryable=True, attempts=0,
                create_attempt=progress.attempt)
            execution = _execution(decision, Outcome.SKIPPED, reason=unkept)
        elif failure is not None:
            # A dead resource behind the token is for a new attempt to fix.
            retryable = (not isinstance(failure, ProviderError) or failure.retryable
                         or isinstance(failure, CreatedResourceGone))
            outcome = ActionFailed(
                cycle_id=cycle_id, decision_id=decision.decision_id, action=decision.action,
                resource_id=decision.resource_id, cloud_id=decision.cloud_id,
                token=claim.token, error=str(failure), retryable=retryable,
                attempts=progress.calls.count, create_attempt=progress.attempt)
            execution = _execution(decision, Outcome.FAILED, error=str(failure))
        else:
            cloud_id = resource.cloud_id if resource is not None else decision.cloud_id
            if resource is not None:
                # The provider answers without Ovi's identity (as it observes):
                # the outcome names the resource the decision acted on.
                resource = msgspec.structs.replace(resource, id=decision.resource_id)
            outcome = ActionExecuted(
                cycle_id=cycle_id, decision_id=decision.decision_id, action=decision.action,
                resource_id=decision.resource_id, cloud_id=cloud_id, token=claim.token,
                attempts=progress.calls.count, create_attempt=progress.attempt,
                resource=resource if decision.action is not Action.DELETE else None)
            execution = _execution(decision, Outcome.EXECUTED, cloud_id=cloud_id)
        try:
            await self._record_outcome(stream, outcome, claim, release=last)
        except EventStoreError as exc:
            # The action happened (or failed) but the log could not say so: it
            # stays in doubt, and recovery resolves it against the cloud.
            return msgspec.structs.replace(
                execution, outcome=Outcome.FAILED,
                error=f"{execution.error or 'done'}; outcome not recorded: {exc}")
        return execution

    def _executing(self, decision: Decision, claim: Claim, cycle_id: str,
                   attempt: int) -> ActionExecuting:
        return ActionExecuting(
            cycle_id=cycle_id, decision_id=decision.decision_id, action=decision.action,
            resource_id=decision.resource_id, cloud_id=decision.cloud_id, token=claim.token,
            was_running=_was_running(decision), create_attempt=attempt)

    async def _progress(self, decision: Decision) -> _Progress:
        """Where a create starts, from the write-aheads of its decision in the
        log itself, read under our claim: the attempt is the last one recorded
        (its token may have made the resource, which must not be made twice),
        1 for a decision never written ahead, which is then ``first_ever``.

        The log, not the projection read at the start of the execution: every
        provider call follows a durable write-ahead made under a claim, and no
        other instance can write ahead under ours, so every write-ahead of the
        decision, by anyone, ever, is in the resource's stream by now (a
        projection caught up before another instance's write-ahead, its
        claim taken over and released since, would miss it)."""
        if decision.action is not Action.CREATE:
            return _Progress(1)
        attempt = 0
        # Checked as the projections' rows are (a keyed log): a write-ahead
        # deleted from the log since it was checked must not make a create
        # whose token was used look like its first call.
        async for recorded in self.views.read_checked(
                stream=resource_stream(decision.resource_id), types=("ActionExecuting",)):
            event = recorded.event
            if isinstance(event, ActionExecuting) and event.decision_id == decision.decision_id:
                attempt = max(attempt, event.create_attempt)
        return _Progress(max(attempt, 1), first_ever=attempt == 0)

    async def _call_attempts(self, decision: Decision, claim: Claim, cycle_id: str,
                             owner: str, progress: _Progress) -> Resource | None:
        """The provider call, with retries (the same attempt: a lost response
        is answered by the same token, never duplicated). A create whose
        token answers with a dead resource is closed and made again as the
        next attempt, both recorded (fenced, by the claim and by the pauses
        as the first write-ahead was: a pause recorded since stops the new
        attempt) before the new token is used. ``progress`` says, even when
        this raises, which attempt is open and how many calls it made."""
        stream = resource_stream(decision.resource_id)
        try:
            return await call_with_retries(
                lambda: self._call(decision, owner, progress), self.retry, progress.calls)
        except CreatedResourceGone as gone:
            if not await self.coordinator.usable(claim):
                raise
            closed = ActionFailed(
                cycle_id=cycle_id, decision_id=decision.decision_id, action=decision.action,
                resource_id=decision.resource_id, cloud_id=gone.cloud_id, token=claim.token,
                error=str(gone), retryable=True, attempts=progress.calls.count,
                create_attempt=progress.attempt)
            following = self._executing(decision, claim, cycle_id, progress.attempt + 1)
            try:
                await self.coordinator.append_fenced(claim, [
                    StreamBatch(stream, (closed, following)), *self._fences(decision)])
            except EventStoreError as exc:
                raise gone from exc  # not recorded: the old attempt stays the open one
        progress.attempt += 1
        progress.calls = Attempted()
        return await call_with_retries(
            lambda: self._call(decision, owner, progress), self.retry, progress.calls)

    async def _record_outcome(self, stream: str, outcome: ActionExecuted | ActionFailed,
                              claim: Claim, *, release: bool) -> None:
        """Record ``outcome`` while ``claim`` is still ours, giving the claim
        back with it (``release``) or keeping it for the resource's next decision."""
        batch = [StreamBatch(stream, (outcome,))]
        try:
            if release:
                await self.coordinator.append_releasing(claim, batch)
            else:
                await self.coordinator.append_fenced(claim, batch, outcome=True)
        except WrongExpectedVersion:
            # The claim moved on while we acted: record the outcome, flagged.
            await self.store.append(stream, [msgspec.structs.replace(outcome, stale_token=True)])

    async def _release_quietly(self, claim: Claim) -> None:
        if claim.released:  # by an earlier decision on the resource
            return
        try:
            await self.coordinator.release(claim)
        except EventStoreError:
            pass  # the claim expires on its own

    async def _call(self, decision: Decision, owner: str,
                    progress: _Progress) -> Resource | None:
        diff = decision.diff
        if decision.action == Action.CREATE and diff.desired is not None:
            return await self.provider.create(diff.desired, decision_id=decision.decision_id,
                                              owner=owner, attempt=progress.attempt,
                                              token_unused=progress.token_unused)
        if decision.action == Action.ADOPT and diff.desired is not None and diff.observed:
            return await self.provider.adopt(diff.desired, diff.observed,
                                             decision_id=decision.decision_id, owner=owner)
        if decision.action == Action.UPDATE and diff.desired is not None and diff.observed:
            return await self.provider.update(diff.desired, diff.observed, diff.changes)
        if decision.action == Action.DELETE and diff.observed is not None:
            await self.provider.delete(diff.observed)
            return None
        raise ProviderError(f"{decision.action} {decision.resource_id}: the decision lacks"
                            " the resource it acts on")


class _ActedSince:
    """The newest action recorded on each resource after a position (the
    earliest observation a cycle's decisions relied on), read on from where
    the last reading stopped: an action recorded after the observation a
    decision relied on means another instance already acted, so the decision
    is stale."""

    def __init__(self, views: ProjectionRunner, after: int) -> None:
        self._views = views
        self._after = after
        #: resource id → position of the newest action recorded on it
        self.last: dict[str, int] = {}

    async def read_on(self) -> None:
        # Checked as the projections' rows are (a keyed log): an action
        # deleted from the log since it was checked must not go unseen here.
        async for recorded in self._views.read_checked(
            after=self._after, types=("ActionExecuting", "ActionExecuted", "ActionFailed"),
        ):
            event = recorded.event
            if isinstance(event, ActionExecuting | ActionExecuted | ActionFailed):
                self.last[event.resource_id] = recorded.position
            self._after = recorded.position


def _shares(decisions: list[Decision], first: int) -> list[list[Decision]]:
    """``decisions`` in shares to claim one after another: ``first`` resources
    in the first, twice as many in each of the others; a resource's decisions all
    in one share (they run under its one claim)."""
    by_resource: dict[str, list[Decision]] = {}
    for decision in decisions:
        by_resource.setdefault(decision.resource_id, []).append(decision)
    shares: list[list[Decision]] = []
    size = max(1, first)
    groups = list(by_resource.values())
    while groups:
        taken, groups = groups[:size], groups[size:]
        shares.append([d for group in taken for d in group])
        size = 2 * max(1, first)
    return shares


def _never() -> bool:
    return False


def _no_fences(decision: Decision) -> Sequence[StreamBatch]:
    return ()


class _Progress(msgspec.Struct):
    """Where one action's provider calls stand: the create attempt open (its
    write-ahead recorded) and the calls made for it. ``first_ever``: the
    write-ahead this action records is the decision's first (see
    :meth:`Executor._progress`)."""

    attempt: int
    first_ever: bool = False
    calls: Attempted = msgspec.field(default_factory=Attempted)

    @property
    def token_unused(self) -> bool:
        """No call was ever made for this decision: its first write-ahead, the
        first attempt, and the call under way (counted before it is made) is
        the first. A retry (a lost answer may have made the resource) is not."""
        return self.first_ever and self.attempt == 1 and self.calls.count == 1


_LOST = {SkipReason.CLAIM_LOST: "taken over", SkipReason.CLAIM_EXPIRED: "running out"}


def _unkept(claim: Claim) -> SkipReason:
    """Why work may not start under ``claim``."""
    return SkipReason.CLAIM_LOST if claim.lost else SkipReason.CLAIM_EXPIRED


def _was_running(decision: Decision) -> bool | None:
    """For a disruptive update (an EC2 resize stops the instance): whether
    the observation the decision relied on saw the resource running, i.e.
    whether it must be started again. ``None`` for every other action."""
    diff = decision.diff
    observed = diff.observed
    if (decision.action is Action.UPDATE and observed is not None
            and observed.type is ResourceType.EC2
            and any(c.field == "size" for c in diff.changes)):
        return observed.status in RUNNING_STATUSES
    return None


def _why_not_now(decision: Decision, last: DecisionOutcome | None,
                 observed_after: int) -> tuple[SkipReason, bool] | None:
    """Why a decision is not executed now (reason, whether to record it), or
    None when it should be. A wait is recorded once, not every cycle.

    An executed action whose diff is still there in an observation that
    started after it was recorded did not stick (an instance that died at
    once, say): it may run again, as the attempt recorded last, so the
    provider's idempotency on the decision id and attempt keeps a create that
    merely was not listed yet from running twice; only when that attempt's
    token answers with a dead resource does the next attempt get a new one."""
    reason: SkipReason | None = None
    if decision.status != DecisionStatus.READY:
        reason = SkipReason.holding(decision.status)
    elif (last is not None and last.outcome == Outcome.EXECUTED
          and (last.rev is None or last.rev > observed_after)):
        return SkipReason.ALREADY_EXECUTED, False
    elif last is not None and last.outcome == Outcome.EXECUTING:
        return SkipReason.IN_DOUBT, False
    elif last is not None and last.outcome == Outcome.FAILED and last.retryable is False:
        return SkipReason.FAILED_PERMANENTLY, False
    if reason is None:
        return None
    repeat = last is not None and last.outcome == Outcome.SKIPPED and last.reason == reason
    return reason, not repeat

