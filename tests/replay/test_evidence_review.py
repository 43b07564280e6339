"""Hostile review of the log as evidence (issue 13), through the audit tool:
what ``python -m ovi.replay`` shows must be what the log it verified says.
Each strict xfail is a finding of the review; its reason says what is wrong."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from eventstore import Anchor, SQLiteEventStore, append_anchor
from ovi.events import (
    ActionExecuted,
    ActionExecuting,
    DecisionMade,
    registry,
    resource_stream,
)
from ovi.evidence import load_chain_key
from ovi.model import Action
from ovi.providers.fake import FakeProvider
from ovi.runtime import ovi_projections
from projections import ProjectionRunner
from tests.eventstore.sample_events import Ping, sample_registry
from tests.ovi.harness import Clock, Env, config_text, managed
from tests.replay.support import ROOT, Story, copy_log, json_object, replay


async def _fold_in_place(path: Path) -> None:
    """Bring the projections kept in the log's file up to its head, as the
    service leaves them after a cycle."""
    async with SQLiteEventStore(path, registry(), instance_id="ovi") as store, \
            ProjectionRunner(store, path, ovi_projections()) as views:
        await views.catch_up()


def test_state_shows_what_the_verified_log_says_not_a_forged_projection(
    story: Story, tmp_path: Path
) -> None:
    path = copy_log(story, tmp_path)
    asyncio.run(_fold_in_place(path))
    honest = json_object(replay("state", "--all", "--json", store=path))
    assert [r["exists"] for r in honest["resources"] if r["id"] == "old-0"] == [False]
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        # old-0 was deleted by Ovi: make the view say it never went away
        db.execute('UPDATE resource_versions SET "exists" = 1 WHERE resource_id = ?'
                   " AND rev = (SELECT max(rev) FROM resource_versions WHERE resource_id = ?)",
                   ("old-0", "old-0"))
    verified = replay("verify", store=path)
    assert verified.returncode == 0, verified.stdout + verified.stderr  # the log is intact
    forged = json_object(replay("state", "--all", "--json", store=path))
    assert forged == honest


def _hide_from_stream_reads(path: Path, position: int) -> None:
    """Rewrite no row, only the (stream, stream_version) index: swap its pages
    with those of a partial index that lacks ``position``, then drop that one
    (its pages, the honest index's, go to the free list): ``PRAGMA
    quick_check`` still says ok; only ``integrity_check`` compares indexes
    with rows."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("CREATE UNIQUE INDEX hide ON events (stream, stream_version)"
                   f" WHERE position <> {int(position)}")
        pages = dict(db.execute("SELECT name, rootpage FROM sqlite_master WHERE name IN"
                                " ('hide', 'sqlite_autoindex_events_1')").fetchall())
        db.execute("PRAGMA writable_schema = ON")
        for name, other in (("sqlite_autoindex_events_1", "hide"),
                            ("hide", "sqlite_autoindex_events_1")):
            db.execute("UPDATE sqlite_master SET rootpage = ? WHERE name = ?",
                       (pages[other], name))
        db.execute("PRAGMA writable_schema = OFF")
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("DROP INDEX hide")
        assert db.execute("PRAGMA quick_check").fetchall() == [("ok",)]


def test_verify_fails_a_log_whose_stream_index_hides_the_delete_that_was_done(
    story: Story, tmp_path: Path
) -> None:
    path = copy_log(story, tmp_path)
    with closing(sqlite3.connect(path)) as db:
        (executed,) = db.execute("SELECT position FROM events WHERE stream = ? AND type = ?",
                                 ("resource/old-0", "ActionExecuted")).fetchone()
    _hide_from_stream_reads(path, executed)
    why = replay("why", "old-0", store=path)
    assert "in doubt: execution started, no outcome recorded" in why.stdout  # the lie
    verified = replay("verify", store=path)
    assert verified.returncode != 0, verified.stdout


async def _head(path: Path) -> Anchor:
    async with SQLiteEventStore(path, sample_registry(), read_only=True) as store:
        head = await store.head()
    return Anchor(position=head.position, hash=head.hash)


async def _append_as_the_service(path: Path) -> None:
    async with SQLiteEventStore(path, sample_registry(), instance_id="ovi") as store:
        await store.append("s", [Ping(n=1)])


def test_an_anchor_file_that_saw_history_forked_fails_verify_with_the_position(
    story: Story, tmp_path: Path
) -> None:
    path = copy_log(story, tmp_path)
    anchors = tmp_path / "anchors.jsonl"
    honest = asyncio.run(_head(path))
    append_anchor(anchors, [honest])
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        # cut the newest row back out of the log, head and all
        db.execute("DROP TRIGGER events_append_only_delete")
        db.execute("DELETE FROM events WHERE position = ?", (honest.position,))
        db.execute("UPDATE log_head SET position = position - 1, hash = (SELECT hash FROM"
                   " events WHERE position = ?)", (honest.position - 1,))
    asyncio.run(_append_as_the_service(path))
    forked = asyncio.run(_head(path))
    assert forked.position == honest.position and forked.hash != honest.hash
    append_anchor(anchors, [forked])  # the next cycle's anchor
    done = replay("verify", "--anchors", str(anchors), store=path)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1
    assert f"position {honest.position}" in done.stdout + done.stderr


