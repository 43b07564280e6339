"""``replay copy``: a log moved SQLite → PostgreSQL → SQLite keeps every
position and hash, and a shared log is read through this host's mirror."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import anyio
import pytest

from eventstore import SQLiteEventStore, StreamBatch
from ovi.events import CycleStarted, registry
from ovi.model import CycleMode
from tests.eventstore.contract_evidence import KEY
from tests.postgres import PostgresSchema
from tests.replay.support import Story, replay

pytestmark = pytest.mark.asyncio


def rows(path: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT * FROM events ORDER BY position").fetchall()


async def run(*args: str) -> tuple[int, str, str]:
    done = await anyio.to_thread.run_sync(partial(replay, *args))
    return done.returncode, done.stdout, done.stderr


async def test_a_log_copied_to_postgresql_and_back_keeps_every_position_and_hash(
    story: Story, postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    dsn = postgres_schema.dsn
    code, out, err = await run("copy", "--from", str(story.path), "--to", dsn, "--json")
    assert code == 0, err
    there = json.loads(out)
    original = rows(story.path)
    assert there["events"] == len(original) and there["head_hash"] == original[-1][8]
    back = tmp_path / "back.db"
    code, out, err = await run("copy", "--from", dsn, "--to", str(back))
    assert code == 0, err
    assert f"copied {len(original):,} events" in out
    assert rows(back) == original  # positions, hashes, times, writers: all of it
    code, out, err = await run("verify", "--store", str(back))
    assert code == 0, out + err
    # The shared log itself verifies, read through a mirror made on the way.
    mirror = tmp_path / "mirror.db"
    code, out, err = await run("verify", "--store", dsn, "--mirror", str(mirror))
    assert code == 0, out + err
    assert rows(mirror) == original


async def test_copy_refuses_a_log_that_already_holds_events(
    story: Story, postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    dsn = postgres_schema.dsn
    assert (await run("copy", "--from", str(story.path), "--to", dsn))[0] == 0
    code, out, err = await run("copy", "--from", str(story.path), "--to", dsn)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "already holds" in err and "empty log" in err
    assert "Traceback" not in err


async def test_copy_from_a_missing_log_names_it(tmp_path: Path) -> None:
    code, _, err = await run("copy", "--from", str(tmp_path / "nope.db"),
                             "--to", str(tmp_path / "to.db"))
    assert code == 1 and "nope.db: no such event log" in err
    assert not (tmp_path / "to.db").exists()



async def test_a_keyed_log_stays_keyed_in_its_copies_and_in_a_mirror(
    postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    key_file = tmp_path / "chain.key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o600)  # a key others may read is refused
    keyed = tmp_path / "keyed.db"
    started = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    async with SQLiteEventStore(keyed, registry(), chain_key=KEY) as log:
        await log.append_streams(
            StreamBatch(f"cycle/c-{n}", (CycleStarted(cycle_id=f"c-{n}", mode=CycleMode.PLAN,
                                                      config_hash="h", started_at=started),))
            for n in range(3))
    dsn = postgres_schema.dsn
    code, _, err = await run("copy", "--from", str(keyed), "--to", dsn)
    assert code == 1 and "no chain key was given" in err  # a keyed log is copied with its key
    code, _, err = await run("copy", "--from", str(keyed), "--to", dsn,
                             "--chain-key-file", str(key_file))
    assert code == 0, err
    back = tmp_path / "back.db"
    code, _, err = await run("copy", "--from", dsn, "--to", str(back),
                             "--chain-key-file", str(key_file))
    assert code == 0, err
    assert rows(back) == rows(keyed)
    mirror = tmp_path / "mirror.db"
    for store in (("--store", str(back)), ("--store", dsn, "--mirror", str(mirror))):
        code, out, err = await run("verify", *store, "--chain-key-file", str(key_file), "--json")
        assert code == 0, out + err
        report = json.loads(out)
        assert report["ok"] and report["keyed"] and report["hashes_checked"], report
    for copy in (back, mirror):
        async with SQLiteEventStore(copy, registry(), read_only=True) as log:
            assert (await log.read_header()).keyed, copy
