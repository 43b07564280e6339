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


@pytest.mark.xfail(strict=True, reason=(
    "_claim() lets a ClaimAcquired replace the claim in force whoever holds it: b claims"
    " web-0 while a's claim is neither released nor expired (store time), and verify"
    " says ok; a claim taken while another is in force is two holders of one claim"))
async def test_a_claim_taken_while_another_instance_holds_it_fails_verify(
    tmp_path: Path
) -> None:
    async with environment(tmp_path, instance_id="a") as env:
        decision_id = await _decision(env)
        await _claim(env, "a", 1)
        env.clock.advance(minutes=1)  # a's claim runs 9 more minutes
        second = await _claim(env, "b", 2)
        await _execute(tmp_path / "ovi.db", "b", decision_id, 2)
        report = await verify_log(env.store)
    assert not report.ok and _names(report, second), report.violations


@pytest.mark.xfail(strict=True, reason=(
    "verify never asks whether an ActionExecuting's token is the claim in force at its"
    " position: a writes ahead and executes with token 1 after it released that claim"
    " (no claim is held at all), and verify says ok"))
async def test_an_execution_after_its_claim_was_released_fails_verify(tmp_path: Path) -> None:
    async with environment(tmp_path, instance_id="a") as env:
        decision_id = await _decision(env)
        await _claim(env, "a", 1)
        await env.store.append(claim_stream("web-0"), [ClaimReleased(
            resource_id="web-0", instance_id="a", token=1)], expected_version=1)
        executing = await _execute(tmp_path / "ovi.db", "a", decision_id, 1)
        report = await verify_log(env.store)
    assert not report.ok and _names(report, executing), report.violations


@pytest.mark.xfail(strict=True, reason=(
    "a's claim expired and b took it over (token 2, takeover_of a); a then writes ahead"
    " with its old token 1 and records a plain outcome (not flagged stale_token): the"
    " token is not the one current on the claim stream, yet verify says ok"))
async def test_an_execution_with_a_token_taken_over_fails_verify(tmp_path: Path) -> None:
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
