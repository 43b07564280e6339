"""The executor claims its resources a share at a time and starts each
share's actions as soon as it is claimed (a thousand claims at once kept
every call waiting ~20 ms): what it must still do on real SQLite files with
the fake provider."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from eventstore import Event, EventStoreError
from ovi.coordinator import ClaimResult
from ovi.events import ActionExecuting, ActionSkipped, ClaimAcquired, ClaimReleased, claim_stream
from ovi.executor import _shares
from ovi.model import Action, DesiredResource, Resource, SkipReason
from ovi.replay import verify_log
from tests.ovi.harness import Env, config_text, environment

pytestmark = pytest.mark.asyncio

WEB = "{type: ec2, name: web, count: %d, size: t3.micro}"


async def of_type(env: Env, cls: type[Event]) -> list[Event]:
    return [e.event for e in await env.events() if isinstance(e.event, cls)]


async def assert_verifies(env: Env) -> None:
    report = await verify_log(env.store)
    assert report.ok and report.in_doubt == [], (report.violations, report.in_doubt)


async def test_shares_double_and_keep_a_resources_decisions_together() -> None:
    from tests.ovi.test_decisions import decide, diffs_of, want

    decisions = decide(diffs_of([want(f"web-{i}") for i in range(10)], []))
    sizes = [len(share) for share in _shares(decisions, 2)]
    assert sizes == [2, 4, 4]
    twice = [decisions[0], decisions[0], *decisions[1:4]]  # two decisions on web-0
    assert [[d.resource_id for d in share] for share in _shares(twice, 1)] == [
        ["web-0", "web-0"], ["web-1", "web-2"], ["web-3"]]


async def test_the_first_calls_start_before_every_resource_is_claimed(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        claimed_at_first_call: list[int] = []
        first: list[bool] = []
        real_create = env.provider.create

        async def create(desired: DesiredResource, **kwargs: object) -> Resource:
            if not first:
                first.append(True)
                claims = await of_type(env, ClaimAcquired)
                claimed_at_first_call.append(len(claims))
            return await real_create(desired, **kwargs)  # type: ignore[arg-type]

        env.provider.create = create  # type: ignore[method-assign]
        result = await env.apply(config_text(WEB % 40), max_concurrency=4)
        await assert_verifies(env)
        claims = await of_type(env, ClaimAcquired)
        executing = await of_type(env, ActionExecuting)
    assert [e.outcome for e in result.executions] == ["executed"] * 40
    assert claimed_at_first_call[0] < 40, claimed_at_first_call
    # Each resource claimed once, and acted on once, under its claim.
    assert sorted(c.resource_id for c in claims if isinstance(c, ClaimAcquired)) == sorted(
        f"web-{i}" for i in range(40))
    assert len(executing) == 40 and len(env.provider.resources) == 40


async def test_a_resource_held_elsewhere_in_a_later_share_is_skipped_alone(
    tmp_path: Path
) -> None:
    async with environment(tmp_path) as env:
        now = env.clock()
        await env.store.append(claim_stream("web-7"), [ClaimAcquired(
            resource_id="web-7", instance_id="elsewhere:1", claimed_at=now,
            expires_at=now + timedelta(minutes=30), token=1)], expected_version=0)
        result = await env.apply(config_text(WEB % 10), max_concurrency=2)
        skipped = await of_type(env, ActionSkipped)
        await assert_verifies(env)
    outcomes = {e.resource_id: (e.outcome, e.reason) for e in result.executions}
    assert outcomes.pop("web-7") == ("skipped", SkipReason.CLAIMED)
    assert set(outcomes.values()) == {("executed", None)}
    assert [(s.resource_id, s.reason) for s in skipped if isinstance(s, ActionSkipped)] == [
        ("web-7", SkipReason.CLAIMED)]


async def test_a_later_share_that_cannot_be_claimed_lets_the_running_actions_finish(
    tmp_path: Path
) -> None:
    """The log refuses the second share's claims: the first share's actions,
    already under way, finish and record their outcomes; nothing more runs,
    and the error reaches the caller."""
    async with environment(tmp_path) as env:
        coordinator = env.engine.coordinator
        real_claim = coordinator.claim
        asked: list[int] = []

        async def claim(resource_ids: object) -> ClaimResult:
            asked.append(1)
            if len(asked) == 2:
                raise EventStoreError("disk full")
            return await real_claim(resource_ids)  # type: ignore[arg-type]

        coordinator.claim = claim  # type: ignore[method-assign]
        with pytest.raises(EventStoreError, match="disk full"):
            await env.apply(config_text(WEB % 6), max_concurrency=2)
        released = await of_type(env, ClaimReleased)
        await assert_verifies(env)
    assert sorted(env.provider.resources[c].id for c in env.provider.resources) == [
        "web-0", "web-1"]
    assert sorted(r.resource_id for r in released if isinstance(r, ClaimReleased)) == [
        "web-0", "web-1"]


async def test_nothing_is_claimed_once_the_service_is_draining(tmp_path: Path) -> None:
    from ovi.engine import Engine

    async with environment(tmp_path) as env:
        env.engine = Engine(env.store, env.views, env.provider, stopping=lambda: True)
        result = await env.apply(config_text(WEB % 5), max_concurrency=2)
        claims = await of_type(env, ClaimAcquired)
    assert [(e.action, e.outcome, e.reason) for e in result.executions] == [
        (Action.CREATE, "skipped", SkipReason.DRAINING)] * 5
    assert claims == [] and [c for c in env.provider.calls if c[0] != "observe"] == []


async def test_a_share_whose_skips_cannot_be_recorded_gives_its_claims_back(
    tmp_path: Path
) -> None:
    """The second share is claimed, then recording its skips fails: its
    claims are released, not left to block every instance until they expire."""
    async with environment(tmp_path) as env:
        now = env.clock()
        await env.store.append(claim_stream("web-3"), [ClaimAcquired(
            resource_id="web-3", instance_id="elsewhere:1", claimed_at=now,
            expires_at=now + timedelta(minutes=30), token=1)], expected_version=0)
        executor = env.engine.executor
        record_skips = executor._record_skips

        async def failing(cycle_id: str, skips: list[object]) -> None:
            if skips:
                raise EventStoreError("disk full")
            await record_skips(cycle_id, skips)  # type: ignore[arg-type]

        executor._record_skips = failing  # type: ignore[method-assign,assignment]
        with pytest.raises(EventStoreError, match="disk full"):
            await env.apply(config_text(WEB % 6), max_concurrency=2)
        acquired = await of_type(env, ClaimAcquired)
        released = await of_type(env, ClaimReleased)
        await assert_verifies(env)
    ours = sorted(c.resource_id for c in acquired
                  if isinstance(c, ClaimAcquired) and c.instance_id != "elsewhere:1")
    assert ours == ["web-0", "web-1", "web-2", "web-4", "web-5"]
    assert sorted(r.resource_id for r in released if isinstance(r, ClaimReleased)) == ours
    assert sorted(env.provider.resources[c].id for c in env.provider.resources) == [
        "web-0", "web-1"]


async def test_an_action_recorded_elsewhere_before_a_later_share_is_claimed_makes_it_stale(
    tmp_path: Path
) -> None:
    """While the first share's calls run, another instance claims web-29 (in
    the last share, not claimed by us yet), acts on it and releases it. Our
    decision on web-29 relied on an observation from before that: it is
    skipped stale once its share is claimed, and nothing else is."""
    from eventstore import SQLiteEventStore, StreamBatch
    from ovi.events import ActionExecuted, registry, resource_stream

    async with environment(tmp_path) as env, \
            SQLiteEventStore(tmp_path / "ovi.db", registry(), instance_id="elsewhere:1",
                             clock=env.clock) as other:
        real_create = env.provider.create
        # The other calls wait for the other instance's action: our feeder,
        # held by the full queue, cannot claim web-29 before it is recorded.
        recorded = anyio.Event()

        async def create(desired: DesiredResource, **kwargs: object) -> Resource:
            if desired.id != "web-0":
                await recorded.wait()
            else:
                now = env.clock()
                await other.append_streams([
                    StreamBatch(claim_stream("web-29"), (
                        ClaimAcquired(resource_id="web-29", instance_id="elsewhere:1",
                                      claimed_at=now, token=1,
                                      expires_at=now + timedelta(minutes=10)),
                        ClaimReleased(resource_id="web-29", instance_id="elsewhere:1",
                                      token=1)), expected_version=0),
                    StreamBatch(resource_stream("web-29"), (ActionExecuted(
                        cycle_id="theirs", decision_id="d-theirs", action=Action.CREATE,
                        resource_id="web-29", cloud_id="i-theirs", token=1),))])
                recorded.set()
            return await real_create(desired, **kwargs)  # type: ignore[arg-type]

        env.provider.create = create  # type: ignore[method-assign]
        result = await env.apply(config_text(WEB % 30), max_concurrency=2)
        released = await of_type(env, ClaimReleased)
        # (No verify: the other instance's action has no decision behind it.)
    outcomes = {e.resource_id: (e.outcome, e.reason) for e in result.executions}
    assert outcomes.pop("web-29") == ("skipped", SkipReason.STALE)
    assert set(outcomes.values()) == {("executed", None)}
    assert len(env.provider.resources) == 29
    ours = [r for r in released if isinstance(r, ClaimReleased) and r.resource_id == "web-29"
            and r.instance_id != "elsewhere:1"]
    assert len(ours) == 1
