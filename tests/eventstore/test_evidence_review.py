"""Hostile review of the log as evidence (issue 13), at the store: ways to
make a keyed log take an unkeyed row, anchors vouch for an edited row, or a
read-only audit leave files behind. Each strict xfail is a finding of the
review; the reason says what is wrong and where."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from eventstore import (
    Anchor,
    ChainKeyError,
    EventStore,
    PostgresEventStore,
    SQLiteEventStore,
    append_anchor,
    read_anchors,
)
from tests.eventstore.sample_events import Note, Ping, sample_registry
from tests.postgres import PostgresSchema

KEY = b"k" * 32

StoreMaker = Callable[..., EventStore]


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreMaker:
    if request.param == "sqlite":
        def sqlite(**options: object) -> EventStore:
            return SQLiteEventStore(tmp_path / "ovi.db", sample_registry(), **options)  # type: ignore[arg-type]
        return sqlite
    schema: PostgresSchema = request.getfixturevalue("postgres_schema")

    def postgres(**options: object) -> EventStore:
        return PostgresEventStore(schema.server_dsn, sample_registry(), schema=schema.name,
                                  **options)  # type: ignore[arg-type]
    return postgres


@pytest.mark.asyncio
async def test_a_writer_that_opened_the_empty_log_unkeyed_cannot_append_once_it_is_keyed(
    make_store: StoreMaker,
) -> None:
    unkeyed = await make_store(instance_id="a").open()
    try:
        async with make_store(instance_id="b", chain_key=KEY) as keyed:
            assert (await keyed.read_header()).keyed
            try:
                await unkeyed.append("s", [Ping(n=1)])  # should be refused
            except Exception:  # any refusal is right here
                pass
            await keyed.append("s", [Ping(n=2)])
            report = await keyed.verify()
    finally:
        await unkeyed.aclose()
    assert report.ok, report.problem  # the log must never hold a row that does not verify


@pytest.mark.asyncio
async def test_a_writer_that_opened_the_empty_log_unkeyed_cannot_append_after_keyed_rows(
    make_store: StoreMaker,
) -> None:
    # A later review: the header was checked only while the log was empty,
    # so once the keyed writer had appended, the unkeyed one's append passed.
    unkeyed = await make_store(instance_id="a").open()
    try:
        async with make_store(instance_id="b", chain_key=KEY) as keyed:
            await keyed.append("s", [Ping(n=1)])
            with pytest.raises(ChainKeyError, match="header changed"):
                await unkeyed.append("s", [Ping(n=2)], expected_version=1)
            report = await keyed.verify()
            assert await keyed.last_position() == 1
    finally:
        await unkeyed.aclose()
    assert report.ok, report.problem


@pytest.mark.asyncio
async def test_anchors_checked_without_the_key_do_not_vouch_for_an_edited_row(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ovi.db"
    async with SQLiteEventStore(path, sample_registry(), chain_key=KEY) as store:
        await store.append("s", [Ping(n=1), Note(text="the truth"), Ping(n=3)])
        head = await store.head()
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("DROP TRIGGER events_append_only_update")
        db.execute("UPDATE events SET data = ? WHERE position = 2", ('{"text":"a lie"}',))
    async with SQLiteEventStore(path, sample_registry(), read_only=True) as audit:
        report = await audit.verify(anchors=[Anchor(position=head.position, hash=head.hash)])
        (note,) = [e.event async for e in audit.read(types=("Note",))]
    assert note == Note(text="a lie")
    assert not (report.ok and report.anchors_checked), (
        "the anchors were reported as holding a log whose row 2 was rewritten")


@pytest.mark.asyncio
async def test_a_read_only_audit_by_the_owner_creates_no_file_beside_the_log(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ovi.db"
    async with SQLiteEventStore(path, sample_registry()) as store:
        await store.append("s", [Ping(n=1)])
    before = _snapshot(tmp_path)
    async with SQLiteEventStore(path, sample_registry(), read_only=True) as audit:
        assert (await audit.verify()).ok
    assert _snapshot(tmp_path) == before


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file in ``directory``: its bytes and modification time."""
    return {file.name: (file.read_bytes(), file.stat().st_mtime_ns)
            for file in sorted(directory.iterdir())}


@pytest.mark.asyncio
async def test_verify_reports_a_row_whose_data_is_not_text_at_its_position(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ovi.db"
    async with SQLiteEventStore(path, sample_registry()) as store:
        await store.append("s", [Ping(n=1), Note(text="x"), Ping(n=3)])
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("DROP TRIGGER events_append_only_update")
        db.execute("UPDATE events SET data = CAST(data AS BLOB) WHERE position = 2")
    async with SQLiteEventStore(path, sample_registry(), read_only=True) as audit:
        report = await audit.verify()
    assert report.problem is not None and report.problem.position == 2


def test_an_anchor_file_survives_a_torn_last_line(tmp_path: Path) -> None:
    anchors = tmp_path / "ovi.anchors"
    first = Anchor(position=3, hash="a" * 64)
    append_anchor(anchors, [first])
    with anchors.open("ab") as torn:
        torn.write(b'{"position": 9, "hash": "bb')  # the crash
    later = Anchor(position=12, hash="c" * 64)
    append_anchor(anchors, [later])
    assert [(a.position, a.hash) for a in read_anchors(anchors)] == [
        (3, first.hash), (12, later.hash)]
