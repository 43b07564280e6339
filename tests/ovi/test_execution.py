"""Claims, execution, approvals, retries and recovery, in one process."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from eventstore import Appended as AppendResult
from eventstore import BackendError, Event, StreamBatch
from ovi.events import (
    ActionExecuted,
    ActionExecuting,
    ActionFailed,
    ActionSkipped,
    ApprovalGranted,
    ClaimAcquired,
    ClaimReleased,
    claim_stream,
    resource_stream,
)
from ovi.model import Action, DecisionStatus, SkipReason
from ovi.providers.base import ProviderError
from ovi.retry import RetryPolicy
from tests.ovi.harness import Env, config_text, environment, managed

pytestmark = pytest.mark.asyncio

WEB = "{type: ec2, name: web, count: %d, size: t3.micro}"
NO_WAIT = "grace_period: 0s"


async def of_type(env: Env, cls: type[Event]) -> list[Event]:
    return [e.event for e in await env.events() if isinstance(e.event, cls)]


async def foreign_claim(env: Env, resource_id: str, *, minutes: float) -> None:
    now = env.clock()
    await env.store.append(claim_stream(resource_id), [ClaimAcquired(
        resource_id=resource_id, instance_id="elsewhere:1", claimed_at=now,
        expires_at=now + timedelta(minutes=minutes), token=1)], expected_version=0)


async def test_apply_creates_missing_resources(tmp_path: Path, log_backend: str) -> None:
    async with environment(tmp_path, backend=log_backend) as env:
        result = await env.apply(config_text(WEB % 3))
        again = await env.apply(config_text(WEB % 3))
        executed = await of_type(env, ActionExecuted)
        released = await of_type(env, ClaimReleased)
    assert [e.outcome for e in result.executions] == ["executed"] * 3
    assert sorted(r.id for r in env.provider.resources.values()) == ["web-0", "web-1", "web-2"]
    assert len(executed) == 3 and len(released) == 3
    assert again.in_sync and again.executions == ()


async def test_foreign_unexpired_claim_blocks(tmp_path: Path, log_backend: str) -> None:
    async with environment(tmp_path, backend=log_backend) as env:
        await foreign_claim(env, "web-0", minutes=5)
        result = await env.apply(config_text(WEB % 1))
        await env.apply(config_text(WEB % 1))
        skipped = await of_type(env, ActionSkipped)
    assert [(e.outcome, e.reason) for e in result.executions] == [("skipped", "claimed")]
    assert env.provider.resources == {}
    assert len(skipped) == 1  # recorded once, not every cycle
    assert isinstance(skipped[0], ActionSkipped) and "elsewhere:1" in skipped[0].detail


async def test_expired_claim_is_taken_over(tmp_path: Path, log_backend: str) -> None:
    async with environment(tmp_path, backend=log_backend) as env:
        await foreign_claim(env, "web-0", minutes=5)
        env.clock.advance(minutes=6)
        result = await env.apply(config_text(WEB % 1))
        claims = await of_type(env, ClaimAcquired)
    assert [e.outcome for e in result.executions] == ["executed"]
    ours = claims[-1]
    assert isinstance(ours, ClaimAcquired)
    assert ours.takeover_of == "elsewhere:1" and ours.token == 2


async def test_claims_of_two_instances_never_overlap(tmp_path: Path) -> None:
    async with environment(tmp_path) as env, environment(tmp_path) as other:
        other.engine.coordinator.instance_id = "other"
        first = await env.engine.coordinator.claim(["a", "b"])
        second = await other.engine.coordinator.claim(["b", "c"])
    assert sorted(first.held) == ["a", "b"]
    assert sorted(second.held) == ["c"] and second.blocked == {"b": "test"}


async def test_stale_token_is_flagged(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        provider = env.provider
        real_create = provider.create

        async def create_while_claim_is_taken_over(*args: object, **kwargs: object) -> object:
            # Another instance takes the claim over while we are in the provider call.
            await env.store.append(claim_stream("web-0"), [ClaimAcquired(
                resource_id="web-0", instance_id="thief:1", claimed_at=env.clock(),
                expires_at=env.clock() + timedelta(minutes=5), token=2, takeover_of="test")])
            return await real_create(*args, **kwargs)  # type: ignore[arg-type]

        provider.create = create_while_claim_is_taken_over  # type: ignore[method-assign,assignment]
        await env.apply(config_text(WEB % 1))
        executed = await of_type(env, ActionExecuted)
        released = await of_type(env, ClaimReleased)
    assert len(executed) == 1
    assert isinstance(executed[0], ActionExecuted) and executed[0].stale_token
    assert released == []  # we no longer held it: no release in our name


async def test_executor_never_exceeds_max_concurrency(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        env.provider.latency = 0.02
        result = await env.apply(config_text(WEB % 30), max_concurrency=5)
    assert len(env.provider.resources) == 30
    assert [e.outcome for e in result.executions] == ["executed"] * 30
    assert env.provider.max_in_flight == 5


async def test_failed_write_ahead_prevents_the_provider_call(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        real = env.store.append_streams

        async def refuse_executing(batches: Sequence[StreamBatch]) -> AppendResult:
            batches = list(batches)
            if any(isinstance(e, ActionExecuting) for b in batches for e in b.events):
                raise BackendError("disk full (injected)")
            return await real(batches)

        env.store.append_streams = refuse_executing  # type: ignore[method-assign,assignment]
        result = await env.apply(config_text(WEB % 2))
    assert [c for c in env.provider.calls if c[0] == "create"] == []
    assert env.provider.resources == {}
    assert all(e.outcome == "failed" and e.error and "not attempted" in e.error
               for e in result.executions)
    assert result.execution_errors == 2


async def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    async with environment(tmp_path, managed("old-0", "i-old")) as env:
        await env.record_created(managed("old-0", "i-old"))
        result = await env.apply(config_text(WEB % 2, rules=f"{NO_WAIT}\nrequire_approval: false"),
                                 dry_run=True)
        skipped = await of_type(env, ActionSkipped)
    assert sorted(env.provider.resources) == ["i-old"]
    assert [c[0] for c in env.provider.calls if c[0] != "observe"] == []
    assert sorted((e.action, e.reason) for e in result.executions) == [
        (Action.CREATE, "dry-run"), (Action.CREATE, "dry-run"), (Action.DELETE, "dry-run")]
    assert len(skipped) == 3


async def test_delete_waits_for_approval_then_runs(tmp_path: Path) -> None:
    async with environment(tmp_path, managed("old-0", "i-old")) as env:
        config = config_text(rules=NO_WAIT)
        first = await env.apply(config)
        await env.apply(config)
        decision = first.decisions[0]
        assert decision.status == DecisionStatus.AWAITING_APPROVAL
        assert "i-old" in env.provider.resources
        await env.store.append(resource_stream("old-0"), [ApprovalGranted(
            decision_id=decision.decision_id, resource_id="old-0", by="alice",
            at=env.clock())])
        approved = await env.apply(config)
        skipped = await of_type(env, ActionSkipped)
    assert [(e.action, e.outcome) for e in approved.executions] == [(Action.DELETE, "executed")]
    assert env.provider.resources == {}
    assert [s.reason for s in skipped if isinstance(s, ActionSkipped)] == ["awaiting_approval"]


async def test_approval_lapses_when_the_finding_changes(tmp_path: Path) -> None:
    async with environment(tmp_path, managed("old-0", "i-old", team="a")) as env:
        config = config_text(rules=NO_WAIT)
        first = await env.cycle(config)
        await env.store.append(resource_stream("old-0"), [ApprovalGranted(
            decision_id=first.decisions[0].decision_id, resource_id="old-0", by="alice",
            at=env.clock())])
        # Someone changes the resource after the approval: the operator approved
        # deleting what it was, not what it is now.
        env.provider.resources["i-old"] = managed("old-0", "i-old", team="b")
        result = await env.apply(config)
    assert result.decisions[0].decision_id != first.decisions[0].decision_id
    assert result.decisions[0].status == DecisionStatus.AWAITING_APPROVAL
    assert "i-old" in env.provider.resources


async def test_transient_errors_are_retried(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        env.engine.executor.retry = RetryPolicy(attempts=4, base_delay=0.001)
        env.provider.fail_next = [ProviderError("throttled", retryable=True)] * 2
        result = await env.apply(config_text(WEB % 1))
        executed = await of_type(env, ActionExecuted)
    assert [e.outcome for e in result.executions] == ["executed"]
    assert isinstance(executed[0], ActionExecuted) and executed[0].attempts == 3


async def test_permanent_error_is_recorded_once(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        env.provider.fail_next = [ProviderError("AccessDenied", retryable=False)]
        first = await env.apply(config_text(WEB % 1))
        second = await env.apply(config_text(WEB % 1))
        failed = await of_type(env, ActionFailed)
    assert [e.outcome for e in first.executions] == ["failed"]
    assert [(e.outcome, e.reason) for e in second.executions] == [
        ("skipped", "failed-permanently")]
    assert len(failed) == 1 and isinstance(failed[0], ActionFailed)
    assert failed[0].retryable is False and failed[0].attempts == 1
    assert env.provider.resources == {}


async def test_stale_decision_is_skipped(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        real_observe = env.provider.observe

        async def observe_then_someone_acts(scope: object) -> object:
            found = await real_observe(scope)  # type: ignore[arg-type]
            # Another instance creates web-0 right after our observation.
            await env.store.append(resource_stream("web-0"), [ActionExecuted(
                cycle_id="other", decision_id="d-other", action=Action.CREATE,
                resource_id="web-0", cloud_id="i-theirs", token=1)])
            return found

        env.provider.observe = observe_then_someone_acts  # type: ignore[method-assign,assignment]
        result = await env.apply(config_text(WEB % 1))
    assert [(e.outcome, e.reason) for e in result.executions] == [("skipped", "stale")]
    assert env.provider.resources == {}


async def test_action_in_doubt_is_resolved_at_start(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        plan = await env.cycle(config_text(WEB % 2))
        # A crashed instance had claimed both and written ActionExecuting; it had
        # created web-0 in the cloud but not web-1.
        for decision in plan.decisions:
            await env.store.append(claim_stream(decision.resource_id), [ClaimAcquired(
                resource_id=decision.resource_id, instance_id="dead:1", claimed_at=env.clock(),
                expires_at=env.clock() + timedelta(minutes=1), token=1)], expected_version=0)
            await env.append_as("dead:1", resource_stream(decision.resource_id), [ActionExecuting(
                cycle_id="crashed", decision_id=decision.decision_id, action=Action.CREATE,
                resource_id=decision.resource_id, cloud_id=None, token=1)])
        web0 = plan.decisions[0]
        assert web0.diff.desired is not None
        await env.provider.create(web0.diff.desired, decision_id=web0.decision_id, owner="ovi")
        env.clock.advance(minutes=2)  # the dead instance's claims expire
        env.provider.calls.clear()
        result = await env.apply(config_text(WEB % 2))
        executed = await of_type(env, ActionExecuted)
        failed = await of_type(env, ActionFailed)
    assert result.recovered == 2
    assert [e.resource_id for e in executed if isinstance(e, ActionExecuted) and e.recovered] == [
        "web-0"]
    assert [e.resource_id for e in failed if isinstance(e, ActionFailed) and e.interrupted] == [
        "web-1"]
    assert sorted(r.id for r in env.provider.resources.values()) == ["web-0", "web-1"]
    assert [c for c in env.provider.calls if c[0] == "create"] == [("create", "web-1")]



async def test_write_ahead_is_fenced_by_the_claim(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        real = env.store.append_streams

        async def steal_before_write_ahead(batches: Sequence[StreamBatch]) -> AppendResult:
            batches = list(batches)
            if any(isinstance(e, ActionExecuting) for b in batches for e in b.events):
                await real([StreamBatch(claim_stream("web-0"), (ClaimAcquired(
                    resource_id="web-0", instance_id="thief:1:x", claimed_at=env.clock(),
                    expires_at=env.clock() + timedelta(minutes=5), token=2),))])
            return await real(batches)

        env.store.append_streams = steal_before_write_ahead  # type: ignore[method-assign,assignment]
        result = await env.apply(config_text(WEB % 1))
        executing = await of_type(env, ActionExecuting)
    assert [(e.outcome, e.reason) for e in result.executions] == [("skipped", "claim-lost")]
    assert executing == [] and env.provider.resources == {}


async def test_recovery_never_adopts_a_resource_another_decision_made(tmp_path: Path) -> None:
    # Another owner's web-0 carries the same ovi:id; our crashed create never ran.
    foreign = managed("web-0", "i-foreign", owner="team-b")
    async with environment(tmp_path, foreign) as env:
        plan = await env.cycle(config_text(WEB % 1))
        (decision,) = [d for d in plan.decisions if d.action == Action.CREATE]
        await env.store.append(resource_stream("web-0"), [ActionExecuting(
            cycle_id="crashed", decision_id=decision.decision_id, action=Action.CREATE,
            resource_id="web-0", cloud_id=None, token=1)])
        result = await env.apply(config_text(WEB % 1))
        failed = await of_type(env, ActionFailed)
    assert result.recovered == 1
    assert [isinstance(f, ActionFailed) and f.interrupted for f in failed] == [True]
    ours = [r for r in env.provider.resources.values() if r.owner == "ovi"]
    assert [r.id for r in ours] == ["web-0"]  # created, not mistaken for the foreign one


async def test_a_peers_skip_does_not_hide_an_action_in_doubt(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        plan = await env.cycle(config_text(WEB % 1))
        (decision,) = plan.decisions
        await env.store.append(resource_stream("web-0"), [
            ActionExecuting(cycle_id="a", decision_id=decision.decision_id,
                            action=Action.CREATE, resource_id="web-0", cloud_id=None, token=1),
            ActionSkipped(cycle_id="b", decision_id=decision.decision_id, action=Action.CREATE,
                          resource_id="web-0", reason=SkipReason.CLAIMED),
        ])
        result = await env.apply(config_text(WEB % 1))
    assert result.recovered == 1


async def test_an_executed_create_that_did_not_stick_runs_again(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        await env.apply(config_text(WEB % 1))
        env.provider.resources.clear()  # the instance died right after launch
        env.provider._by_decision.clear()
        result = await env.apply(config_text(WEB % 1))
    assert [e.outcome for e in result.executions] == ["executed"]
    assert [r.id for r in env.provider.resources.values()] == ["web-0"]
