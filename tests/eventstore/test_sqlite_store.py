"""The SQLite backend: the contract suite, plus what only a file on disk has
(permissions, WAL, schema, crashes and other processes)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, closing, contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

from eventstore import (
    GENESIS_HASH,
    BackendError,
    EventRegistry,
    EventStore,
    SQLiteEventStore,
    WrongExpectedVersion,
    format_timestamp,
    row_hash,
)
from eventstore.sqlite import SCHEMA_VERSION
from tests.eventstore.contract import (
    EventStoreContract,
    LogTamperer,
    StepClock,
    StoreFactory,
    assert_intact,
    following,
    next_events,
    read_all,
)
from tests.eventstore.sample_events import Note, Ping, sample_registry
from tests.eventstore.support import child, read_line

T = TypeVar("T")
COLUMNS = (
    "position", "stream", "stream_version", "type", "recorded_at",
    "instance_id", "data", "prev_hash", "hash",
)  # fmt: skip


@contextmanager
def raw_db(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection, as an operator's ``sqlite3`` shell would have."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        yield db


class SQLiteTamperer:
    """Edits the log file with sqlite3, dropping the append-only triggers first."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _edit(self, change: Callable[[sqlite3.Connection], T]) -> T:
        with raw_db(self.path) as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DROP TRIGGER IF EXISTS events_append_only_update")
            db.execute("DROP TRIGGER IF EXISTS events_append_only_delete")
            result = change(db)
            db.execute("COMMIT")
        return result

    async def set_data(self, position: int, data: str, *, rehash: bool = False) -> None:
        def change(db: sqlite3.Connection) -> None:
            db.execute("UPDATE events SET data = ? WHERE position = ?", (data, position))
            if rehash:
                prev, *fields = db.execute(
                    "SELECT prev_hash, position, stream, stream_version, type, recorded_at,"
                    " instance_id, data FROM events WHERE position = ?",
                    (position,),
                ).fetchone()
                db.execute(
                    "UPDATE events SET hash = ? WHERE position = ?",
                    (row_hash(prev, *fields), position),
                )

        self._edit(change)

    async def forge(self, position: int, data: str, *, header: str | None = None) -> None:
        def change(db: sqlite3.Connection) -> None:
            db.execute("UPDATE events SET data = ? WHERE position = ?", (data, position))
            start = position
            if header is not None:
                db.execute("INSERT OR REPLACE INTO log_header (id, header) VALUES (1, ?)",
                           (header,))
                start = 1
            rows = db.execute(
                "SELECT position, stream, stream_version, type, recorded_at, instance_id, data,"
                " prev_hash FROM events WHERE position >= ? ORDER BY position", (start,),
            ).fetchall()
            prev = GENESIS_HASH if header is not None else rows[0][7]
            for at, *fields, _ in rows:
                new = row_hash(prev, at, *fields)
                db.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE position = ?",
                           (prev, new, at))
                prev = new
            db.execute("UPDATE log_head SET hash = ? WHERE id = 1", (prev,))

        self._edit(change)

    async def delete(self, *positions: int) -> None:
        self._edit(
            lambda db: db.executemany(
                "DELETE FROM events WHERE position = ?", [(p,) for p in positions]
            )
        )

    async def swap(self, first: int, second: int) -> None:
        columns = COLUMNS[1:]
        select = f"SELECT {', '.join(columns)} FROM events WHERE position = ?"
        update = f"UPDATE events SET {', '.join(f'{c} = ?' for c in columns)} WHERE position = ?"

        def change(db: sqlite3.Connection) -> None:
            a = db.execute(select, (first,)).fetchone()
            b = db.execute(select, (second,)).fetchone()
            # free (stream, stream_version) of the first row for the duration of the swap
            db.execute("UPDATE events SET stream_version = -1 WHERE position = ?", (first,))
            db.execute(update, (*a, second))
            db.execute(update, (*b, first))

        self._edit(change)

    async def insert_after_head(self, stream: str, type_: str, data: str) -> int:
        def change(db: sqlite3.Connection) -> int:
            position, prev = db.execute(
                "SELECT position + 1, hash FROM events ORDER BY position DESC LIMIT 1"
            ).fetchone()
            (version,) = db.execute(
                "SELECT coalesce(max(stream_version), 0) + 1 FROM events WHERE stream = ?",
                (stream,),
            ).fetchone()
            recorded_at = format_timestamp(datetime.now(UTC))
            row = (position, stream, version, type_, recorded_at, "intruder", data)
            db.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, prev, row_hash(prev, *row)),
            )
            return int(position)

        return self._edit(change)

    @asynccontextmanager
    async def holding_write_lock(self) -> AsyncIterator[None]:
        with raw_db(self.path) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield
            finally:
                db.execute("ROLLBACK")


