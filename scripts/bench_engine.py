"""The engine group: reconcile cycles and execution with a fake provider.

Figures: a first cycle over 10k new resources; steady-state cycles over 1k,
10k and 100k unchanged resources with the fitted growth exponent; what a
steady-state cycle appends to the log (events and bytes); peak RSS of the
100k cycles (a child task, full runs only); 1,000 actions at 20 ms provider
latency with max_concurrency 50; claiming and releasing 1,000 resources.
"""

from __future__ import annotations

import hashlib
import math
import resource
import statistics
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec

from eventstore import StreamBatch
from ovi.config import Config, parse_config
from ovi.engine import Engine
from ovi.model import ID_TAG, MANAGED_TAG, OWNER_TAG, CycleMode, Resource, ResourceType
from ovi.providers.fake import FakeProvider
from ovi.runtime import Runtime, open_runtime
from scripts.benchkit import (
    ChildError,
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

CYCLE_BASELINE = "encode + hash 10k resources"
FIRST = FigureSpec("first_cycle_10k", Unit.SECONDS, Target(max_value=2.0),
                   baseline=CYCLE_BASELINE)
STEADY = FigureSpec("steady_cycle_10k", Unit.SECONDS, Target(max_value=1.0),
                    baseline=CYCLE_BASELINE)
GROWTH = FigureSpec("steady_cycle_growth_exponent", Unit.EXPONENT, Target(max_value=1.15))
LOG_EVENTS = FigureSpec("steady_cycle_10k_log_growth", Unit.EVENTS, Target(max_value=10))
LOG_BYTES = FigureSpec("steady_cycle_10k_log_bytes", Unit.BYTES, Target(max_value=4096))
RSS = FigureSpec("peak_rss_100k", Unit.MB, Target(max_value=1024), quick=False)
ACTIONS = FigureSpec("execute_1000_actions", Unit.SECONDS, Target(max_ratio=1.1),
                     baseline="ideal ceil(1000/50) x 20 ms")
CLAIMS = FigureSpec("claim_release_1000", Unit.SECONDS, Target(max_value=1.0))
CYCLE_FIGURES = (FIRST, STEADY, GROWTH, LOG_EVENTS, LOG_BYTES, RSS)

ACTION_COUNT, LATENCY, CONCURRENCY = 1000, 0.02, 50
CLAIM_COUNT = 1000


def sizes_for(quick: bool) -> list[int]:
    return [1_000, 10_000] if quick else [1_000, 10_000, 100_000]


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


class CycleTimes(msgspec.Struct, frozen=True):
    """A first cycle and the median of 3 steady ones over the same estate,
    with what the last steady cycle appended; ``peak_kb`` is the peak RSS of
    the process that ran them (meaningful in a child task of its own)."""

    first: float
    steady: float
    events: int
    bytes: int
    peak_kb: int


async def cycles(work: Path, count: int) -> CycleTimes:
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
    return CycleTimes(first=first.duration, steady=statistics.median(steady),
                      events=appended[0], bytes=appended[1],
                      peak_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


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


async def bare_calls(count: int, latency: float, concurrency: int) -> float:
    """``count`` sleeps of ``latency`` s, at most ``concurrency`` at once, on
    this event loop: what the loop's timers alone make of the ideal (uvloop's
    have a granularity of 1 ms, so each wave of sleeps overshoots)."""
    slots = anyio.Semaphore(concurrency, fast_acquire=True)

    async def call() -> None:
        async with slots:
            await anyio.sleep(latency)

    start = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(call)
    return time.perf_counter() - start


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


class Cycles(msgspec.Struct, frozen=True):
    """The child task's parameters: where, and over how many resources."""

    work: str
    count: int


async def cycles_task(ctx: Context, params: Cycles) -> CycleTimes:
    return await cycles(Path(params.work), params.count)


async def cycle_figures(ctx: Context) -> list[Figure]:
    measured: dict[int, CycleTimes] = {}
    failed = None
    for size in sizes_for(ctx.quick):
        if size == 100_000:
            # A child process, so that its peak RSS is the 100k cycle's alone.
            try:
                measured[size] = await ctx.child("cycles", Cycles(str(ctx.scratch), size),
                                                 CycleTimes)
            except ChildError as exc:
                failed = str(exc)
        else:
            measured[size] = await cycles(ctx.scratch, size)
    points = [(n, t.steady) for n, t in measured.items()]
    ten = measured[10_000]
    figures = [
        FIRST.figure(ten.first, baseline=fingerprint_baseline(10_000)),
        STEADY.figure(ten.steady, baseline=fingerprint_baseline(10_000),
                      details={"by_size": {str(n): round(t, 4) for n, t in points}}),
        LOG_EVENTS.figure(ten.events),
        LOG_BYTES.figure(ten.bytes),
    ]
    if failed:  # without the 100k point the exponent would be another figure
        return [*figures, GROWTH.failed(failed), RSS.failed(failed)]
    figures.append(GROWTH.figure(exponent(points), details={"sizes": [n for n, _ in points]}))
    if 100_000 in measured:
        figures.append(RSS.figure(measured[100_000].peak_kb / 1024))
    return figures


class EngineGroup:
    """See the module docstring."""

    name = "engine"
    specs = (*CYCLE_FIGURES, ACTIONS, CLAIMS)
    tasks: Mapping[str, Task[Any]] = {"cycles": Task(Cycles, cycles_task)}

    def workload(self, quick: bool) -> dict[str, Detail]:
        return {"cycle_sizes": sizes_for(quick), "actions": ACTION_COUNT,
                "provider_latency_s": LATENCY, "max_concurrency": CONCURRENCY,
                "claims": CLAIM_COUNT}

    async def run(self, ctx: Context) -> list[Figure]:
        sizes = "/".join(f"{n // 1000}k" for n in sizes_for(ctx.quick))
        ctx.say(f"engine: cycles over {sizes} resources, {ACTION_COUNT:,} actions, "
                f"{CLAIM_COUNT:,} claims")
        figures = []
        if ctx.wants(*CYCLE_FIGURES):
            figures += await cycle_figures(ctx)
        if ctx.wants(ACTIONS):
            async def execute(rep: int) -> float:
                return await actions(ctx.scratch, ACTION_COUNT, LATENCY, CONCURRENCY)

            async def bare(rep: int) -> float:
                return await bare_calls(ACTION_COUNT, LATENCY, CONCURRENCY)

            runs, bare_runs = await alternate(
                ctx.say, [Workload("apply 1,000 creates", execute, "s"),
                          Workload("1,000 bare sleeps, 50 at once", bare, "s")],
                settle_first=False)
            # The target is against the computed ideal; the bare sleeps,
            # measured alongside, show how much of the gap is the loop's own.
            bare_median = statistics.median(bare_runs)
            figures.append(ACTIONS.from_runs(
                runs, baseline=math.ceil(ACTION_COUNT / CONCURRENCY) * LATENCY,
                details={"bare_sleeps_s": round(bare_median, 4),
                         "bare_sleeps_runs_s": [round(r, 4) for r in bare_runs],
                         "ratio_to_bare_sleeps": round(statistics.median(runs) / bare_median,
                                                       3)}))
        if ctx.wants(CLAIMS):
            async def claim(rep: int) -> float:
                return await claims(ctx.scratch, CLAIM_COUNT)

            runs, = await alternate(ctx.say, [Workload("claim + release 1,000", claim, "s")],
                                    settle_first=False)
            figures.append(CLAIMS.from_runs(runs))
        return figures


GROUP = EngineGroup()
