"""The replay group: ``python -m ovi.replay`` on a large log (issue 6's targets).

Builds a log of realistic Ovi events (cycles of ``ResourceObserved``,
``DiffDetected`` and ``DecisionMade`` over a 10,000-resource estate, with
the cycle, observation and execution events around them; 1M events, 200k
with ``--quick``), then runs the replay tool on it in child processes:

- ``replay_log_1m_peak_rss``: ``log --type DecisionMade --json`` streamed to
  a pipe; the command's peak RSS (``wait4`` rusage);
- ``replay_rebuild_1m``: ``rebuild --json``: events/s of the from-scratch
  replay of every projection;
- ``replay_state_at_1m``: ``state --at REV`` for a mid-log revision, wall
  time of the whole command (projections already caught up);
- ``fold_after_schema_bump_1m``: what a service pays on upgrade. With the
  log file's projections caught up, every projection's stored schema
  version is set to the one before (as if the file was last folded by the
  previous release), and a fresh process opens the log as the service does
  (:func:`ovi.runtime.open_runtime`, whose runner resets them and folds
  them anew in worker processes) and catches up: events/s of the log, the
  open and the catch-up timed (the process's start-up and imports not);
  the median of three such refolds, each after a new bump.

All of it runs in a child task (``replay:figures``), a small fresh parent
for those commands: Linux counts a forked child's pre-exec pages in its
peak RSS, and the bench's own process is large by then. A command that
exits non-zero gives a failed figure.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import uvloop

from eventstore import Event, SQLiteEventStore, StreamBatch
from ovi.events import (
    ActionExecuted,
    ActionExecuting,
    CycleFinished,
    CycleStarted,
    DecisionMade,
    DiffDetected,
    ObservationCompleted,
    ResourceObserved,
    cycle_stream,
    registry,
    resource_stream,
)
from ovi.model import (
    ID_TAG,
    MANAGED_TAG,
    OWNER_TAG,
    Action,
    CycleMode,
    Decision,
    DecisionStatus,
    DesiredResource,
    Diff,
    DiffType,
    FieldChange,
    Resource,
    ResourceType,
    Scope,
    resource_fingerprint,
)
from ovi.runtime import open_runtime
from projections import CHECKPOINTS_TABLE
from scripts.benchkit import REPEATS, Context, Detail, Figure, FigureSpec, Target, Task, Unit

LOG_RSS = FigureSpec("replay_log_1m_peak_rss", Unit.MB, Target(max_value=200))
REBUILD = FigureSpec("replay_rebuild_1m", Unit.EVENTS_PER_S, Target(min_value=200_000))
STATE_AT = FigureSpec("replay_state_at_1m", Unit.SECONDS, Target(max_value=2.0))
FOLD_AFTER_BUMP = FigureSpec("fold_after_schema_bump_1m", Unit.EVENTS_PER_S,
                             Target(min_value=200_000))

ROOT = Path(__file__).resolve().parent.parent
ESTATE = 10_000
OBSERVED_PER_CYCLE = 1_000
DECIDED_PER_CYCLE = 500
SCOPE = Scope("aws", "us-east-1", ResourceType.EC2)
CONFIG_HASH = "c" * 64


class _Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _resource(i: int, cycle: int) -> Resource:
    return Resource(id=f"web-{i}", cloud_id=f"i-{i:017x}", type=ResourceType.EC2,
                    provider="aws", region="us-east-1", size="t3.micro", status="running",
                    tags={ID_TAG: f"web-{i}", MANAGED_TAG: "true", OWNER_TAG: "ovi",
                          "team": f"team-{cycle % 7}", "env": "production"})


def _cycle_events(cycle: int, cycle_id: str, now: datetime) -> list[StreamBatch]:
    batches = [StreamBatch(cycle_stream(cycle_id), (CycleStarted(
        cycle_id=cycle_id, mode=CycleMode.RUN, config_hash=CONFIG_HASH, started_at=now),))]
    first = cycle * OBSERVED_PER_CYCLE
    for k in range(OBSERVED_PER_CYCLE):
        r = _resource((first + k) % ESTATE, cycle)
        batches.append(StreamBatch(resource_stream(r.id), (ResourceObserved(
            cycle_id=cycle_id, scope=SCOPE, resource=r, fingerprint=resource_fingerprint(r)),)))
    batches.append(StreamBatch(cycle_stream(cycle_id), (ObservationCompleted(
        cycle_id=cycle_id, scope=SCOPE, count=ESTATE, digest="d" * 64),)))
    for k in range(DECIDED_PER_CYCLE):
        r = _resource((first + k) % ESTATE, cycle)
        desired = DesiredResource(id=r.id, type=r.type, provider="aws", region=r.region,
                                  size="t3.micro", tags={"team": "platform"})
        diff = Diff(type=DiffType.DRIFTED, resource_id=r.id, resource_type=r.type, scope=SCOPE,
                    reason=f"{r.id} differs from the config: tags.team", cloud_id=r.cloud_id,
                    desired=desired, observed=r,
                    changes=(FieldChange("tags.team", "platform", r.tags["team"]),))
        decision = Decision(decision_id=f"d-{cycle:06x}{k:06x}", action=Action.UPDATE,
                            resource_id=r.id, resource_type=r.type, reason=diff.reason,
                            status=DecisionStatus.READY, rule="drifted→update", diff=diff,
                            cloud_id=r.cloud_id)
        events: list[Event] = [
            DiffDetected(cycle_id=cycle_id, diff=diff, fingerprint=diff.fingerprint,
                         detected_at=now),
            DecisionMade(cycle_id=cycle_id, decision=decision, config_hash=CONFIG_HASH,
                         rule=decision.rule, evidence=()),
        ]
        if k % 100 == 0:  # a few executions, so every kind of event is there
            events += [
                ActionExecuting(cycle_id=cycle_id, decision_id=decision.decision_id,
                                action=Action.UPDATE, resource_id=r.id, cloud_id=r.cloud_id,
                                token=1),
                ActionExecuted(cycle_id=cycle_id, decision_id=decision.decision_id,
                               action=Action.UPDATE, resource_id=r.id, cloud_id=r.cloud_id,
                               token=1),
            ]
        batches.append(StreamBatch(resource_stream(r.id), tuple(events)))
    batches.append(StreamBatch(cycle_stream(cycle_id), (CycleFinished(
        cycle_id=cycle_id, resources_found=ESTATE, diffs_detected=DECIDED_PER_CYCLE,
        decisions_made=DECIDED_PER_CYCLE, execution_errors=0,
        duration_ms=800.0 + (cycle * 37) % 400),)))
    return batches



class LogBuilt(msgspec.Struct, frozen=True):
    events: int
    cycles: int
    seconds: float


async def build_log(path: Path, events: int) -> LogBuilt:
    """A log of at least ``events`` events, one transaction per cycle; one
    minute of recorded time per cycle."""
    clock = _Clock()
    started = time.perf_counter()
    async with SQLiteEventStore(path, registry(), instance_id="bench:1", clock=clock,
                                synchronous="OFF") as store:
        cycle = 0
        while await store.last_position() < events:
            await store.append_streams(_cycle_events(cycle, f"c-{cycle:06d}", clock.now))
            clock.now += timedelta(minutes=1)
            cycle += 1
        total = await store.last_position()
    return LogBuilt(events=total, cycles=cycle, seconds=round(time.perf_counter() - started, 1))


def _replay(*args: str) -> list[str]:
    return [sys.executable, "-m", "ovi.replay", *args]


class Measured(msgspec.Struct, frozen=True):
    """A command run to completion: wall time, output lines and bytes, exit
    code, its own peak RSS, and its last output line (all of it with ``keep``)."""

    seconds: float
    lines: int
    bytes: int
    exit: int
    peak_rss_mb: float
    last_line: str

    def problem(self, command: list[str]) -> str | None:
        """Why this run gives no figure, if it does not."""
        if self.exit == 0:
            return None
        return f"`{' '.join(command[1:])}` exited with {self.exit}: {self.last_line[:500]}"


def run_measured(command: list[str], *, keep: bool = False) -> Measured:
    """Run a child with stdout piped and counted (its peak RSS from ``wait4``)."""
    env = {**os.environ, "NO_COLOR": "1"}
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, env=env)
    assert child.stdout is not None
    lines = size = 0
    tail = b""
    while chunk := child.stdout.read(1 << 20):
        lines += chunk.count(b"\n")
        size += len(chunk)
        tail = tail + chunk if keep else (tail + chunk)[-65536:]
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    return Measured(seconds=round(seconds, 2), lines=lines, bytes=size, exit=child.returncode,
                    peak_rss_mb=round(usage.ru_maxrss / 1024, 1),
                    last_line=tail.decode(errors="replace").strip().rsplit("\n", 1)[-1])


class RebuildReport(msgspec.Struct):
    """The part of ``rebuild --json``'s report the figure uses."""

    events_per_s: float
    events: int
    seconds: float
    equal: bool


