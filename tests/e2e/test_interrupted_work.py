"""Interrupted work never leaves damage: ``ovi`` as a subprocess against moto
behind the fault-injecting proxy (throttling, lost responses, a caller killed
mid-call, ``ClientToken`` honoured as AWS honours it).

Each test ends with what must hold afterwards: nothing done twice, nothing
desired deleted or left stopped, and ``python -m ovi.replay verify`` clean.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cli import ROOT, aws_env, client, ovi, tags_of, write_config
from tests.fault_proxy import Fault, FaultProxy, When
from tests.moto_server import reset_moto

WEB = "{type: ec2, name: web, size: %s}"
RESIZE = "allow_resize: true"
SSM_AMI = "/ovi-test/web-ami"


class AWS:
    """The proxy Ovi talks to, and moto behind it for looking at the truth."""

    def __init__(self, proxy: FaultProxy, moto: str, tmp_path: Path) -> None:
        self.proxy = proxy
        self.moto = moto
        self.dir = tmp_path
        self.store = tmp_path / "ovi.db"
        # botocore's own retries off: the executor's retries are what is tested
        self.env = aws_env(proxy.endpoint) | {"AWS_MAX_ATTEMPTS": "1"}

    def ovi(self, *args: str) -> subprocess.CompletedProcess[str]:
        return ovi(*args, endpoint=self.proxy.endpoint, cwd=self.dir, env=self.env)

    def apply(self, config: Path) -> tuple[int, dict[str, Any]]:
        return self._json("apply", config)

    def plan(self, config: Path) -> tuple[int, dict[str, Any]]:
        return self._json("plan", config)

    def _json(self, command: str, config: Path) -> tuple[int, dict[str, Any]]:
        done = self.ovi(command, "--config", str(config), "--store", str(self.store), "--json")
        assert done.stdout.count("\n") == 1, done.stdout + done.stderr
        return done.returncode, json.loads(done.stdout)

    def instances(self) -> list[dict[str, Any]]:
        """Every instance that is not terminated, as moto has it."""
        pages = client("ec2", self.moto).get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-state-name",
                      "Values": ["pending", "running", "stopping", "stopped"]}])
        return [i for p in pages for r in p["Reservations"] for i in r["Instances"]]

    def calls(self, operation: str) -> int:
        return len(self.proxy.calls(operation))

    def logged(self, type_: str) -> list[dict[str, Any]]:
        with closing(sqlite3.connect(self.store)) as db:
            return [json.loads(row[0]) for row in db.execute(
                "SELECT data FROM events WHERE type = ? ORDER BY position", (type_,))]

    def verify(self) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "ovi.replay", "verify", "--json", "--store", str(self.store)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        report = json.loads(done.stdout)
        assert done.returncode == 0 and report["ok"], report
        assert report["in_doubt"] == [], report


@pytest.fixture
def aws(fault_proxy: FaultProxy, moto_endpoint: str, tmp_path: Path) -> Iterator[AWS]:
    reset_moto(moto_endpoint)
    yield AWS(fault_proxy, moto_endpoint, tmp_path)


def _closed_window() -> str:
    """A maintenance window that is not open now (it opens in two hours)."""
    now = datetime.now(UTC)
    start, end = now + timedelta(hours=2), now + timedelta(hours=3)
    return f'maintenance_window: {{start: "{start:%H:%M}", end: "{end:%H:%M}"}}'


def test_a_throttled_start_after_a_resize_is_retried_and_the_instance_runs(
    aws: AWS, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "ovi.yaml", WEB % "t3.micro", rules=RESIZE)
    assert aws.apply(config)[0] == 0
    write_config(config, WEB % "t3.small", rules=RESIZE)
    aws.proxy.add(Fault("ec2:StartInstances"))  # throttled once: it never reached EC2

    code, applied = aws.apply(config)
    assert code == 0, applied
    assert [(e["action"], e["outcome"]) for e in applied["executions"]] == [
        ("update", "executed")]
    (instance,) = aws.instances()
    assert (instance["State"]["Name"], instance["InstanceType"]) == ("running", "t3.small")
    # The retry resumed where the first attempt stopped: one stop, one type
    # change, and the start again.
    assert [aws.calls(f"ec2:{op}") for op in
            ("StopInstances", "ModifyInstanceAttribute", "StartInstances")] == [1, 1, 2]
    (executing,) = [e for e in aws.logged("ActionExecuting") if e["action"] == "update"]
    assert executing["was_running"] is True
    assert aws.plan(config)[0] == 0
    aws.verify()


def test_a_start_that_keeps_failing_is_made_by_the_next_cycle_even_outside_the_window(
    aws: AWS, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "ovi.yaml", WEB % "t3.micro", rules=RESIZE)
    assert aws.apply(config)[0] == 0
    write_config(config, WEB % "t3.small", rules=RESIZE)
    aws.proxy.add(Fault("ec2:StartInstances", times=99))
    code, failed = aws.apply(config)
    assert code == 1 and [e["outcome"] for e in failed["executions"]] == ["failed"]
    (instance,) = aws.instances()
    assert (instance["State"]["Name"], instance["InstanceType"]) == ("stopped", "t3.small")
    aws.proxy.faults.clear()

    # No size drift is left, and the window is closed: the start Ovi owes is
    # restorative, so it is made at once.
    write_config(config, WEB % "t3.small", rules=f"{RESIZE}\n{_closed_window()}")
    code, plan = aws.plan(config)
    assert code == 2
    (decision,) = plan["decisions"]
    assert (decision["action"], decision["status"]) == ("update", "ready")
    code, applied = aws.apply(config)
    assert code == 0 and [e["outcome"] for e in applied["executions"]] == ["executed"]
    (instance,) = aws.instances()
    assert instance["State"]["Name"] == "running"

    # A disruptive change (stop, resize, start) waits for the window.
    write_config(config, WEB % "t3.medium", rules=f"{RESIZE}\n{_closed_window()}")
    code, applied = aws.apply(config)
    assert code == 0 and applied["executions"][0]["error"] == "maintenance_window"
    (instance,) = aws.instances()
    assert (instance["State"]["Name"], instance["InstanceType"]) == ("running", "t3.small")
    assert aws.calls("ec2:StopInstances") == 1
    aws.verify()


def test_a_resize_killed_between_stop_and_start_is_brought_back_by_recovery(
    aws: AWS, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "ovi.yaml", WEB % "t3.micro", rules=RESIZE)
    assert aws.apply(config)[0] == 0
    write_config(config, WEB % "t3.small", rules=RESIZE)
    held = aws.proxy.add(Fault("ec2:StartInstances", delay=120))
    victim = subprocess.Popen(
        [sys.executable, "-m", "ovi", "apply", "--config", str(config), "--store",
         str(aws.store)], cwd=tmp_path, env=aws.env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        aws.proxy.wait_for("ec2:StartInstances")  # stopped and resized: kill it now
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    (instance,) = aws.instances()
    assert (instance["State"]["Name"], instance["InstanceType"]) == ("stopped", "t3.small")
    held.times = 0  # the next start goes through

    code, applied = aws.apply(config)
    assert code == 0, applied
    (instance,) = aws.instances()
    assert (instance["State"]["Name"], instance["InstanceType"]) == ("running", "t3.small")
    recovered = [e for e in aws.logged("ActionExecuted") if e.get("recovered")]
    assert [e["action"] for e in recovered] == ["update"]
    assert aws.calls("ec2:StopInstances") == 1 and aws.calls("ec2:ModifyInstanceAttribute") == 1
    assert aws.plan(config)[0] == 0
    aws.verify()


def test_a_create_whose_instance_died_is_made_again_with_a_new_token(
    aws: AWS, tmp_path: Path
) -> None:
    ssm = client("ssm", aws.moto)
    ssm.put_parameter(Name=SSM_AMI, Value="ami-12345678", Type="String")
    config = write_config(tmp_path / "ovi.yaml",
                          f'{{type: ec2, name: web, image: "resolve:ssm:{SSM_AMI}"}}')
    ec2 = client("ec2", aws.moto)

    def die() -> None:
        (instance,) = aws.instances()
        ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])

    assert aws.apply(config)[0] == 0
    die()  # before any observation saw it: the same decision runs again
    code, applied = aws.apply(config)
    assert code == 0, applied
    (instance,) = aws.instances()
    assert tags_of(instance)["ovi:id"] == "web-0"
    (decision,) = {e["decision_id"] for e in aws.logged("ActionExecuting")}
    tokens = [r.param("ClientToken") for r in aws.proxy.calls("ec2:RunInstances")]
    assert tokens == [decision, decision, f"{decision}.2"]

    # Dies again, and meanwhile the AMI parameter moved: AWS refuses the old
    # token with other parameters; the attempt after it gets a new one.
    die()
    ssm.put_parameter(Name=SSM_AMI, Value="ami-87654321", Type="String", Overwrite=True)
    code, applied = aws.apply(config)
    assert code == 0, applied
    (instance,) = aws.instances()
    assert instance["ImageId"] == "ami-87654321"
    assert [e["create_attempt"] for e in aws.logged("ActionExecuting")] == [1, 1, 2, 2, 3]
    assert aws.plan(config)[0] == 0
    aws.verify()


def test_a_db_delete_retried_after_a_lost_response_is_recorded_done(
    aws: AWS, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "ovi.yaml", "{type: rds, name: db}",
                          rules="grace_period: 0s\nrequire_approval: false\n"
                                "final_snapshot: false")
    assert aws.apply(config)[0] == 0
    write_config(config, rules="grace_period: 0s\nrequire_approval: false\nfinal_snapshot: false")
    # The delete happens but its answer is lost; AWS then refuses every repeat
    # while the instance is being deleted.
    aws.proxy.add(Fault("rds:DeleteDBInstance", code="InternalError", status=500,
                        when=When.AFTER))
    aws.proxy.add(Fault("rds:DeleteDBInstance", code="InvalidDBInstanceState", status=400,
                        times=99, message="Instance db-0 is already being deleted."))
    code, applied = aws.apply(config)
    assert code == 0, applied
    assert [(e["action"], e["outcome"]) for e in applied["executions"]] == [
        ("delete", "executed")]
    assert client("rds", aws.moto).describe_db_instances()["DBInstances"] == []
    assert aws.logged("ActionFailed") == []
    aws.verify()


def _one_web_instance(aws: AWS) -> dict[str, Any]:
    instances = aws.instances()
    assert len(instances) == 1, [i["InstanceId"] for i in instances]
    assert tags_of(instances[0])["ovi:id"] == "web-0"
    return instances[0]


@pytest.mark.parametrize("honoured", [True, False], ids=["aws-tokens", "tokens-ignored"])
def test_a_first_create_whose_answer_is_lost_makes_one_instance(
    aws: AWS, tmp_path: Path, honoured: bool
) -> None:
    """The first call of a create skips looking for the instance (nothing was
    ever called for its decision); the call after a lost answer looks, so even
    an endpoint that ignores ClientToken (moto) gets no second instance."""
    aws.proxy.honour_client_tokens = honoured
    config = write_config(tmp_path / "ovi.yaml", WEB % "t3.micro")
    lost = aws.proxy.add(Fault("ec2:RunInstances", code="InternalError", status=500,
                               when=When.AFTER))
    code, applied = aws.apply(config)
    assert code == 0, applied
    assert lost.hits == 1
    _one_web_instance(aws)
    (decision,) = {e["decision_id"] for e in aws.logged("ActionExecuting")}
    tokens = [r.param("ClientToken") for r in aws.proxy.calls("ec2:RunInstances")]
    assert tokens and set(tokens) == {decision}
    assert [(e["action"], e["outcome"]) for e in applied["executions"]] == [
        ("create", "executed")]
    assert aws.plan(config)[0] == 0
    aws.verify()


def test_a_throttled_first_create_is_retried_and_makes_one_instance(
    aws: AWS, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "ovi.yaml", WEB % "t3.micro")
    throttled = aws.proxy.add(Fault("ec2:RunInstances", code="RequestLimitExceeded",
                                    status=503, times=2))
    code, applied = aws.apply(config)
    assert code == 0, applied
    assert throttled.hits == 2
    _one_web_instance(aws)
    assert aws.calls("ec2:RunInstances") == 3
    assert aws.plan(config)[0] == 0
    aws.verify()


def test_botocores_own_retry_of_a_lost_create_answer_reuses_the_token(
    aws: AWS, tmp_path: Path
) -> None:
    """With botocore's retries on (as in production), a lost RunInstances answer
    is retried inside the one call with the same ClientToken: AWS answers it
    from memory, and there is one instance."""
    aws.env = aws.env | {"AWS_MAX_ATTEMPTS": "3"}
    config = write_config(tmp_path / "ovi.yaml", WEB % "t3.micro")
    aws.proxy.add(Fault("ec2:RunInstances", code="InternalError", status=500,
                        when=When.AFTER))
    code, applied = aws.apply(config)
    assert code == 0, applied
    _one_web_instance(aws)
    tokens = [r.param("ClientToken") for r in aws.proxy.calls("ec2:RunInstances")]
    assert len(tokens) == 2 and len(set(tokens)) == 1
    aws.verify()
