"""Identity, partial views and the upgrade from cloud-id keys: the engine on
real SQLite files with a fake provider and a clock moved by hand."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from eventstore import UnknownEvent, parse_timestamp
from ovi.config import parse_config
from ovi.events import ActionExecuting, ResourceDisappeared, registry
from ovi.model import (
    Action,
    DecisionStatus,
    DiffType,
    Location,
    Outcome,
    Provenance,
    Resource,
    ResourceType,
    Scope,
    identify,
)
from ovi.replay import backtest
from projections.findings import open_findings
from tests.ovi.harness import Env, config_text, environment, managed, unmanaged
from tests.replay.support import replay

US = Scope("aws", "us-east-1", ResourceType.EC2)
EU = Scope("aws", "eu-west-1", ResourceType.EC2)
OLD = datetime(2025, 1, 1, tzinfo=UTC)
NEW = datetime(2026, 1, 1, tzinfo=UTC)
FIXTURE = Path(__file__).resolve().parents[1] / "data" / "old_key_scheme.jsonl"


def _aged(resource: Resource, when: datetime) -> Resource:
    return msgspec.structs.replace(resource, created_at=when)


# --- the identity function ------------------------------------------------------------


def test_identities_are_unique_across_kinds_and_owners() -> None:
    mine = managed("web-0", "i-1")
    bucket = unmanaged("web-0", type_=ResourceType.S3)
    theirs = managed("web-0", "i-2", owner="team-b")
    no_owner = msgspec.structs.replace(managed("web-0", "i-3"), tags={"ovi:id": "web-0",
                                                                      "ovi:managed": "true"})
    ids = [r.id for r in identify([mine, bucket, theirs, no_owner], owner="ovi")]
    assert ids == ["web-0", "aws/us-east-1/s3/web-0", "aws/us-east-1/ec2/i-2",
                   "aws/us-east-1/ec2/i-3"]
    assert len(set(ids)) == 4


def test_the_keeper_is_the_copy_the_log_recorded_else_the_oldest() -> None:
    younger, older = _aged(managed("web-0", "i-a"), NEW), _aged(managed("web-0", "i-z"), OLD)
    by_age = {r.cloud_id: r.id for r in identify([younger, older], owner="ovi")}
    assert by_age == {"i-z": "web-0", "i-a": "aws/us-east-1/ec2/i-a"}  # not the smallest id
    recorded = {"web-0": Location(US, "i-a")}
    by_log = {r.cloud_id: r.id for r in identify([younger, older], owner="ovi",
                                                   recorded=recorded, complete={US})}
    assert by_log == {"i-a": "web-0", "i-z": "aws/us-east-1/ec2/i-z"}
    # Decided across scopes: the recorded copy in eu-west-1 beats an older one here.
    eu = _aged(managed("web-0", "i-eu", region="eu-west-1"), NEW)
    across = identify([older, eu], owner="ovi", recorded={"web-0": Location(EU, "i-eu")},
                      complete={US, EU})
    assert {r.cloud_id: r.id for r in across} == {"i-z": "aws/us-east-1/ec2/i-z",
                                                  "i-eu": "web-0"}
    # The recorded copy unseen (its scope failed, or it is unreadable): nobody takes the id.
    for unseen in ({"complete": {US}}, {"complete": {US, EU},
                                        "unreadable": {Location(EU, "i-eu")}}):
        blind = identify([older], owner="ovi", recorded={"web-0": Location(EU, "i-eu")},
                         **unseen)
        assert [r.id for r in blind] == ["aws/us-east-1/ec2/i-z"]


# --- partial views ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_failed_scope_never_turns_a_reported_move_into_a_replacement(
    tmp_path: Path
) -> None:
    eu_web = "{type: ec2, name: web, size: t3.micro, region: eu-west-1}"
    us_web = "{type: ec2, name: web, size: t3.micro}"
    rules = "grace_period: 0s\nrequire_approval: false"
    original = _aged(managed("web-0", "i-9", region="eu-west-1"), NEW)
    async with environment(tmp_path, original) as env:
        await env.record_created(original)
        await env.cycle(config_text(eu_web, rules=rules))
        # Moved in the config; meanwhile someone made an older copy by hand in us-east-1.
        copy = _aged(managed("web-0", "i-1"), OLD)
        env.provider.resources["i-1"] = copy
        env.provider.failing_scopes.add(EU)
        blind = await env.apply(config_text(us_web, rules=rules))
        env.provider.failing_scopes.clear()
        seen = await env.apply(config_text(us_web, rules=rules))
    # While eu-west-1 is unknown: no create of web-0, no verdict on the copy.
    assert blind.decisions == () and blind.executions == ()
    # Back: the log's web-0 is kept (reported: a move needs a replacement), the
    # copy is the duplicate, and its delete waits for a person (Ovi never made it).
    by_cloud = {d.cloud_id: d for d in seen.decisions}
    assert (by_cloud["i-9"].action, by_cloud["i-9"].rule) == (Action.NOTIFY,
                                                              "drift-needs-replacement")
    assert (by_cloud["i-1"].action, by_cloud["i-1"].status, by_cloud["i-1"].provenance) == (
        Action.DELETE, DecisionStatus.AWAITING_APPROVAL, Provenance.UNRECORDED)
    assert sorted(env.provider.resources) == ["i-1", "i-9"]


@pytest.mark.asyncio
async def test_an_unreadable_resource_is_neither_gone_nor_missing_nor_resolved(
    tmp_path: Path
) -> None:
    logs = managed("logs-0", "logs-0", type_=ResourceType.S3, team="a")
    spec = "{type: s3, name: logs, tags: {team: b}}"
    async with environment(tmp_path, logs) as env:
        first = await env.cycle(config_text(spec))
        env.provider.unreadable["logs-0"] = "AccessDenied (injected)"
        env.clock.advance(minutes=10)
        blind = await env.apply(config_text(spec))
        await env.views.catch_up()
        still_open = await env.views.query(open_findings)
        gone = [e for e in await env.events() if isinstance(e.event, ResourceDisappeared)]
        # The backtest sees the same: with the recorded config, no difference.
        same = await backtest(env.store, parse_config(config_text(spec), "same.yaml"))
    assert same.differences == [] and same.digest_mismatches == []
    assert same.cycles_replayed == 2
    assert [(d.type, d.resource_id) for d in first.diffs] == [(DiffType.DRIFTED, "logs-0")]
    assert blind.diffs == () and blind.executions == ()
    assert blind.unreadable == (("aws/us-east-1/s3", "logs-0", "AccessDenied (injected)"),)
    assert gone == [] and "logs-0" in still_open


# --- the upgrade ----------------------------------------------------------------------------


async def _load_old_log(env: Env) -> None:
    """The fixture: a log written by the code before identities (commit
    b729b71), where an unmanaged bucket named ``web-0`` shares the stream of
    the managed instance ``web-0``, a hand-made copy of web-0 is keyed by its
    cloud id, and a resource tagged ``ovi:managed`` without an owner counted
    as the default owner's; both deletes were approved by alice."""
    events = registry()
    for line in FIXTURE.read_text().splitlines():
        row = json.loads(line)
        event = events.decode(row["type"], json.dumps(row["data"]))
        assert not isinstance(event, UnknownEvent), row
        env.clock.now = parse_timestamp(row["recorded_at"])
        await env.store.append(row["stream"], [event])


