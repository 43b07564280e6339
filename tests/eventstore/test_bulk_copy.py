"""A long copy into a SQLite log (a mirror catching up, ``replay copy``) is
written by a helper process (:mod:`eventstore._import_worker`): checked as
any import, in order, never leaving the file anything but a prefix of the
log it copies, and never leaving the helper behind."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path

import pytest

from eventstore import BackendError, ImportRejectedError, SQLiteEventStore, StreamBatch
from eventstore._chain import row_hash
from eventstore._copy import copy_new_rows
from eventstore._store_types import RawRow
from tests.eventstore.sample_events import Ping, sample_registry

pytestmark = pytest.mark.asyncio

KEY = b"k" * 32


async def filled(path: Path, count: int, *, key: bytes | None = None) -> SQLiteEventStore:
    store = SQLiteEventStore(path, sample_registry(), instance_id="source:1", chain_key=key)
    await store.open()
    store.page_size = 50  # pages smaller than the copy's batches, as a mirror's are
    await store.append_streams(StreamBatch(f"s-{i % 7}", (Ping(n=i),)) for i in range(count))
    return store


def watch_imports(store: SQLiteEventStore) -> list[bool]:
    """Whether each import of ``store`` went to a helper process."""
    seen: list[bool] = []
    original: Callable[[list[RawRow]], Awaitable[dict[str, int]]] = store._import_rows

    async def watched(rows: list[RawRow]) -> dict[str, int]:
        seen.append(store._import_worker is not None)
        return await original(rows)

    store._import_rows = watched  # type: ignore[method-assign]
    return seen


async def helper_ready(store: SQLiteEventStore) -> None:
    """Wait until ``store``'s import helper has said it opened the file."""
    async with asyncio.timeout(30):
        for _ in range(3_000):  # the copy starts it from its second batch
            worker = store._import_worker
            if worker is not None:
                await asyncio.shield(worker._ready)
                return
            await asyncio.sleep(0.01)


