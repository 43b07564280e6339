"""``follow`` on a shared log: the mirror keeps copying while it tails."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eventstore.postgres import PostgresEventStore
from ovi.events import ApprovalGranted, registry, resource_stream
from tests.postgres import PostgresSchema, create_schema, drop_schema
from tests.replay.support import ROOT, Story, replay
from tests.replay.test_listing import _Lines


@pytest.fixture
def shared_log() -> Iterator[PostgresSchema]:
    """A schema of its own (these tests are plain functions: child processes
    do the asynchronous work)."""
    schema = asyncio.run(create_schema())
    try:
        yield schema
    finally:
        asyncio.run(drop_schema(schema.server_dsn, schema.name))


async def _approve_on_the_server(schema: PostgresSchema, n: int) -> None:
    later = datetime(2026, 11, 26, 12, 10, tzinfo=UTC)
    async with PostgresEventStore(schema.server_dsn, registry(), schema=schema.name,
                                  instance_id="other-host", clock=lambda: later) as store:
        await store.append(resource_stream("i-stray"), [ApprovalGranted(
            decision_id=f"d-late-{n}", resource_id="i-stray", by="bob", at=later)])


def test_follow_on_a_shared_log_prints_what_another_host_appends(
    story: Story, shared_log: PostgresSchema, tmp_path: Path
) -> None:
    dsn = shared_log.dsn
    copied = replay("copy", "--from", str(story.path), "--to", dsn)
    assert copied.returncode == 0, copied.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVI_")}
    child = subprocess.Popen(
        [sys.executable, "-m", "ovi.replay", "follow", "--json", "--store", dsn,
         "--mirror", str(tmp_path / "mirror.db"), "--type", "ApprovalGranted"],
        cwd=ROOT, env={**env, "NO_COLOR": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    lines = _Lines(child.stdout)
    try:
        # The follower prints nothing until an event comes, and tails from
        # the head it found on starting: append until one shows up.
        deadline = time.monotonic() + 30
        new: dict[str, object] = {}
        for n in range(10):
            asyncio.run(_approve_on_the_server(shared_log, n))
            try:
                (new,) = (json.loads(line) for line in lines.take(1, time.monotonic() + 2))
                break
            except queue.Empty:
                assert time.monotonic() < deadline, "follow printed nothing"
        assert new["type"] == "ApprovalGranted" and new["instance_id"] == "other-host"
        child.send_signal(signal.SIGINT)
        code = child.wait(timeout=10)
        assert child.stderr is not None
        errors = child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        lines.join()
        for pipe in (child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()
    assert code == 0, errors
    assert "Traceback" not in errors


def test_mirror_with_a_sqlite_store_is_refused(tmp_path: Path) -> None:
    done = replay("stats", "--store", str(tmp_path / "ovi.db"), "--mirror", "m.db")
    assert done.returncode == 2 and "--mirror: only for a shared log" in done.stderr
