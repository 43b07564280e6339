"""Hostile review of issue 13's last bullet: ``verify`` checks the fences.
Logs an honest Ovi never writes (a buggy or forged instance wrote them); each
must fail verification naming the positions. Each strict xfail is a finding."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from eventstore import SQLiteEventStore
from ovi.events import (
    ActionExecuted,
    ActionExecuting,
    ClaimAcquired,
    ClaimReleased,
    claim_stream,
    registry,
    resource_stream,
)
from ovi.model import Action
from ovi.replay import Verification, verify_log
from tests.ovi.harness import Env, config_text, environment

pytestmark = pytest.mark.asyncio

TTL = timedelta(minutes=10)


async def _decision(env: Env) -> str:
    plan = await env.cycle(config_text("{type: ec2, name: web}"))
    (decision,) = plan.decisions
    return decision.decision_id


async def _claim(env: Env, instance: str, token: int, **fields: str) -> int:
    now = env.clock()
    done = await env.store.append(claim_stream("web-0"), [ClaimAcquired(
        resource_id="web-0", instance_id=instance, claimed_at=now, expires_at=now + TTL,
        token=token, **fields)], expected_version=token - 1)
    return done.first_position


async def _execute(path: Path, instance: str, decision_id: str, token: int) -> int:
    """``instance`` writes ahead and records the create done, as the executor would."""
    async with SQLiteEventStore(path, registry(), instance_id=instance) as store:
        done = await store.append(resource_stream("web-0"), [
            ActionExecuting(cycle_id=instance, decision_id=decision_id, action=Action.CREATE,
                            resource_id="web-0", cloud_id=None, token=token),
            ActionExecuted(cycle_id=instance, decision_id=decision_id, action=Action.CREATE,
                           resource_id="web-0", cloud_id="i-1", token=token)])
    return done.first_position


def _names(report: Verification, position: int) -> bool:
    """Some violation is at ``position`` or names it."""
    return any(v.position == position or f"position {position}" in v.reason
               for v in report.violations)


async def test_a_claim_taken_while_another_instance_holds_it_fails_verify(
    tmp_path: Path
) -> None:
    # Held since d053d23 (the strict xfail of this review passed).
    async with environment(tmp_path, instance_id="a") as env:
        decision_id = await _decision(env)
        await _claim(env, "a", 1)
        env.clock.advance(minutes=1)  # a's claim runs 9 more minutes
        second = await _claim(env, "b", 2)
        await _execute(tmp_path / "ovi.db", "b", decision_id, 2)
        report = await verify_log(env.store)
    assert not report.ok and _names(report, second), report.violations


async def test_an_execution_after_its_claim_was_released_fails_verify(tmp_path: Path) -> None:
    # Held since d053d23.
    async with environment(tmp_path, instance_id="a") as env:
        decision_id = await _decision(env)
        await _claim(env, "a", 1)
        await env.store.append(claim_stream("web-0"), [ClaimReleased(
            resource_id="web-0", instance_id="a", token=1)], expected_version=1)
        executing = await _execute(tmp_path / "ovi.db", "a", decision_id, 1)
        report = await verify_log(env.store)
    assert not report.ok and _names(report, executing), report.violations


async def test_an_execution_with_a_token_taken_over_fails_verify(tmp_path: Path) -> None:
    # Held since d053d23.
    async with environment(tmp_path, instance_id="a") as env:
        decision_id = await _decision(env)
        await _claim(env, "a", 1)
        env.clock.advance(minutes=11)
        await _claim(env, "b", 2, takeover_of="a")
        executing = await _execute(tmp_path / "ovi.db", "a", decision_id, 1)
        report = await verify_log(env.store)
    assert not report.ok and _names(report, executing), report.violations


async def test_an_outcome_without_its_write_ahead_fails_verify(tmp_path: Path) -> None:
    # Held: an outcome whose ActionExecuting comes *after* it is caught.
    async with environment(tmp_path, instance_id="a") as env:
        decision_id = await _decision(env)
        await _claim(env, "a", 1)
        done = await env.store.append(resource_stream("web-0"), [
            ActionExecuted(cycle_id="a", decision_id=decision_id, action=Action.CREATE,
                           resource_id="web-0", cloud_id="i-1", token=1),
            ActionExecuting(cycle_id="a", decision_id=decision_id, action=Action.CREATE,
                            resource_id="web-0", cloud_id=None, token=1)])
        report = await verify_log(env.store)
    assert not report.ok and _names(report, done.first_position), report.violations


async def test_an_early_takeover_from_another_host_fails_verify(tmp_path: Path) -> None:
    holder, taker = "host-a:100:aaaaaa", "host-b:200:bbbbbb"
    async with environment(tmp_path, instance_id=holder) as env:
        decision_id = await _decision(env)
        await _claim(env, holder, 1)
        env.clock.advance(minutes=1)  # the holder's claim runs 9 more minutes
        second = await _claim(env, taker, 2, takeover_of=holder)
        await _execute(tmp_path / "ovi.db", taker, decision_id, 2)
        report = await verify_log(env.store)
    assert not report.ok and _names(report, second), report.violations


async def test_an_unflagged_outcome_under_a_token_taken_over_fails_verify(
    tmp_path: Path
) -> None:
    async with environment(tmp_path, instance_id="a") as env:
        decision_id = await _decision(env)
        await _claim(env, "a", 1)
        await env.store.append(resource_stream("web-0"), [ActionExecuting(
            cycle_id="a", decision_id=decision_id, action=Action.CREATE, resource_id="web-0",
            cloud_id=None, token=1)])
        env.clock.advance(minutes=11)
        await _claim(env, "b", 2, takeover_of="a")
        await _execute(tmp_path / "ovi.db", "b", decision_id, 2)
        late = await env.store.append(resource_stream("web-0"), [ActionExecuted(
            cycle_id="a", decision_id=decision_id, action=Action.CREATE, resource_id="web-0",
            cloud_id="i-2", token=1)])
        report = await verify_log(env.store)
    assert not report.ok and _names(report, late.first_position), report.violations


async def test_a_write_ahead_after_its_claim_expired_fails_verify(tmp_path: Path) -> None:
    async with environment(tmp_path, instance_id="a") as env:
        decision_id = await _decision(env)
        await _claim(env, "a", 1)
        env.clock.advance(minutes=11)
        late = await env.store.append(resource_stream("web-0"), [ActionExecuting(
            cycle_id="a", decision_id=decision_id, action=Action.CREATE, resource_id="web-0",
            cloud_id=None, token=1)])
        await _claim(env, "b", 2, takeover_of="a")
        await _execute(tmp_path / "ovi.db", "b", decision_id, 2)
        report = await verify_log(env.store)
    assert not report.ok and _names(report, late.first_position), report.violations


async def test_a_release_of_another_instances_claim_fails_verify(tmp_path: Path) -> None:
    async with environment(tmp_path, instance_id="a") as env:
        decision_id = await _decision(env)
        await _claim(env, "a", 1)
        env.clock.advance(minutes=1)
        released = await env.store.append(claim_stream("web-0"), [ClaimReleased(
            resource_id="web-0", instance_id="b", token=1)], expected_version=1)
        now = env.clock()
        await env.store.append(claim_stream("web-0"), [ClaimAcquired(
            resource_id="web-0", instance_id="b", claimed_at=now, expires_at=now + TTL,
            token=3)], expected_version=2)
        await _execute(tmp_path / "ovi.db", "b", decision_id, 3)
        report = await verify_log(env.store)
    assert not report.ok and _names(report, released.first_position), report.violations


async def test_a_plain_outcome_by_another_instance_than_the_write_ahead_fails_verify(
    tmp_path: Path
) -> None:
    async with environment(tmp_path, instance_id="a") as env:
        decision_id = await _decision(env)
        await _claim(env, "a", 1)
        await env.store.append(resource_stream("web-0"), [ActionExecuting(
            cycle_id="a", decision_id=decision_id, action=Action.CREATE, resource_id="web-0",
            cloud_id=None, token=1)])
        async with SQLiteEventStore(tmp_path / "ovi.db", registry(), instance_id="b") as b:
            done = await b.append(resource_stream("web-0"), [ActionExecuted(
                cycle_id="b", decision_id=decision_id, action=Action.CREATE,
                resource_id="web-0", cloud_id="i-0other", token=1)])
        report = await verify_log(env.store)
    assert not report.ok and _names(report, done.first_position), report.violations
