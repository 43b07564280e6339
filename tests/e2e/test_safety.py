"""Never the wrong action: each scenario of issue 11 that could make Ovi delete,
duplicate or take over what it should not, reproduced end to end with the
``ovi`` command against a moto server (behind the fault proxy where AWS must
misbehave)."""

from __future__ import annotations

import json
import resource
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cli import (
    aws_env,
    client,
    event_types,
    live_instances,
    ovi,
    ovi_ids,
    ovi_json,
    run_instance,
    tags_of,
    write_config,
)
from tests.fault_proxy import Fault, FaultProxy
from tests.moto_server import reset_moto

WEB = "{type: ec2, name: web, size: t3.micro}"


@pytest.fixture
def aws(moto_endpoint: str) -> Iterator[str]:
    reset_moto(moto_endpoint)
    yield moto_endpoint


def _decision(plan: dict[str, Any], resource_id: str) -> dict[str, Any]:
    found = [dict(d) for d in plan["decisions"] if d["resource_id"] == resource_id]
    assert len(found) == 1, plan["decisions"]
    return found[0]


def _events(store: Path, type_: str) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(store)) as db:
        rows = db.execute("SELECT data FROM events WHERE type = ? ORDER BY position", (type_,))
        return [dict(json.loads(row[0])) for row in rows]


def _bucket_tags(endpoint: str, name: str) -> dict[str, str]:
    s3 = client("s3", endpoint)
    try:
        return tags_of({"Tags": s3.get_bucket_tagging(Bucket=name)["TagSet"]})
    except s3.exceptions.ClientError as exc:
        assert "NoSuchTagSet" in str(exc)
        return {}


# --- 1. identity ---------------------------------------------------------------


def test_a_foreign_bucket_named_like_an_instance_lends_it_neither_grace_nor_decision_ids(
    aws: str, tmp_path: Path
) -> None:
    client("s3", aws).create_bucket(Bucket="web-0")  # another team's bucket
    wanted = write_config(tmp_path / "ovi.yaml", WEB, rules="grace_period: 1s")
    code, applied = ovi_json("apply", "--config", str(wanted), endpoint=aws, cwd=tmp_path)
    assert code == 0, applied
    (instance,) = live_instances(aws)
    unmanaged = [d for d in applied["diffs"] if d["type"] == "unmanaged"]
    assert [d["resource_id"] for d in unmanaged] == ["aws/us-east-1/s3/web-0"]

    time.sleep(1.2)  # the bucket's finding is now older than the grace period
    unwanted = write_config(tmp_path / "ovi.yaml", rules="grace_period: 1s")
    code, first = ovi_json("apply", "--config", str(unwanted), endpoint=aws, cwd=tmp_path)
    assert code == 0, first
    delete = _decision(first, "web-0")
    # The grace period runs from when web-0 became unwanted, not from the bucket's finding.
    assert (delete["action"], delete["status"]) == ("delete", "grace_period")
    assert [i["InstanceId"] for i in live_instances(aws)] == [instance["InstanceId"]]

    time.sleep(1.2)
    code, second = ovi_json("plan", "--config", str(unwanted), endpoint=aws, cwd=tmp_path)
    delete = _decision(second, "web-0")
    assert (delete["status"], delete["provenance"]) == ("awaiting_approval", "created")
    approved = ovi("approve", delete["decision_id"], endpoint=aws, cwd=tmp_path)
    assert approved.returncode == 0, approved.stderr
    # The approval holds: the decision id no longer flips with the bucket's finding.
    code, third = ovi_json("apply", "--config", str(unwanted), endpoint=aws, cwd=tmp_path)
    assert code == 0, third
    assert [(e["decision_id"], e["outcome"]) for e in third["executions"]] == [
        (delete["decision_id"], "executed")]
    assert live_instances(aws) == []
    assert [b["Name"] for b in client("s3", aws).list_buckets()["Buckets"]] == ["web-0"]


# --- 2. partial views ------------------------------------------------------------


