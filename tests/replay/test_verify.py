"""``verify``: the hash chain (rows edited, deleted, reordered behind the
store's back) and the causal consistency of executions."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from eventstore import SQLiteEventStore
from ovi.events import (
    ActionExecuted,
    ActionExecuting,
    ActionFailed,
    ClaimAcquired,
    ClaimReleased,
    ClaimRenewed,
    claim_stream,
    registry,
    resource_stream,
)
from ovi.model import Action
from ovi.replay import verify_log
from tests.ovi.harness import config_text, environment
from tests.replay.support import Story, copy_log, json_object, replay


def tamper(path: Path, *statements: str) -> None:
    """Change the log as an attacker with the file would: triggers first."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("DROP TRIGGER events_append_only_update")
        db.execute("DROP TRIGGER events_append_only_delete")
        for statement in statements:
            db.execute(statement)


def test_an_intact_log_verifies(story: Story) -> None:
    report = json_object(replay("verify", "--json", store=story.path))
    assert report["ok"] is True and report["first_bad_position"] is None
    assert report["events_checked"] == report["head_position"] > 40
    assert report["actions"] == 3 and report["violations"] == [] and report["in_doubt"] == []
    text = replay("verify", store=story.path)
    assert text.returncode == 0 and text.stdout.startswith("hash chain   ok")


@pytest.mark.parametrize(("statements", "position", "why"), [
    (["UPDATE events SET data = replace(data, '\"alice\"', '\"mallory\"')"
      " WHERE type = 'ApprovalGranted'"], "approval", "row edited"),
    (["DELETE FROM events WHERE position = 30"], "30", "position 30 missing"),
    (["UPDATE events SET position = -1 WHERE position = 35",
      "UPDATE events SET position = 35 WHERE position = 34",
      "UPDATE events SET position = 34 WHERE position = -1"], "34", "rows reordered"),
], ids=["edited", "deleted", "reordered"])
def test_tampering_is_found_at_its_position(story: Story, tmp_path: Path,
                                            statements: list[str], position: str,
                                            why: str) -> None:
    path = copy_log(story, tmp_path)
    if position == "approval":
        with closing(sqlite3.connect(path)) as db:
            position = str(db.execute(
                "SELECT position FROM events WHERE type = 'ApprovalGranted'").fetchone()[0])
    tamper(path, *statements)
    done = replay("verify", store=path)
    assert done.returncode == 1, done.stdout
    assert f"first bad position {position}:" in done.stdout and why in done.stdout
    report = json_object(replay("verify", "--json", store=path))
    assert report["ok"] is False and report["first_bad_position"] == int(position)
    assert report["chain"]["position"] == int(position)
    assert "Traceback" not in done.stderr


async def _append(path: Path, *events: ActionExecuting | ActionExecuted) -> None:
    async with SQLiteEventStore(path, registry(), instance_id="tester") as store:
        for event in events:
            await store.append(resource_stream(event.resource_id), [event])


async def _claim(path: Path, resource_id: str) -> int:
    """A claim for "tester" (the fence its executions must hold); its token."""
    async with SQLiteEventStore(path, registry(), instance_id="tester") as store:
        token = await store.stream_version(claim_stream(resource_id)) + 1
        now = await store.now()
        await store.append(claim_stream(resource_id), [ClaimAcquired(
            resource_id=resource_id, instance_id="tester", claimed_at=now,
            expires_at=now + timedelta(minutes=10), token=token)], expected_version=token - 1)
    return token


def _executing(decision_id: str, token: int = 1, resource_id: str = "web-0") -> ActionExecuting:
    return ActionExecuting(cycle_id="c", decision_id=decision_id, action=Action.CREATE,
                           resource_id=resource_id, cloud_id=None, token=token)


def _executed(decision_id: str, token: int = 1, resource_id: str = "web-0") -> ActionExecuted:
    return ActionExecuted(cycle_id="c", decision_id=decision_id, action=Action.CREATE,
                          resource_id=resource_id, cloud_id="i-1", token=token)


def test_a_second_outcome_fails_verification_with_its_position(story: Story,
                                                               tmp_path: Path) -> None:
    path = copy_log(story, tmp_path)
    decision = _decision_of(path, "web-1")
    token = asyncio.run(_claim(path, "web-1"))
    head = asyncio.run(_count(path))
    asyncio.run(_append(path, _executing(decision, token, "web-1"),
                        _executed(decision, token, "web-1"), _executed(decision, token, "web-1")))
    report = json_object(replay("verify", "--json", store=path))
    assert report["chain"] is None and report["ok"] is False
    assert report["first_bad_position"] == head + 3
    assert "second outcome" in report["why"]


async def _count(path: Path) -> int:
    async with SQLiteEventStore(path, registry()) as store:
        return await store.last_position()


def _decision_of(path: Path, resource_id: str) -> str:
    with closing(sqlite3.connect(path)) as db:
        row = db.execute("SELECT json_extract(data, '$.decision.decision_id') FROM events"
                         " WHERE type = 'DecisionMade' AND stream = ?",
                         (f"resource/{resource_id}",)).fetchone()
    return str(row[0])


