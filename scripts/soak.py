"""Soak and idle figures of ``ovi run`` (benchmarks, not tests). Prints one JSON object.

    python scripts/soak.py [--cycles 1000] [--resources 10000] [--drift-every 50]
                           [--idle-seconds 25] [--only soak|idle] [--dir DIR]

soak: the service loop (``ovi.service.Service``, the same code ``ovi run``
runs) with a fake provider holding ``--resources`` managed EC2 instances, in
sync; every ``--drift-every`` cycles ten of them are re-tagged out of band
(the next cycle updates them back). After each cycle: RSS, open file
descriptors, and the log's position. Figures: RSS growth from cycle 50 to the
end (target ≤ 5 %), fd growth (target 0), log bytes and events per steady
cycle (median).

idle: a real ``ovi run --interval 30s`` child process against a moto server
in another process, the estate in sync; its CPU time (``/proc/PID/stat``)
over ``--idle-seconds`` between its first and second cycle, as a share of
one core (target < 1 %).

Standalone on purpose (the shared bench harness is being reworked).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from itertools import pairwise
from pathlib import Path
from typing import Any

import anyio
import msgspec

from ovi.config import Config
from ovi.engine import CycleResult
from ovi.model import ID_TAG, MANAGED_TAG, OWNER_TAG, Resource, ResourceType
from ovi.providers.base import Provider
from ovi.providers.fake import FakeProvider
from ovi.service import ProviderSource, Service, ServiceSettings
from ovi.servicelog import ServiceLog

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class _Discard(io.StringIO):
    def write(self, text: str) -> int:
        return len(text)


def _fleet(count: int) -> list[Resource]:
    return [Resource(id=f"web-{i}", cloud_id=f"i-{i:012x}", type=ResourceType.EC2,
                     provider="aws", region="us-east-1", size="t3.micro", status="running",
                     tags={ID_TAG: f"web-{i}", MANAGED_TAG: "true", OWNER_TAG: "ovi",
                           "team": "web"})
            for i in range(count)]


def _row_bytes(db: sqlite3.Connection, after: int, until: int) -> tuple[int, int]:
    row = db.execute(
        "SELECT count(*), coalesce(sum(length(data) + length(stream) + length(type)"
        " + length(recorded_at) + length(instance_id) + length(prev_hash) + length(hash)"
        " + 24), 0) FROM events WHERE position > ? AND position <= ?", (after, until)).fetchone()
    return int(row[0]), int(row[1])


async def _soak(work: Path, cycles: int, resources: int, drift_every: int) -> dict[str, Any]:
    store = work / "soak.db"
    config = work / "soak.yaml"
    config.write_text(
        "version: v1\nprovider: aws\nregion: us-east-1\nresources:\n"
        f"  - {{type: ec2, name: web, count: {resources}, size: t3.micro,"
        " tags: {team: web}}\nrules: {max_concurrency: 16}\n")
    provider = FakeProvider(_fleet(resources))

    @asynccontextmanager
    async def opened(config: Config) -> AsyncIterator[Provider]:
        yield provider

    samples: list[dict[str, Any]] = []
    readers: list[sqlite3.Connection] = []  # opened once the service created the log

    async def after(result: CycleResult) -> None:
        if not readers:
            readers.append(sqlite3.connect(f"file:{store}?mode=ro", uri=True))
        reader = readers[0]
        number = len(samples) + 1
        position = reader.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()[0]
        drifted = number % drift_every == 0
        if drifted:  # out of band: the next cycle finds ten drifted instances
            for cloud_id in list(provider.resources)[:10]:
                old = provider.resources[cloud_id]
                provider.resources[cloud_id] = msgspec.structs.replace(
                    old, tags={**old.tags, "team": f"drift-{number}"})
        samples.append({"cycle": number, "rss": _rss_bytes(), "fds": _fds(),
                        "position": int(position), "duration": result.duration,
                        "executed": sum(e.outcome == "executed" for e in result.executions),
                        "drift_next": drifted})

    settings = ServiceSettings(config_path=config, store_path=store, interval=0.0,
                               metrics_host=None, jitter=0.0, max_cycles=cycles)
    # The log lines are written, to a sink that keeps nothing: their cost counts.
    service = Service(settings, provider=ProviderSource(opened, lambda c: 0),
                      log=ServiceLog(stream=_Discard(), journald=False), on_cycle=after)
    started = time.perf_counter()
    code = await service.run()
    elapsed = time.perf_counter() - started
    with closing(readers[0]) as reader:
        steady: list[tuple[int, int]] = []
        for before, sample in pairwise(samples):
            if before["drift_next"] or sample["executed"]:
                continue
            steady.append(_row_bytes(reader, before["position"], sample["position"]))
    base = samples[min(49, len(samples) - 1)]
    end = samples[-1]
    growth = (end["rss"] - base["rss"]) / base["rss"]
    peak = max(s["rss"] for s in samples[49:]) if len(samples) > 49 else end["rss"]
    return {
        "exit_code": code, "cycles": len(samples), "resources": resources,
        "seconds": round(elapsed, 1),
        "cycle_seconds_median": round(statistics.median(s["duration"] for s in samples), 4),
        "rss_mb_at_cycle_50": round(base["rss"] / 2**20, 1),
        "rss_mb_at_end": round(end["rss"] / 2**20, 1),
        "rss_mb_peak_after_50": round(peak / 2**20, 1),
        "rss_growth_after_50": round(growth, 4),
        "rss_growth_target": 0.05, "rss_growth_ok": growth <= 0.05,
        "fds_at_cycle_50": base["fds"], "fds_at_end": end["fds"],
        "fd_growth": end["fds"] - base["fds"], "fd_growth_ok": end["fds"] <= base["fds"],
        "steady_cycles": len(steady),
        "events_per_steady_cycle": statistics.median(c for c, _ in steady) if steady else None,
        "log_bytes_per_steady_cycle": statistics.median(b for _, b in steady) if steady else None,
        "log_bytes_total": store.stat().st_size,
        "updates_executed": sum(s["executed"] for s in samples),
    }


_MOTO = """
import logging, sys, time
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("http://%s:%d" % server.get_host_and_port(), flush=True)
sys.stdin.read()
"""


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle(work: Path, seconds: float) -> dict[str, Any]:
    moto = subprocess.Popen([sys.executable, "-c", _MOTO], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert moto.stdout is not None
    endpoint = moto.stdout.readline().strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OVI_"))}
    env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x",
               AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1")
    config = work / "idle.yaml"
    config.write_text("version: v1\nprovider: aws\nregion: us-east-1\nresources:\n"
                      "  - {type: s3, name: assets}\n")
    base = [sys.executable, "-m", "ovi"]
    try:
        subprocess.run([*base, "apply", "--config", str(config), "--store",
                        str(work / "idle.db")], env=env, cwd=work, check=True,
                       capture_output=True, timeout=120)
        log = (work / "idle.stderr").open("w")
        service = subprocess.Popen(
            [*base, "run", "--config", str(config), "--store", str(work / "idle.db"),
             "--interval", "30s", "--log-format", "json", "--metrics-addr", "127.0.0.1:0"],
            env=env, cwd=work, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while '"event":"cycle"' not in (work / "idle.stderr").read_text():
                if time.monotonic() > deadline or service.poll() is not None:
                    raise RuntimeError("ovi run did not finish a first cycle")
                time.sleep(0.1)
            time.sleep(1.0)  # let the first cycle's notices and logging settle
            cpu0, wall0 = _cpu_seconds(service.pid), time.monotonic()
            time.sleep(seconds)
            cpu1, wall1 = _cpu_seconds(service.pid), time.monotonic()
            cycles = (work / "idle.stderr").read_text().count('"event":"cycle"')
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=60)
            log.close()
    finally:
        assert moto.stdin is not None
        moto.stdin.close()
        moto.wait(timeout=30)
    share = (cpu1 - cpu0) / (wall1 - wall0)
    return {"window_seconds": round(wall1 - wall0, 1), "cpu_seconds": round(cpu1 - cpu0, 3),
            "core_share": round(share, 5), "target": 0.01, "ok": share < 0.01,
            "cycles_in_window_plus_first": cycles,
            "clock_tick_seconds": 1 / os.sysconf("SC_CLK_TCK")}


def _busy_cores(before: list[int], after: list[int], own: float, wall: float) -> float:
    busy = sum(after[i] - before[i] for i in (0, 1, 2, 5, 6, 7)) / os.sysconf("SC_CLK_TCK")
    return round(max(0.0, busy - own) / wall, 2)


def _proc_stat() -> list[int]:
    with open("/proc/stat") as stat:
        return [int(x) for x in stat.readline().split()[1:]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--resources", type=int, default=10_000)
    parser.add_argument("--drift-every", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=25.0)
    parser.add_argument("--only", choices=("soak", "idle"), default=None)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    out: dict[str, Any] = {"machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]}}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        stat0, wall0 = _proc_stat(), time.monotonic()
        own0 = os.times()
        if args.only in (None, "soak"):
            out["soak"] = anyio.run(_soak, work, args.cycles, args.resources, args.drift_every,
                                    backend_options={"use_uvloop": True})
        if args.only in (None, "idle"):
            out["idle"] = _idle(work, args.idle_seconds)
        own1 = os.times()
        own = (own1.user - own0.user) + (own1.system - own0.system) + \
            (own1.children_user - own0.children_user) + \
            (own1.children_system - own0.children_system)
        out["machine"]["busy_cores_other_processes"] = _busy_cores(
            stat0, _proc_stat(), own, time.monotonic() - wall0)
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
