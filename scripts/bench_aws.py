"""The aws group: Ovi's AWS provider against a moto server on loopback.

- converging 50 EC2 instances from empty with a full ``apply`` cycle, next to
  the bare aiobotocore calls that cannot be avoided (one paginated
  ``DescribeInstances`` and 50 ``RunInstances``), alternately against the
  same server (reset before each);
- the API calls ``ovi plan`` makes on an in-sync estate, of which none may
  write.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiobotocore.session import get_session

from ovi.config import parse_config
from ovi.engine import Engine
from ovi.model import CycleMode
from ovi.providers.aws import AWSProvider
from ovi.runtime import open_runtime
from scripts.benchkit import (
    Context,
    Detail,
    Figure,
    FigureSpec,
    Target,
    Task,
    Unit,
    Workload,
    alternate,
)

CONVERGE = FigureSpec("converge_50_ec2", Unit.SECONDS, Target(max_ratio=1.1),
                      baseline="bare aiobotocore: paginated DescribeInstances + 50 RunInstances")
PLAN_WRITES = FigureSpec("plan_in_sync_write_calls", Unit.CALLS, Target(max_value=0))

COUNT = 50
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
CONFIG = ("version: v1\nprovider: aws\nregion: us-east-1\nresources:\n"
          f"  - {{type: ec2, name: web, count: {COUNT}, size: t3.micro, tags: {{team: a}}}}\n")
READ_PREFIXES = ("Describe", "List", "Get")


@contextmanager
def moto() -> Iterator[str]:
    """A moto server in a process of its own on a free loopback port. (In this
    process, its request handling would share the GIL with the client being
    measured, and the figure swung between 1.25x and 1.8x from run to run.)"""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                reset(endpoint)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the moto server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """``values`` in os.environ (botocore reads them there), then as before."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


RUNS, WARMUP = 5, 1  # counted pairs, after one uncounted pair


def reset(endpoint: str) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", data=b"", method="POST")
    with opener.open(request, timeout=10) as response:
        response.read()


async def bare(session: Any) -> float:
    """The calls no converger can avoid, made directly."""
    async with session.create_client("ec2", region_name="us-east-1") as ec2, \
            session.create_client("ssm", region_name="us-east-1") as ssm:
        image = (await ssm.get_parameter(Name=AL2023))["Parameter"]["Value"]
        start = time.perf_counter()
        paginator = ec2.get_paginator("describe_instances")
        async for _ in paginator.paginate(Filters=[
                {"Name": "instance-state-name", "Values": ["pending", "running"]}]):
            pass
        for j in range(COUNT):
            await ec2.run_instances(
                ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                TagSpecifications=[{"ResourceType": "instance", "Tags": [
                    {"Key": "ovi:id", "Value": f"web-{j}"}, {"Key": "team", "Value": "a"}]}])
        return time.perf_counter() - start


async def converge(session: Any, work: Path, calls: list[str]) -> tuple[float, list[str]]:
    """One apply from empty, then one plan on the in-sync estate (its calls)."""
    config = parse_config(CONFIG, "bench.yaml")
    path = work / f"aws-{time.monotonic_ns()}.db"
    async with open_runtime(path, instance_id="bench") as rt, \
            AWSProvider.from_config(config, session=session) as provider:
        # Warm the AMI lookup outside the timing: the bare baseline does too.
        await provider.observe(config.desired_resources()[0].scope)
        engine = Engine(rt.store, rt.views, provider)
        start = time.perf_counter()
        result = await engine.run_cycle(config, source="bench.yaml", mode=CycleMode.APPLY)
        elapsed = time.perf_counter() - start
        assert sum(e.outcome == "executed" for e in result.executions) == COUNT, result
        calls.clear()
        plan = await engine.run_cycle(config, source="bench.yaml")
        assert plan.in_sync
        return elapsed, list(calls)


async def measure(ctx: Context) -> list[Figure]:
    session = get_session()
    calls: list[str] = []

    def record(model: Any, **_: Any) -> None:
        calls.append(f"{model.service_model.service_name}:{model.name}")

    session.register("before-call", record, unique_id="ovi-bench-calls")
    plan_calls: list[str] = []
    with moto() as endpoint, environment(
            AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1"):

        async def bare_calls(rep: int) -> float:
            reset(endpoint)
            return await bare(session)

        async def ovi_apply(rep: int) -> float:
            nonlocal plan_calls
            reset(endpoint)
            elapsed, plan_calls = await converge(session, ctx.scratch, calls)
            return elapsed

        # A warm-up pair first, not counted: the first of each (moto's lazy
        # set-up, aiobotocore's first clients) ran 30-50 % slower. Then the
        # median of 5: the bare calls alone moved between 0.6 and 1.0 s.
        bare_runs, ovi_runs = await alternate(
            ctx.say, [Workload("bare calls", bare_calls, "s"),
                      Workload("ovi apply", ovi_apply, "s")],
            repeats=RUNS, warmup=WARMUP, settle_first=False)
    writes = [c for c in plan_calls if not c.split(":")[1].startswith(READ_PREFIXES)]
    return [CONVERGE.from_runs(ovi_runs, bare_runs),
            PLAN_WRITES.figure(len(writes), details={"calls": sorted(set(plan_calls))})]


class AWSGroup:
    """See the module docstring."""

    name = "aws"
    specs = (CONVERGE, PLAN_WRITES)
    tasks: Mapping[str, Task[Any]] = {}

    def workload(self, quick: bool) -> dict[str, Detail]:
        return {"instances": COUNT, "runs": RUNS, "warmup_runs": WARMUP}

    async def run(self, ctx: Context) -> list[Figure]:
        ctx.say(f"aws: converging {COUNT} EC2 instances against moto, plan call count")
        return await measure(ctx)


GROUP = AWSGroup()
