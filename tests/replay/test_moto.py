"""The replay tool on a log written by the real ``ovi`` command against moto."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cli import live_instances, ovi, ovi_json, run_instance, tags_of, write_config
from tests.moto_server import reset_moto
from tests.replay.support import json_lines, json_object, replay

WEB = "{type: ec2, name: web, size: t3.micro, tags: {team: platform}}"
QUICK = "grace_period: 0s\nfinal_snapshot: false"


@pytest.fixture
def aws(moto_endpoint: str) -> Iterator[str]:
    reset_moto(moto_endpoint)
    yield moto_endpoint


def test_replay_explains_an_approved_delete_in_aws(aws: str, tmp_path: Path) -> None:
    surplus = run_instance(aws, {"ovi:id": "old-0", "ovi:managed": "true", "ovi:owner": "ovi"})
    config = write_config(tmp_path / "ovi.yaml", WEB, rules=QUICK)
    code, first = ovi_json("apply", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 0, first
    delete = next(d for d in first["decisions"] if d["action"] == "delete")
    approved = ovi("approve", delete["decision_id"], "--by", "alice", endpoint=aws,
                   cwd=tmp_path)
    assert approved.returncode == 0, approved.stderr
    code, second = ovi_json("apply", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 0 and [e["outcome"] for e in second["executions"]] == ["executed"]
    (web,) = live_instances(aws)
    assert tags_of(web)["ovi:id"] == "web-0"
    assert ovi("plan", "--config", str(config), endpoint=aws, cwd=tmp_path).returncode == 0
    log = tmp_path / "ovi.db"

    assert json_object(replay("verify", "--json", store=log))["ok"] is True
    why = replay("why", surplus, store=log)  # by the EC2 instance id
    assert why.returncode == 0, why.stderr
    assert "Why Ovi decided to delete old-0" in why.stdout
    assert "granted by alice" in why.stdout and "done: delete executed" in why.stdout
    assert f"granted by alice (user root, uid {os.getuid()} on" in why.stdout  # who ran it
    assert f"from {config}" in why.stdout  # the config version and its file
    assert f"{surplus} was no longer found in aws/us-east-1/ec2" in why.stdout
    state = json_object(replay("state", "--json", store=log))
    assert [(r["id"], r["cloud_id"]) for r in state["resources"]] == [
        ("web-0", web["InstanceId"])]
    timeline = json_lines(replay("timeline", web["InstanceId"], "--json", store=log))
    assert {line["resource_id"] for line in timeline} == {"web-0"}
    assert "ActionExecuted" in [line["type"] for line in timeline]
    careful = write_config(tmp_path / "careful.yaml", WEB,
                           rules=QUICK + "\nskip_destructive: true")
    assert replay("backtest", "--config", str(config), store=log).returncode == 0
    assert replay("backtest", "--config", str(careful), store=log).returncode == 3
    assert replay("rebuild", store=log).returncode == 0
