"""A refold of the whole log in worker processes (the runtime's runner after
an upgrade changed a projection's tables) gives the tables a fold in this
process gives, row for row; a failed, raced or cancelled one loses nothing.

On the story log (real cycles), with the threshold lowered to one event;
the kill -9 cases were found by the hostile review of the fold apart."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from eventstore import SQLiteEventStore
from ovi._fold_workers import fold_in_workers
from ovi.events import registry
from ovi.runtime import ovi_projections
from projections import CHECKPOINTS_TABLE, Projection, ProjectionRunner
from projections._fold_apart import FoldApart, scratch_directory, usable_cores
from projections.findings import FindingsProjection
from tests.replay.support import ROOT, Story, copy_log


@pytest.fixture(autouse=True)
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    # The runner deals the projections into one share per core.
    monkeypatch.setattr(os, "cpu_count", lambda: 2)


def bump(path: Path) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute(f"UPDATE {CHECKPOINTS_TABLE} SET schema_version = schema_version - 1")


def contents(path: Path, projections: Sequence[Projection]) -> dict[str, list[tuple[object, ...]]]:
    """Every projection table's rows (with the rowid where the table has one)
    and the checkpoints."""
    found: dict[str, list[tuple[object, ...]]] = {}
    with closing(sqlite3.connect(path)) as db:
        for table in [t for p in projections for t in p.tables]:
            try:
                rows = db.execute(f'SELECT rowid, * FROM "{table}" ORDER BY 1').fetchall()
            except sqlite3.OperationalError:  # WITHOUT ROWID
                rows = db.execute(f'SELECT * FROM "{table}" ORDER BY 1, 2').fetchall()
            found[table] = rows
        found[CHECKPOINTS_TABLE] = db.execute(
            f"SELECT * FROM {CHECKPOINTS_TABLE} ORDER BY name").fetchall()
    return found


async def refold(path: Path, fold_apart: FoldApart | None,
                 projections: Sequence[Projection] | None = None, *,
                 reset: bool = True) -> int:
    async with SQLiteEventStore(path, registry()) as store, ProjectionRunner(
            store, path, projections or ovi_projections(), fold_apart=fold_apart,
            fold_apart_from=1) as views:
        assert bool(views.reset_on_open) is reset
        return await views.catch_up()


def reference(story: Story, tmp_path: Path) -> tuple[dict[str, list[tuple[object, ...]]], int]:
    path = copy_log(story, tmp_path / "in-process")
    bump(path)
    folded = anyio.run(refold, path, None)
    return contents(path, ovi_projections()), folded


class Spy:
    """The real fold apart, counting its calls."""

    def __init__(self, path: Path) -> None:
        self.real = fold_in_workers(path)
        self.calls: list[tuple[int, list[tuple[str, ...]]]] = []

    async def __call__(self, until: int, shares: Sequence[tuple[Path, tuple[str, ...]]]) -> int:
        self.calls.append((until, [names for _, names in shares]))
        return await self.real(until, shares)


def scratch_left(path: Path) -> list[str]:
    return [p.name for p in path.parent.iterdir() if ".fold-" in p.name]


@pytest.mark.asyncio
async def test_the_workers_fold_gives_the_same_tables_as_one_in_process(
        story: Story, tmp_path: Path) -> None:
    expected, folded_here = await anyio.to_thread.run_sync(reference, story, tmp_path)
    path = copy_log(story, tmp_path / "apart")
    bump(path)
    spy = Spy(path)
    folded = await refold(path, spy)
    head = max(int(str(row[1])) for row in expected[CHECKPOINTS_TABLE])
    # The first share (resources, claims, restarts) is folded in this process.
    assert spy.calls == [(head, [("findings", "operations")])]
    assert contents(path, ovi_projections()) == expected
    assert folded == folded_here
    assert scratch_left(path) == []


@pytest.mark.asyncio
async def test_a_failed_worker_leaves_the_fold_to_this_process_saying_so(
        story: Story, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Renamed(FindingsProjection):
        name = "renamed"  # no worker knows it

    # In the second share, the one a worker folds.
    first, _, *rest = ovi_projections()
    projections = [first, Renamed(), *rest]
    reference_path = copy_log(story, tmp_path / "in-process")
    bump(reference_path)
    await refold(reference_path, None, projections)
    path = copy_log(story, tmp_path / "apart")
    bump(path)
    caplog.set_level(logging.WARNING, logger="projections._runner")
    await refold(path, fold_in_workers(path), projections)
    assert contents(path, projections) == contents(reference_path, projections)
    assert any("no projection named 'renamed'" in r.getMessage()
               and "folding them in this process" in r.getMessage() for r in caplog.records)
    assert scratch_left(path) == []


@pytest.mark.asyncio
async def test_a_fold_by_another_runner_meanwhile_is_kept_and_not_taken_over(
        story: Story, tmp_path: Path) -> None:
    expected, _ = await anyio.to_thread.run_sync(reference, story, tmp_path)
    path = copy_log(story, tmp_path / "apart")
    bump(path)
    real = fold_in_workers(path)
    raced: list[int] = []

    async def racing(until: int, shares: Sequence[tuple[Path, tuple[str, ...]]]) -> int:
        folded = await real(until, shares)
        # Another process's runner on the same file folds them first.
        async with SQLiteEventStore(path, registry()) as store, \
                ProjectionRunner(store, path, ovi_projections()) as other:
            raced.append(await other.catch_up())
        return folded

    await refold(path, racing)
    assert raced and raced[0] > 0
    assert contents(path, ovi_projections()) == expected
    assert scratch_left(path) == []


def workers_of(path: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-f", f"_fold_workers {path}"], capture_output=True,
                           text=True, check=False)
    return found.stdout.split()


def worker_checkpoints(path: Path) -> set[int]:
    """The checkpoints of the projections a worker folds (the second share;
    the first is folded in this process, committed batch by batch)."""
    with closing(sqlite3.connect(path)) as db:
        return {row[0] for row in db.execute(
            f"SELECT position FROM {CHECKPOINTS_TABLE} WHERE name IN ('findings', 'operations')")}


@pytest.mark.asyncio
async def test_a_cancelled_refold_stops_its_workers_and_takes_nothing_in(
        story: Story, tmp_path: Path) -> None:
    expected, _ = await anyio.to_thread.run_sync(reference, story, tmp_path)
    path = copy_log(story, tmp_path / "apart")
    bump(path)
    seen: list[str] = []
    async with anyio.create_task_group() as group:
        group.start_soon(refold, path, fold_in_workers(path))
        with anyio.fail_after(20):
            while not seen:  # a worker takes ~0.3 s to start: it is seen
                await anyio.sleep(0.01)
                seen = await anyio.to_thread.run_sync(workers_of, path)
        group.cancel_scope.cancel()
    assert len(seen) >= 1
    assert workers_of(path) == []
    assert scratch_left(path) == []
    assert worker_checkpoints(path) == {0}
    await refold(path, fold_in_workers(path), reset=False)  # reset before the cancel
    assert contents(path, ovi_projections()) == expected


# A service opening an upgraded log, in a process of its own.
_SERVICE = """
import os, sys, anyio
os.cpu_count = lambda: 2
from pathlib import Path
from eventstore import SQLiteEventStore
from ovi._fold_workers import fold_in_workers
from ovi.events import registry
from ovi.runtime import ovi_projections
from projections import ProjectionRunner
path = Path(sys.argv[1])
async def main():
    async with SQLiteEventStore(path, registry()) as store, ProjectionRunner(
            store, path, ovi_projections(), fold_apart=fold_in_workers(path),
            fold_apart_from=1) as views:
        await views.catch_up()