class StateReport(msgspec.Struct):
    """The part of ``state --json``'s output the figure uses."""

    revision: int
    resources: list[msgspec.Raw]


def measure_log_rss(path: Path) -> Figure:
    """``log --type DecisionMade --json`` over the whole log."""
    command = _replay("log", "--type", "DecisionMade", "--json", "--store", str(path))
    run = run_measured(command)
    return LOG_RSS.figure(run.peak_rss_mb, error=run.problem(command), details={
        "lines": run.lines, "seconds": run.seconds,
        "lines_per_s": round(run.lines / run.seconds), "exit": run.exit})


def measure_rebuild(path: Path) -> Figure:
    """``rebuild --json``: the first run also catches the log file's own
    projections up (untimed by the tool); the figure is the fresh replay."""
    command = _replay("rebuild", "--json", "--store", str(path))
    run = run_measured(command)
    try:
        report = msgspec.json.decode(run.last_line, type=RebuildReport)
    except msgspec.DecodeError as exc:
        return REBUILD.failed(run.problem(command) or f"rebuild --json printed no report: {exc}")
    return REBUILD.figure(report.events_per_s, error=run.problem(command), details={
        "events": report.events, "rebuild_seconds": report.seconds,
        "command_seconds": run.seconds, "equal": report.equal,
        "peak_rss_mb": run.peak_rss_mb, "exit": run.exit})