class TestSQLiteEventStore(EventStoreContract):
    @pytest.fixture
    def log_path(self, tmp_path: Path) -> Path:
        return tmp_path / "events.db"

    @pytest.fixture
    def store_factory(self, log_path: Path) -> StoreFactory:
        def make(
            registry: EventRegistry | None = None,
            *,
            clock: Callable[[], datetime] | None = None,
            instance_id: str | None = None,
            chain_key: bytes | None = None,
            read_only: bool = False,
        ) -> EventStore:
            return SQLiteEventStore(
                log_path, registry or sample_registry(), clock=clock, instance_id=instance_id,
                chain_key=chain_key, read_only=read_only,
            )

        return make

    @pytest.fixture
    def tamperer(self, log_path: Path) -> LogTamperer:
        return SQLiteTamperer(log_path)


# -- the file ---------------------------------------------------------------


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "events.db"


def open_store(path: Path, **options: Any) -> SQLiteEventStore:
    return SQLiteEventStore(path, sample_registry(), **options)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o000], ids=["umask-022", "umask-000"])
@pytest.mark.asyncio
async def test_log_files_are_private(log_path: Path, mask: int) -> None:
    with umask(mask):
        async with open_store(log_path) as store:
            await store.append("s", [Ping(n=1)])
            files = [log_path, *(log_path.with_name(f"events.db-{x}") for x in ("wal", "shm"))]
            assert all(f.exists() for f in files)  # WAL mode keeps both while open
            modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in files}
    assert modes == dict.fromkeys(modes, 0o600)


def side_files(path: Path) -> list[Path]:
    return [path, *(path.with_name(f"{path.name}-{x}") for x in ("wal", "shm"))]


@contextmanager
def open_elsewhere(path: Path) -> Iterator[None]:
    """Keep the log open in WAL mode with a committed write pending in its
    -wal, as another process would: the -wal and -shm files exist meanwhile."""
    with raw_db(path) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA wal_autocheckpoint = 0")
        db.execute("CREATE TABLE IF NOT EXISTS elsewhere (x)")
        db.execute("INSERT INTO elsewhere VALUES (1)")
        assert all(f.exists() for f in side_files(path))
        yield


