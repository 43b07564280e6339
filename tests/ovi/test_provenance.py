"""The log's word that Ovi made a resource holds for that resource only, and
it keeps Ovi from making a desired resource twice when tags are edited by hand:
the engine on real SQLite files with a fake provider."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import msgspec
import pytest

from ovi.app import grant_adoption
from ovi.config import parse_config
from ovi.events import AdoptionGranted, registry
from ovi.model import ID_TAG, OWNER_TAG, Action, DiffType, ResourceType
from ovi.replay import backtest
from ovi.replay._describe import describe
from ovi.replay._render import fmt_time
from projections.findings import made_locations, provenance
from tests.ovi.harness import config_text, environment, unmanaged

EAGER = "grace_period: 0s\nrequire_approval: false"
WEB = "{type: ec2, name: web, size: t3.micro, count: 2}"


@pytest.mark.asyncio
async def test_a_resource_that_lost_only_its_ovi_id_is_tagged_again_not_made_twice(
    tmp_path: Path
) -> None:
    config = config_text(WEB, rules=EAGER)
    async with environment(tmp_path) as env:
        await env.apply(config)
        made = {r.tags[ID_TAG]: r.cloud_id for r in env.provider.resources.values()}
        stripped = env.provider.resources[made["web-1"]]
        env.provider.resources[made["web-1"]] = msgspec.structs.replace(
            stripped, tags={k: v for k, v in stripped.tags.items() if k != ID_TAG})
        env.clock.advance(minutes=10)
        healed = await env.apply(config)
        env.clock.advance(minutes=10)
        settled = await env.cycle(config)
        same = await backtest(env.store, parse_config(config, "same.yaml"))
    # Still Ovi's by owner, and the log shows Ovi made it web-1: a conflict
    # whose adoption tags it again; not "missing" (a second web-1) plus an
    # "unwanted" delete of the original.
    assert [(d.type, d.resource_id) for d in healed.diffs] == [(DiffType.CONFLICT, "web-1")]
    assert [(e.action, e.resource_id, e.outcome) for e in healed.executions] == [
        (Action.ADOPT, "web-1", "executed")]
    assert sorted(env.provider.resources) == sorted(made.values())
    assert env.provider.resources[made["web-1"]].tags[ID_TAG] == "web-1"
    assert settled.in_sync and settled.diffs == ()
    assert same.differences == [] and same.digest_mismatches == []


@pytest.mark.asyncio
async def test_a_new_owner_in_the_config_launches_no_second_estate(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        await env.apply(config_text(WEB, rules=EAGER))
        before = sorted(env.provider.resources)
        renamed = config_text(WEB, rules=EAGER).replace("region: us-east-1",
                                                        "region: us-east-1\nowner: web-team")
        env.clock.advance(minutes=10)
        result = await env.apply(renamed)
    # What the old owner's tags mark is reported with the way to take it
    # over; nothing is created, adopted or deleted on the strength of the rename.
    assert [(d.action, d.resource_id) for d in result.decisions] == [
        (Action.NOTIFY, "web-0"), (Action.NOTIFY, "web-1")]
    assert all("belongs to Ovi owner 'ovi'" in d.reason and "ovi adopt" in d.reason
               for d in result.decisions)
    assert result.executions == ()
    assert sorted(env.provider.resources) == before
    assert all(r.tags[OWNER_TAG] == "ovi" for r in env.provider.resources.values())


@pytest.mark.asyncio
async def test_provenance_ends_when_the_resource_is_deleted_or_disappears(
    tmp_path: Path
) -> None:
    bucket = "{type: s3, name: logs}"
    async with environment(tmp_path) as env:
        await env.apply(config_text(bucket, "{type: s3, name: data}", rules=EAGER))
        env.clock.advance(minutes=10)
        await env.apply(config_text(bucket, rules=EAGER))  # data-0: deleted by Ovi
        env.provider.die("logs-0")  # logs-0: deleted by someone else
        env.clock.advance(minutes=10)
        await env.cycle(config_text(bucket, rules=EAGER))
        await env.views.catch_up()
        known = await env.views.query(provenance)
        places = await env.views.query(made_locations)
        # Both names are taken again by buckets that are not Ovi's.
        for name in ("logs-0", "data-0"):
            env.provider.resources[name] = unmanaged(name, type_=ResourceType.S3, team="b")
        env.clock.advance(minutes=10)
        back = await env.apply(config_text(bucket, "{type: s3, name: data}", rules=EAGER))
        same = await backtest(env.store, parse_config(
            config_text(bucket, "{type: s3, name: data}", rules=EAGER), "same.yaml"))
    assert known == {} and places == {}
    assert [(d.action, d.resource_id) for d in back.decisions] == [
        (Action.NOTIFY, "data-0"), (Action.NOTIFY, "logs-0")]
    assert back.executions == ()
    assert all(r.tags == {"team": "b"} for r in env.provider.resources.values())
    # The backtest folds provenance the same way: with the last config, the
    # last cycle's decisions are what the engine recorded.
    assert not [d for d in same.differences if d.last_cycle == back.cycle_id], same.differences


@pytest.mark.asyncio
async def test_a_grant_to_adopt_an_unowned_resource_does_not_take_it_from_a_later_owner(
    tmp_path: Path
) -> None:
    bucket = unmanaged("assets-0", type_=ResourceType.S3)
    spec = config_text("{type: s3, name: assets}")
    async with environment(tmp_path, bucket) as env:
        await env.cycle(spec)
        # Ann grants the adoption of a bucket that belongs to nobody...
        await grant_adoption(tmp_path / "ovi.db", "aws/us-east-1/s3/assets-0",
                             as_id="assets-0", by="ann")
        # ...and before the next cycle another installation takes it over.
        env.provider.resources["assets-0"] = msgspec.structs.replace(bucket, tags={
            ID_TAG: "assets-0", OWNER_TAG: "team-c", "ovi:managed": "true"})
        env.clock.advance(minutes=10)
        result = await env.apply(spec)
        (decision,) = result.decisions
        assert decision.action is Action.NOTIFY, decision.reason
        assert env.provider.resources["assets-0"].tags[OWNER_TAG] == "team-c"
        # Granted again by someone who sees team-c's tag, it is taken over.
        await grant_adoption(tmp_path / "ovi.db", "aws/us-east-1/s3/assets-0",
                             as_id="assets-0", by="ann")
        env.clock.advance(minutes=10)
        result = await env.apply(spec)
    (decision,) = result.decisions
    assert decision.action is Action.ADOPT, decision.reason
    assert env.provider.resources["assets-0"].tags[OWNER_TAG] != "team-c"


@pytest.mark.asyncio
async def test_an_adoption_grant_records_the_os_user_and_host_besides_by(
    tmp_path: Path
) -> None:
    bucket = unmanaged("assets-0", type_=ResourceType.S3)
    async with environment(tmp_path, bucket) as env:
        await env.cycle(config_text("{type: s3, name: assets}"))
        _, actor = await grant_adoption(tmp_path / "ovi.db", "aws/us-east-1/s3/assets-0",
                                        as_id="assets-0", by="ann")
        (granted,) = [e.event for e in await env.events()
                      if isinstance(e.event, AdoptionGranted)]
    assert granted.by == "ann" and granted.actor == actor
    assert (actor.uid, actor.host) == (os.getuid(), socket.gethostname())
    assert describe(granted).endswith(
        f"granted by ann (user {actor.user}, uid {actor.uid} on {actor.host})"
        f" at {fmt_time(granted.at)}")


def test_an_adoption_grant_from_an_older_log_without_the_actor_still_decodes() -> None:
    old = msgspec.json.encode({"resource_id": "assets-0", "identity": "aws/us-east-1/s3/x",
                               "cloud_id": "x", "by": "ann", "at": "2026-11-26T12:00:00Z"})
    granted = registry().decode("AdoptionGranted", old.decode())
    assert isinstance(granted, AdoptionGranted) and granted.actor is None
    assert "granted by ann (OS user not recorded)" in describe(granted)
