"""``verify`` and fencing: an execution recorded by an instance that did not
hold the resource's claim is the very thing claims exist to prevent, so a
log that shows one must not verify."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from eventstore import SQLiteEventStore
from ovi.events import (
    ActionExecuted,
    ActionExecuting,
    ClaimAcquired,
    claim_stream,
    registry,
    resource_stream,
)
from ovi.model import Action
from ovi.replay import verify_log
from tests.ovi.harness import config_text, environment

pytestmark = pytest.mark.asyncio


async def test_an_execution_by_an_instance_that_does_not_hold_the_claim_fails_verify(
    tmp_path: Path
) -> None:
    async with environment(tmp_path, instance_id="a") as env:
        plan = await env.cycle(config_text("{type: ec2, name: web}"))
        (decision,) = plan.decisions
        now = env.clock()
        await env.store.append(claim_stream("web-0"), [ClaimAcquired(
            resource_id="web-0", instance_id="a", claimed_at=now,
            expires_at=now + timedelta(minutes=10), token=1)], expected_version=0)
        # Another instance acts on web-0 while a holds it, borrowing a's token.
        async with SQLiteEventStore(tmp_path / "ovi.db", registry(),
                                    instance_id="mallory") as other:
            await other.append(resource_stream("web-0"), [
                ActionExecuting(cycle_id="m", decision_id=decision.decision_id,
                                action=Action.CREATE, resource_id="web-0", cloud_id=None,
                                token=1),
                ActionExecuted(cycle_id="m", decision_id=decision.decision_id,
                               action=Action.CREATE, resource_id="web-0", cloud_id="i-1",
                               token=1)])
        report = await verify_log(env.store)
    assert not report.ok
    assert any("mallory" in v.reason and "claim" in v.reason for v in report.violations)


async def test_two_instances_holding_one_claim_at_once_fails_verify(tmp_path: Path) -> None:
    async with environment(tmp_path, instance_id="a") as env:
        await env.cycle(config_text("{type: ec2, name: web}"))
        now = env.clock()
        stream = claim_stream("web-0")
        await env.store.append(stream, [ClaimAcquired(
            resource_id="web-0", instance_id="a", claimed_at=now,
            expires_at=now + timedelta(minutes=10), token=1)], expected_version=0)
        first = await env.store.last_position()
        # b claims it while a's claim runs, without saying it takes it over
        await env.store.append(stream, [ClaimAcquired(
            resource_id="web-0", instance_id="b", claimed_at=now + timedelta(minutes=1),
            expires_at=now + timedelta(minutes=11), token=2)], expected_version=1)
        report = await verify_log(env.store)
    (violation,) = report.violations
    assert violation.position == first + 1
    assert f"while a holds token 1 (acquired at position {first})" in violation.reason
    assert "two instances held one claim at once" in violation.reason