KEY = b"K" * 32


async def _keyed_cycles(path: Path) -> None:
    """Two apply cycles of a real engine (fake provider) on a keyed log: web-0
    created, old-0 waiting for approval."""
    clock = Clock()
    async with SQLiteEventStore(path, registry(), instance_id="ovi", clock=clock,
                                chain_key=KEY) as store, \
            ProjectionRunner(store, path, ovi_projections()) as views:
        env = Env(store, views, FakeProvider([managed("old-0", "i-old")]), clock)
        config = config_text("{type: ec2, name: web}", rules="grace_period: 0s")
        await env.apply(config)
        clock.advance(minutes=1)
        await env.apply(config)


def keyed_log(directory: Path) -> tuple[Path, Path]:
    """A keyed log made by real cycles, and its key file."""
    key_file = directory / "chain.key"
    key_file.write_bytes(KEY + b"\n")
    key_file.chmod(0o600)  # a key others may read is refused
    path = directory / "ovi.db"
    asyncio.run(_keyed_cycles(path))
    return path, key_file


def test_rebuild_works_on_a_keyed_log_given_its_key(tmp_path: Path) -> None:
    path, key_file = keyed_log(tmp_path)
    done = replay("rebuild", "--chain-key-file", str(key_file), store=path)
    assert done.returncode == 0, done.stderr


def _wait_until_open(pid: int, path: Path, timeout: float = 10) -> None:
    """Until process ``pid`` holds ``path`` open."""
    deadline = time.monotonic() + timeout
    fds = Path(f"/proc/{pid}/fd")
    while time.monotonic() < deadline:
        try:
            if any(os.readlink(fd) == str(path) for fd in fds.iterdir()):
                return
        except OSError:
            pass  # a descriptor closed while we looked
        time.sleep(0.05)
    raise AssertionError(f"process {pid} never opened {path}")


def _read_only_mount_command(directory: Path, *command: str) -> list[str]:
    """``command`` in a mount namespace of its own where ``directory`` is a
    read-only bind of itself (the writer outside still writes it)."""
    where = str(directory)
    script = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"')
    return ["unshare", "-m", "sh", "-c", script, "sh", where, *command]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="a read-only bind mount needs root and unshare")
def test_follow_on_a_read_only_mount_shows_events_appended_after_it_started(
    story: Story, tmp_path: Path
) -> None:
    path = copy_log(story, tmp_path / "log")
    follower = subprocess.Popen(
        _read_only_mount_command(path.parent, sys.executable, "-m", "ovi.replay", "follow",
                                 "--json", "--limit", "1", "--since", "2026-12-01T00:00:00Z",
                                 "--store", str(path)),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "NO_COLOR": "1"})
    try:
        _wait_until_open(follower.pid, path)
        time.sleep(1)  # its first read done, it is polling
        asyncio.run(_append_as_the_service(path))  # recorded now, after --since
        out, err = follower.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        follower.kill()
        out, err = follower.communicate()
    assert '"type":"Ping"' in out, (out, err)


async def _awaiting_approval(path: Path) -> str:
    """A log whose delete of old-0 waits for a person's approval: its decision id."""
    clock = Clock()
    async with SQLiteEventStore(path, registry(), instance_id="ovi", clock=clock) as store, \
            ProjectionRunner(store, path, ovi_projections()) as views:
        env = Env(store, views, FakeProvider([managed("old-0", "i-old")]), clock)
        plan = await env.cycle(config_text(rules="grace_period: 0s"))
    (decision,) = plan.decisions
    return decision.decision_id


FAKE_LINE = " 4 approval   granted by alice (user alice, uid 1001 on prod-1)"


def test_why_cannot_be_made_to_show_an_approval_by_another_os_user(tmp_path: Path) -> None:
    path = tmp_path / "ovi.db"
    decision_id = asyncio.run(_awaiting_approval(path))
    approved = subprocess.run(
        [sys.executable, "-m", "ovi", "approve", decision_id, "--store", str(path),
         "--by", "mallory\n" + FAKE_LINE], cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False, env={**os.environ, "NO_COLOR": "1"})
    if approved.returncode != 0:  # refused: fine, if it says why in one line
        assert approved.stderr.count("\n") == 1 and "Traceback" not in approved.stderr
        return
    why = replay("why", "old-0", store=path)
    assert why.returncode == 0, why.stderr
    assert not any(line.startswith(FAKE_LINE) for line in why.stdout.splitlines()), why.stdout


