"""``ovi`` as a person (or systemd) runs it, against a moto server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cli import (
    ROOT,
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
from tests.moto_server import reset_moto

WEB3 = "{type: ec2, name: web, count: 3, size: t3.micro, tags: {team: platform, app: shop}}"
DB = "{type: rds, name: db, size: db.t3.micro, tags: {team: platform}}"
BUCKET = "{type: s3, name: assets, tags: {team: platform}}"
QUICK = "grace_period: 0s\nfinal_snapshot: false"


@pytest.fixture
def aws(moto_endpoint: str) -> Iterator[str]:
    reset_moto(moto_endpoint)
    yield moto_endpoint


def test_converge_from_empty(aws: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ovi.yaml", WEB3, DB, BUCKET)
    code, plan = ovi_json("plan", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 2 and not plan["in_sync"]
    assert sorted(d["resource_id"] for d in plan["decisions"]) == [
        "assets-0", "db-0", "web-0", "web-1", "web-2"]
    assert {d["action"] for d in plan["decisions"]} == {"create"}

    code, applied = ovi_json("apply", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 0, applied
    assert sorted(e["outcome"] for e in applied["executions"]) == ["executed"] * 5

    instances = live_instances(aws)
    assert sorted(tags_of(i)["ovi:id"] for i in instances) == ["web-0", "web-1", "web-2"]
    for instance in instances:
        tags = tags_of(instance)
        assert tags["ovi:managed"] == "true" and tags["ovi:owner"] == "ovi"
        assert tags["team"] == "platform" and tags["app"] == "shop"
        assert tags["ovi:decision"].startswith("d-")
        assert instance["InstanceType"] == "t3.micro"
    (database,) = client("rds", aws).describe_db_instances()["DBInstances"]
    assert tags_of(database)["ovi:id"] == "db-0" and tags_of(database)["team"] == "platform"
    bucket_tags = client("s3", aws).get_bucket_tagging(Bucket="assets-0")["TagSet"]
    assert {t["Key"]: t["Value"] for t in bucket_tags}["ovi:id"] == "assets-0"

    code, again = ovi_json("plan", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 0 and again["in_sync"] and again["decisions"] == []


def test_out_of_band_tag_change_is_detected_and_fixed(aws: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ovi.yaml", WEB3)
    assert ovi("apply", "--config", str(config), endpoint=aws, cwd=tmp_path).returncode == 0
    victim = next(i for i in live_instances(aws) if tags_of(i)["ovi:id"] == "web-1")
    client("ec2", aws).create_tags(Resources=[victim["InstanceId"]], Tags=[
        {"Key": "team", "Value": "intruder"}, {"Key": "extra", "Value": "kept"}])

    code, plan = ovi_json("plan", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 2
    assert [(d["type"], d["resource_id"]) for d in plan["diffs"]] == [("drifted", "web-1")]
    assert ovi("apply", "--config", str(config), endpoint=aws, cwd=tmp_path).returncode == 0

    fixed = next(i for i in live_instances(aws) if tags_of(i)["ovi:id"] == "web-1")
    assert tags_of(fixed)["team"] == "platform"
    assert tags_of(fixed)["extra"] == "kept"  # undeclared tags are never removed
    assert ovi("plan", "--config", str(config), endpoint=aws, cwd=tmp_path).returncode == 0


def test_unmanaged_resource_is_reported_and_never_touched(aws: str, tmp_path: Path) -> None:
    stray = run_instance(aws, {"Name": "hand-made"})
    config = write_config(tmp_path / "ovi.yaml", rules="grace_period: 0s\nrequire_approval: false")
    code, plan = ovi_json("plan", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 0  # only a notification
    assert [(d["type"], d["resource_id"]) for d in plan["diffs"]] == [
        ("unmanaged", f"aws/us-east-1/ec2/{stray}")]
    assert [d["action"] for d in plan["decisions"]] == ["notify"]
    code, applied = ovi_json("apply", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 0 and applied["executions"] == []
    assert [i["InstanceId"] for i in live_instances(aws)] == [stray]


def test_blessed_surplus_is_never_deleted(aws: str, tmp_path: Path) -> None:
    blessed = run_instance(aws, {"ovi:id": "old-0", "ovi:managed": "true",
                                 "ovi:owner": "ovi", "ovi:blessed": "true"})
    config = write_config(tmp_path / "ovi.yaml", rules="grace_period: 0s\nrequire_approval: false")
    code, applied = ovi_json("apply", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 0
    assert [(d["action"], d["resource_id"]) for d in applied["decisions"]] == [
        ("notify", "old-0")]
    assert [i["InstanceId"] for i in live_instances(aws)] == [blessed]


def test_surplus_is_deleted_only_after_approval(aws: str, tmp_path: Path) -> None:
    surplus = run_instance(aws, {"ovi:id": "old-0", "ovi:managed": "true", "ovi:owner": "ovi"})
    config = write_config(tmp_path / "ovi.yaml", rules=QUICK)
    code, first = ovi_json("apply", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 0
    (decision,) = first["decisions"]
    assert (decision["action"], decision["status"]) == ("delete", "awaiting_approval")
    assert [i["InstanceId"] for i in live_instances(aws)] == [surplus]

    unknown = ovi("approve", "d-doesnotexist", endpoint=aws, cwd=tmp_path)
    assert unknown.returncode == 1 and "unknown decision id" in unknown.stderr
    approved = ovi("approve", decision["decision_id"], "--by", "alice", endpoint=aws,
                   cwd=tmp_path)
    assert approved.returncode == 0, approved.stderr

    code, second = ovi_json("apply", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 0
    assert [(e["action"], e["outcome"]) for e in second["executions"]] == [
        ("delete", "executed")]
    assert live_instances(aws) == []


def test_skip_destructive_turns_deletes_into_notifications(aws: str, tmp_path: Path) -> None:
    surplus = run_instance(aws, {"ovi:id": "old-0", "ovi:managed": "true", "ovi:owner": "ovi"})
    config = write_config(tmp_path / "ovi.yaml",
                          rules="grace_period: 0s\nrequire_approval: false\nskip_destructive: true")
    code, applied = ovi_json("apply", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 0
    assert [d["action"] for d in applied["decisions"]] == ["notify"]
    assert [i["InstanceId"] for i in live_instances(aws)] == [surplus]


def test_dry_run_changes_nothing_in_aws(aws: str, tmp_path: Path) -> None:
    surplus = run_instance(aws, {"ovi:id": "old-0", "ovi:managed": "true", "ovi:owner": "ovi"})
    config = write_config(tmp_path / "ovi.yaml", WEB3, BUCKET,
                          rules="grace_period: 0s\nrequire_approval: false")
    code, applied = ovi_json("apply", "--config", str(config), "--dry-run", endpoint=aws,
                             cwd=tmp_path)
    assert code == 0
    assert Counter(e["outcome"] for e in applied["executions"]) == Counter(skipped=5)
    # The hand-made surplus was never Ovi's by the log: its delete waits for a person.
    assert Counter((e["action"], e["error"]) for e in applied["executions"]) == Counter(
        {("create", "dry-run"): 4, ("delete", "awaiting_approval"): 1})
    assert [i["InstanceId"] for i in live_instances(aws)] == [surplus]
    assert client("s3", aws).list_buckets()["Buckets"] == []


def test_sigkill_during_apply_then_apply_again_makes_no_duplicates(
    aws: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "ovi.yaml",
                          "{type: ec2, name: web, count: 8, size: t3.micro}")
    store = tmp_path / "ovi.db"
    victim = subprocess.Popen(
        [sys.executable, "-m", "ovi", "apply", "--config", str(config), "--store", str(store),
         "--max-concurrency", "1"],
        cwd=tmp_path, env=aws_env(aws), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and victim.poll() is None:
        if store.exists() and event_types(store)["ActionExecuting"] >= 2:
            break
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    assert event_types(store)["ActionExecuting"] >= 1

    again = ovi("apply", "--config", str(config), "--store", str(store), endpoint=aws,
                cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert ovi_ids(aws) == Counter({f"web-{j}": 1 for j in range(8)})
    assert ovi("plan", "--config", str(config), "--store", str(store), endpoint=aws,
               cwd=tmp_path).returncode == 0


def test_two_concurrent_applies_on_one_store_create_each_resource_once(
    aws: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "ovi.yaml",
                          "{type: ec2, name: web, count: 6, size: t3.micro}", BUCKET)
    command = [sys.executable, "-m", "ovi", "apply", "--config", str(config), "--json"]
    both = [subprocess.Popen(command, cwd=tmp_path, env=aws_env(aws), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in both:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    assert ovi_ids(aws) == Counter({f"web-{j}": 1 for j in range(6)})
    assert [b["Name"] for b in client("s3", aws).list_buckets()["Buckets"]] == ["assets-0"]


def test_dead_endpoint_exits_1_and_destroys_nothing(aws: str, tmp_path: Path) -> None:
    surplus = run_instance(aws, {"ovi:id": "old-0", "ovi:managed": "true", "ovi:owner": "ovi"})
    config = write_config(tmp_path / "ovi.yaml", WEB3,
                          rules="grace_period: 0s\nrequire_approval: false")
    assert ovi("plan", "--config", str(config), endpoint=aws, cwd=tmp_path).returncode == 2
    started = time.monotonic()
    dead = ovi("apply", "--config", str(config), endpoint="http://127.0.0.1:9", cwd=tmp_path)
    assert dead.returncode == 1
    assert "could not observe" in dead.stderr and "127.0.0.1:9" in dead.stderr
    assert time.monotonic() - started < 60
    types = event_types(tmp_path / "ovi.db")
    assert types["ObservationFailed"] == 3
    assert types["ActionExecuting"] == 0
    assert [i["InstanceId"] for i in live_instances(aws)] == [surplus]


def test_bad_config_names_file_and_field_and_touches_nothing(aws: str, tmp_path: Path) -> None:
    config = tmp_path / "ovi.yaml"
    config.write_text("version: v1\nprovider: aws\nregion: us-east-1\nresources:\n"
                      "  - type: ec2\n    count: three\n")
    done = ovi("apply", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert done.returncode == 1
    assert "ovi.yaml" in done.stderr and "resources[0].count" in done.stderr
    assert not (tmp_path / "ovi.db").exists()


def test_operators_retry_settings_are_honoured_and_bad_ones_refused(
        aws: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ovi.yaml", WEB3)
    env = aws_env(aws) | {"AWS_MAX_ATTEMPTS": "many"}
    bad = ovi("apply", "--config", str(config), endpoint=aws, cwd=tmp_path, env=env)
    assert bad.returncode == 1
    assert "AWS_MAX_ATTEMPTS" in bad.stderr and "'many'" in bad.stderr
    assert live_instances(aws) == []  # nothing executed
    env = aws_env(aws) | {"AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
    good = ovi("apply", "--config", str(config), endpoint=aws, cwd=tmp_path, env=env)
    assert good.returncode == 0, good.stderr
    assert len(live_instances(aws)) == 3


def test_bad_flag_exits_1(aws: str, tmp_path: Path) -> None:
    done = ovi("apply", "--config", "x.yaml", "--max-concurrency", "0", endpoint=aws,
               cwd=tmp_path)
    assert done.returncode == 1 and "--max-concurrency" in done.stderr


def test_demo_runs_to_the_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    done = subprocess.run([sys.executable, "-m", "ovi", "demo", "--dir", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "The estate is in sync" in done.stdout
    # 4 creates, 1 tag fix, 1 approved delete
    assert event_types(tmp_path / "ovi.db")["ActionExecuted"] == 6