@pytest.mark.asyncio
async def test_a_log_others_can_read_is_made_private_and_said_once(
    log_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_store(log_path) as store:
        await store.append("s", [Ping(n=1)])
    with open_elsewhere(log_path):
        # as restored from a backup, or touched by hand: 0644, 0640 and 0604
        for file, mode in zip(side_files(log_path), (0o644, 0o640, 0o604), strict=True):
            file.chmod(mode)
        with caplog.at_level("WARNING", logger="eventstore"):
            async with open_store(log_path) as store:
                await assert_intact(store, 1)
                modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in side_files(log_path)}
            async with open_store(log_path) as store:  # nothing left to say
                await assert_intact(store, 1)
    assert modes == {"events.db": 0o600, "events.db-wal": 0o600, "events.db-shm": 0o600}
    (record,) = [r for r in caplog.records if r.name == "eventstore"]
    assert record.levelname == "WARNING"
    message = record.getMessage()
    assert str(log_path) in message
    assert "events.db (was 0644), events.db-wal (was 0640), events.db-shm (was 0604)" in message
    assert "private (mode 0600)" in message


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"], ids=["log", "wal", "shm"])
@pytest.mark.asyncio
async def test_a_log_others_can_write_is_refused(
    log_path: Path, suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_store(log_path) as store:
        await store.append("s", [Ping(n=1)])
    loose = log_path.with_name(log_path.name + suffix)
    with open_elsewhere(log_path):
        loose.chmod(0o664)
        with pytest.raises(BackendError) as caught:
            await open_store(log_path).open()
        message = str(caught.value)
        assert f"{loose} (mode 0664) can be written by other users" in message
        assert f"chmod 600 {loose}" in message
        # refused, not quietly repaired: someone may have changed it already
        assert stat.S_IMODE(loose.stat().st_mode) == 0o664
        loose.chmod(0o600)
        async with open_store(log_path) as store:
            await assert_intact(store, 1)
    assert not [r for r in caplog.records if r.name == "eventstore"]


@pytest.mark.asyncio
async def test_file_is_wal_with_the_documented_schema(log_path: Path) -> None:
    async with open_store(log_path) as store:
        await store.append("s", [Ping(n=1), Note(text="two")])
        last = (await read_all(store))[-1]
    with raw_db(log_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        table = db.execute("PRAGMA table_info(events)").fetchall()
        assert tuple(column[1] for column in table) == COLUMNS
        declared = {name: (type_, notnull, pk) for _, name, type_, notnull, _, pk in table}
        assert declared["position"] == ("INTEGER", 0, 1)  # INTEGER PRIMARY KEY: the rowid
        assert all(declared[name][1] == 1 for name in COLUMNS[1:])
        unique = [
            [column[2] for column in db.execute(f"PRAGMA index_info({index[1]!r})")]
            for index in db.execute("PRAGMA index_list(events)")
            if index[2]  # unique
        ]
        assert unique == [["stream", "stream_version"]]
        assert db.execute("SELECT position, hash FROM log_head").fetchall() == [(2, last.hash)]
        # the uniqueness is real: a second version 1 of stream "s" is refused
        db.execute("DROP TRIGGER events_append_only_update")
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            db.execute("UPDATE events SET stream_version = 1 WHERE position = 2")


@pytest.mark.asyncio
async def test_commits_are_synchronous_full_by_default(log_path: Path) -> None:
    # FULL: a returned append is in the fsynced WAL, so it survives power loss too.
    async with open_store(log_path) as store:
        writer = store._writer
        assert writer is not None
        async with writer.execute("PRAGMA synchronous") as cursor:
            assert await cursor.fetchone() == (2,)


@pytest.mark.asyncio
async def test_rows_hold_iso_utc_text_and_event_json(log_path: Path) -> None:
    moment = datetime(2026, 11, 26, 8, 54, 48, 123456, tzinfo=timezone(timedelta(hours=2)))
    async with open_store(log_path, clock=StepClock(moment)) as store:
        await store.append("s", [Ping(n=7), Note(text="ü")])
    with raw_db(log_path) as db:
        rows = db.execute(
            "SELECT recorded_at, typeof(recorded_at), type, data, typeof(data) FROM events"
        ).fetchall()
    assert rows == [
        ("2026-11-26T06:54:48.123456Z", "text", "Ping", '{"n":7}', "text"),
        ("2026-11-26T06:54:48.123456Z", "text", "Note", '{"text":"ü"}', "text"),
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", rows[0][0])
    assert datetime.fromisoformat(rows[0][0]) == moment.astimezone(UTC)
    assert msgspec.json.decode(rows[1][3], type=Note) == Note(text="ü")


@pytest.mark.asyncio
async def test_log_refuses_update_and_delete(log_path: Path) -> None:
    async with open_store(log_path) as store:
        await store.append("s", [Ping(n=1), Ping(n=2)])
        with raw_db(log_path) as db:
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute("UPDATE events SET data = '{\"n\":9}' WHERE position = 1")
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute("DELETE FROM events WHERE position = 2")
        assert [e.event for e in await read_all(store)] == [Ping(n=1), Ping(n=2)]
        await assert_intact(store, 2)


@pytest.mark.asyncio
async def test_database_failure_is_a_backend_error_and_writes_nothing(log_path: Path) -> None:
    async with open_store(log_path) as store:
        await store.append("s", [Ping(n=1)])
        writer = store._writer
        assert writer is not None
        # A full disk, simulated by capping the file's size for the writing connection.
        await writer.execute("PRAGMA max_page_count = 8")
        with pytest.raises(BackendError, match="disk is full") as caught:
            await store.append("s", [Note(text="x" * 100_000)])
        assert isinstance(caught.value.__cause__, sqlite3.Error)
        await assert_intact(store, 1)
        await writer.execute("PRAGMA max_page_count = 1073741823")
        assert (await store.append("s", [Ping(n=2)], expected_version=1)).last_position == 2
        await assert_intact(store, 2)


@pytest.mark.asyncio
async def test_a_newer_schema_is_refused(log_path: Path) -> None:
    async with open_store(log_path) as store:
        await store.append("s", [Ping(n=1)])
    with raw_db(log_path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(BackendError, match=f"schema version {SCHEMA_VERSION + 1}"):
        await open_store(log_path).open()


@pytest.mark.asyncio
async def test_a_file_that_is_not_a_database_is_refused(log_path: Path) -> None:
    garbage = b"this is not an event log\n" * 200
    await asyncio.to_thread(log_path.write_bytes, garbage)
    with pytest.raises(BackendError, match=str(log_path)) as caught:
        await open_store(log_path).open()
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    assert await asyncio.to_thread(log_path.read_bytes) == garbage  # left untouched


# -- other processes ------------------------------------------------------


@pytest.mark.asyncio
async def test_appends_survive_sigkill_right_after_they_returned(log_path: Path) -> None:
    acknowledged: list[int] = []
    async with child("append-forever", str(log_path)) as process:
        while len(acknowledged) < 25:
            acknowledged.append(int(await read_line(process)))
            if len(acknowledged) == 25:
                process.send_signal(signal.SIGKILL)
        assert await process.wait() == -signal.SIGKILL
    assert acknowledged == list(range(1, 26))

    async with open_store(log_path) as store:
        report = await store.verify()
        assert report.ok, report.problem
        events = await read_all(store)
        # every acknowledged append is there; one in flight at the kill may be too
        assert len(events) >= 25
        assert [e.event for e in events[:25]] == [Ping(n=n) for n in range(25)]
        await assert_intact(store, len(events))
        # and the log takes new appends where it left off
        appended = await store.append("durable", [Ping(n=-1)], expected_version=len(events))
        assert appended.last_position == len(events) + 1


@pytest.mark.asyncio
async def test_two_processes_append_to_one_file(log_path: Path) -> None:
    count = 200
    async with open_store(log_path) as store:
        await store.append("setup", [Ping(n=0)])  # the file and schema exist before the race
    async with (
        child("hammer", str(log_path), "left", str(count)) as left,
        child("hammer", str(log_path), "right", str(count)) as right,
    ):
        for process in (left, right):
            assert await read_line(process) == "ready"
        for process in (left, right):
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            await process.stdin.drain()
        summaries = [json.loads(await read_line(process, within=90)) for process in (left, right)]
        assert [await process.wait() for process in (left, right)] == [0, 0]

    races = count // 10  # see SHARED_EVERY in _child.py
    assert sum(s["wins"] for s in summaries) == races
    assert sum(s["conflicts"] for s in summaries) == races
    written = sorted(p for s in summaries for p in s["positions"])
    assert written == list(range(2, 2 + 2 * count + races))
    async with open_store(log_path) as store:
        await assert_intact(store, 1 + 2 * count + races)
        for tag in ("left", "right"):
            events = await read_all(store, stream=tag)
            assert [(e.stream_version, e.event) for e in events] == [
                (n + 1, Ping(n=n)) for n in range(count)
            ]
            assert {e.instance_id for e in events} == {tag}
        shared = await read_all(store, stream="shared")
        assert [e.stream_version for e in shared] == list(range(1, races + 1))


@pytest.mark.asyncio
async def test_versions_a_store_remembers_do_not_outlive_another_writers_commit(
    log_path: Path,
) -> None:
    # A store skips reading the versions of streams it committed last while the
    # log's head is still the one its commit left; another store's commit moves
    # the head, and the versions are read again (so its expectation is checked
    # against what the other writer wrote, not what this one remembers).
    async with open_store(log_path) as one, open_store(log_path) as other:
        await one.append("s", [Ping(n=1)], expected_version=0)
        await one.append("s", [Ping(n=2)], expected_version=1)  # remembered: version 2
        await other.append("s", [Ping(n=3)], expected_version=2)
        with pytest.raises(WrongExpectedVersion) as refused:
            await one.append("s", [Ping(n=4)], expected_version=2)
        assert refused.value.actual == 3
        await other.append("t", [Ping(n=5)])  # another stream moves the head too
        await one.append("s", [Ping(n=6)], expected_version=3)
        with pytest.raises(WrongExpectedVersion):
            await other.append("s", [Ping(n=7)], expected_version=3)
        assert [e.stream_version for e in await read_all(one, stream="s")] == [1, 2, 3, 4]
        await assert_intact(one, 5)


@pytest.mark.asyncio
async def test_follow_sees_appends_of_another_process(log_path: Path) -> None:
    poll_interval = 0.1
    loop = asyncio.get_running_loop()
    async with open_store(log_path) as store:
        await store.append("mine", [Ping(n=0)])
        async with (
            child("append-on-request", str(log_path), "theirs") as process,
            following(store, after=1, poll_interval=poll_interval) as received,
        ):
            assert process.stdin is not None
            assert await read_line(process) == "ready"
            for n in range(3):
                await asyncio.sleep(poll_interval * 1.5)  # the follower is idle, polling
                process.stdin.write(b"append\n")
                position = int(await read_line(process))  # committed by now
                committed_at = loop.time()
                (event,) = await next_events(received, 1, within=5)
                assert (event.position, event.stream, event.instance_id) == (
                    position,
                    "theirs",
                    "child",
                )
                assert event.event == Ping(n=n)
                # within the poll interval, with room for a slow machine
                assert loop.time() - committed_at < 1.0
            assert [event.position for event in await read_all(store)] == [1, 2, 3, 4]


@pytest.mark.asyncio
async def test_a_log_in_a_missing_directory_is_a_backend_error(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "missing" / "ovi.db", EventRegistry([Ping]))
    with pytest.raises(BackendError, match="missing"):
        await store.open()


@pytest.mark.asyncio
async def test_types_must_be_a_collection_not_a_string(tmp_path: Path) -> None:
    async with SQLiteEventStore(tmp_path / "ovi.db", EventRegistry([Ping])) as store:
        with pytest.raises(TypeError, match="collection of type names"):
            async for _ in store.read(types="Ping"):
                pass


@pytest.mark.asyncio
async def test_a_directory_named_as_the_log_is_refused_and_left_as_it_was(
    tmp_path: Path
) -> None:
    directory = tmp_path / "logs"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    with pytest.raises(BackendError, match=r"logs: not a file"):
        await SQLiteEventStore(directory, sample_registry()).open()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
