"""``rebuild`` and ``stats`` on the story log."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from ovi._fold_workers import main as worker_main
from ovi.replay._errors import ReplayError
from ovi.replay._rebuild import _fold_apart, rebuild_and_compare
from ovi.replay._store import open_log
from projections.resources import ResourcesProjection
from tests.replay.support import Story, copy_log, json_object, replay


class Unknown(ResourcesProjection):
    name = "unknown"


def test_rebuild_equals_the_incremental_projections(story: Story, tmp_path: Path) -> None:
    path = copy_log(story, tmp_path)
    report = json_object(replay("rebuild", "--json", store=path))
    assert report["equal"] is True and report["events"] == report["position"] > 40
    assert report["events_per_s"] > 0
    assert {t["table"] for t in report["tables"]} == {
        "resource_rows", "resource_versions", "scope_observations", "known_from_actions",
        "findings", "decisions",
        "approvals", "config_versions", "provenance", "adoption_grants", "claims", "pauses",
        "announcements", "restarts_owed"}
    # The story never pauses, announces, grants an adoption nor owes a start:
    # those tables are empty, and equal.
    empty = ("pauses", "announcements", "adoption_grants", "restarts_owed")
    assert all(t["equal"] and (t["rows"] > 0) == (t["table"] not in empty)
               for t in report["tables"] if t["table"] != "known_from_actions")
    assert all(t["equal"] for t in report["tables"])
    text = replay("rebuild", store=path)
    assert text.returncode == 0 and "events/s" in text.stdout


def test_rebuild_names_a_table_that_differs_and_in_place_repairs_it(story: Story,
                                                                   tmp_path: Path) -> None:
    path = copy_log(story, tmp_path)
    assert replay("rebuild", store=path).returncode == 0  # catches the projections up
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE approvals SET by = 'mallory'")
    done = replay("rebuild", store=path)
    assert done.returncode == 1
    (line,) = [row for row in done.stdout.splitlines() if "DIFFERS" in row]
    assert line.split()[:2] == ["findings", "approvals"]
    assert "1 rows only in the log's copy, 1 only in the rebuilt one" in line
    repaired = replay("rebuild", "--in-place", store=path)
    assert repaired.returncode == 0 and "own projection tables" in repaired.stdout
    assert replay("rebuild", store=path).returncode == 0
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT by FROM approvals").fetchall() == [("alice",)]


def test_stats_counts_rates_and_durations(story: Story) -> None:
    stats = json_object(replay("stats", "--json", store=story.path))
    by_type = stats["by_type"]
    assert stats["events"] == sum(by_type.values()) == stats["last_position"]
    assert by_type["CycleStarted"] == by_type["CycleFinished"] == 4
    assert stats["decisions_by_action"] == {"create": 1, "delete": 2, "notify": 1}
    assert stats["outcomes_by_action"] == {
        "create": {"executed": 1, "executing": 2, "failed": 1},
        "delete": {"executed": 1, "executing": 1, "skipped": 1}}
    assert stats["skipped_by_reason"] == {"awaiting_approval": 1}
    assert (stats["executed"], stats["failed"]) == (2, 1)
    assert stats["success_rate"] == 0.6667 and stats["error_rate"] == 0.3333
    cycles = stats["cycles"]
    assert cycles["count"] == 4
    assert 0 < cycles["p50_ms"] <= cycles["p90_ms"] <= cycles["p99_ms"] <= cycles["max_ms"]
    late = json_object(replay("stats", "--json", "--since", "2026-11-26T12:04:00Z",
                              store=story.path))
    assert late["by_type"]["CycleStarted"] == 1 and late["executed"] == 0
    assert late["success_rate"] is None
    text = replay("stats", store=story.path)
    assert text.returncode == 0 and "4 cycles: duration p50" in text.stdout


@pytest.mark.asyncio
@pytest.mark.parametrize("workers", [1, 3])
async def test_rebuild_in_any_number_of_worker_processes(story: Story, tmp_path: Path,
                                                         workers: int) -> None:
    path = copy_log(story, tmp_path)
    async with open_log(path) as store:
        report = await rebuild_and_compare(store, workers=workers, workdir=tmp_path)
        head = await store.last_position()
    assert report.workers == workers and report.equal
    assert report.position == report.events == head
    assert [t.projection for t in report.tables] == [
        "resources", "resources", "resources", "resources", "findings", "findings", "findings",
        "findings",
        "findings", "findings", "claims", "operations", "operations", "restarts"]
    assert not [p async for p in anyio.Path(tmp_path).glob("ovi-rebuild-*")]  # copies gone


@pytest.mark.asyncio
async def test_a_failing_worker_fails_the_rebuild_saying_why(story: Story,
                                                             tmp_path: Path) -> None:
    path = copy_log(story, tmp_path)
    with pytest.raises(ReplayError) as caught:
        await _fold_apart(path, 1, [(tmp_path / "a.db", [ResourcesProjection()]),
                                    (tmp_path / "b.db", [Unknown()])])
    assert str(caught.value) == "rebuild failed: ValueError: no projection named 'unknown'"


def test_the_worker_module_refuses_bad_usage(tmp_path: Path) -> None:
    assert worker_main(["only-a-log"]) == 2
    log, copy = str(tmp_path / "log.db"), str(tmp_path / "copy.db")
    assert worker_main([log, copy, "no-such-projection"]) == 2  # no UNTIL
    assert worker_main([log, copy, "1", "no-such-projection"]) == 1
