"""Figures for ``python -m ovi.replay`` on a large log (issue 6's targets).

    python scripts/bench_replay.py [--events N] [--dir DIR] [--keep]

Builds a log of realistic Ovi events (cycles of ``ResourceObserved``,
``DiffDetected`` and ``DecisionMade`` over a 10,000-resource estate, with
the cycle, observation and execution events around them), then runs the
replay tool on it in child processes and prints one JSON object:

- ``log_rss``: ``log --type DecisionMade --json`` streamed to a pipe; the
  child's peak RSS (``wait4`` rusage) — target ≤ 200 MB;
- ``rebuild``: ``rebuild --json``: events/s of the from-scratch replay of
  every projection — target ≥ 200k events/s;
- ``state_at``: ``state --at REV`` for a mid-log revision, wall time of the
  whole command (projections already caught up) — target ≤ 2 s.

The functions are importable (``scripts/bench.py`` reuses them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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


async def build_log(path: Path, events: int) -> dict[str, Any]:
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
    seconds = time.perf_counter() - started
    return {"events": total, "cycles": cycle, "seconds": round(seconds, 1),
            "first_at": "2026-01-01T00:00:00Z"}


def _replay(*args: str) -> list[str]:
    return [sys.executable, "-m", "ovi.replay", *args]


def run_measured(command: list[str], *, keep: bool = False) -> dict[str, Any]:
    """Run a child with stdout piped and counted; its wall time, output
    lines and bytes, exit code, peak RSS (its own, from ``wait4``) and its
    last line (the whole output with ``keep``)."""
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
    return {"seconds": round(seconds, 2), "lines": lines, "bytes": size,
            "exit": child.returncode, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "last_line": tail.decode(errors="replace").strip().rsplit("\n", 1)[-1]}


def measure_log_rss(path: Path) -> dict[str, Any]:
    """``log --type DecisionMade --json`` over the whole log."""
    run = run_measured(_replay("log", "--type", "DecisionMade", "--json", "--store", str(path)))
    return {"unit": "MB", "value": run["peak_rss_mb"], "lines": run["lines"],
            "seconds": run["seconds"], "lines_per_s": round(run["lines"] / run["seconds"]),
            "exit": run["exit"], "target": {"max_value": 200},
            "pass": run["exit"] == 0 and run["peak_rss_mb"] <= 200}


def measure_rebuild(path: Path) -> dict[str, Any]:
    """``rebuild --json``: the first run also catches the log file's own
    projections up (untimed by the tool); the figure is the fresh replay."""
    run = run_measured(_replay("rebuild", "--json", "--store", str(path)))
    report = json.loads(run["last_line"])
    return {"unit": "events/s", "value": report["events_per_s"], "events": report["events"],
            "rebuild_seconds": report["seconds"], "command_seconds": run["seconds"],
            "equal": report["equal"], "peak_rss_mb": run["peak_rss_mb"], "exit": run["exit"],
            "target": {"min_value": 200_000}, "pass": report["events_per_s"] >= 200_000}


def measure_state_at(path: Path, revision: int) -> dict[str, Any]:
    """``state --at REV`` for a mid-log revision (projections caught up before)."""
    run = run_measured(_replay("state", "--at", str(revision), "--json", "--store", str(path)),
                       keep=True)
    body = json.loads(run["last_line"])
    at_time = run_measured(_replay("state", "--at", "2026-01-01T04:00:00Z", "--json",
                                   "--store", str(path)))
    return {"unit": "s", "value": run["seconds"], "revision": body["revision"],
            "resources": len(body["resources"]), "exit": run["exit"],
            "by_time_seconds": at_time["seconds"], "target": {"max_value": 2.0},
            "pass": run["exit"] == 0 and run["seconds"] <= 2.0}


def replay_figures(work: Path, events: int = 1_000_000) -> dict[str, dict[str, Any]]:
    """The issue's three figures on a log of ``events`` events built in ``work``."""
    path = work / "replay.db"
    built = asyncio.run(build_log(path, events))
    figures = {
        "replay_log_1m_peak_rss": measure_log_rss(path),
        "replay_rebuild_1m": measure_rebuild(path),
        "replay_state_at_1m": measure_state_at(path, built["events"] // 2),
    }
    for figure in figures.values():
        figure["log_events"] = built["events"]
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return figures


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--dir", default=None, help="where to build the log (default: tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the log afterwards")
    parser.add_argument("--figures", action="store_true",
                        help="print only bench.py's figures, as JSON")
    args = parser.parse_args()
    if args.figures:
        with tempfile.TemporaryDirectory(prefix="ovi-bench-replay-", dir=args.dir) as tmp:
            sys.stdout.write(json.dumps(replay_figures(Path(tmp), args.events)) + "\n")
        return
    with tempfile.TemporaryDirectory(prefix="ovi-bench-replay-", dir=args.dir) as tmp:
        path = Path(tmp) / "ovi.db"
        say(f"building a {args.events:,}-event log in {path}")
        built = asyncio.run(build_log(path, args.events))
        built["mb"] = round(path.stat().st_size / 2**20)
        say(f"  {built}")
        report: dict[str, Any] = {"log": built}
        say("log --type DecisionMade --json …")
        report["log_rss"] = measure_log_rss(path)
        say(f"  {report['log_rss']}")
        say("rebuild …")
        report["rebuild"] = measure_rebuild(path)
        say(f"  {report['rebuild']}")
        say("state --at (mid-log) …")
        report["state_at"] = measure_state_at(path, built["events"] // 2)
        say(f"  {report['state_at']}")
        if args.keep:
            kept = Path(args.dir or ".") / "bench-replay.db"
            os.replace(path, kept)
            say(f"kept the log as {kept}")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
