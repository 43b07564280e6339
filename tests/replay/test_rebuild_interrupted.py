"""Ctrl-C during ``rebuild`` stops its worker processes and leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from eventstore import SQLiteEventStore, StreamBatch
from ovi.events import ResourceObserved, registry, resource_stream
from ovi.model import ResourceType, Scope, resource_fingerprint
from tests.ovi.harness import managed
from tests.replay.support import ROOT

SCOPE = Scope("aws", "us-east-1", ResourceType.EC2)


async def build(path: Path, events: int) -> None:
    """A log of observations only: long enough for the workers to be caught."""
    async with SQLiteEventStore(path, registry(), synchronous="OFF") as store:
        for start in range(0, events, 5_000):
            batches = []
            for n in range(start, start + 5_000):
                resource = managed(f"web-{n % 2_000}", f"i-{n % 2_000:08x}", team=str(n))
                batches.append(StreamBatch(resource_stream(resource.id), (ResourceObserved(
                    cycle_id="c", scope=SCOPE, resource=resource,
                    fingerprint=resource_fingerprint(resource)),)))
            await store.append_streams(batches)


def workers_of(log: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-f", f"_fold_workers {log}"], capture_output=True,
                           text=True, check=False)
    return found.stdout.split()


def test_sigint_during_rebuild_stops_the_workers_and_cleans_up(tmp_path: Path) -> None:
    log = tmp_path / "big.db"
    asyncio.run(build(log, 150_000))
    work = tmp_path / "tmp"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVI_")} | {
        "TMPDIR": str(work)}
    child = subprocess.Popen([sys.executable, "-m", "ovi.replay", "rebuild", "--store", str(log)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not workers_of(log):
            assert child.poll() is None, "the rebuild ended before its workers were seen"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        child.send_signal(signal.SIGINT)
        child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130
    assert workers_of(log) == []
    assert list(work.iterdir()) == []  # the rebuilt copies are gone
