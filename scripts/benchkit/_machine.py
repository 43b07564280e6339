"""The machine a run measured, and how busy other processes kept it."""

from __future__ import annotations

import os
import platform
import resource
import sqlite3
import time
from importlib import metadata
from pathlib import Path

import msgspec

__all__ = ["CpuMeter", "Machine", "machine"]

# The packages whose versions move the figures.
PACKAGES = ("aiosqlite", "msgspec", "uvloop", "anyio", "aiobotocore", "moto")


class CpuMeter:
    """How busy the machine was with *other* work while it ran: system-wide
    CPU time from /proc/stat minus this process's and its (waited-for)
    children's. The figures are only comparable with a machine that was
    otherwise idle."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        ticks = os.sysconf("SC_CLK_TCK")
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return 0.0, 0.0, time.monotonic()
        # Every column but idle and iowait.
        busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4)) / ticks
        own = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            own += usage.ru_utime + usage.ru_stime
        return busy, own, time.monotonic()

    def others_cores(self) -> float:
        """Average number of cores kept busy by other processes since the
        meter was made."""
        busy0, own0, t0 = self.start
        busy1, own1, t1 = self._sample()
        if t1 <= t0:
            return 0.0
        return round(max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0), 2)


class Machine(msgspec.Struct, frozen=True):
    """Interpreter, libraries, CPU and scratch file system of a run."""

    python: str
    implementation: str
    sqlite: str
    cores: int
    cpu: str
    platform: str
    scratch_dir: str
    scratch_fs: str
    packages: dict[str, str]
    event_loop: str
    busy_cores_other_processes: float | None = None


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(scratch: Path) -> Machine:
    """This machine, with ``scratch`` (resolved) as the scratch directory."""
    base = str(scratch.resolve())
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fs = ""
    try:
        best = ""
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, kind, *_ = line.split()
            if base.startswith(mount) and len(mount) > len(best):
                best, fs = mount, kind
    except OSError:
        pass
    return Machine(
        python=platform.python_version(), implementation=platform.python_implementation(),
        sqlite=sqlite3.sqlite_version, cores=os.cpu_count() or 0, cpu=cpu,
        platform=platform.platform(), scratch_dir=base, scratch_fs=fs,
        packages={name: _version(name) for name in PACKAGES}, event_loop="uvloop")
