"""Reconcile-cycle and execution benchmarks (fake provider), imported by bench.py.

    python scripts/bench_engine.py [--quick]      # prints its figures as JSON

Figures: a first cycle over 10k new resources; steady-state cycles over 1k,
10k and 100k unchanged resources with the fitted growth exponent; what a
steady-state cycle appends to the log; peak RSS at 100k (child process); 1,000
actions at 20 ms provider latency with max_concurrency 50; claiming and
releasing 1,000 resources.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eventstore import StreamBatch
from ovi.config import Config, parse_config
from ovi.engine import Engine
from ovi.model import ID_TAG, MANAGED_TAG, OWNER_TAG, CycleMode, Resource, ResourceType
from ovi.providers.fake import FakeProvider
from ovi.runtime import Runtime, open_runtime


def estate(count: int) -> list[Resource]:
    """``count`` managed EC2 instances matching :func:`config`."""
    return [
        Resource(id=f"web-{j}", cloud_id=f"i-{j:017x}", type=ResourceType.EC2, provider="aws",
                 region="us-east-1", size="t3.micro", status="running",
                 tags={ID_TAG: f"web-{j}", MANAGED_TAG: "true", OWNER_TAG: "ovi",
                       "team": "platform", "environment": "prod"})
        for j in range(count)
    ]


def config(count: int, *, rules: str = "") -> Config:
    text = ("version: v1\nprovider: aws\nregion: us-east-1\nresources:\n"
            f"  - {{type: ec2, name: web, count: {count}, size: t3.micro,"
            " tags: {team: platform, environment: prod}}\n")
    # The bounds a real config would raise to manage this many at once.
    rules = f"max_resources: {max(count, 1)}\nmax_creates_per_cycle: {count}\n{rules}"
    text += "rules:\n" + "".join(f"  {line}\n" for line in rules.splitlines())
    return parse_config(text, "bench.yaml")


@asynccontextmanager
async def runtime(path: Path) -> AsyncIterator[Runtime]:
    async with open_runtime(path, instance_id="bench") as rt:
        yield rt


async def log_bytes(rt: Runtime, after: int) -> tuple[int, int]:
    """Events and bytes (every column's text) appended after ``after``."""
    events = size = 0
    async for page in rt.store.read_raw(after=after):
        for row in page:
            events += 1
            size += sum(len(str(col).encode()) for col in row)
    return events, size


async def cycles(work: Path, count: int) -> dict[str, float]:
    """First and steady-state cycle over ``count`` resources."""
    path = fresh(work, f"cycles-{count}.db")
    async with runtime(path) as rt:
        engine = Engine(rt.store, rt.views, FakeProvider(estate(count)))
        wanted = config(count)
        first = await engine.run_cycle(wanted, source="bench.yaml")
        steady = []
        appended = (0, 0)
        for _ in range(3):
            head = await rt.store.last_position()
            start = time.perf_counter()
            result = await engine.run_cycle(wanted, source="bench.yaml")
            steady.append(time.perf_counter() - start)
            appended = await log_bytes(rt, head)
            assert result.in_sync and result.resources_found == count
    fresh(work, path.name)
    steady.sort()
    return {"first": first.duration, "steady": steady[1], "events": appended[0],
            "bytes": appended[1]}


def fingerprint_baseline(count: int) -> float:
    """The least a steady-state cycle must do: encode and hash every observed
    resource once (the change detection)."""
    resources = estate(count)
    start = time.perf_counter()
    encode = msgspec.json.encode
    for item in resources:
        hashlib.sha256(encode(item)).hexdigest()
    return time.perf_counter() - start


def exponent(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of log(time) against log(size)."""
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs)


async def rss_child(work: Path, count: int) -> None:
    result = await cycles(work, count)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sys.stdout.write(json.dumps({"peak_kb": peak_kb, **result}) + "\n")


def fresh(work: Path, name: str) -> Path:
    """A log path with no leftovers of an earlier repetition."""
    path = work / name
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


async def actions(work: Path, count: int, latency: float, concurrency: int) -> float:
    """Execution time of ``count`` creates at ``latency`` s each."""
    path = fresh(work, "actions.db")
    async with runtime(path) as rt:
        provider = FakeProvider(latency=latency)
        engine = Engine(rt.store, rt.views, provider)
        result = await engine.run_cycle(config(count), source="bench.yaml", mode=CycleMode.APPLY,
                                        max_concurrency=concurrency)
        assert sum(e.outcome == "executed" for e in result.executions) == count
        assert provider.max_in_flight <= concurrency
    return result.execution_duration


async def claims(work: Path, count: int) -> float:
    """Claim ``count`` resources in one go, then release them all."""
    path = fresh(work, "claims.db")
    async with runtime(path) as rt:
        engine = Engine(rt.store, rt.views, FakeProvider())
        ids = [f"web-{j}" for j in range(count)]
        start = time.perf_counter()
        held = await engine.coordinator.claim(ids)
        await rt.store.append_streams(
            StreamBatch(b.stream, b.events, b.expected_version)
            for b in (engine.coordinator.release_batch(c) for c in held.held.values()))
        elapsed = time.perf_counter() - start
        assert len(held.held) == count
    return elapsed


def figure(value: float, unit: str, target: dict[str, float], passed: bool,
           baseline: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"unit": unit, "value": round(value, 4), "target": target,
                            "pass": passed}
    if baseline is not None:
        body["baseline"] = baseline
        if baseline.get("value"):
            body["ratio"] = round(value / baseline["value"], 3)
    body.update(extra)
    return body


async def engine_figures(work: Path, *, quick: bool) -> dict[str, dict[str, Any]]:
    """Every figure of this module."""
    figures: dict[str, dict[str, Any]] = {}
    sizes = [1_000, 10_000] if quick else [1_000, 10_000, 100_000]
    points: list[tuple[int, float]] = []
    measured: dict[int, dict[str, float]] = {}
    for size in sizes:
        if size == 100_000:
            # A child process, so that its peak RSS is the 100k cycle's alone.
            child = await anyio.run_process(
                [sys.executable, __file__, "--rss-child", str(work), str(size)], check=True)
            measured[size] = json.loads(child.stdout)
        else:
            measured[size] = await cycles(work, size)
        points.append((size, measured[size]["steady"]))
    ten = measured[10_000]
    figures["first_cycle_10k"] = figure(
        ten["first"], "s", {"max_value": 2.0}, ten["first"] <= 2.0,
        {"name": "encode + hash 10k resources", "value": fingerprint_baseline(10_000)})
    figures["steady_cycle_10k"] = figure(
        ten["steady"], "s", {"max_value": 1.0}, ten["steady"] <= 1.0,
        {"name": "encode + hash 10k resources", "value": fingerprint_baseline(10_000)},
        by_size={str(n): round(t, 4) for n, t in points})
    slope = exponent(points)
    figures["steady_cycle_growth_exponent"] = figure(
        slope, "exponent", {"max_value": 1.15}, slope <= 1.15,
        sizes=[n for n, _ in points])
    figures["steady_cycle_10k_log_growth"] = figure(
        ten["events"], "events", {"max_events": 10, "max_bytes": 4096},
        ten["events"] <= 10 and ten["bytes"] <= 4096, bytes=int(ten["bytes"]))
    if 100_000 in measured:
        peak_mb = measured[100_000]["peak_kb"] / 1024
        figures["peak_rss_100k"] = figure(peak_mb, "MB", {"max_value": 1024},
                                          peak_mb <= 1024)
    runs = sorted([await actions(work, 1000, 0.02, 50) for _ in range(3)])
    ideal = math.ceil(1000 / 50) * 0.02
    figures["execute_1000_actions"] = figure(
        runs[1], "s", {"max_ratio": 1.25}, runs[1] <= 1.25 * ideal,
        {"name": "ideal ceil(1000/50) x 20 ms", "value": ideal},
        runs=[round(r, 4) for r in runs])
    claim_runs = sorted([await claims(work, 1000) for _ in range(3)])
    figures["claim_release_1000"] = figure(claim_runs[1], "s", {"max_value": 1.0},
                                           claim_runs[1] <= 1.0,
                                           runs=[round(r, 4) for r in claim_runs])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description="reconcile and execution benchmarks")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rss-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        uvloop.run(rss_child(Path(args.rss_child[0]), int(args.rss_child[1])))
        return
    with tempfile.TemporaryDirectory() as work:
        figures = uvloop.run(engine_figures(Path(work), quick=args.quick))
    sys.stdout.write(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