@pytest.mark.asyncio
async def test_causal_violations_and_actions_in_doubt(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        plan = await env.cycle(config_text("{type: ec2, name: web}"))
        decision = plan.decisions[0].decision_id
        stream = resource_stream("web-0")
        await _claim(tmp_path / "ovi.db", "web-0")
        await env.append_as("tester", stream, [_executing(decision)])  # then a crash: in doubt
        await env.store.append(stream, [_executed(decision, token=2)])  # no executing
        await env.append_as("tester", stream, [_executing("d-nobodymadeit")])
        await env.store.append(stream, [ActionFailed(
            cycle_id="c", decision_id="d-nobodymadeit", action=Action.CREATE,
            resource_id="web-0", cloud_id=None, token=1, error="x", retryable=True)])
        await env.store.append(resource_stream("web-9"), [_executing(decision, 3, "web-9")])
        report = await verify_log(env.store)
    assert report.chain_problem is None and not report.ok
    reasons = [(v.type, v.reason) for v in report.violations]
    assert reasons[0][0] == "ActionExecuted" and "without an ActionExecuting" in reasons[0][1]
    assert any("d-nobodymadeit" in r and "no earlier DecisionMade" in r for _, r in reasons)
    assert any("concerns web-9 here but web-0" in r for _, r in reasons)
    assert any("on web-9 under claim token 3, but no claim on it is in force" in r
               for _, r in reasons)
    assert [(d.decision_id, d.token) for d in report.in_doubt] == [(decision, 1), (decision, 3)]
    assert report.first_problem is not None
    assert report.first_problem.position == report.violations[0].position


@pytest.mark.asyncio
async def test_in_doubt_alone_is_not_a_failure(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        plan = await env.cycle(config_text("{type: ec2, name: web}"))
        await _claim(tmp_path / "ovi.db", "web-0")
        await env.append_as("tester", resource_stream("web-0"),
                            [_executing(plan.decisions[0].decision_id)])
        report = await verify_log(env.store)
    assert report.ok and len(report.in_doubt) == 1 and report.actions == 1


def test_in_doubt_is_reported_and_verify_still_passes(story: Story, tmp_path: Path) -> None:
    path = copy_log(story, tmp_path)
    token = asyncio.run(_claim(path, "web-1"))
    asyncio.run(_append(path, _executing(_decision_of(path, "web-1"), token, "web-1")))
    done = replay("verify", store=path)
    assert done.returncode == 0, done.stdout
    assert "in doubt     1 execution(s) started without an outcome" in done.stdout
    assert "web-1" in done.stdout and "by tester" in done.stdout


@pytest.mark.asyncio
async def test_claim_histories_renewals_and_an_honest_late_outcome(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        plan = await env.cycle(config_text("{type: ec2, name: web}"))
        decision = plan.decisions[0].decision_id
        now = env.clock()
        later = now + timedelta(minutes=10)
        claims = claim_stream("web-0")

        def renewal(token: int, by: str) -> ClaimRenewed:
            return ClaimRenewed(resource_id="web-0", instance_id=by, token=token,
                                renewed_at=now, expires_at=later)

        await env.store.append(claims, [
            ClaimAcquired(resource_id="web-0", instance_id="a", claimed_at=now,
                          expires_at=later, token=1),
            renewal(1, "a"),  # fine: version 2, token still 1
        ])
        await env.append_as("a", resource_stream("web-0"), [_executing(decision)])
        await env.store.append(claims, [
            # at a's expiry: an early takeover is honest only from a's own home
            ClaimAcquired(resource_id="web-0", instance_id="b", claimed_at=later,
                          expires_at=later + timedelta(minutes=10), token=3,
                          takeover_of="a"),
        ])
        await env.store.append(resource_stream("web-0"), [
            # b's recovery resolved a's action; a, late, says what it did: flagged.
            ActionFailed(cycle_id="c", decision_id=decision, action=Action.CREATE,
                         resource_id="web-0", cloud_id=None, token=1, error="x",
                         retryable=True, interrupted=True),
            msgspec.structs.replace(_executed(decision), stale_token=True),
        ])
        honest = await verify_log(env.store)
        await env.store.append(claims, [
            renewal(1, "a"),  # a renews a claim b holds now
            ClaimReleased(resource_id="web-0", instance_id="b", token=3),
            renewal(3, "b"),  # after the release
            ClaimAcquired(resource_id="web-0", instance_id="c", claimed_at=now,
                          expires_at=later, token=9),  # not the stream's version
        ])
        report = await verify_log(env.store)
    assert honest.ok, honest.violations
    reasons = [v.reason for v in report.violations]
    assert len(reasons) == 3, reasons
    assert "a renews claim token 1 on web-0, but token 3 of b is in force" in reasons[0]
    assert "but no claim is in force" in reasons[1]
    assert "claim token 9 on web-0 is not the claim stream's version (7)" in reasons[2]