def measure_state_at(path: Path, revision: int) -> Figure:
    """``state --at REV`` for a mid-log revision (projections caught up before)."""
    command = _replay("state", "--at", str(revision), "--json", "--store", str(path))
    run = run_measured(command, keep=True)
    try:
        body = msgspec.json.decode(run.last_line, type=StateReport)
    except msgspec.DecodeError as exc:
        return STATE_AT.failed(run.problem(command) or f"state --json printed no state: {exc}")
    at_time = run_measured(_replay("state", "--at", "2026-01-01T04:00:00Z", "--json",
                                   "--store", str(path)))
    return STATE_AT.figure(run.seconds, error=run.problem(command), details={
        "revision": body.revision, "resources": len(body.resources), "exit": run.exit,
        "by_time_seconds": at_time.seconds})


class FoldReport(msgspec.Struct, frozen=True):
    """What ``python -m scripts.bench_replay fold-after-bump LOG`` prints."""

    events: int
    seconds: float
    reset: list[str]

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def bump_schema_versions(path: Path) -> list[str]:
    """Set every projection checkpoint's schema version in the log's file to
    the one before: what the file holds after the previous release."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute(f"UPDATE {CHECKPOINTS_TABLE} SET schema_version = schema_version - 1")
        return [name for (name,) in db.execute(f"SELECT name FROM {CHECKPOINTS_TABLE}")]


async def fold_after_bump(path: Path) -> FoldReport:
    """Open the log as the service does (resetting the bumped projections)
    and catch them up, from this process: the upgrade's refold."""
    started = time.perf_counter()
    async with open_runtime(path, instance_id="bench:fold") as runtime:
        await runtime.views.catch_up()
        seconds = time.perf_counter() - started
        return FoldReport(events=await runtime.store.last_position(), seconds=round(seconds, 3),
                          reset=list(runtime.views.reset_on_open))


