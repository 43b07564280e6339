"""Pauses in one process: the policy, the fence on the write-ahead, and
``ovi pause``/``resume``'s application functions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ovi._exceptions import OviError
from ovi.actor import current_actor
from ovi.app import pause_automation, paused_now, resume_automation
from ovi.comparator import DefaultComparator
from ovi.config import Rules
from ovi.decisions import DecisionMaker
from ovi.events import PAUSE_ALL, ActionExecuting, ActionSkipped, AutomationPaused, pause_stream
from ovi.model import (
    Action,
    DecisionStatus,
    DesiredResource,
    Resource,
    ResourceType,
    Scope,
    Unreadable,
)
from ovi.policies import DecisionContext
from ovi.providers.fake import FakeProvider
from ovi.runtime import open_runtime
from tests.ovi.harness import Env, config_text, environment, managed, unmanaged

pytestmark = pytest.mark.asyncio

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
WEB = "{type: ec2, name: web, count: 2, size: t3.micro, tags: {team: web}}"


def _want(rid: str) -> DesiredResource:
    return DesiredResource(id=rid, type=ResourceType.EC2, provider="aws", region="us-east-1",
                           size="t3.micro", tags={"team": "web"})


async def test_the_policy_holds_actions_on_paused_targets_and_keeps_notifications() -> None:
    observed = [managed("web-0", "i-0", team="intruder"), managed("web-1", "i-1"),
                unmanaged("i-stray")]
    diffs = DefaultComparator().compare([_want("web-0"), _want("web-1"), _want("web-2")],
                                        observed)
    maker = DecisionMaker(Rules())
    one = maker.decide(diffs, DecisionContext(now=NOW, paused={"web-0": "paused by ann: x"}))
    by_id = {d.resource_id: d for d in one}
    assert (by_id["web-0"].status, by_id["web-0"].rule) == (DecisionStatus.PAUSED, "paused")
    assert "paused by ann: x" in by_id["web-0"].reason
    assert by_id["web-2"].status is DecisionStatus.READY  # the create elsewhere goes on
    every = maker.decide(diffs, DecisionContext(now=NOW, paused={PAUSE_ALL: "freeze"}))
    statuses = {d.resource_id: (d.action, d.status) for d in every}
    assert statuses["web-0"] == (Action.UPDATE, DecisionStatus.PAUSED)
    assert statuses["web-2"] == (Action.CREATE, DecisionStatus.PAUSED)
    assert statuses["i-stray"] == (Action.NOTIFY, DecisionStatus.INFORMATIONAL)


class PausingMidCycle(FakeProvider):
    """Another operator pauses ``target`` while this cycle observes: after the
    cycle read the pauses, before its write-ahead."""

    def __init__(self, env: Env, target: str, resources: Sequence[Resource]) -> None:
        super().__init__(resources)
        self.env = env
        self.target = target
        self.done = False

    async def observe(self, scope: Scope) -> Sequence[Resource | Unreadable]:
        if not self.done and scope.type is ResourceType.EC2:
            self.done = True
            await self.env.store.append(pause_stream(self.target), [AutomationPaused(
                target=self.target, reason="incident", actor=current_actor("bob"), at=NOW)],
                expected_version=0)
        return await super().observe(scope)


@pytest.mark.parametrize("target", ["web-1", PAUSE_ALL])
async def test_a_pause_recorded_after_the_cycle_read_its_state_stops_the_action(
    tmp_path: Path, target: str
) -> None:
    async with environment(tmp_path) as env:
        env.provider = PausingMidCycle(env, target, [managed("web-0", "i-0", team="web")])
        env.engine.provider = env.engine.executor.provider = env.provider
        result = await env.apply(config_text(WEB))
        executing = [e.event for e in await env.events() if isinstance(e.event, ActionExecuting)]
        later = await env.apply(config_text(WEB))
        skipped = [e.event for e in await env.events() if isinstance(e.event, ActionSkipped)]
    (web1,) = [e for e in result.executions if e.resource_id == "web-1"]
    assert (web1.outcome, web1.reason) == ("skipped", "paused")
    assert executing == []  # nothing written ahead, nothing created
    assert [r.id for r in env.provider.resources.values()] == ["web-0"]
    # The next cycle reads the pause: the decision itself is paused, recorded once.
    (held,) = [d for d in later.decisions if d.resource_id == "web-1"]
    assert held.status is DecisionStatus.PAUSED and "incident" in held.reason
    assert [s.reason for s in skipped if s.resource_id == "web-1"] == ["paused"]
    assert [p.target for p in later.paused] == [target]


async def test_pause_and_resume_record_the_actor_and_refuse_what_makes_no_sense(
    tmp_path: Path
) -> None:
    store = tmp_path / "ovi.db"
    with pytest.raises(OviError, match="no event log"):
        await pause_automation(store, ["web-0"], reason="x")
    async with open_runtime(store):
        pass
    changed, actor = await pause_automation(store, ["web-0", PAUSE_ALL], reason="migration",
                                            by="dana")
    assert changed == ["web-0", PAUSE_ALL] and actor.by == "dana" and actor.host
    again, _ = await pause_automation(store, ["web-0"], reason="twice")
    assert again == []  # already paused: left as it was
    paused = await paused_now(store)
    assert sorted(paused) == [PAUSE_ALL, "web-0"]
    assert paused["web-0"].reason == "migration" and paused["web-0"].by == "dana"
    assert paused["web-0"].uid == actor.uid
    resumed, _ = await resume_automation(store, [PAUSE_ALL])
    assert resumed == [PAUSE_ALL] and sorted(await paused_now(store)) == ["web-0"]
    with pytest.raises(OviError, match="the whole estate: not paused"):
        await resume_automation(store, [PAUSE_ALL])
    with pytest.raises(OviError, match="--all"):
        await pause_automation(store, [], reason="x")


BUCKET = "aws/us-east-1/s3/assets-0"  # the identity plan shows for the existing bucket


@pytest.mark.parametrize("when", ["before", "mid-cycle"])
async def test_a_paused_resource_is_not_adopted_under_the_desired_id_it_would_become(
    tmp_path: Path, when: str
) -> None:
    spec = "{type: s3, name: assets, adopt: true}"
    theirs = unmanaged("assets-0", type_=ResourceType.S3, team="data")
    async with environment(tmp_path, theirs) as env:
        if when == "before":
            await pause_automation(tmp_path / "ovi.db", [BUCKET], reason="INC-1: whose is it?",
                                   by="ann")
        else:
            env.provider = PausingMidCycle(env, BUCKET, [theirs])
            env.engine.provider = env.engine.executor.provider = env.provider
        result = await env.apply(config_text(spec))
        executing = [e.event for e in await env.events() if isinstance(e.event, ActionExecuting)]
    (adopt,) = result.decisions
    assert (adopt.action, adopt.resource_id) == (Action.ADOPT, "assets-0")
    if when == "before":
        assert adopt.status is DecisionStatus.PAUSED and "INC-1" in adopt.reason
    else:
        assert [(e.outcome, e.reason) for e in result.executions] == [("skipped", "paused")]
    assert executing == []
    assert env.provider.resources["assets-0"].tags == {"team": "data"}
