"""``ovi demo``: Ovi's main job against an embedded AWS emulator.

For a newcomer with no AWS account and no network: starts moto's server on
loopback, seeds a small estate (unmanaged resources, a blessed one, a surplus
one), writes an example config, then runs plan → apply → an out-of-band change
→ plan → apply → approve → apply, saying what happened at each step.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

from ovi._exceptions import OviError
from ovi._output import result_text
from ovi.app import approve_decision, run_once
from ovi.engine import CycleResult
from ovi.model import Action, CycleMode, DecisionStatus

__all__ = ["DEMO_CONFIG", "run_demo"]

DEMO_CONFIG = """\
# Ovi demo: the desired state of a small estate.
version: v1
provider: aws
region: us-east-1
owner: ovi
resources:
  - type: ec2
    name: web
    count: 2
    size: t3.micro
    tags: {team: platform, environment: demo}
  - type: rds
    name: db
    size: db.t3.micro
    tags: {team: platform}
  - type: s3
    name: assets
    tags: {team: platform}
rules:
  grace_period: 0s        # demo only: surplus resources may go at once...
  require_approval: true  # ...but only once a person approves
  final_snapshot: false
"""


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@contextmanager
def _emulator() -> Iterator[str]:
    """An AWS emulator (moto) on a free loopback port, and the standard AWS
    environment variables pointing at it for the duration."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise OviError("ovi demo needs the embedded AWS emulator: "
                       "pip install 'ovi[demo]'") from exc
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    wanted = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "demo",
              "AWS_SECRET_ACCESS_KEY": "demo", "AWS_REGION": "us-east-1",
              "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    os.environ.pop("AWS_PROFILE", None)
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def _seed(endpoint: str) -> dict[str, str]:
    """Resources that were there before Ovi: two unmanaged, one blessed, one
    surplus. Returns their cloud ids by role."""
    import boto3

    ec2: Any = boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1")
    s3: Any = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    ssm: Any = boto3.client("ssm", endpoint_url=endpoint, region_name="us-east-1")
    image = ssm.get_parameter(
        Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
    )["Parameter"]["Value"]

    def instance(tags: dict[str, str]) -> str:
        response = ec2.run_instances(
            ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1,
            TagSpecifications=[{"ResourceType": "instance", "Tags": [
                {"Key": k, "Value": v} for k, v in tags.items()]}])
        return str(response["Instances"][0]["InstanceId"])

    s3.create_bucket(Bucket="legacy-logs")
    return {
        "legacy": instance({"Name": "legacy-batch"}),
        "blessed": instance({"ovi:id": "reports-0", "ovi:managed": "true",
                             "ovi:owner": "ovi", "ovi:blessed": "true"}),
        "surplus": instance({"ovi:id": "worker-0", "ovi:managed": "true", "ovi:owner": "ovi",
                             "team": "platform"}),
        "bucket": "legacy-logs",
    }


def _retag(endpoint: str, instance_id: str) -> None:
    import boto3

    ec2: Any = boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1")
    ec2.create_tags(Resources=[instance_id], Tags=[{"Key": "team", "Value": "someone-else"}])


def _step(number: int, title: str, explanation: str) -> None:
    _say(f"\n━━ step {number}: {title}")
    _say(f"   {explanation}\n")


async def run_demo(directory: Path | None) -> int:
    """Run the whole demo; the config and the event log stay in ``directory``
    (default ``./ovi-demo``) for ``python -m ovi.replay`` afterwards."""
    root = (directory or Path("ovi-demo")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    store = root / "ovi.db"
    for leftover in (store, root / "ovi.db-wal", root / "ovi.db-shm"):
        leftover.unlink(missing_ok=True)  # a fresh estate needs a fresh log
    config = root / "ovi.yaml"
    config.write_text(DEMO_CONFIG)
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ

    async def cycle(mode: str) -> CycleResult:
        cycle_mode = CycleMode(mode)
        result = await run_once(config, store, mode=cycle_mode)
        _say(result_text(result, executions=cycle_mode is CycleMode.APPLY, colour=colour))
        return result

    with _emulator() as endpoint:
        _say(f"Ovi demo — an embedded AWS emulator runs on {endpoint}; nothing leaves this"
             " machine.")
        _say(f"config: {config}\nevent log: {store}")
        seeded = await anyio.to_thread.run_sync(_seed, endpoint)
        _step(1, "plan", "Compare the config with the estate. Nothing is changed. Found: two"
              " web servers, a database and a bucket to create; a legacy instance and bucket"
              " Ovi does not manage (reported, never touched); a blessed instance (never"
              " deleted); a surplus instance Ovi manages.")
        await cycle("plan")
        _step(2, "apply", "Create what is missing. The surplus instance is not deleted: deletes"
              " wait for a person's approval.")
        applied = await cycle("apply")
        web0 = next((e.cloud_id for e in applied.executions
                     if e.resource_id == "web-0" and e.cloud_id), None)
        if web0 is None:
            raise OviError("demo: web-0 was not created; see the output above")
        _step(3, "an out-of-band change", f"Someone re-tags web-0 ({web0}) by hand:"
              " team=someone-else.")
        await anyio.to_thread.run_sync(_retag, endpoint, web0)
        _step(4, "plan", "Ovi notices the drift (ovi plan would exit 2: changes pending).")
        await cycle("plan")
        _step(5, "apply", "The declared tag is set back in place; undeclared tags are kept.")
        fixed = await cycle("apply")
        pending = [d for d in fixed.decisions if d.action == Action.DELETE
                   and d.status == DecisionStatus.AWAITING_APPROVAL]
        if pending:
            decision = pending[0]
            _step(6, "approve", f"A person approves deleting {decision.resource_id}:"
                  f" ovi approve {decision.decision_id}")
            await approve_decision(store, decision.decision_id, by="demo")
            _step(7, "apply", "Now the approved delete runs; the blessed instance stays.")
            await cycle("apply")
        _step(8, "plan", "Only notifications are left: in sync (ovi plan exits 0).")
        final = await cycle("plan")
        verdict = "in sync" if final.in_sync else "NOT in sync: see above"
        _say(f"\n━━ done. The estate is {verdict}, and every step is in the event log.")
        _say(f"   legacy resources left untouched: {seeded['legacy']}, {seeded['bucket']}")
        _say("   Explore the log (it outlives the emulator):")
        for command in ("log --type decided", "why worker-0", "why web-0", "state", "stats",
                        "verify"):
            _say(f"     {sys.executable} -m ovi.replay --store {store} {command}")
    return 0
