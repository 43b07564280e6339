"""Hostile review of issue 13 in the engine: a keyed log is meant to make a
row written without the key worthless, but the service must then not act on
one. Each strict xfail is a finding of the review; its reason says what."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eventstore import LogCorruptedError, SQLiteEventStore, row_hash
from ovi.events import ApprovalGranted, registry, resource_stream
from ovi.model import Action
from ovi.providers.fake import FakeProvider
from ovi.replay import verify_log
from ovi.runtime import ovi_projections
from projections import ProjectionRunner
from tests.ovi.harness import Clock, Env, config_text, managed

pytestmark = pytest.mark.asyncio

KEY = b"K" * 32
CONFIG = config_text(rules="grace_period: 0s")  # old-0 is no longer desired


def _forge_approval(path: Path, decision_id: str) -> int:
    """What someone with write access to the file but not the key does: append
    an approval as a well-chained row (plain SHA-256, the only hash they can
    compute) and move the head onto it. Returns its position."""
    stream = resource_stream("old-0")
    type_, data = registry().encode(ApprovalGranted(
        decision_id=decision_id, resource_id="old-0", by="alice", at=datetime.now(UTC)))
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")
        position, prev, recorded_at = db.execute(
            "SELECT position, hash, recorded_at FROM events ORDER BY position DESC"
            " LIMIT 1").fetchone()
        (version,) = db.execute("SELECT max(stream_version) FROM events WHERE stream = ?",
                                (stream,)).fetchone()
        at, row = position + 1, (stream, version + 1, type_, recorded_at, "ovi", data)
        forged = row_hash(prev, at, *row)
        db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (at, *row, prev, forged))
        db.execute("UPDATE log_head SET position = ?, hash = ? WHERE id = 1", (at, forged))
        db.execute("COMMIT")
    return int(at)


async def test_a_keyed_service_does_not_act_on_a_row_forged_without_the_key(
    tmp_path: Path
) -> None:
    path = tmp_path / "ovi.db"
    clock = Clock()
    old = managed("old-0", "i-old")
    async with SQLiteEventStore(path, registry(), instance_id="ovi", clock=clock,
                                chain_key=KEY) as store, \
            ProjectionRunner(store, path, ovi_projections()) as views:
        env = Env(store, views, FakeProvider([old]), clock)
        (decision,) = (await env.cycle(CONFIG)).decisions
        assert decision.action is Action.DELETE and decision.status == "awaiting_approval"
        position = _forge_approval(path, decision.decision_id)
        clock.advance(minutes=1)
        try:
            await env.apply(CONFIG)
        except Exception:  # refusing the log is the right answer
            pass
        report = await store.verify()
        assert report.problem is not None and report.problem.position == position
        assert "i-old" in env.provider.resources, "deleted on an approval nobody gave"


async def test_a_delete_executed_on_a_forged_projection_row_fails_verify(
    tmp_path: Path
) -> None:
    path = tmp_path / "ovi.db"
    clock = Clock()
    async with SQLiteEventStore(path, registry(), instance_id="ovi", clock=clock,
                                chain_key=KEY) as store, \
            ProjectionRunner(store, path, ovi_projections()) as views:
        env = Env(store, views, FakeProvider([managed("old-0", "i-old")]), clock)
        (decision,) = (await env.cycle(CONFIG)).decisions
        assert decision.status == "awaiting_approval"
        with closing(sqlite3.connect(path, isolation_level=None)) as db:
            db.execute("INSERT INTO approvals VALUES (?, 'old-0', 'alice', ?, 1)",
                       (decision.decision_id, datetime.now(UTC).isoformat()))
        clock.advance(minutes=1)
        await env.apply(CONFIG)
        executed = "i-old" not in env.provider.resources
        report = await verify_log(store)
    assert executed  # what the forged row made Ovi do
    assert not report.ok, "a delete that awaited approval ran without one, and verify is ok"


def _edit_into_approval(path: Path, decision_id: str) -> int:
    """What someone with write access but not the key does to a row the
    runner has already checked: drop the append-only triggers and rewrite the
    first row in place into an approval, its hash column left as it was (no
    hash they can compute would match). Returns its position."""
    type_, data = registry().encode(ApprovalGranted(
        decision_id=decision_id, resource_id="old-0", by="alice", at=datetime.now(UTC)))
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("DROP TRIGGER events_append_only_update")
        db.execute("UPDATE events SET type = ?, data = ? WHERE position = 1", (type_, data))
    return 1


def _approvals(path: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT * FROM approvals").fetchall()


async def test_a_row_edited_in_place_after_its_chain_was_checked_is_not_folded(
    tmp_path: Path
) -> None:
    path = tmp_path / "ovi.db"
    clock = Clock()
    async with SQLiteEventStore(path, registry(), instance_id="ovi", clock=clock,
                                chain_key=KEY) as store, \
            ProjectionRunner(store, path, ovi_projections()) as views:
        env = Env(store, views, FakeProvider([managed("old-0", "i-old")]), clock)
        (decision,) = (await env.cycle(CONFIG)).decisions
        assert decision.status == "awaiting_approval"
        await views.catch_up()  # every row is checked and folded
        position = _edit_into_approval(path, decision.decision_id)
        # A rebuild reads row 1 again, which the runner checked before the edit.
        with pytest.raises(LogCorruptedError) as raised:
            await views.rebuild("findings")
        assert raised.value.position == position
        assert "edited in place" in str(raised.value)
        assert _approvals(path) == []
        clock.advance(minutes=1)
        with pytest.raises(LogCorruptedError):
            await env.apply(CONFIG)
        assert "i-old" in env.provider.resources, "deleted on an approval nobody gave"


async def test_a_keyed_log_is_refolded_in_process_where_its_rows_are_matched(
    tmp_path: Path
) -> None:
    path = tmp_path / "ovi.db"
    asked: list[int] = []

    async def fold_apart(until: int, shares: object) -> int:
        asked.append(until)  # the workers have no key to match the rows with
        raise AssertionError("a keyed log was handed to fold workers")

    async with SQLiteEventStore(path, registry(), instance_id="ovi", clock=Clock(),
                                chain_key=KEY) as store, \
            ProjectionRunner(store, path, ovi_projections(), fold_apart=fold_apart,
                             fold_apart_from=1) as views:
        env = Env(store, views, FakeProvider([managed("old-0", "i-old")]), Clock())
        (decision,) = (await env.cycle(CONFIG)).decisions
        await views.catch_up()
        _edit_into_approval(path, decision.decision_id)
        with pytest.raises(LogCorruptedError):
            await views.rebuild()
    assert asked == []
    assert _approvals(path) == []
