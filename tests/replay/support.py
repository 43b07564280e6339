"""Logs made by real cycles (fake provider, controlled clock), and running
``python -m ovi.replay`` on them as a child process."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec

from eventstore import SQLiteEventStore
from ovi.config import parse_config
from ovi.events import ApprovalGranted, registry, resource_stream
from ovi.model import Resource, identify
from ovi.providers.base import ProviderError
from ovi.retry import RetryPolicy
from tests.ovi.harness import config_text, environment, managed, unmanaged

ROOT = Path(__file__).resolve().parents[2]
WEB = "{type: ec2, name: web, count: 2, size: t3.micro}"
CONFIG = config_text(WEB, rules="grace_period: 0s")


class Story(msgspec.Struct, kw_only=True):
    """What happened in the story log, for tests to check the tool against."""

    path: Path
    config: Path  # the config the cycles ran with
    cycles: list[str]  # cycle ids, in order
    old_decision: str  # the delete of old-0, approved by alice, executed
    config_hash: str
    revision_1: int  # the log's head after the first cycle
    estate_1: list[Resource]  # what the cloud held during the first cycle
    web1_cloud_id: str


def build_story(directory: Path) -> Story:
    """Four cycles on an estate of web-0 (desired), old-0 (managed, no longer
    desired) and i-stray (unmanaged): plan; apply (creating web-1 fails, the
    delete of old-0 awaits approval); alice approves; apply (web-1 created,
    old-0 deleted); apply (old-0 is gone)."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "ovi.yaml"
    config_path.write_text(CONFIG)
    return asyncio.run(_story_cycles(directory, config_path))


async def _story_cycles(directory: Path, config_path: Path) -> Story:
    estate = (managed("web-0", "i-web0"), managed("old-0", "i-old"), unmanaged("i-stray"))
    async with environment(directory, *estate) as env:
        env.engine.executor.retry = RetryPolicy(attempts=1)
        first = await env.cycle(CONFIG)
        revision_1 = await env.store.last_position()
        estate_1 = sorted(identify(env.provider.resources.values(), owner="ovi"),
                          key=lambda r: r.id)
        env.clock.advance(minutes=1)
        env.provider.fail_next = [ProviderError("throttled (injected)", retryable=True)]
        second = await env.apply(CONFIG)
        old = next(d for d in second.decisions if d.resource_id == "old-0")
        env.clock.advance(minutes=1)
        await env.store.append(resource_stream("old-0"), [ApprovalGranted(
            decision_id=old.decision_id, resource_id="old-0", by="alice", at=env.clock())])
        env.clock.advance(minutes=1)
        third = await env.apply(CONFIG)
        env.clock.advance(minutes=1)
        fourth = await env.apply(CONFIG)
        web1 = next(r for r in env.provider.resources.values() if r.id == "web-1")
    assert "i-old" not in env.provider.resources
    return Story(path=directory / "ovi.db", config=config_path,
                 cycles=[c.cycle_id for c in (first, second, third, fourth)],
                 old_decision=old.decision_id,
                 config_hash=parse_config(CONFIG, "test.yaml").config_hash,
                 revision_1=revision_1, estate_1=estate_1, web1_cloud_id=web1.cloud_id)


def copy_log(story: Story, directory: Path) -> Path:
    """A copy of the story's log (closed stores leave no WAL behind)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "ovi.db"
    shutil.copyfile(story.path, target)
    return target


def replay(*args: str, store: Path | None = None, timeout: float = 60,
           env: dict[str, str] | None = None,
           as_uid: int | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m ovi.replay ARGS [--store STORE]`` in a child process; with
    ``as_uid``, as that OS user (and group), without supplementary groups."""
    command = [sys.executable, "-m", "ovi.replay", *args]
    if as_uid is not None:
        command = ["setpriv", f"--reuid={as_uid}", f"--regid={as_uid}", "--clear-groups",
                   *command]
    if store is not None:
        command += ["--store", str(store)]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OVI_")}
    environ["NO_COLOR"] = "1"
    if as_uid is not None:
        environ["PYTHONDONTWRITEBYTECODE"] = "1"  # that user may not write __pycache__
    environ.update(env or {})
    return subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=timeout, check=False)


def json_lines(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def json_object(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.stdout.count("\n") == 1, done.stdout + done.stderr
    value = json.loads(done.stdout)
    assert isinstance(value, dict)
    return value


async def read_all(path: Path) -> list[Any]:
    async with SQLiteEventStore(path, registry(), instance_id="reader") as store:
        return [e async for e in store.read()]