@pytest.mark.asyncio
async def test_the_first_cycle_after_the_upgrade_destroys_nothing(tmp_path: Path) -> None:
    estate = (
        managed("web-0", "ec2-000000000001"),  # what the old code created
        unmanaged("web-0", type_=ResourceType.S3),
        unmanaged("i-0stray"),
        managed("web-0", "i-0dup"),
        msgspec.structs.replace(managed("old-0", "i-0legacy"),
                                tags={"ovi:id": "old-0", "ovi:managed": "true"}),
    )
    config = config_text("{type: ec2, name: web, size: t3.micro}", rules="grace_period: 0s")
    async with environment(tmp_path, *estate) as env:
        await _load_old_log(env)
        head = await env.store.last_position()
        env.clock.advance(minutes=5)
        result = await env.apply(config)
        after = await env.events(after=head)
        again = await env.apply(config)
    executing = [e for e in after if isinstance(e.event, ActionExecuting)]
    assert executing == []  # alice's approvals were for the old keys: they lapse
    assert len(env.provider.resources) == 5
    by_id = {d.resource_id: d for d in result.decisions}
    assert set(by_id) == {"aws/us-east-1/s3/web-0", "aws/us-east-1/ec2/i-0stray",
                          "aws/us-east-1/ec2/i-0dup", "aws/us-east-1/ec2/i-0legacy"}
    duplicate = by_id["aws/us-east-1/ec2/i-0dup"]
    assert (duplicate.action, duplicate.status, duplicate.provenance) == (
        Action.DELETE, DecisionStatus.AWAITING_APPROVAL, Provenance.UNRECORDED)
    assert by_id["aws/us-east-1/ec2/i-0legacy"].action is Action.NOTIFY  # no owner: not ours
    renamed = {e.event.resource_id: e.event.now_known_as for e in after
               if isinstance(e.event, ResourceDisappeared)}
    assert renamed == {"i-0stray": "aws/us-east-1/ec2/i-0stray",
                       "i-0dup": "aws/us-east-1/ec2/i-0dup",
                       "old-0": "aws/us-east-1/ec2/i-0legacy"}
    assert Counter(type(e.event).__name__ for e in after)["DiffResolved"] >= 3
    assert all(e.outcome is not Outcome.EXECUTED for e in again.executions)
    # The old log (and the upgraded one) still replays, and old cloud ids lead to new keys.
    assert replay("verify", store=tmp_path / "ovi.db").returncode == 0
    timeline = replay("timeline", "i-0stray", store=tmp_path / "ovi.db")
    assert timeline.returncode == 0, timeline.stderr
    assert "aws/us-east-1/ec2/i-0stray" in timeline.stdout
