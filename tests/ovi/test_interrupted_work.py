"""Long and interrupted work, against the fake provider on real SQLite files:
claims kept through long calls, resizes resumed and restarts owed, creates
whose resource died, each ending with a clean ``verify``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from eventstore import Appended, Event, StreamBatch
from ovi.coordinator import Claim
from ovi.events import (
    ActionExecuted,
    ActionExecuting,
    ActionFailed,
    Actor,
    AutomationPaused,
    AutomationResumed,
    ClaimAcquired,
    ClaimRenewed,
    RestartSettled,
    claim_stream,
    pause_stream,
    resource_stream,
)
from ovi.model import Action, DecisionStatus, DesiredResource, Resource, SkipReason
from ovi.providers.base import ProviderError
from ovi.replay import verify_log
from ovi.retry import RetryPolicy
from tests.ovi.harness import Env, config_text, environment, managed

pytestmark = pytest.mark.asyncio

WEB = "{type: ec2, name: web, count: %d, size: %s}"
RESIZE = "allow_resize: true"
THROTTLED = ProviderError("RequestLimitExceeded (injected)", retryable=True)


async def of_type(env: Env, cls: type[Event]) -> list[Event]:
    return [e.event for e in await env.events() if isinstance(e.event, cls)]


async def assert_verifies(env: Env) -> None:
    report = await verify_log(env.store)
    assert report.ok and report.in_doubt == [], (report.violations, report.in_doubt)


def web0(env: Env) -> Resource:
    (found,) = [r for r in env.provider.resources.values() if r.id == "web-0"]
    return found


def quick_retries(env: Env) -> None:
    env.engine.executor.retry = RetryPolicy(attempts=4, base_delay=0.001)


# -- claims through long actions ---------------------------------------------------


async def test_a_claim_is_renewed_through_a_call_longer_than_its_ttl(tmp_path: Path) -> None:
    ttl = timedelta(seconds=1)
    config = config_text(WEB % (1, "t3.small"), rules=RESIZE)
    async with environment(tmp_path, managed("web-0", "i-web0"), instance_id="a",
                           real_time=True, claim_ttl=ttl) as first, \
            environment(tmp_path, instance_id="b", real_time=True, claim_ttl=ttl) as second:
        second.provider.resources = first.provider.resources  # one cloud
        first.provider.slow["update"] = 2.5  # the resize outlasts the TTL twice
        results = []

        async def apply_first() -> None:
            results.append(await first.apply(config))

        async with anyio.create_task_group() as group:
            group.start_soon(apply_first)
            await anyio.sleep(1.5)  # the claim would have run out by now
            meanwhile = await second.apply(config)
        (done,) = results[0].executions
        renewals = await of_type(first, ClaimRenewed)
        claims = await of_type(first, ClaimAcquired)
        executed = await of_type(first, ActionExecuted)
        await assert_verifies(first)
    # The second instance could neither take the claim (recovery) nor act.
    assert meanwhile.recovered == 0
    assert [(e.outcome, e.reason) for e in meanwhile.executions] == [
        ("skipped", SkipReason.IN_DOUBT)]
    assert [c.instance_id for c in claims if isinstance(c, ClaimAcquired)] == ["a"]
    assert renewals and all(isinstance(r, ClaimRenewed) and r.instance_id == "a"
                            and r.token == 1 for r in renewals)
    # The action ran exactly once, and its outcome holds the claim it began with.
    assert done.outcome == "executed"
    calls = first.provider.calls + second.provider.calls
    assert [c for c in calls if c[0] == "update"] == [("update", "i-web0")]
    assert [s for s, _ in first.provider.steps] == ["stop", "modify", "start"]
    assert len(executed) == 1 and isinstance(executed[0], ActionExecuted)
    assert not executed[0].stale_token


async def test_work_waiting_for_a_slot_does_not_start_once_its_claim_is_taken(
    tmp_path: Path
) -> None:
    # The thief takes over early, as only an instance of the holder's own
    # home honestly does (it saw the holder's process gone).
    async with environment(tmp_path, instance_id="host-a:100:aaaaaa") as env:
        provider = env.provider
        real_create = provider.create

        async def create_while_web1_waits(desired: DesiredResource, *, decision_id: str,
                                          owner: str, attempt: int = 1,
                                          token_unused: bool = False) -> Resource:
            if desired.id == "web-0":
                # web-1 is claimed (its share is claimed while web-0's call
                # runs), written ahead and waits for the one call slot; its
                # claim is taken over, and a while passes.
                await web1_written_ahead.wait()
                await env.store.append(claim_stream("web-1"), [ClaimAcquired(
                    resource_id="web-1", instance_id="host-a:1:bbbbbb",
                    claimed_at=env.clock(), expires_at=env.clock() + timedelta(minutes=30),
                    token=2, takeover_of="host-a:100:aaaaaa")], expected_version=1)
                env.clock.advance(minutes=4)
            return await real_create(desired, decision_id=decision_id, owner=owner,
                                     attempt=attempt, token_unused=token_unused)

        coordinator = env.engine.coordinator
        append_fenced = coordinator.append_fenced
        web1_written_ahead = anyio.Event()

        async def noting_web1(claim: Claim, batches: Sequence[StreamBatch],
                              **kwargs: Any) -> Appended:
            appended = await append_fenced(claim, batches, **kwargs)
            if claim.resource_id == "web-1":
                web1_written_ahead.set()
            return appended

        coordinator.append_fenced = noting_web1  # type: ignore[method-assign]
        provider.create = create_while_web1_waits  # type: ignore[method-assign]
        result = await env.apply(config_text(WEB % (2, "t3.micro")), max_concurrency=1)
        failed = await of_type(env, ActionFailed)
        await assert_verifies(env)
    assert [c for c in provider.calls if c[0] == "create"] == [("create", "web-0")]
    assert sorted((e.resource_id, e.outcome, e.reason) for e in result.executions) == [
        ("web-0", "executed", None), ("web-1", "skipped", SkipReason.CLAIM_LOST)]
    (closed,) = failed
    assert isinstance(closed, ActionFailed) and closed.resource_id == "web-1"
    assert (closed.attempts, closed.retryable, closed.stale_token) == (0, True, True)
    assert "not attempted" in closed.error


# -- resizes ---------------------------------------------------------------------


async def test_a_resize_retried_after_a_throttled_start_still_starts_it(
    tmp_path: Path
) -> None:
    async with environment(tmp_path, managed("web-0", "i-web0")) as env:
        quick_retries(env)
        env.provider.fail_steps["start"] = [THROTTLED]
        result = await env.apply(config_text(WEB % (1, "t3.small"), rules=RESIZE))
        (executing,) = await of_type(env, ActionExecuting)
        await assert_verifies(env)
    assert [e.outcome for e in result.executions] == ["executed"]
    assert (web0(env).status, web0(env).size) == ("running", "t3.small")
    assert [s for s, _ in env.provider.steps] == ["stop", "modify", "start"]
    assert isinstance(executing, ActionExecuting) and executing.was_running is True


async def test_a_start_owed_is_made_next_cycle_without_waiting_for_the_window(
    tmp_path: Path
) -> None:
    async with environment(tmp_path, managed("web-0", "i-web0")) as env:
        quick_retries(env)
        env.provider.fail_steps["start"] = [THROTTLED] * 4
        failed = await env.apply(config_text(WEB % (1, "t3.small"), rules=RESIZE))
        assert [e.outcome for e in failed.executions] == ["failed"]
        assert (web0(env).status, web0(env).size) == ("stopped", "t3.small")

        closed = f"{RESIZE}\nmaintenance_window: {{start: \"03:00\", end: \"04:00\"}}"
        restart = await env.apply(config_text(WEB % (1, "t3.small"), rules=closed))
        (decision,) = restart.decisions
        assert (decision.action, decision.status, decision.rule) == (
            Action.UPDATE, "ready", "restart-owed→start")
        assert [(c.field, c.desired) for c in decision.diff.changes] == [("status", "running")]
        assert [e.outcome for e in restart.executions] == ["executed"]
        assert web0(env).status == "running"

        # A resize outside the window waits; the instance keeps running.
        held = await env.apply(config_text(WEB % (1, "t3.medium"), rules=closed))
        (decision,) = held.decisions
        assert decision.status == "maintenance_window"
        await assert_verifies(env)
    assert (web0(env).status, web0(env).size) == ("running", "t3.small")
    assert [s for s, _ in env.provider.steps] == ["stop", "modify", "start"]


async def test_a_start_owed_is_settled_once_seen_running_and_never_made_later(
    tmp_path: Path
) -> None:
    config = config_text(WEB % (1, "t3.small"), rules=RESIZE)
    async with environment(tmp_path, managed("web-0", "i-web0")) as env:
        quick_retries(env)
        env.provider.fail_steps["start"] = [THROTTLED] * 4
        await env.apply(config)
        # Someone starts it by hand: Ovi owes nothing any more.
        env.provider.resources["i-web0"] = msgspec.structs.replace(web0(env), status="running")
        settled = await env.apply(config)
        assert settled.decisions == ()
        (record,) = await of_type(env, RestartSettled)
        # Later they stop it on purpose: that is not Ovi's to undo.
        env.provider.resources["i-web0"] = msgspec.structs.replace(web0(env), status="stopped")
        later = await env.apply(config)
        await assert_verifies(env)
    assert isinstance(record, RestartSettled) and record.status == "running"
    assert later.decisions == () and web0(env).status == "stopped"


async def crash_mid_resize(env: Env, decision_id: str) -> None:
    """A crashed instance claimed web-0, wrote its resize ahead, and stopped it."""
    await env.store.append(claim_stream("web-0"), [ClaimAcquired(
        resource_id="web-0", instance_id="dead:1", claimed_at=env.clock(),
        expires_at=env.clock() + timedelta(minutes=1), token=1)], expected_version=0)
    await env.append_as("dead:1", resource_stream("web-0"), [ActionExecuting(
        cycle_id="crashed", decision_id=decision_id, action=Action.UPDATE,
        resource_id="web-0", cloud_id="i-web0", token=1, was_running=True)])
    env.provider.resources["i-web0"] = msgspec.structs.replace(web0(env), status="stopped")


async def test_recovery_starts_an_instance_a_crash_left_stopped(tmp_path: Path) -> None:
    config = config_text(WEB % (1, "t3.small"), rules=RESIZE)
    async with environment(tmp_path, managed("web-0", "i-web0")) as env:
        plan = await env.cycle(config)
        (decision,) = plan.decisions
        await crash_mid_resize(env, decision.decision_id)
        env.clock.advance(minutes=2)
        result = await env.apply(config)
        failed = await of_type(env, ActionFailed)
        await assert_verifies(env)
    # Started again at once; the resize it never made was then decided afresh.
    assert result.recovered == 1
    assert [(f.interrupted, f.token) for f in failed if isinstance(f, ActionFailed)] == [
        (True, 1)]
    assert [s for s, _ in env.provider.steps] == ["start", "stop", "modify", "start"]
    assert (web0(env).status, web0(env).size) == ("running", "t3.small")


async def test_recovery_leaves_a_paused_instance_stopped_and_starts_it_once_resumed(
    tmp_path: Path
) -> None:
    """A crash left an instance stopped mid-resize, and an operator paused it
    before Ovi came back (say to look at it stopped): recovery does not start
    it. The start stays owed, and is made once the pause is lifted."""
    config = config_text(WEB % (1, "t3.small"), rules=RESIZE)
    actor = Actor(by="oncall", user="oncall", uid=1000, host="laptop")
    async with environment(tmp_path, managed("web-0", "i-web0")) as env:
        (decision,) = (await env.cycle(config)).decisions
        await crash_mid_resize(env, decision.decision_id)
        await env.store.append(pause_stream("web-0"), [AutomationPaused(
            target="web-0", reason="looking at its disk", actor=actor, at=env.clock())])
        env.clock.advance(minutes=2)
        held = await env.apply(config)
        (failed,) = [f for f in await of_type(env, ActionFailed) if isinstance(f, ActionFailed)]
        assert web0(env).status == "stopped", "recovery started a paused instance"
        assert env.provider.steps == []
        assert failed.interrupted and "looking at its disk" in failed.error
        assert "still owed" in failed.error
        assert [d.status for d in held.decisions] == [DecisionStatus.PAUSED]
        await env.store.append(pause_stream("web-0"), [AutomationResumed(
            target="web-0", reason="done", actor=actor, at=env.clock())])
        await env.apply(config)  # the start owed
        assert web0(env).status == "running"
        await env.apply(config)  # the resize, decided afresh
        await assert_verifies(env)
    assert (web0(env).status, web0(env).size) == ("running", "t3.small")


# -- creates ---------------------------------------------------------------------


async def test_a_create_whose_instance_died_is_made_again_with_a_new_token(
    tmp_path: Path
) -> None:
    config = config_text(WEB % (1, "t3.micro"))
    async with environment(tmp_path) as env:
        await env.apply(config)
        first = web0(env)
        env.provider.die(first.cloud_id)  # before any observation saw it
        again = await env.apply(config)
        attempts = [e.create_attempt for e in await of_type(env, ActionExecuting)
                    if isinstance(e, ActionExecuting)]
        await assert_verifies(env)
    assert [e.outcome for e in again.executions] == ["executed"]
    assert web0(env).cloud_id != first.cloud_id
    decision = first.tags["ovi:decision"]
    assert sorted(env.provider.tokens) == [decision, f"{decision}.2"]
    assert attempts == [1, 1, 2]


async def test_a_lost_create_response_is_retried_with_the_same_token(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        quick_retries(env)
        provider = env.provider
        real_create = provider.create
        lost = [THROTTLED]

        async def create_then_lose_the_answer(desired: DesiredResource, *, decision_id: str,
                                              owner: str, attempt: int = 1,
                                              token_unused: bool = False) -> Resource:
            made = await real_create(desired, decision_id=decision_id, owner=owner,
                                     attempt=attempt, token_unused=token_unused)
            if lost:
                raise lost.pop()
            return made

        provider.create = create_then_lose_the_answer  # type: ignore[method-assign]
        provider._by_decision = _Forgetful()  # only the token can tell it was made
        result = await env.apply(config_text(WEB % (1, "t3.micro")))
        (executed,) = await of_type(env, ActionExecuted)
        await assert_verifies(env)
    assert [e.outcome for e in result.executions] == ["executed"]
    assert len(provider.resources) == 1 and len(provider.tokens) == 1
    assert isinstance(executed, ActionExecuted)
    assert (executed.attempts, executed.create_attempt) == (2, 1)


class _Forgetful(dict[str, str]):
    """A decision index that never remembers (as moto ignores ClientToken
    but AWS does not, here the token is the only idempotency left)."""

    def __setitem__(self, key: str, value: str) -> None:
        pass
