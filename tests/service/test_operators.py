"""What operators do to a running ``ovi run`` from other processes: approve,
pause and resume; and what it tells them: webhook notifications."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cli import client, live_instances, ovi, run_instance, write_config
from tests.moto_server import reset_moto
from tests.service.support import Webhook, events, http_get, service, wait_until


@pytest.fixture
def aws(moto_endpoint: str) -> Iterator[str]:
    reset_moto(moto_endpoint)
    yield moto_endpoint


def test_an_approval_from_another_process_runs_the_delete_at_once(
    aws: str, tmp_path: Path
) -> None:
    surplus = run_instance(aws, {"ovi:id": "old-0", "ovi:managed": "true", "ovi:owner": "ovi"})
    config = write_config(tmp_path / "ovi.yaml", rules="grace_period: 0s")
    # An interval far beyond the test's patience: only the log can start the cycle.
    with service(tmp_path, aws, "--config", str(config), "--interval", "10m") as svc:
        waiting = svc.wait_line(lambda line: line.get("event") == "decision"
                                and line.get("status") == "awaiting_approval",
                                what="the delete awaiting approval")
        assert waiting["resource"] == "old-0"
        approved = ovi("approve", waiting["decision"], "--store", "ovi.db", "--by", "carol",
                       endpoint=aws, cwd=tmp_path)
        assert approved.returncode == 0, approved.stderr
        done = svc.wait_line(lambda line: line.get("event") == "action"
                             and line.get("outcome") == "executed", timeout=60,
                             what="the approved delete")
        assert (done["action"], done["cloud_id"]) == ("delete", surplus)
        woke = [line for line in svc.lines() if line.get("event") == "wake"]
        assert woke and "approved by carol" in woke[0]["msg"]
        assert len(svc.cycles()) == 2  # the first, and the one the approval started
        assert svc.stop() == 0
    assert live_instances(aws) == []
    (approval,) = [d for _, _, d in events(tmp_path / "ovi.db", "ApprovalGranted")]
    assert approval["by"] == "carol" and approval["actor"]["by"] == "carol"
    assert isinstance(approval["actor"]["uid"], int) and approval["actor"]["host"]


def _retag_bucket(endpoint: str, bucket: str, key: str, value: str) -> None:
    s3 = client("s3", endpoint)
    tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]}
    tags[key] = value
    s3.put_bucket_tagging(Bucket=bucket, Tagging={
        "TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})


def _team(endpoint: str) -> str:
    tags = client("s3", endpoint).get_bucket_tagging(Bucket="assets-0")["TagSet"]
    return str({t["Key"]: t["Value"] for t in tags}["team"])


def test_a_paused_resource_is_reported_not_fixed_until_resumed(aws: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ovi.yaml", "{type: s3, name: assets, tags: {team: web}}")
    assert ovi("apply", "--config", str(config), endpoint=aws, cwd=tmp_path).returncode == 0
    _retag_bucket(aws, "assets-0", "team", "intruder")
    paused = ovi("pause", "assets-0", "--reason", "bucket migration", "--by", "alice",
                 "--store", "ovi.db", endpoint=aws, cwd=tmp_path)
    assert paused.returncode == 0, paused.stderr
    assert "paused: assets-0, by alice" in paused.stdout

    with service(tmp_path, aws, "--config", str(config), "--interval", "1s") as svc:
        held = svc.wait_line(lambda line: line.get("event") == "decision"
                             and line.get("status") == "paused", what="the paused update")
        assert held["resource"] == "assets-0" and "bucket migration" in held["reason"]
        svc.wait_cycles(3)
        assert _team(aws) == "intruder"  # reported, not fixed
        assert svc.cycles()[-1]["paused"] == ["assets-0"]

        plan = ovi("plan", "--config", str(config), "--json", endpoint=aws, cwd=tmp_path)
        body = json.loads(plan.stdout)
        assert [(d["action"], d["status"]) for d in body["decisions"]] == [("update", "paused")]
        assert body["paused"][0]["target"] == "assets-0"
        assert body["paused"][0]["by"] == "alice" and body["paused"][0]["reason"] == \
            "bucket migration"
        table = ovi("plan", "--config", str(config), endpoint=aws, cwd=tmp_path).stdout
        assert "paused (ovi resume lifts it)" in table and "paused by alice" in table
        code, metrics = http_get(f"http://127.0.0.1:{svc.port()}/metrics")
        assert code == 200 and "ovi_paused_resources 1.0" in metrics.decode()
        why = subprocess.run([sys.executable, "-m", "ovi.replay", "--store", "ovi.db", "why",
                              "assets-0"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=60, check=False, env={**os.environ, "NO_COLOR": "1"})
        assert why.returncode == 0, why.stderr
        assert "paused" in why.stdout and "bucket migration" in why.stdout, why.stdout

        resumed = ovi("resume", "assets-0", "--store", "ovi.db", endpoint=aws, cwd=tmp_path)
        assert resumed.returncode == 0 and "resumed: assets-0" in resumed.stdout
        svc.wait_line(lambda line: line.get("event") == "action"
                      and line.get("outcome") == "executed", what="the update after resume")
        assert _team(aws) == "web"
        assert svc.stop() == 0
    executing = events(tmp_path / "ovi.db", "ActionExecuting")
    resumed_at = events(tmp_path / "ovi.db", "AutomationResumed")[0][0]
    assert executing and all(p > resumed_at for p, _, _ in executing[1:])


def test_webhook_retried_after_a_500_and_not_repeated_across_a_restart(
    aws: str, tmp_path: Path
) -> None:
    client("s3", aws).create_bucket(Bucket="legacy-logs")  # unmanaged: a notify decision
    hook = Webhook(statuses=[500])
    try:
        url_file = tmp_path / "webhook.url"
        url_file.write_text(hook.url + "\n")
        config = write_config(tmp_path / "ovi.yaml")
        config.write_text(config.read_text() + f"notify: {{webhook_url_file: {url_file}}}\n")
        with service(tmp_path, aws, "--config", str(config), "--interval", "1s") as svc:
            wait_until(lambda: hook.answered == [500, 200], 30, "a 500, then a delivery")
            svc.wait_cycles(len(svc.cycles()) + 2)
            assert svc.stop() == 0
        path, body = hook.received[-1]
        assert path.endswith(hook.secret)
        assert "legacy-logs" in body["text"]
        assert body["finding"]["kind"] == "notify"
        assert body["finding"]["resource_id"] == "aws/us-east-1/s3/legacy-logs"

        with service(tmp_path, aws, "--config", str(config), "--interval", "1s",
                     name="again") as again:
            again.wait_cycles(3)
            assert again.stop() == 0
        assert hook.answered == [500, 200]  # once per open finding, across the restart
        sent = events(tmp_path / "ovi.db", "NotificationSent")
        assert len(sent) == 1 and sent[0][2]["sinks"] == ["log", "webhook"]

        # The URL is a credential: nowhere in the log file, the output or stderr.
        for leftover in tmp_path.iterdir():
            if leftover.name.startswith(("ovi.db", "run.", "again.")):
                assert hook.secret.encode() not in leftover.read_bytes(), leftover
    finally:
        hook.stop()