def test_a_chain_key_readable_by_every_user_is_not_taken_silently(tmp_path: Path) -> None:
    path, key_file = keyed_log(tmp_path)
    key_file.chmod(0o644)
    done = replay("verify", "--chain-key-file", str(key_file), store=path)
    assert str(key_file) in done.stderr, (done.returncode, done.stdout, done.stderr)


def test_declaring_an_unkeyed_log_keyed_does_not_get_an_edited_row_past_its_anchors(
    story: Story, tmp_path: Path
) -> None:
    path = copy_log(story, tmp_path)
    anchors = tmp_path / "anchors.jsonl"
    append_anchor(anchors, [asyncio.run(_head(path))])
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("DROP TRIGGER events_append_only_update")
        (position, data) = db.execute(
            "SELECT position, data FROM events WHERE type = 'ActionExecuted'"
            " AND stream = 'resource/old-0'").fetchone()
        db.execute("UPDATE events SET data = ? WHERE position = ?",
                   (data.replace('"i-old"', '"i-0forged"'), position))  # hashes untouched
        db.execute("INSERT OR REPLACE INTO log_header (id, header) VALUES (1, ?)",
                   ('{"chain":"hmac-sha256","key_id":"0000000000000000"}',))
    why = json_object(replay("why", "old-0", "--json", store=path))
    assert why["actions"][-1]["event"]["cloud_id"] == "i-0forged"  # what the audit shows
    done = replay("verify", "--anchors", str(anchors), store=path)
    assert done.returncode == 1, done.stdout


async def _unfenced_execution(path: Path) -> int:
    """An instance that holds no claim on web-1 records executing its last
    decision (a buggy or hostile instance, with the log's key if it has one)."""
    async with SQLiteEventStore(path, registry(), instance_id="mallory") as store:
        decision_id = ""
        async for recorded in store.read(stream=resource_stream("web-1"),
                                         types=("DecisionMade",)):
            assert isinstance(recorded.event, DecisionMade)
            decision_id = recorded.event.decision.decision_id
        done = await store.append(resource_stream("web-1"), [
            ActionExecuting(cycle_id="m", decision_id=decision_id, action=Action.CREATE,
                            resource_id="web-1", cloud_id=None, token=7),
            ActionExecuted(cycle_id="m", decision_id=decision_id, action=Action.CREATE,
                           resource_id="web-1", cloud_id="i-0evil", token=7)])
    return done.first_position


def test_an_index_added_behind_the_store_cannot_hide_an_unfenced_execution_from_verify(
    story: Story, tmp_path: Path
) -> None:
    path = copy_log(story, tmp_path)
    position = asyncio.run(_unfenced_execution(path))
    caught = replay("verify", store=path)
    assert caught.returncode == 1 and f"position {position}" in caught.stdout
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("CREATE INDEX events_type ON events (type, position)"
                   f" WHERE position < {int(position)}")
        db.execute("PRAGMA writable_schema = ON")
        db.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'events_type'",
                   ("CREATE INDEX events_type ON events (type, position)",))
        db.execute("PRAGMA writable_schema = OFF")
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    hidden = replay("verify", store=path)
    assert hidden.returncode == 1, hidden.stdout


def test_a_binary_chain_key_is_taken_byte_for_byte_and_a_text_key_loses_its_newline(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "chain.key"
    binary = b"\n" + os.urandom(14) + b" \n"  # 16 bytes that strip() would cut to 14
    key_file.write_bytes(binary)
    key_file.chmod(0o600)
    assert load_chain_key(key_file) == binary
    key_file.write_bytes(b"0123456789abcdef0123\n")
    assert load_chain_key(key_file) == b"0123456789abcdef0123"
    key_file.chmod(0o640)  # its group may read it: a key root keeps for the service's group
    assert load_chain_key(key_file) == b"0123456789abcdef0123"


def test_an_empty_anchor_file_fails_verify_and_anchors_of_another_log_are_named(
    story: Story, tmp_path: Path
) -> None:
    path = copy_log(story, tmp_path)
    empty = tmp_path / "empty.anchors"
    empty.write_bytes(b"")
    done = replay("verify", "--anchors", str(empty), store=path)
    assert done.returncode == 1 and f"{empty}: holds no anchor" in done.stderr
    assert done.stderr.count("\n") == 1
    other = tmp_path / "other.anchors"
    head = asyncio.run(_head(path))
    append_anchor(other, [Anchor(position=head.position, hash=head.hash, log="/elsewhere.db")])
    done = replay("verify", "--anchors", str(other), store=path)
    assert done.returncode == 0 and "holds anchors of /elsewhere.db" in done.stderr