def helpers() -> list[int]:
    """This process's import helpers still running."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next(int(line.split()[1]) for line in status.splitlines()
                    if line.startswith("PPid:"))
        if ppid == os.getpid() and b"eventstore._import_helper" in cmdline:
            found.append(int(entry.name))
    return found


async def raw(store: SQLiteEventStore) -> list[tuple[object, ...]]:
    return [tuple(row) async for page in store.read_raw() for row in page]


async def test_a_copy_past_one_batch_is_written_by_a_helper_that_ends_with_it(
    tmp_path: Path
) -> None:
    source = await filled(tmp_path / "source.db", 350)
    try:
        async with SQLiteEventStore(tmp_path / "copy.db", sample_registry()) as target:
            seen = watch_imports(target)
            assert await copy_new_rows(source, target, batch=100) == 350
            # The first batch is written as any pull is; the rest by the helper.
            assert seen == [False, True, True, True]
            assert helpers() == []
            assert await raw(target) == await raw(source)
            assert (await target.verify()).ok
            # A short pull afterwards starts no helper.
            await source.append("s-0", [Ping(n=350)], expected_version=50)
            seen.clear()
            assert await copy_new_rows(source, target, batch=100) == 1
            assert seen == [False]
    finally:
        await source.aclose()


async def test_a_keyed_log_is_copied_by_a_helper_that_never_gets_the_key(
    tmp_path: Path
) -> None:
    source = await filled(tmp_path / "source.db", 300, key=KEY)
    try:
        async with SQLiteEventStore(tmp_path / "copy.db", sample_registry(),
                                    chain_key=KEY) as target:
            assert await copy_new_rows(source, target, batch=100) == 300
            assert (await target.verify()).ok
            assert await raw(target) == await raw(source)
    finally:
        await source.aclose()


async def test_an_edited_row_past_the_first_batch_is_refused_and_the_batches_before_kept(
    tmp_path: Path
) -> None:
    source = await filled(tmp_path / "source.db", 350)
    await source.aclose()
    with closing(sqlite3.connect(tmp_path / "source.db")) as db:
        db.execute("DROP TRIGGER events_append_only_update")
        db.execute("""UPDATE events SET data = '{"n":9999}' WHERE position = 250""")
        db.commit()
    async with SQLiteEventStore(tmp_path / "source.db", sample_registry()) as source, \
            SQLiteEventStore(tmp_path / "copy.db", sample_registry()) as target:
        source.page_size = 50
        with pytest.raises(ImportRejectedError, match="hash does not match") as caught:
            await copy_new_rows(source, target, batch=100)
        assert caught.value.position == 250
        # Batches are whole: 201-300 held the edited row, none of it is in.
        assert await target.last_position() == 200
        assert (await target.verify()).ok
        assert helpers() == []


async def test_a_forged_stream_version_is_refused_by_the_helper_under_the_lock(
    tmp_path: Path
) -> None:
    """The chain can be rebuilt over a forged version (an unkeyed log): only the
    versions already in the file can tell, and the helper reads those."""
    source = await filled(tmp_path / "source.db", 300)
    await source.aclose()
    with closing(sqlite3.connect(tmp_path / "source.db")) as db:
        rows = db.execute("SELECT * FROM events ORDER BY position").fetchall()
        db.execute("DROP TRIGGER events_append_only_update")
        prev = rows[148][8]
        for row in rows[149:]:
            version = row[2] + 1000 if row[0] == 150 else row[2]
            hash_ = row_hash(prev, row[0], row[1], version, row[3], row[4], row[5], row[6])
            db.execute("UPDATE events SET stream_version = ?, prev_hash = ?, hash = ?"
                       " WHERE position = ?", (version, prev, hash_, row[0]))
            prev = hash_
        db.execute("UPDATE log_head SET hash = ?", (prev,))
        db.commit()
    async with SQLiteEventStore(tmp_path / "source.db", sample_registry()) as source, \
            SQLiteEventStore(tmp_path / "copy.db", sample_registry()) as target:
        source.page_size = 50
        seen = watch_imports(target)
        with pytest.raises(ImportRejectedError, match="version") as caught:
            await copy_new_rows(source, target, batch=100)
        assert caught.value.position == 150
        assert seen[:2] == [False, True]
        assert await target.last_position() == 100
        assert (await target.verify()).ok


async def test_a_helper_killed_mid_copy_fails_the_copy_clearly_and_the_next_copy_finishes(
    tmp_path: Path
) -> None:
    source = await filled(tmp_path / "source.db", 2_000)
    try:
        async with SQLiteEventStore(tmp_path / "copy.db", sample_registry()) as target:
            original = target._import_rows
            calls = 0

            async def kill_at_the_third(rows: list[RawRow]) -> dict[str, int]:
                nonlocal calls
                calls += 1
                if calls == 3:
                    await helper_ready(target)  # else the copy rightly goes on in process
                    for pid in helpers():
                        os.kill(pid, signal.SIGKILL)
                return await original(rows)

            target._import_rows = kill_at_the_third  # type: ignore[method-assign]
            with pytest.raises(BackendError, match=r"helper process .* ended"):
                await copy_new_rows(source, target, batch=100)
            assert helpers() == []
            held = await target.last_position()
            assert 100 <= held < 2_000
            assert (await target.verify()).ok
            target._import_rows = original  # type: ignore[method-assign]
            assert await copy_new_rows(source, target, batch=100) == 2_000 - held
            assert await raw(target) == await raw(source)
    finally:
        await source.aclose()


async def test_a_cancelled_copy_leaves_a_prefix_and_no_helper(tmp_path: Path) -> None:
    source = await filled(tmp_path / "source.db", 3_000)
    try:
        async with SQLiteEventStore(tmp_path / "copy.db", sample_registry()) as target:
            far_enough = asyncio.Event()

            def progress(position: int) -> None:
                if position >= 500:
                    far_enough.set()

            task = asyncio.ensure_future(
                copy_new_rows(source, target, batch=100, progress=progress))
            await far_enough.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert helpers() == []
            assert (await target.verify()).ok
            held = await target.last_position()
            assert await copy_new_rows(source, target, batch=100) == 3_000 - held
            assert (await target.verify()).ok
    finally:
        await source.aclose()


async def test_two_long_copies_into_one_file_at_once_both_end_and_agree(
    tmp_path: Path
) -> None:
    """The service and an operator's command share a host's mirror file."""
    source = await filled(tmp_path / "source.db", 3_000)
    try:
        async with SQLiteEventStore(tmp_path / "copy.db", sample_registry()) as one, \
                SQLiteEventStore(tmp_path / "copy.db", sample_registry()) as other:
            copied = await asyncio.gather(copy_new_rows(source, one, batch=100),
                                          copy_new_rows(source, other, batch=100))
            assert sum(copied) == 3_000
            assert await raw(one) == await raw(source)
            assert (await one.verify()).ok
            assert helpers() == []
    finally:
        await source.aclose()