def measure_fold_after_bump(path: Path) -> Figure:
    """``fold_after_schema_bump_1m``: :data:`REPEATS` refolds, each in a fresh
    process after a new bump (their peak RSS too); the median."""
    rates: list[float] = []
    seconds: list[float] = []
    runs: list[Measured] = []
    for _ in range(REPEATS):
        bumped = bump_schema_versions(path)
        command = [sys.executable, "-m", "scripts.bench_replay", "fold-after-bump", str(path)]
        run = run_measured(command, keep=True)
        try:
            report = msgspec.json.decode(run.last_line, type=FoldReport)
        except msgspec.DecodeError as exc:
            return FOLD_AFTER_BUMP.failed(run.problem(command) or f"printed no report: {exc}")
        error = run.problem(command)
        if error is None and sorted(report.reset) != sorted(bumped):
            error = f"reset {report.reset}, expected every bumped projection {bumped}"
        if error is not None:
            return FOLD_AFTER_BUMP.failed(error)
        rates.append(round(report.events_per_s))
        seconds.append(report.seconds)
        runs.append(run)
    return FOLD_AFTER_BUMP.figure(statistics.median(rates), runs=rates, details={
        "events": report.events, "fold_seconds": seconds, "projections": bumped,
        "command_seconds": [round(r.seconds, 2) for r in runs],
        "peak_rss_mb": max(r.peak_rss_mb for r in runs), "exit": run.exit})


class Figures(msgspec.Struct, frozen=True):
    """What the child task returns."""

    figures: list[Figure]


class Events(msgspec.Struct, frozen=True):
    events: int


def events_for(quick: bool) -> int:
    return 200_000 if quick else 1_000_000


def measure(path: Path, built: LogBuilt) -> list[Figure]:
    """The four measurements on the log at ``path``, one at a time; the log
    removed afterwards."""
    figures = [measure_log_rss(path), measure_rebuild(path),
               measure_state_at(path, built.events // 2), measure_fold_after_bump(path)]
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return [msgspec.structs.replace(f, details={**f.details, "log_events": built.events})
            for f in figures]


async def figures_task(ctx: Context, params: Events) -> Figures:
    """Every figure of the group on a log of ``params.events`` events."""
    path = ctx.scratch / "replay.db"
    built = await build_log(path, params.events)
    ctx.say(f"  built {built.events:,} events ({built.cycles} cycles) in {built.seconds} s")
    return Figures(measure(path, built))


class ReplayGroup:
    """See the module docstring."""

    name = "replay"
    specs = (LOG_RSS, REBUILD, STATE_AT, FOLD_AFTER_BUMP)
    tasks: Mapping[str, Task[Any]] = {"figures": Task(Events, figures_task)}

    def workload(self, quick: bool) -> dict[str, Detail]:
        return {"events": events_for(quick), "estate": ESTATE,
                "observed_per_cycle": OBSERVED_PER_CYCLE, "decided_per_cycle": DECIDED_PER_CYCLE}

    async def run(self, ctx: Context) -> list[Figure]:
        events = events_for(ctx.quick)
        ctx.say(f"replay: log / rebuild / state --at / fold after a schema bump on a"
                f" {events:,}-event log")
        return (await ctx.child("figures", Events(events), Figures)).figures


GROUP = ReplayGroup()


def main(argv: list[str]) -> int:
    """``python -m scripts.bench_replay fold-after-bump LOG``: the refold
    :func:`measure_fold_after_bump` times, its report as JSON on stdout."""
    if len(argv) != 2 or argv[0] != "fold-after-bump":
        sys.stderr.write("usage: python -m scripts.bench_replay fold-after-bump LOG\n")
        return 2
    report = uvloop.run(fold_after_bump(Path(argv[1])))
    sys.stdout.buffer.write(msgspec.json.encode(report) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
