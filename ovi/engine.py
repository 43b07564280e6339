"""One reconcile cycle: observe, record, compare, decide, record.

The engine takes its store, projections and provider as arguments, so tests
drive it with a fake provider (and a controllable clock given to the store).
Its time is the store's clock (:meth:`eventstore.EventStore.now`): with a
shared log the database server's, so hosts whose clocks disagree judge grace
periods and maintenance windows alike.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import msgspec

from eventstore import NO_STREAM, Event, EventStore, Head, StreamBatch
from ovi.comparator import Comparator, Context, DefaultComparator, Grant, grants_in_force
from ovi.compat import UnknownEventTypes
from ovi.config import Config
from ovi.coordinator import Coordinator
from ovi.decisions import DecisionContext, DecisionMaker
from ovi.events import (
    PAUSE_ALL,
    ConfigLoaded,
    CycleFinished,
    CycleStarted,
    DecisionMade,
    DiffDetected,
    DiffResolved,
    RestartSettled,
    cycle_stream,
    pause_stream,
    resource_stream,
)
from ovi.executor import Execution, Executor
from ovi.model import (
    RUNNING_STATUSES,
    Action,
    CycleMode,
    Decision,
    Diff,
    Location,
    Outcome,
    Provenance,
    ResourceType,
    Scope,
)
from ovi.observer import KnownResource, Observation, observe, recorded_locations
from ovi.providers.base import Provider
from ovi.recovery import recover_in_doubt
from ovi.retry import RetryPolicy
from projections import ProjectionRunner
from projections.findings import (
    OpenFinding,
    adoption_grants,
    approved_decisions,
    latest_config_hash,
    made_locations,
    open_findings,
    provenance,
    provenance_scopes,
)
from projections.operations import Pause, PauseState, pause_state
from projections.restarts import OwedRestart, owed_restarts

__all__ = ["CycleResult", "Engine", "new_cycle_id"]


class CycleResult(msgspec.Struct, frozen=True):
    """What one cycle saw and decided (the seed's result fields, and more)."""

    cycle_id: str
    timestamp: datetime
    resources_found: int
    diffs_detected: int
    decisions_made: int
    execution_errors: int
    duration: float  # seconds
    decisions: tuple[Decision, ...]
    diffs: tuple[Diff, ...]
    failed_scopes: tuple[str, ...]
    executions: tuple[Execution, ...] = ()
    scope_errors: tuple[tuple[str, str], ...] = ()  # (scope, why its observation failed)
    unreadable: tuple[tuple[str, str, str], ...] = ()  # (scope, cloud id, why): nothing decided
    recovered: int = 0
    execution_duration: float = 0.0  # seconds spent claiming and executing
    paused: tuple[Pause, ...] = ()  # the pauses in force when the cycle read its state
    scope_counts: tuple[tuple[str, int], ...] = ()  # (scope key, resources observed)
    head: Head | None = None  # the log's head once the cycle was recorded: an anchor

    @property
    def in_sync(self) -> bool:
        """Nothing but notifications: no create, update or delete pending."""
        return all(d.action == Action.NOTIFY for d in self.decisions)


class _State(msgspec.Struct):
    known: dict[str, dict[str, KnownResource]]
    findings: dict[str, OpenFinding]
    approved: frozenset[str]
    config_hash: str | None
    provenance: dict[tuple[str, str], Provenance]
    provenance_scopes: set[str]
    grants: dict[str, Grant]  # desired id → the resource granted to it
    pauses: PauseState
    restarts: dict[str, OwedRestart] = {}
    made: dict[str, tuple[Location, ...]] = {}  # desired id → what Ovi made as it


def new_cycle_id(now: datetime) -> str:
    """Sortable and unique across hosts: time, then randomness."""
    return now.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(4)


class Engine:
    """Runs reconcile cycles against one store and one provider."""

    def __init__(
        self,
        store: EventStore,
        views: ProjectionRunner,
        provider: Provider,
        *,
        comparator: Callable[[Config], Comparator] = DefaultComparator.from_config,
        decision_maker: Callable[[Config], DecisionMaker] = DecisionMaker.from_config,
        retry: RetryPolicy | None = None,
        claim_ttl: timedelta = timedelta(minutes=10),
        stopping: Callable[[], bool] | None = None,
        event_types: UnknownEventTypes | None = None,
    ) -> None:
        self.store = store
        self.views = views
        self.provider = provider
        self._comparator = comparator
        self._decision_maker = decision_maker
        # Looked at again just before executing: a newer Ovi on another host
        # may append a type this one does not know (a pause of its own) while
        # the cycle observes. The caller's tracker, if it has one, is reused.
        self.event_types = event_types or UnknownEventTypes(store.registry.names)
        self.coordinator = Coordinator(store, views, ttl=claim_ttl)
        # ``stopping`` (the service draining): no new action starts once it is true.
        self.executor = Executor(store, views, provider, self.coordinator, retry=retry,
                                 stopping=stopping)

    async def run_cycle(
        self,
        config: Config,
        *,
        source: str,
        mode: CycleMode = CycleMode.PLAN,
        dry_run: bool = False,
        max_concurrency: int | None = None,
    ) -> CycleResult:
        """Observe, compare, decide and record one cycle; unless ``mode`` is
        :attr:`CycleMode.PLAN`, also resolve actions left in doubt and execute (or, with
        ``dry_run``, record what would have run)."""
        execute = mode is not CycleMode.PLAN
        concurrency = max_concurrency or config.rules.max_concurrency
        # The store's clock, not this host's: when a finding was first seen
        # (the grace period) and the time a maintenance window is judged by
        # must read alike on every host sharing the log.
        started = await self.store.now()
        clock_start = time.perf_counter()
        cycle_id = new_cycle_id(started)
        stream = cycle_stream(cycle_id)
        config_hash = config.config_hash

        await self.views.catch_up()
        state = await self.views.query(_load_state)
        opening: list[Event] = [CycleStarted(cycle_id=cycle_id, mode=mode,
                                             config_hash=config_hash, started_at=started)]
        if state.config_hash != config_hash:
            opening.append(ConfigLoaded(cycle_id=cycle_id, config_hash=config_hash,
                                        source=source, config=msgspec.to_builtins(config)))
        await self.store.append(stream, opening, expected_version=NO_STREAM)
        recovered = []
        if execute and not dry_run:
            recovered = await recover_in_doubt(self.store, self.views, self.provider,
                                               self.coordinator, cycle_id=cycle_id)
            if recovered:
                await self.views.catch_up()
                state = await self.views.query(_load_state)

        observation = await observe(
            self.store, self.provider, _scopes(config, state), state.known,
            cycle_id=cycle_id, max_concurrency=concurrency, owner=config.owner,
        )
        restart_owed = await self._restarts_owed(cycle_id, state.restarts, observation)
        desired = config.desired_resources()
        last_seen = recorded_locations(state.known)
        unreadable = observation.unreadable
        grants = grants_in_force(state.grants, observation.resources)
        natural: dict[str, str] = {}
        for d in desired:
            name = self.provider.natural_id(d)
            if name is not None:
                natural[d.id] = name
        diffs = self._comparator(config).compare(
            desired, observation.resources, unknown_scopes=tuple(observation.failed),
            context=Context(last_seen=last_seen, unreadable=frozenset(unreadable),
                            natural_ids=natural, grants=grants,
                            restart_owed=frozenset(restart_owed), made=state.made),
        )
        detected_at = {
            d.resource_id: _detected_at(state.findings.get(d.resource_id), d, started)
            for d in diffs
        }
        context = DecisionContext(
            now=started, detected_at=detected_at, approved=state.approved,
            paused={t: p.describe() for t, p in state.pauses.active.items()},
            provenance=state.provenance, grants=grants)
        decisions = self._decision_maker(config).decide(diffs, context)
        # Findings about a resource that could not be read stay open: unknown
        # is not resolved.
        unreadable_here = set(unreadable)
        unknown = {rid for rid, where in last_seen.items() if where in unreadable_here}
        await self._record_findings(cycle_id, config_hash, diffs, decisions, state.findings,
                                    observation, started, unknown)
        executions: list[Execution] = []
        execution_start = time.perf_counter()
        if execute:
            # The projections were caught up at the start of the cycle: what
            # the executor reads of them (earlier outcomes) cannot have moved
            # since, except by other instances, which claims guard against.
            newer = await self.event_types.check(self.views)
            refused = None if not newer else (
                f"the log holds event types this Ovi does not know ({', '.join(sorted(newer))}):"
                " a newer Ovi wrote them; upgrade this Ovi")
            executions = await self.executor.execute(
                decisions, observation, cycle_id=cycle_id, owner=config.owner,
                max_concurrency=concurrency, dry_run=dry_run,
                fences=_pause_fences(state.pauses), refused=refused,
            )
        execution_duration = time.perf_counter() - execution_start
        failed = tuple(sorted(s.key for s in observation.failed))
        result = CycleResult(
            cycle_id=cycle_id, timestamp=started,
            resources_found=len(observation.resources), diffs_detected=len(diffs),
            decisions_made=len(decisions),
            execution_errors=sum(e.outcome is Outcome.FAILED for e in executions),
            duration=time.perf_counter() - clock_start,
            decisions=tuple(decisions), diffs=tuple(diffs), failed_scopes=failed,
            executions=tuple(executions), recovered=len(recovered),
            scope_errors=tuple(sorted((s.key, e) for s, e in observation.failed.items())),
            unreadable=tuple(sorted((s.scope.key, u.cloud_id, u.error)
                                    for s in observation.scopes.values() for u in s.unreadable)),
            execution_duration=execution_duration,
            paused=tuple(state.pauses.active[t] for t in sorted(state.pauses.active)),
            scope_counts=tuple(sorted((s.key, len(o.resources))
                                      for s, o in observation.scopes.items())),
        )
        await self.store.append(stream, [CycleFinished(
            cycle_id=cycle_id, resources_found=result.resources_found,
            diffs_detected=result.diffs_detected, decisions_made=result.decisions_made,
            execution_errors=result.execution_errors, duration_ms=result.duration * 1000,
            failed_scopes=failed,
        )])
        return msgspec.structs.replace(result, head=await self.store.head())

    async def _restarts_owed(self, cycle_id: str, owed: dict[str, OwedRestart],
                             observation: Observation) -> frozenset[str]:
        """The resources still owed a start after an update of Ovi's that did
        not finish (the comparator reports them when they are not running).
        One seen running by an observation that began after that update ended
        is owed nothing any more, and that is recorded (``RestartSettled``);
        one still in doubt is left to recovery."""
        if not owed:
            return frozenset()
        seen = {r.id: (r, s.observed_after) for s in observation.scopes.values()
                for r in s.resources if r.id in owed}
        still: set[str] = set()
        settled: list[StreamBatch] = []
        for resource_id, restart in owed.items():
            if restart.ended_rev is None:
                continue
            found = seen.get(resource_id)
            if found is not None and found[0].status in RUNNING_STATUSES \
                    and found[1] >= restart.ended_rev:
                settled.append(StreamBatch(resource_stream(resource_id), (RestartSettled(
                    cycle_id=cycle_id, resource_id=resource_id, decision_id=restart.decision_id,
                    token=restart.token, ended_rev=restart.ended_rev,
                    status=found[0].status),)))
            else:
                still.add(resource_id)
        if settled:
            await self.store.append_streams(settled)
        return frozenset(still)

    async def _record_findings(
        self,
        cycle_id: str,
        config_hash: str,
        diffs: list[Diff],
        decisions: list[Decision],
        findings: dict[str, OpenFinding],
        observation: Observation,
        now: datetime,
        unknown: set[str],
    ) -> None:
        """Record what is new: findings not already open, decisions whose
        status moved, and findings that no longer hold (not those of a
        resource in ``unknown``, which could not be read this cycle)."""
        events: dict[str, list[Event]] = {}
        current = {d.resource_id for d in diffs}
        for diff in diffs:
            fingerprint = diff.fingerprint
            open_finding = findings.get(diff.resource_id)
            if open_finding is None or open_finding.fingerprint != fingerprint:
                events.setdefault(resource_stream(diff.resource_id), []).append(DiffDetected(
                    cycle_id=cycle_id, diff=diff, fingerprint=fingerprint,
                    detected_at=_detected_at(open_finding, diff, now)))
        failed = {s.key for s in observation.failed}
        for resource_id, open_finding in findings.items():
            if (resource_id not in current and open_finding.scope not in failed
                    and resource_id not in unknown):
                events.setdefault(resource_stream(resource_id), []).append(DiffResolved(
                    cycle_id=cycle_id, resource_id=resource_id,
                    fingerprint=open_finding.fingerprint, reason="resolved"))
        for decision in decisions:
            previous = findings.get(decision.resource_id)
            last = previous.decision if previous is not None else None
            if (last is not None and last.decision_id == decision.decision_id
                    and last.status == decision.status):
                continue
            events.setdefault(resource_stream(decision.resource_id), []).append(DecisionMade(
                cycle_id=cycle_id, decision=decision, config_hash=config_hash,
                rule=decision.rule, evidence=_evidence(decision.diff, observation)))
        if events:
            await self.store.append_streams(
                StreamBatch(stream, tuple(batch)) for stream, batch in events.items()
            )


def _pause_fences(pauses: PauseState) -> Callable[[Decision], tuple[StreamBatch, ...]]:
    """Empty batches expecting the pause streams of the whole estate and of
    each identity a decision acts on (:attr:`Decision.subjects`) to be where
    the cycle read them: appended with the write-ahead, they stop an action
    paused by anyone since."""

    def fences(decision: Decision) -> tuple[StreamBatch, ...]:
        return tuple(StreamBatch(pause_stream(target), (),
                                 expected_version=pauses.versions.get(target, 0))
                     for target in (PAUSE_ALL, *decision.subjects))

    return fences


def _detected_at(open_finding: OpenFinding | None, diff: Diff, now: datetime) -> datetime:
    if open_finding is not None and open_finding.fingerprint == diff.fingerprint:
        return open_finding.detected_at
    return now


def _evidence(diff: Diff, observation: Observation) -> tuple[int, ...]:
    """Positions of the observation events a decision relies on: the scope's
    ``ObservationCompleted`` of this cycle and the resource's latest
    ``ResourceObserved``."""
    scope = observation.scopes.get(diff.scope)
    if scope is None:
        return ()
    positions = [scope.completed_position]
    # A conflict is about a desired id; the resource it saw has its own.
    observed = scope.observed_positions.get(
        diff.observed.id if diff.observed is not None else diff.resource_id)
    if observed is not None:
        positions.insert(0, observed)
    return tuple(positions)


def _scopes(config: Config, state: _State) -> list[Scope]:
    """Every type in the config's region (to find unmanaged resources), every
    scope a spec names, every scope where resources were seen before (so
    that unwanted ones elsewhere are found), and every scope where Ovi made
    something (it may not have been observed yet)."""
    scopes = {Scope(config.provider, config.region, t) for t in ResourceType}
    scopes.update(d.scope for d in config.desired_resources())
    keys = {key for key, resources in state.known.items() if resources}
    for key in keys | state.provenance_scopes:
        provider, region, type_ = key.split("/", 2)
        scopes.add(Scope(provider, region, ResourceType(type_)))
    return sorted(scopes)


def _load_state(db: sqlite3.Connection) -> _State:
    known: dict[str, dict[str, KnownResource]] = {}
    rows = db.execute(
        'SELECT scope, resource_id, cloud_id, fingerprint, observed_rev'
        ' FROM resource_rows WHERE "exists" = 1'
    )
    for scope, resource_id, cloud_id, fingerprint, rev in rows:
        known.setdefault(scope, {})[resource_id] = KnownResource(resource_id, cloud_id,
                                                                 fingerprint, rev or 0)
    grants = {rid: Grant(grant.identity, grant.owner_seen)
              for rid, grant in adoption_grants(db).items()}
    return _State(known, open_findings(db), approved_decisions(db), latest_config_hash(db),
                  provenance(db), provenance_scopes(db), grants, pause_state(db),
                  owed_restarts(db), made_locations(db))
