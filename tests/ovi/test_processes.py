"""Crashes and several instances, with real processes on one log file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from eventstore import default_instance_id, process_home
from ovi.coordinator import holder_is_gone
from ovi.model import ID_TAG
from ovi.providers.fake import SharedFakeProvider

ROOT = Path(__file__).resolve().parents[2]


def child(tmp_path: Path, cycles: int, pause: float = 0.0,
          where: str = "after") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.ovi._apply_child", str(tmp_path / "ovi.db"),
         str(tmp_path / "estate.json"), str(tmp_path / "ovi.yaml"), str(cycles), str(pause),
         where],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def write_config(tmp_path: Path, count: int) -> None:
    (tmp_path / "ovi.yaml").write_text(
        "version: v1\nprovider: aws\nregion: us-east-1\nresources:\n"
        f"  - {{type: ec2, name: web, count: {count}, size: t3.micro}}\n"
    )


def ids_in_estate(tmp_path: Path) -> Counter[str]:
    estate = SharedFakeProvider(tmp_path / "estate.json").snapshot()
    return Counter(r.tags[ID_TAG] for r in estate.values())


@pytest.mark.parametrize("where", ["after", "before"])
def test_sigkill_between_executing_and_outcome_creates_nothing_twice(
    tmp_path: Path, where: str
) -> None:
    write_config(tmp_path, 2)
    SharedFakeProvider(tmp_path / "estate.json").seed([])
    victim = child(tmp_path, 1, pause=30, where=where)
    assert victim.stdout is not None
    # "created web-…" (in the cloud, outcome not recorded) or "creating web-…"
    # (ActionExecuting recorded, cloud untouched)
    line = victim.stdout.readline()
    os.kill(victim.pid, signal.SIGKILL)
    _, err = victim.communicate(timeout=10)
    assert line.startswith("creat"), err
    assert victim.returncode == -signal.SIGKILL

    survivor = child(tmp_path, 2)
    out, err = survivor.communicate(timeout=60)
    assert survivor.returncode == 0, err
    assert "recovered=" in out and "recovered=0" not in out.splitlines()[0]
    assert ids_in_estate(tmp_path) == Counter({"web-0": 1, "web-1": 1})


def test_four_processes_create_each_missing_resource_once(tmp_path: Path) -> None:
    write_config(tmp_path, 12)
    SharedFakeProvider(tmp_path / "estate.json").seed([])
    workers = [child(tmp_path, 3) for _ in range(4)]
    started = time.monotonic()
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    assert time.monotonic() - started < 120
    assert ids_in_estate(tmp_path) == Counter({f"web-{j}": 1 for j in range(12)})


def test_a_holder_in_another_pid_namespace_is_never_presumed_dead() -> None:
    me = default_instance_id()
    assert me.startswith(process_home() + ":")
    assert not holder_is_gone(me)  # alive
    assert holder_is_gone(f"{process_home()}:{2**22 + 7}:abc")  # no such pid here
    assert not holder_is_gone(f"{process_home()}-elsewhere:{2**22 + 7}:abc")
