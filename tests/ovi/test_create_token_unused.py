"""A create is told ``token_unused`` (no call was ever made for its decision,
so the provider may skip looking for what one made) only when that is true.
The fake provider raises AssertionError when told so wrongly; on moto, which
ignores ClientToken, a wrong answer would launch a second instance.

These began as a hostile review's attacks: the first version decided from the
projection read at the start of the execution and from whether the claim
before ours was released, and the takeover-then-release sequence below broke it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import ovi.engine as engine_module
from eventstore import EventStoreError
from ovi.coordinator import ClaimResult
from ovi.events import ActionExecuting, ClaimAcquired, ClaimReleased, claim_stream, resource_stream
from ovi.model import Action, DesiredResource, Resource, Scope, Unreadable
from ovi.observer import Observation
from tests.ovi.harness import Env, config_text, environment
from tests.ovi.test_interrupted_work import THROTTLED, _Forgetful, quick_retries

pytestmark = pytest.mark.asyncio

WEB = config_text("{type: ec2, name: web, count: 1, size: t3.micro}")
Seen = list[tuple[str, int, bool]]


def spy_on_creates(env: Env) -> Seen:
    """Every create call's (decision id, attempt, token_unused)."""
    seen: Seen = []
    real = env.provider.create

    async def create(desired: DesiredResource, *, decision_id: str, owner: str,
                     attempt: int = 1, token_unused: bool = False) -> Resource:
        seen.append((decision_id, attempt, token_unused))
        return await real(desired, decision_id=decision_id, owner=owner, attempt=attempt,
                          token_unused=token_unused)

    env.provider.create = create  # type: ignore[method-assign]
    return seen


async def test_a_retry_after_a_lost_answer_is_not_told_the_token_is_unused(
    tmp_path: Path
) -> None:
    async with environment(tmp_path) as env:
        quick_retries(env)
        real = env.provider.create
        lost = [THROTTLED, THROTTLED]
        unused: list[bool] = []

        async def create_then_lose_the_answer(
            desired: DesiredResource, *, decision_id: str, owner: str, attempt: int = 1,
            token_unused: bool = False,
        ) -> Resource:
            unused.append(token_unused)
            made = await real(desired, decision_id=decision_id, owner=owner, attempt=attempt,
                              token_unused=token_unused)
            if lost:
                raise lost.pop()
            return made

        env.provider.create = create_then_lose_the_answer  # type: ignore[method-assign]
        env.provider._by_decision = _Forgetful()  # only the token can tell it was made
        result = await env.apply(WEB)
    assert unused == [True, False, False]
    assert [e.outcome for e in result.executions] == ["executed"]
    assert len(env.provider.resources) == 1


async def test_an_action_in_doubt_is_never_followed_by_a_create_told_the_token_is_unused(
    tmp_path: Path
) -> None:
    async with environment(tmp_path) as env:
        quick_retries(env)
        seen = spy_on_creates(env)
        coordinator = env.engine.executor.coordinator
        real = coordinator.append_releasing
        fails = [EventStoreError("injected: the outcome is lost")]

        async def append_releasing(*args: object, **kwargs: object) -> object:
            if fails:
                raise fails.pop()
            return await real(*args, **kwargs)  # type: ignore[arg-type]

        coordinator.append_releasing = append_releasing  # type: ignore[method-assign,assignment]
        await env.apply(WEB)
        env.provider.resources.clear()  # and the instance vanishes out of band
        env.clock.advance(minutes=30)  # the unreleased claim runs out
        await env.apply(WEB)
        await env.apply(WEB)
    assert [unused for _, _, unused in seen] == [True, False, False]
    assert len(env.provider.resources) == 1


async def test_a_write_ahead_the_cycles_projection_missed_is_found_before_the_create(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Host A writes ahead the same decision after this cycle caught its
    projection up but before it observed; A's instance lands after this
    cycle's listing, and A dies. Host R takes A's claim over and releases it
    without an outcome. This cycle then claims web-0 (its predecessor was
    released), its projection shows no write-ahead of the decision, and A's
    comes before the observation (so the staleness check does not see it):
    only the log, read under our claim, shows the call A made."""
    async with environment(tmp_path, instance_id="host-b") as env:
        planned = await env.cycle(WEB)
        (decision,) = [d for d in planned.decisions if d.action is Action.CREATE]
        assert decision.diff.desired is not None
        desired = decision.diff.desired
        seen = spy_on_creates(env)
        real_observe_all = engine_module.observe  # type: ignore[attr-defined]
        real_observe = env.provider.observe
        steps: list[str] = []

        async def observe_all(*args: Any, **kwargs: Any) -> Observation:
            # The cycle's projection is caught up by now: A writes ahead.
            steps.append("written ahead")
            now = env.clock()
            await env.append_as("host-a", claim_stream("web-0"), [ClaimAcquired(
                resource_id="web-0", instance_id="host-a", claimed_at=now,
                expires_at=now + timedelta(minutes=10), token=1)])
            await env.append_as("host-a", resource_stream("web-0"), [ActionExecuting(
                cycle_id="c-a", decision_id=decision.decision_id, action=Action.CREATE,
                resource_id="web-0", cloud_id=None, token=1, create_attempt=1)])
            return await real_observe_all(*args, **kwargs)

        async def observe(scope: Scope) -> Sequence[Resource | Unreadable]:
            found = await real_observe(scope)
            if steps == ["written ahead"] and scope == decision.diff.scope:
                steps.append("called")
                # A's call lands after this listing; A dies; R takes over, releases.
                await type(env.provider).create(env.provider, desired,
                                                decision_id=decision.decision_id, owner="ovi")
                env.clock.advance(minutes=11)
                now = env.clock()
                await env.append_as("host-r", claim_stream("web-0"), [
                    ClaimAcquired(resource_id="web-0", instance_id="host-r", claimed_at=now,
                                  expires_at=now + timedelta(minutes=10), token=2,
                                  takeover_of="host-a"),
                    ClaimReleased(resource_id="web-0", instance_id="host-r", token=2)])
            return found

        monkeypatch.setattr(engine_module, "observe", observe_all)
        env.provider.observe = observe  # type: ignore[method-assign]
        coordinator = env.engine.executor.coordinator
        real_claim = coordinator.claim
        claimed: list[str] = []

        async def claim(ids: Iterable[str]) -> ClaimResult:
            result = await real_claim(ids)
            claimed.extend(result.held)
            return result

        coordinator.claim = claim  # type: ignore[method-assign,assignment]
        result = await env.apply(WEB)
    assert steps == ["written ahead", "called"] and claimed == ["web-0"]
    assert [(attempt, unused) for _, attempt, unused in seen] == [(1, False)]
    assert [e.outcome for e in result.executions] == ["executed"]
    assert len(env.provider.resources) == 1  # A's instance, found, not made again
