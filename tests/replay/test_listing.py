"""``log``, ``timeline`` and ``follow`` as child processes on the story log."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from eventstore import SQLiteEventStore
from ovi.events import ApprovalGranted, registry, resource_stream
from tests.replay.support import ROOT, Story, copy_log, json_lines, read_all, replay

KEYS = ["position", "recorded_at", "type", "stream", "instance_id"]


def test_log_json_lists_every_event_in_order(story: Story) -> None:
    lines = json_lines(replay("log", "--json", store=story.path))
    events = asyncio.run(read_all(story.path))
    assert [line["position"] for line in lines] == [e.position for e in events]
    assert [line["type"] for line in lines] == [e.type for e in events]
    assert all(list(line)[:5] == KEYS and list(line)[-1] == "data" for line in lines)
    observed = next(line for line in lines if line["type"] == "ResourceObserved")
    assert observed["resource_id"] == observed["data"]["resource"]["id"]
    assert "resource_id" not in lines[0]  # CycleStarted concerns no resource
    assert lines[0]["recorded_at"] == "2026-11-26T12:00:00.000000Z"


def test_log_text_is_one_aligned_line_per_event(story: Story) -> None:
    done = replay("log", store=story.path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(asyncio.run(read_all(story.path)))
    assert "\x1b[" not in done.stdout  # not a terminal: no colour
    approval = next(line for line in lines if "ApprovalGranted" in line)
    assert "approved by alice" in approval and "old-0" in approval
    assert len({line.index("2026-11-26T") for line in lines}) == 1


def test_log_filters_by_kind_resource_cycle_time_and_limit(story: Story) -> None:
    def positions(*args: str) -> list[dict[str, Any]]:
        return json_lines(replay("log", "--json", *args, store=story.path))

    decided = positions("--type", "decided")
    assert {line["type"] for line in decided} == {"DecisionMade"}
    assert len(decided) == 4
    by_cloud_id = positions("--resource", "i-old", "--type", "executing", "executed")
    assert [(line["type"], line["resource_id"]) for line in by_cloud_id] == [
        ("ActionExecuting", "old-0"), ("ActionExecuted", "old-0")]
    cycle = story.cycles[1]
    in_cycle = positions("--cycle", cycle)
    assert in_cycle and all(line["data"].get("cycle_id") == cycle for line in in_cycle)
    assert {line["type"] for line in in_cycle} >= {"CycleStarted", "ActionFailed",
                                                   "CycleFinished"}
    late = positions("--since", "2026-11-26T12:04:00", "--type", "failed,skipped")
    assert late == []
    failed = positions("--type", "failed")
    assert [line["data"]["error"] for line in failed] == ["throttled (injected)"]
    assert [line["position"] for line in positions("--limit", "3")] == [1, 2, 3]
    window = positions("--since", "2026-11-26T12:01:00Z", "--until", "2026-11-26T12:03:00Z")
    assert {line["recorded_at"][:16] for line in window} == {"2026-11-26T12:01",
                                                             "2026-11-26T12:02"}


def test_log_unknown_type_is_a_note_not_an_error(story: Story) -> None:
    done = replay("log", "--type", "NoSuchEvent", store=story.path)
    assert done.returncode == 0 and done.stdout == ""
    assert "NoSuchEvent" in done.stderr and "not an event type" in done.stderr


def test_timeline_by_ovi_id_or_cloud_id(story: Story) -> None:
    by_id = json_lines(replay("timeline", "web-1", "--json", store=story.path))
    by_cloud = json_lines(replay("timeline", story.web1_cloud_id, "--json", store=story.path))
    assert by_id == by_cloud
    assert [line["type"] for line in by_id] == [
        "DiffDetected", "DecisionMade", "ClaimAcquired", "ActionExecuting", "ActionFailed",
        "ClaimReleased", "ClaimAcquired", "ActionExecuting", "ActionExecuted", "ClaimReleased",
        "ResourceObserved", "DiffResolved"]
    assert {line["resource_id"] for line in by_id} == {"web-1"}
    assert [line["position"] for line in by_id] == sorted(line["position"] for line in by_id)
    text = replay("timeline", "old-0", store=story.path)
    assert text.returncode == 0 and "approved by alice" in text.stdout


class _Lines:
    """A child's stdout read line by line on a thread, with timeouts."""

    def __init__(self, pipe: IO[str]) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._thread.start()

    def _pump(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._queue.put(line)
        self._queue.put("")

    def join(self) -> None:
        self._thread.join(timeout=10)

    def take(self, count: int, deadline: float) -> list[str]:
        lines: list[str] = []
        for _ in range(count):
            line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line, f"the output ended after {lines}"
            lines.append(line)
        return lines


async def _approve_again(path: Path) -> None:
    later = datetime(2026, 11, 26, 12, 10, tzinfo=UTC)  # the story's clock, moved on
    async with SQLiteEventStore(path, registry(), instance_id="tester",
                                clock=lambda: later) as store:
        await store.append(resource_stream("i-stray"), [ApprovalGranted(
            decision_id="d-late", resource_id="i-stray", by="bob", at=later)])


def test_follow_tails_new_events_and_stops_cleanly_on_sigint(story: Story,
                                                             tmp_path: Path) -> None:
    path = copy_log(story, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVI_")}
    child = subprocess.Popen(
        [sys.executable, "-m", "ovi.replay", "follow", "--json", "--store", str(path),
         "--since", "2026-11-26T12:04:00Z", "--type", "ApprovalGranted", "DiffResolved"],
        cwd=ROOT, env={**env, "NO_COLOR": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    lines = _Lines(child.stdout)
    try:
        deadline = time.monotonic() + 20
        old = [json.loads(line) for line in lines.take(2, deadline)]
        assert [line["type"] for line in old] == ["DiffResolved", "DiffResolved"]
        asyncio.run(_approve_again(path))
        (new,) = (json.loads(line) for line in lines.take(1, deadline))
        assert new["type"] == "ApprovalGranted" and new["data"]["by"] == "bob"
        assert new["resource_id"] == "i-stray" and new["instance_id"] == "tester"
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
