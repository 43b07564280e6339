"""Races between instances sharing one log, against the fake provider on real
SQLite files: recoveries that overlap, claims whose renewal fails once,
pauses that land between two create attempts. Each ends with ``verify``."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

import anyio
import msgspec
import pytest

from eventstore import Appended, BackendError, Event, StreamBatch
from ovi.app import pause_automation
from ovi.coordinator import ClaimResult, Coordinator
from ovi.events import (
    ActionExecuted,
    ActionExecuting,
    ActionFailed,
    ClaimAcquired,
    ClaimRenewed,
    claim_stream,
    resource_stream,
)
from ovi.model import Action, DesiredResource, Resource, SkipReason
from ovi.providers.base import ProviderError
from ovi.recovery import recover_in_doubt
from ovi.replay import verify_log
from ovi.retry import RetryPolicy
from tests.ovi.harness import Env, config_text, environment, managed

pytestmark = pytest.mark.asyncio

WEB = "{type: ec2, name: web, count: 1, size: t3.micro}"
THROTTLED = ProviderError("RequestLimitExceeded (injected)", retryable=True)


async def of_type(env: Env, cls: type[Event]) -> list[Event]:
    return [e.event for e in await env.events() if isinstance(e.event, cls)]


class _LateClaimer(Coordinator):
    """A coordinator whose process is descheduled between reading what is in
    doubt and claiming it (a busy host): it claims once ``go`` is set."""

    def __init__(self, env: Env) -> None:
        super().__init__(env.store, env.views)
        self.waiting = anyio.Event()
        self.go = anyio.Event()

    async def claim(self, resource_ids: Iterable[str]) -> ClaimResult:
        self.waiting.set()
        await self.go.wait()
        return await super().claim(resource_ids)


async def test_an_action_in_doubt_is_resolved_once_when_two_instances_recover_it(
    tmp_path: Path
) -> None:
    async with environment(tmp_path, instance_id="a") as first, \
            environment(tmp_path, instance_id="b") as second:
        second.provider.resources = first.provider.resources  # one cloud
        plan = await first.cycle(config_text(WEB))
        (decision,) = plan.decisions
        # A crashed instance claimed web-0 and wrote ahead; it never created it.
        await first.store.append(claim_stream("web-0"), [ClaimAcquired(
            resource_id="web-0", instance_id="dead:1", claimed_at=first.clock(),
            expires_at=first.clock() + timedelta(minutes=1), token=1)], expected_version=0)
        await first.append_as("dead:1", resource_stream("web-0"), [ActionExecuting(
            cycle_id="crashed", decision_id=decision.decision_id, action=Action.CREATE,
            resource_id="web-0", cloud_id=None, token=1)])
        first.clock.advance(minutes=2)
        second.clock.advance(minutes=2)
        late = _LateClaimer(second)
        resolved = []

        async def second_recovers() -> None:
            resolved.extend(await recover_in_doubt(second.store, second.views,
                                                   second.provider, late, cycle_id="b-1"))

        async with anyio.create_task_group() as group:
            group.start_soon(second_recovers)
            await late.waiting.wait()  # b has read what is in doubt
            done = await first.apply(config_text(WEB))  # a resolves it, then acts
            late.go.set()
        outcomes = [e.event for e in await first.events()
                    if isinstance(e.event, ActionExecuted | ActionFailed) and e.event.token == 1]
        report = await verify_log(first.store)
    assert done.recovered == 1
    assert resolved == []  # b found it resolved once it held the claim
    assert report.ok, report.violations
    assert len(outcomes) == 1  # one outcome for the crashed write-ahead, a's


async def test_a_renewal_that_fails_once_does_not_let_the_claim_run_out_under_a_live_call(
    tmp_path: Path
) -> None:
    ttl = timedelta(seconds=1)
    config = config_text("{type: ec2, name: web, count: 1, size: t3.small}",
                         rules="allow_resize: true")
    async with environment(tmp_path, managed("web-0", "i-web0"), instance_id="a",
                           real_time=True, claim_ttl=ttl) as first, \
            environment(tmp_path, instance_id="b", real_time=True, claim_ttl=ttl) as second:
        second.provider.resources = first.provider.resources  # one cloud
        first.provider.slow["update"] = 2.5  # the resize outlasts the TTL twice
        real = first.store.append_streams
        hiccups = [BackendError("database is locked (injected)")]

        async def one_hiccup(batches: Iterable[StreamBatch]) -> Appended:
            batches = list(batches)
            if hiccups and any(isinstance(e, ClaimRenewed) for b in batches for e in b.events):
                raise hiccups.pop()
            return await real(batches)

        first.store.append_streams = one_hiccup  # type: ignore[method-assign]
        results = []

        async def apply_first() -> None:
            results.append(await first.apply(config))

        async with anyio.create_task_group() as group:
            group.start_soon(apply_first)
            await anyio.sleep(1.5)  # without renewals, the claim would have run out
            meanwhile = await second.apply(config)
        (done,) = results[0].executions
        report = await verify_log(first.store)
    assert hiccups == []  # the renewal did fail once
    # b neither took the claim over (to recover a live action) nor resized too.
    assert meanwhile.recovered == 0
    calls = first.provider.calls + second.provider.calls
    assert [c for c in calls if c[0] in ("update", "create")] == [("update", "i-web0")]
    assert done.outcome == "executed"
    assert report.ok and report.in_doubt == [], report.violations


async def test_a_pause_recorded_while_a_create_runs_stops_its_next_attempt(
    tmp_path: Path
) -> None:
    config = config_text(WEB)
    async with environment(tmp_path) as env:
        await env.apply(config)
        (first,) = env.provider.resources.values()
        env.provider.die(first.cloud_id)  # before any observation saw it
        real_create = env.provider.create

        async def paused_meanwhile(desired: DesiredResource, *, decision_id: str, owner: str,
                                   attempt: int = 1, token_unused: bool = False) -> Resource:
            if attempt == 1:  # `ovi pause web-0` lands while attempt 1 is in flight
                await pause_automation(tmp_path / "ovi.db", ["web-0"], reason="INC-1")
            return await real_create(desired, decision_id=decision_id, owner=owner,
                                     attempt=attempt, token_unused=token_unused)

        env.provider.create = paused_meanwhile  # type: ignore[method-assign]
        result = await env.apply(config)
        attempts = [e.create_attempt for e in await of_type(env, ActionExecuting)
                    if isinstance(e, ActionExecuting)]
        failed = await of_type(env, ActionFailed)
        later = await env.apply(config)
        report = await verify_log(env.store)
    assert env.provider.resources == {}  # nothing made after the pause
    assert attempts == [1, 1]  # the second attempt was never written ahead
    (execution,) = result.executions  # attempt 1 failed: what its token made is gone
    assert execution.outcome == "failed" and "no longer exists" in (execution.error or "")
    assert [e.retryable for e in failed if isinstance(e, ActionFailed)] == [True]
    (decision,) = later.decisions  # the next cycle holds it for the pause
    assert decision.status == "paused" and later.executions[0].reason == SkipReason.PAUSED
    assert report.ok and report.in_doubt == [], report.violations


async def test_recovery_that_cannot_start_a_resized_instance_still_owes_the_start(
    tmp_path: Path
) -> None:
    config = config_text("{type: ec2, name: web, count: 1, size: t3.small}",
                         rules="allow_resize: true")
    async with environment(tmp_path, managed("web-0", "i-web0")) as env:
        env.engine.executor.retry = RetryPolicy(attempts=2, base_delay=0.001)
        plan = await env.cycle(config)
        (decision,) = plan.decisions
        # A crashed instance claimed it, wrote ahead, stopped it and changed its
        # type; it died before the start.
        await env.store.append(claim_stream("web-0"), [ClaimAcquired(
            resource_id="web-0", instance_id="dead:1", claimed_at=env.clock(),
            expires_at=env.clock() + timedelta(minutes=1), token=1)], expected_version=0)
        await env.append_as("dead:1", resource_stream("web-0"), [ActionExecuting(
            cycle_id="crashed", decision_id=decision.decision_id, action=Action.UPDATE,
            resource_id="web-0", cloud_id="i-web0", token=1, was_running=True)])
        env.provider.resources["i-web0"] = msgspec.structs.replace(
            env.provider.resources["i-web0"], status="stopped", size="t3.small")
        env.clock.advance(minutes=2)
        env.provider.fail_steps["start"] = [THROTTLED]  # recovery's start is throttled
        result = await env.apply(config)
        failed = await of_type(env, ActionFailed)
        report = await verify_log(env.store)
    assert result.recovered == 1
    assert [isinstance(f, ActionFailed) and f.interrupted for f in failed] == [True]
    # The cycle after recovery makes the start owed.
    assert [(d.rule, [c.field for c in d.diff.changes]) for d in result.decisions] == [
        ("restart-owed→start", ["status"])]
    assert [e.outcome for e in result.executions] == ["executed"]
    assert env.provider.resources["i-web0"].status == "running"
    assert report.ok and report.in_doubt == [], report.violations
