"""Running ``ovi`` as a subprocess, and looking at "AWS" with boto3."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parents[2]
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"


def aws_env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OVI_"))}
    env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1", NO_COLOR="1")
    return env


def ovi(*args: str, endpoint: str, cwd: Path, timeout: float = 120,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``ovi ARGS`` in a child process (``python -m ovi``, the same entry point)."""
    return subprocess.run(
        [sys.executable, "-m", "ovi", *args], cwd=cwd, env=env or aws_env(endpoint),
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def ovi_json(*args: str, endpoint: str, cwd: Path) -> tuple[int, dict[str, Any]]:
    done = ovi(*args, "--json", endpoint=endpoint, cwd=cwd)
    assert done.stdout.count("\n") == 1, done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout)


def client(service: str, endpoint: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def live_instances(endpoint: str) -> list[dict[str, Any]]:
    ec2 = client("ec2", endpoint)
    found: list[dict[str, Any]] = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=[
            {"Name": "instance-state-name", "Values": ["pending", "running"]}]):
        for reservation in page["Reservations"]:
            found.extend(reservation["Instances"])
    return found


def tags_of(item: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in item.get("Tags", item.get("TagList", []))}


def ovi_ids(endpoint: str) -> Counter[str]:
    """How many live instances carry each ``ovi:id``."""
    return Counter(tags_of(i).get("ovi:id", "-") for i in live_instances(endpoint))


def run_instance(endpoint: str, tags: dict[str, str]) -> str:
    ec2 = client("ec2", endpoint)
    image = client("ssm", endpoint).get_parameter(Name=AL2023)["Parameter"]["Value"]
    response = ec2.run_instances(
        ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance",
                            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])
    return str(response["Instances"][0]["InstanceId"])


def event_types(store: Path) -> Counter[str]:
    """Event counts by type (empty while the log has no schema yet)."""
    with closing(sqlite3.connect(store)) as db:
        try:
            return Counter(row[0] for row in db.execute("SELECT type FROM events"))
        except sqlite3.OperationalError:
            return Counter()


def write_config(path: Path, *specs: str, rules: str = "") -> Path:
    body = "".join(f"  - {spec}\n" for spec in specs) or "  []\n"
    text = f"version: v1\nprovider: aws\nregion: us-east-1\nresources:\n{body}"
    if not specs:
        text = "version: v1\nprovider: aws\nregion: us-east-1\nresources: []\n"
    if rules:
        text += "rules:\n" + "".join(f"  {line}\n" for line in rules.splitlines())
    path.write_text(text)
    return path