anyio.run(main)
"""


def kill_9_while_the_workers_fold(path: Path) -> None:
    service = subprocess.Popen([sys.executable, "-c", _SERVICE, str(path)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not workers_of(path):
            assert time.monotonic() < deadline, "no worker seen"
            time.sleep(0.005)
    finally:
        os.kill(service.pid, signal.SIGKILL)
        service.wait()


def test_workers_end_with_a_service_killed_while_they_fold(story: Story,
                                                           tmp_path: Path) -> None:
    path = copy_log(story, tmp_path / "apart")
    bump(path)
    kill_9_while_the_workers_fold(path)
    deadline = time.monotonic() + 10
    while workers_of(path):  # their stdin ended with the service: they exit at once
        assert time.monotonic() < deadline, f"workers outlived the service: {workers_of(path)}"
        time.sleep(0.01)
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert worker_checkpoints(path) == {0}


def test_a_killed_services_scratch_is_removed_by_the_next_refold(story: Story,
                                                                  tmp_path: Path) -> None:
    expected, _ = reference(story, tmp_path)
    path = copy_log(story, tmp_path / "apart")
    bump(path)
    kill_9_while_the_workers_fold(path)
    assert scratch_left(path) != []
    anyio.run(refold_again, path)
    assert contents(path, ovi_projections()) == expected
    assert scratch_left(path) == []


async def refold_again(path: Path) -> int:
    return await refold(path, fold_in_workers(path), reset=False)


def test_a_live_refolds_scratch_is_left_alone(tmp_path: Path) -> None:
    log = tmp_path / "ovi.db"

    async def both() -> None:
        async with scratch_directory(log) as mine:
            async with scratch_directory(log) as theirs:
                assert mine.is_dir() and theirs.is_dir() and mine != theirs
            assert mine.is_dir() and not theirs.exists()

    anyio.run(both)
    assert scratch_left(log) == []


@pytest.mark.parametrize(("cpu_max", "expected"), [
    ("max 100000\n", 2), ("150000 100000\n", 2), ("100000 100000\n", 1), ("50000 100000\n", 1),
    (None, 2),
])
def test_the_workers_are_as_many_as_the_cores_the_affinity_and_the_cgroup_quota_allow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_max: str | None, expected: int,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    (tmp_path / "proc").write_text("0::/system.slice/ovi.service\n")
    unit = tmp_path / "cgroups" / "system.slice" / "ovi.service"
    unit.mkdir(parents=True)
    if cpu_max is not None:
        (unit / "cpu.max").write_text(cpu_max)
    assert usable_cores(cgroup=tmp_path / "proc", cgroups=tmp_path / "cgroups") == expected
