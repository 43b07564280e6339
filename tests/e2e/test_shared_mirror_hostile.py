"""Hostile review (issue 12): ``ovi`` processes of one host in one working
directory share its default mirror (``./ovi-mirror.db``) — the service and an
operator's commands, say. None needs AWS here.

Tests marked ``xfail(strict=True)`` are problems found and not fixed yet; the
reason says what happens instead.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eventstore import SQLiteEventStore, StreamBatch, copy_new_rows
from eventstore.postgres import PostgresEventStore
from ovi.events import CycleStarted, registry
from ovi.model import CycleMode
from tests.e2e.cli import ROOT, aws_env
from tests.postgres import PostgresSchema, create_schema, drop_schema


@pytest.fixture
def shared_log() -> Iterator[PostgresSchema]:
    """A schema of its own (a plain test: its children do the async work)."""
    schema = asyncio.run(create_schema())
    try:
        yield schema
    finally:
        asyncio.run(drop_schema(schema.server_dsn, schema.name))


async def a_shared_log_of(events: int, schema: PostgresSchema, scratch: Path) -> None:
    """``events`` cycle starts in the shared log (written to SQLite, copied over)."""
    started = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    async with SQLiteEventStore(scratch, registry()) as local, \
            PostgresEventStore(schema.server_dsn, registry(), schema=schema.name) as shared:
        await local.append_streams(
            StreamBatch(f"cycle/c-{n}", (CycleStarted(cycle_id=f"c-{n}", mode=CycleMode.PLAN,
                                                      config_hash="h", started_at=started),))
            for n in range(events))
        await copy_new_rows(local, shared)


def ovi_in(cwd: Path, store: str, *args: str) -> subprocess.Popen[str]:
    env = aws_env("http://127.0.0.1:1") | {"PYTHONPATH": str(ROOT), "OVI_STORE": store}
    return subprocess.Popen([sys.executable, "-m", "ovi", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def paused_streams(schema: PostgresSchema) -> list[str]:
    async with PostgresEventStore(schema.server_dsn, registry(), schema=schema.name) as shared:
        return sorted([e.stream async for e in shared.read(types=("AutomationPaused",))])


def test_operators_pausing_at_once_in_one_directory_all_succeed(
    shared_log: PostgresSchema, tmp_path: Path
) -> None:
    asyncio.run(a_shared_log_of(30_000, shared_log, tmp_path / "scratch.db"))
    work = tmp_path / "host-a"
    work.mkdir()
    children = {f"web-{n}": ovi_in(work, shared_log.dsn, "pause", f"web-{n}",
                                   "--reason", "incident") for n in range(4)}
    failed: dict[str, str] = {}
    for target, child in children.items():
        _, err = child.communicate(timeout=120)
        if child.returncode != 0:
            failed[target] = err
    assert failed == {}
    assert asyncio.run(paused_streams(shared_log)) == [f"pause/web-{n}" for n in range(4)]


def test_ovi_on_a_mirror_file_as_a_log_of_its_own_refuses_to_write_naming_the_way(
    shared_log: PostgresSchema, tmp_path: Path
) -> None:
    work = tmp_path / "host-a"
    work.mkdir()
    _, err = ovi_in(work, shared_log.dsn, "pause", "web-0", "--reason", "incident").communicate(
        timeout=60)
    assert (work / "ovi-mirror.db").exists(), err
    child = ovi_in(work, "ovi-mirror.db", "pause", "web-1", "--reason", "incident")
    out, err = child.communicate(timeout=60)
    assert child.returncode == 1, out + err
    assert err.startswith("ovi: error: ovi-mirror.db is this host's mirror of the shared log")
    assert "--store URL --mirror ovi-mirror.db" in err and "Traceback" not in err
    assert asyncio.run(paused_streams(shared_log)) == ["pause/web-0"]
