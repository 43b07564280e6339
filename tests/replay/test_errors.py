"""Bad input: exit codes, one-line messages naming what was wrong, no traceback,
and never a log created where there was none."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from tests.replay.support import Story, replay


def test_a_missing_store_is_named_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"
    done = replay("log", store=missing)
    assert done.returncode == 1
    assert str(missing) in done.stderr and "no such event log" in done.stderr
    assert not missing.exists() and list(tmp_path.iterdir()) == []


def test_the_default_store_is_ovi_store_then_ovi_db(story: Story, tmp_path: Path) -> None:
    by_env = replay("stats", "--json", env={"OVI_STORE": str(story.path)})
    assert by_env.returncode == 0 and '"events":' in by_env.stdout
    default = replay("verify")  # ./ovi.db in the repository: none there
    assert default.returncode == 1 and "ovi.db: no such event log" in default.stderr


def test_a_file_that_is_not_a_log(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    done = replay("stats", store=text)
    assert done.returncode == 1 and "not an SQLite event log" in done.stderr
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE t (x)")
    done = replay("stats", store=other)
    assert done.returncode == 1 and "not an Ovi event log" in done.stderr


@pytest.mark.parametrize("args", [
    ("log", "--since", "yesterday"),
    ("log", "--until", "2026-13-45"),
    ("state", "--at", "noon"),
    ("log", "--limit", "0"),
    ("backtest",),
    ("frobnicate",),
    (),
])
def test_usage_errors_exit_2(story: Story, args: tuple[str, ...]) -> None:
    done = replay(*args, store=story.path)
    assert done.returncode == 2, done.stderr
    assert "usage:" in done.stderr and "Traceback" not in done.stderr


def test_expected_errors_exit_1_with_one_line(story: Story) -> None:
    for args in (("timeline", "i-unknown"), ("log", "--cycle", "no-such-cycle"),
                 ("log", "--resource", "ghost"), ("state", "--at", "100000")):
        done = replay(*args, store=story.path)
        assert done.returncode == 1, (args, done.stdout)
        # a read-only audit says when it folds projections into a temporary copy
        said = [line for line in done.stderr.splitlines() if not line.startswith("note: ")]
        assert len(said) == 1 and said[0].startswith("python -m ovi.replay: error: "), (
            done.stderr)
        assert args[-1] in done.stderr