def test_a_failed_region_never_turns_a_reported_move_into_a_second_copy(
    aws: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    config = tmp_path / "ovi.yaml"
    write_config(config, "{type: ec2, name: web, size: t3.micro, region: eu-west-1}")
    assert ovi("apply", "--config", str(config), endpoint=aws, cwd=tmp_path).returncode == 0
    write_config(config, WEB)  # moved to us-east-1: Ovi reports it, never replaces it
    code, plan = ovi_json("plan", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert [(d["action"], d["resource_id"]) for d in plan["decisions"]] == [("notify", "web-0")]

    fault_proxy.add(Fault("ec2:DescribeInstances", code="Unavailable", times=1000,
                          match=lambda r: r.region == "eu-west-1"))
    blind = ovi("apply", "--config", str(config), endpoint=fault_proxy.endpoint, cwd=tmp_path)
    assert blind.returncode == 1 and "could not observe aws/eu-west-1/ec2" in blind.stderr
    fault_proxy.clear()
    assert live_instances(aws) == []  # nothing created in us-east-1

    code, plan = ovi_json("plan", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 0  # only the report of the move: no delete of either copy
    assert [(d["action"], d["resource_id"]) for d in plan["decisions"]] == [("notify", "web-0")]
    eu_instances = _instances_in(aws, "eu-west-1")
    assert Counter(tags_of(i)["ovi:id"] for i in eu_instances) == Counter({"web-0": 1})


def _instances_in(endpoint: str, region: str) -> list[dict[str, Any]]:
    import boto3

    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=region,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    found: list[dict[str, Any]] = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=[
            {"Name": "instance-state-name", "Values": ["pending", "running"]}]):
        for reservation in page["Reservations"]:
            found.extend(reservation["Instances"])
    return found


# --- 3. ownership ------------------------------------------------------------------


def test_tags_alone_never_make_a_resource_ovis_to_delete(aws: str, tmp_path: Path) -> None:
    no_owner = run_instance(aws, {"ovi:id": "old-0", "ovi:managed": "true"})
    forged = run_instance(aws, {"ovi:id": "old-1", "ovi:managed": "true", "ovi:owner": "ovi"})
    eager = "grace_period: 0s\nrequire_approval: false"
    config = write_config(tmp_path / "ovi.yaml", WEB, rules=eager)
    code, applied = ovi_json("apply", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 0, applied
    by_id = {d["resource_id"]: d for d in applied["decisions"]}
    # ovi:managed=true without this owner's ovi:owner is not managed.
    assert by_id[f"aws/us-east-1/ec2/{no_owner}"]["action"] == "notify"
    # Tagged as ours, but the log never saw Ovi create it: a person must approve.
    forged_delete = by_id["old-1"]
    assert (forged_delete["action"], forged_delete["status"], forged_delete["provenance"]) == (
        "delete", "awaiting_approval", "unrecorded")
    assert "no record of Ovi creating or adopting" in forged_delete["reason"]
    assert {no_owner, forged} <= {i["InstanceId"] for i in live_instances(aws)}

    text = ovi("plan", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert "unrecorded" in text.stdout and "old-1" in text.stdout

    # What Ovi created itself it deletes as the rules say (here: at once).
    write_config(tmp_path / "ovi.yaml", rules=eager)
    code, applied = ovi_json("apply", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert _decision(applied, "web-0")["provenance"] == "created"
    assert [(e["resource_id"], e["outcome"]) for e in applied["executions"]] == [
        ("old-1", "skipped"), ("web-0", "executed")]
    assert sorted(i["InstanceId"] for i in live_instances(aws)) == sorted([no_owner, forged])


# --- 4. adoption ---------------------------------------------------------------------


def test_an_existing_bucket_is_a_conflict_until_adoption_is_asked_for(
    aws: str, tmp_path: Path
) -> None:
    client("s3", aws).create_bucket(Bucket="assets-0")  # there before Ovi, untagged
    bucket = "{type: s3, name: assets}"
    config = write_config(tmp_path / "ovi.yaml", bucket, rules="grace_period: 0s")
    code, applied = ovi_json("apply", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 0, applied
    (conflict,) = applied["decisions"]
    assert (conflict["action"], conflict["resource_id"]) == ("notify", "assets-0")
    assert "adopt: true" in conflict["reason"]
    assert "ovi adopt aws/us-east-1/s3/assets-0 --as assets-0" in conflict["reason"]
    assert [d["type"] for d in applied["diffs"]] == ["conflict"]
    assert _bucket_tags(aws, "assets-0") == {}  # nothing touched

    adopting = write_config(tmp_path / "ovi.yaml", "{type: s3, name: assets, adopt: true}",
                            rules="grace_period: 0s")
    code, applied = ovi_json("apply", "--config", str(adopting), endpoint=aws, cwd=tmp_path)
    assert code == 0, applied
    assert [(e["action"], e["resource_id"], e["outcome"]) for e in applied["executions"]] == [
        ("adopt", "assets-0", "executed")]
    tags = _bucket_tags(aws, "assets-0")
    assert (tags["ovi:id"], tags["ovi:owner"]) == ("assets-0", "ovi")
    (adopted,) = [e for e in _events(tmp_path / "ovi.db", "ActionExecuted")
                  if e["action"] == "adopt"]
    assert adopted["cloud_id"] == "assets-0"
    why = subprocess.run([sys.executable, "-m", "ovi.replay", "why", "assets-0", "--store",
                          "ovi.db"], cwd=tmp_path, capture_output=True, text=True,
                         env=aws_env(aws), timeout=60, check=False)
    assert why.returncode == 0, why.stderr
    assert "adopt done" in why.stdout, why.stdout
    code, plan = ovi_json("plan", "--config", str(adopting), endpoint=aws, cwd=tmp_path)
    assert code == 0 and plan["in_sync"], plan

    # Once adopted, it is Ovi's like anything it created.
    code, plan = ovi_json("plan", "--config", str(write_config(
        tmp_path / "ovi.yaml", rules="grace_period: 0s")), endpoint=aws, cwd=tmp_path)
    assert _decision(plan, "assets-0")["provenance"] == "adopted"


def test_ovi_adopt_grants_an_instance_to_a_desired_id(aws: str, tmp_path: Path) -> None:
    theirs = run_instance(aws, {"Name": "hand-made"})
    config = write_config(tmp_path / "ovi.yaml", WEB)
    code, plan = ovi_json("plan", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert _decision(plan, "web-0")["action"] == "create"

    wrong = ovi("adopt", "aws/us-east-1/ec2/i-0nothing", "--as", "web-0", endpoint=aws,
                cwd=tmp_path)
    assert wrong.returncode == 1 and "i-0nothing" in wrong.stderr
    granted = ovi("adopt", theirs, "--as", "web-0", "--by", "alice",  # its cloud id will do
                  endpoint=aws, cwd=tmp_path)
    assert granted.returncode == 0, granted.stderr
    assert f"aws/us-east-1/ec2/{theirs} as web-0" in granted.stdout and "alice" in granted.stdout

    code, applied = ovi_json("apply", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 0, applied
    assert [(e["action"], e["resource_id"], e["outcome"]) for e in applied["executions"]] == [
        ("adopt", "web-0", "executed")]
    assert ovi_ids(aws) == Counter({"web-0": 1})
    (instance,) = live_instances(aws)
    assert instance["InstanceId"] == theirs and tags_of(instance)["Name"] == "hand-made"
    (grant,) = _events(tmp_path / "ovi.db", "AdoptionGranted")
    assert (grant["resource_id"], grant["cloud_id"], grant["by"]) == ("web-0", theirs, "alice")
    code, plan = ovi_json("plan", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 0 and plan["in_sync"], plan


def test_a_bucket_created_before_a_crash_could_tag_it_is_finished_not_a_conflict(
    aws: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "ovi.yaml", "{type: s3, name: assets}")
    code, plan = ovi_json("plan", "--config", str(config), endpoint=aws, cwd=tmp_path)
    create = _decision(plan, "assets-0")
    # The state a crash between CreateBucket and PutBucketTagging leaves: the
    # write-ahead record, and the bucket without any tag.
    crashed = subprocess.run([sys.executable, "-c", _WRITE_AHEAD, str(tmp_path / "ovi.db"),
                              create["decision_id"]], capture_output=True, text=True,
                             timeout=60, check=False)
    assert crashed.returncode == 0, crashed.stderr
    time.sleep(1.1)  # S3 creation dates have whole seconds
    client("s3", aws).create_bucket(Bucket="assets-0")

    code, applied = ovi_json("apply", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 0, applied
    assert [(e["action"], e["outcome"]) for e in applied["executions"]] == [
        ("adopt", "executed")]
    assert _bucket_tags(aws, "assets-0")["ovi:id"] == "assets-0"
    recovered = [e for e in _events(tmp_path / "ovi.db", "ActionExecuted") if e["recovered"]]
    assert [(e["action"], e["cloud_id"]) for e in recovered] == [("create", "assets-0")]


_WRITE_AHEAD = """
import sys, anyio
from ovi.events import ActionExecuting, resource_stream
from ovi.model import Action
from ovi.runtime import open_runtime
from pathlib import Path

async def main():
    async with open_runtime(Path(sys.argv[1]), instance_id="crashed:1:x") as rt:
        await rt.store.append(resource_stream("assets-0"), [ActionExecuting(
            cycle_id="c", decision_id=sys.argv[2], action=Action.CREATE,
            resource_id="assets-0", cloud_id=None, token=1)])

anyio.run(main)
"""


def test_a_retried_create_keeps_the_bucket_it_made_when_tagging_failed(
    aws: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    fault_proxy.add(Fault("s3:PutBucketTagging", code="SlowDown", times=3))
    config = write_config(tmp_path / "ovi.yaml", "{type: s3, name: assets}")
    code, applied = ovi_json("apply", "--config", str(config), endpoint=fault_proxy.endpoint,
                             cwd=tmp_path)
    assert code == 0, applied
    assert [(e["action"], e["outcome"]) for e in applied["executions"]] == [
        ("create", "executed")]
    assert _bucket_tags(aws, "assets-0")["ovi:id"] == "assets-0"


# --- 5. bounds -----------------------------------------------------------------------


def _limit_memory() -> None:
    limit = 1 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_a_huge_count_is_refused_before_anything_is_built(aws: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ovi.yaml",
                          "{type: ec2, name: web, count: 100000000}")
    done = subprocess.run([sys.executable, "-m", "ovi", "plan", "--config", str(config)],
                          cwd=tmp_path, env=aws_env(aws), capture_output=True, text=True,
                          timeout=60, check=False, preexec_fn=_limit_memory)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "ovi.yaml:5: resources[0].count" in done.stderr
    assert "rules.max_resources" in done.stderr and "100000000" in done.stderr
    assert not (tmp_path / "ovi.db").exists()


def test_deeply_nested_yaml_is_a_one_line_config_error(aws: str, tmp_path: Path) -> None:
    config = tmp_path / "ovi.yaml"
    config.write_text("version: v1\nprovider: aws\nregion: us-east-1\nresources: "
                      + "[" * 100_000 + "]" * 100_000 + "\n")
    done = ovi("plan", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr[-500:]
    assert done.stderr.startswith("ovi: error: ") and "ovi.yaml:4" in done.stderr
    assert "nested" in done.stderr


def test_creates_beyond_the_cap_wait_for_the_next_cycle(aws: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ovi.yaml", "{type: ec2, name: web, count: 5}",
                          rules="max_creates_per_cycle: 3")
    code, plan = ovi_json("plan", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert Counter(d["status"] for d in plan["decisions"]) == Counter(ready=3, capped=2)
    capped = [d for d in plan["decisions"] if d["status"] == "capped"]
    assert all("cap of 3 creates per cycle" in d["reason"] for d in capped)
    code, applied = ovi_json("apply", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 0 and len(live_instances(aws)) == 3
    assert Counter(e["outcome"] for e in applied["executions"]) == Counter(executed=3,
                                                                           skipped=2)
    assert ovi("apply", "--config", str(config), endpoint=aws, cwd=tmp_path).returncode == 0
    assert ovi_ids(aws) == Counter({f"web-{j}": 1 for j in range(5)})


def test_resizes_beyond_the_cap_wait_for_the_next_cycle(aws: str, tmp_path: Path) -> None:
    """A size changed for a fleet of 4 stops at most 2 instances per cycle."""
    config = write_config(tmp_path / "ovi.yaml", "{type: ec2, name: web, count: 4}")
    assert ovi("apply", "--config", str(config), endpoint=aws, cwd=tmp_path).returncode == 0
    config = write_config(tmp_path / "ovi.yaml",
                          "{type: ec2, name: web, count: 4, size: t3.small}",
                          rules="allow_resize: true\nmax_resizes_per_cycle: 2")

    def sizes() -> Counter[str]:
        pages = client("ec2", aws).get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-state-name", "Values": ["running"]}])
        return Counter(i["InstanceType"] for p in pages for r in p["Reservations"]
                       for i in r["Instances"])

    code, plan = ovi_json("plan", "--config", str(config), endpoint=aws, cwd=tmp_path)
    capped = [d for d in plan["decisions"] if d["status"] == "capped"]
    assert [d["resource_id"] for d in capped] == ["web-2", "web-3"]
    assert all("cap of 2 resizes per cycle" in d["reason"] for d in capped)
    code, applied = ovi_json("apply", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 0 and sizes() == Counter({"t3.small": 2, "t3.micro": 2}), applied
    assert ovi("apply", "--config", str(config), endpoint=aws, cwd=tmp_path).returncode == 0
    assert sizes() == Counter({"t3.small": 4})


# --- 6. unreadable buckets ---------------------------------------------------------


def test_one_unreadable_bucket_is_unknown_and_the_rest_of_s3_proceeds(
    aws: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    s3 = client("s3", aws)
    s3.create_bucket(Bucket="theirs")
    rules = "grace_period: 0s\nrequire_approval: false"
    config = write_config(tmp_path / "ovi.yaml", "{type: s3, name: logs}", rules=rules)
    assert ovi("apply", "--config", str(config), endpoint=aws, cwd=tmp_path).returncode == 0

    def denied(*names: str) -> None:
        fault_proxy.clear()
        fault_proxy.add(Fault("s3:GetBucketTagging", code="AccessDenied", status=403,
                              times=1000, match=lambda r: r.path.strip("/") in names))

    denied("theirs")
    config = write_config(tmp_path / "ovi.yaml", "{type: s3, name: logs}",
                          "{type: s3, name: assets}", rules=rules)
    code, applied = ovi_json("apply", "--config", str(config), endpoint=fault_proxy.endpoint,
                             cwd=tmp_path)
    assert code == 0, applied
    assert applied["failed_scopes"] == []
    assert [(u["scope"], u["cloud_id"]) for u in applied["unreadable"]] == [
        ("aws/us-east-1/s3", "theirs")]
    assert "AccessDenied" in applied["unreadable"][0]["error"]
    assert [(e["action"], e["resource_id"], e["outcome"]) for e in applied["executions"]] == [
        ("create", "assets-0", "executed")]
    assert all("theirs" not in d["resource_id"] for d in applied["decisions"])
    (completed,) = [e for e in _events(tmp_path / "ovi.db", "ObservationCompleted")
                    if e["unreadable"]]
    assert completed["unreadable"][0]["cloud_id"] == "theirs"

    # A bucket the log knows that can no longer be read is neither gone nor missing:
    # no delete although it left the config, no create although it is desired.
    denied("logs-0", "assets-0")
    config = write_config(tmp_path / "ovi.yaml", "{type: s3, name: assets}", rules=rules)
    code, applied = ovi_json("apply", "--config", str(config), endpoint=fault_proxy.endpoint,
                             cwd=tmp_path)
    assert code == 0, applied
    assert [(d["action"], d["resource_id"]) for d in applied["decisions"]] == [
        ("notify", "aws/us-east-1/s3/theirs")]  # readable again: reported as unmanaged
    assert applied["executions"] == []
    assert sorted(u["cloud_id"] for u in applied["unreadable"]) == ["assets-0", "logs-0"]
    assert event_types(tmp_path / "ovi.db")["ResourceDisappeared"] == 0
    assert sorted(b["Name"] for b in s3.list_buckets()["Buckets"]) == [
        "assets-0", "logs-0", "theirs"]
