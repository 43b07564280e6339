"""Races between instances sharing one log, against the fake provider on real
SQLite files: recoveries that overlap, claims whose renewal fails once,
pauses that land between two create attempts. Each ends with ``verify``."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from eventstore import Event
from ovi.coordinator import ClaimResult, Coordinator
from ovi.events import (
    ActionExecuted,
    ActionExecuting,
    ActionFailed,
    ClaimAcquired,
    claim_stream,
    resource_stream,
)
from ovi.model import Action
from ovi.recovery import recover_in_doubt
from ovi.replay import verify_log
from tests.ovi.harness import Env, config_text, environment

pytestmark = pytest.mark.asyncio

WEB = "{type: ec2, name: web, count: 1, size: t3.micro}"


async def of_type(env: Env, cls: type[Event]) -> list[Event]:
    return [e.event for e in await env.events() if isinstance(e.event, cls)]


class _LateClaimer(Coordinator):
    """A coordinator whose process is descheduled between reading what is in
    doubt and claiming it (a busy host): it claims once ``go`` is set."""

    def __init__(self, env: Env) -> None:
        super().__init__(env.store, env.views, clock=env.clock)
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
        await first.store.append(resource_stream("web-0"), [ActionExecuting(
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

