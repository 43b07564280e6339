"""The engine cycle on real SQLite files with a fake provider."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from eventstore import RecordedEvent
from ovi.events import (
    DecisionMade,
    DiffDetected,
    ObservationCompleted,
    ObservationFailed,
    ResourceObserved,
)
from ovi.model import Action, DecisionStatus, ResourceType, Scope
from projections.resources import state_at
from tests.ovi.harness import config_text, environment, managed, unmanaged

pytestmark = pytest.mark.asyncio

WEB2 = "{type: ec2, name: web, count: 2, size: t3.micro, tags: {team: a}}"


async def test_first_cycle_records_observations_and_findings(
    tmp_path: Path, log_backend: str
) -> None:
    async with environment(tmp_path, managed("web-0", "i-1", team="a"),
                           backend=log_backend) as env:
        result = await env.cycle(config_text(WEB2))
        counts = Counter(await env.types())
    assert counts["CycleStarted"] == 1
    assert counts["ConfigLoaded"] == 1
    assert counts["ResourceObserved"] == 1
    assert counts["ObservationCompleted"] == 3  # ec2, rds, s3 in us-east-1
    assert counts["DiffDetected"] == 1
    assert counts["DecisionMade"] == 1
    assert counts["CycleFinished"] == 1
    assert result.resources_found == 1
    assert [(d.action, d.resource_id) for d in result.decisions] == [(Action.CREATE, "web-1")]
    assert not result.in_sync


async def test_steady_state_cycle_appends_only_cycle_events(tmp_path: Path) -> None:
    estate = [managed(f"web-{j}", f"i-{j}", team="a") for j in range(2)]
    async with environment(tmp_path, *estate) as env:
        await env.cycle(config_text(WEB2))
        head = await env.store.last_position()
        result = await env.cycle(config_text(WEB2))
        types = await env.types(after=head)
    assert result.in_sync
    assert types == ["CycleStarted", *["ObservationCompleted"] * 3, "CycleFinished"]


async def test_unchanged_finding_is_not_recorded_again(tmp_path: Path) -> None:
    async with environment(tmp_path, unmanaged("i-stray")) as env:
        config = config_text(WEB2)
        for _ in range(3):
            result = await env.cycle(config)
        counts = Counter(await env.types())
    # two missing (create) + one unmanaged (notify), each recorded once
    assert counts["DiffDetected"] == 3
    assert counts["DecisionMade"] == 3
    assert len(result.decisions) == 3  # plan output still lists every decision in force


async def test_resolved_finding_is_closed(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        await env.cycle(config_text(WEB2))
        head = await env.store.last_position()
        await env.cycle(config_text())
        types = await env.types(after=head)
    assert types.count("DiffResolved") == 2


async def test_failed_observation_takes_no_decision_for_its_scope(tmp_path: Path) -> None:
    stray = managed("old-0", "i-old")
    async with environment(tmp_path, stray) as env:
        env.provider.failing_scopes.add(Scope("aws", "us-east-1", ResourceType.EC2))
        result = await env.cycle(config_text(WEB2))
        events = await env.events()
    failed = [e.event for e in events if isinstance(e.event, ObservationFailed)]
    assert [f.scope.type for f in failed] == [ResourceType.EC2]
    assert result.failed_scopes == ("aws/us-east-1/ec2",)
    # neither the missing web-* (create) nor the unwanted old-0 (delete): ec2 is unknown
    assert result.decisions == ()
    assert not [e for e in events if isinstance(e.event, DecisionMade)]


async def test_partly_failed_observation_decides_the_healthy_scopes(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        env.provider.failing_scopes.add(Scope("aws", "us-east-1", ResourceType.RDS))
        config = config_text(WEB2, "{type: rds, name: db, size: db.t3.micro}")
        result = await env.cycle(config)
        types = await env.types()
    assert types.count("ObservationFailed") == 1
    assert types.count("ObservationCompleted") == 2
    assert sorted(d.resource_id for d in result.decisions) == ["web-0", "web-1"]


async def test_decision_carries_cycle_config_rule_and_evidence(tmp_path: Path) -> None:
    async with environment(tmp_path, managed("web-0", "i-1", team="old")) as env:
        result = await env.cycle(config_text(WEB2))
        events = await env.events()
    by_position: dict[int, RecordedEvent] = {e.position: e for e in events}
    made = [e.event for e in events if isinstance(e.event, DecisionMade)]
    update = next(m for m in made if m.decision.action == Action.UPDATE)
    assert update.cycle_id == result.cycle_id
    assert update.rule == update.decision.rule
    assert len(update.config_hash) == 64
    observed, completed = (by_position[p].event for p in update.evidence)
    assert isinstance(observed, ResourceObserved) and observed.resource.id == "web-0"
    assert isinstance(completed, ObservationCompleted)
    assert completed.scope.type == ResourceType.EC2 and completed.cycle_id == result.cycle_id


async def test_grace_period_runs_from_first_recorded_detection(tmp_path: Path) -> None:
    rules = "grace_period: 10m\nrequire_approval: false"
    async with environment(tmp_path, managed("gone-0", "i-9")) as env:
        await env.record_created(managed("gone-0", "i-9"))
        first = await env.cycle(config_text(rules=rules))
        env.clock.advance(minutes=5)
        second = await env.cycle(config_text(rules=rules))
        env.clock.advance(minutes=6)
        third = await env.cycle(config_text(rules=rules))
        detections = [e for e in await env.events() if isinstance(e.event, DiffDetected)]
    assert [d.status for d in first.decisions] == [DecisionStatus.GRACE_PERIOD]
    assert [d.status for d in second.decisions] == [DecisionStatus.GRACE_PERIOD]
    assert [d.status for d in third.decisions] == [DecisionStatus.READY]
    assert len(detections) == 1  # the clock of the grace period is that one event


async def test_state_at_old_revision_equals_what_was_observed(
    tmp_path: Path, log_backend: str
) -> None:
    async with environment(tmp_path, managed("web-0", "i-1", team="a"),
                           backend=log_backend) as env:
        await env.cycle(config_text(WEB2))
        revision = await env.store.last_position()
        env.provider.resources["i-1"] = managed("web-0", "i-1", team="b")
        env.provider.resources["i-2"] = managed("web-1", "i-2", team="a")
        await env.cycle(config_text(WEB2))
        del env.provider.resources["i-1"]
        await env.cycle(config_text(WEB2))
        await env.views.catch_up()
        then = await env.views.query(lambda db: state_at(db, revision))
        now = await env.views.query(lambda db: state_at(db, 10**9))
    assert [(s.resource.id, s.resource.tags["team"]) for s in then] == [("web-0", "a")]
    assert [(s.resource.id, s.resource.tags["team"]) for s in now] == [("web-1", "a")]
