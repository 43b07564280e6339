"""Recovery under faults, with ``ovi`` as a subprocess against moto behind the
fault proxy: a process killed mid-resize, then AWS refusing recovery's start.
Ends, like tests/e2e/test_interrupted_work.py, with a clean ``verify``."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.e2e.cli import write_config
from tests.e2e.test_interrupted_work import AWS, RESIZE, WEB
from tests.e2e.test_interrupted_work import aws as aws  # the fixture
from tests.fault_proxy import Fault


def test_a_resize_killed_before_its_start_is_started_even_when_recoverys_start_is_throttled(
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
    held.times = 0
    aws.proxy.add(Fault("ec2:StartInstances"))  # recovery's start is throttled, once

    code, applied = aws.apply(config)
    assert code == 0, applied
    # Recovery could not start it, so the update was interrupted (not
    # recovered) and the start stayed owed: the same cycle made it.
    (instance,) = aws.instances()
    assert (instance["State"]["Name"], instance["InstanceType"]) == ("running", "t3.small")
    assert [e for e in aws.logged("ActionExecuted") if e.get("recovered")] == []
    assert [e["interrupted"] for e in aws.logged("ActionFailed")] == [True]
    assert [(e["action"], e["outcome"]) for e in applied["executions"]] == [
        ("update", "executed")]
    assert aws.calls("ec2:ModifyInstanceAttribute") == 1
    assert aws.plan(config)[0] == 0
    aws.verify()
