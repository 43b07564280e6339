"""What the fixes of the evidence review hold besides the review's own tests:
an index the store did not create is refused at every open, the kind of a log
is checked by the append itself, and a keyed log's anchors need its key."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from eventstore import (
    Anchor,
    ChainKeyError,
    LogCorruptedError,
    SQLiteEventStore,
    append_anchor,
    read_anchors,
)
from tests.eventstore.sample_events import Ping, sample_registry

KEY = b"k" * 32


@pytest.mark.asyncio
@pytest.mark.parametrize("read_only", [True, False])
async def test_a_log_with_an_index_the_store_did_not_create_is_refused_naming_it(
    tmp_path: Path, read_only: bool
) -> None:
    path = tmp_path / "ovi.db"
    async with SQLiteEventStore(path, sample_registry()) as store:
        await store.append("s", [Ping(n=1)])
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("CREATE INDEX by_type ON events (type)")
    with pytest.raises(LogCorruptedError, match=r"index the store did not create.*by_type"):
        await SQLiteEventStore(path, sample_registry(), read_only=read_only).open()


@pytest.mark.asyncio
async def test_an_unkeyed_writer_is_refused_on_a_log_made_keyed_after_it_opened(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ovi.db"
    unkeyed = await SQLiteEventStore(path, sample_registry()).open()
    try:
        async with SQLiteEventStore(path, sample_registry(), chain_key=KEY):
            pass  # the empty log is keyed now
        with pytest.raises(ChainKeyError, match="header changed"):
            await unkeyed.append("s", [Ping(n=1)])
    finally:
        await unkeyed.aclose()
    async with SQLiteEventStore(path, sample_registry(), read_only=True) as audit:
        assert await audit.last_position() == 0  # nothing was written


@pytest.mark.asyncio
async def test_anchors_of_a_keyed_log_are_checked_only_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "ovi.db"
    async with SQLiteEventStore(path, sample_registry(), chain_key=KEY) as store:
        await store.append("s", [Ping(n=1), Ping(n=2)])
        head = await store.head()
    anchors = [Anchor(position=0, hash="0" * 64), Anchor(position=head.position, hash=head.hash)]
    async with SQLiteEventStore(path, sample_registry(), read_only=True) as audit:
        keyless = await audit.verify(anchors=anchors)
    assert not keyless.ok and keyless.anchors_checked == 0 and keyless.anchors_unchecked
    assert keyless.anchor_problem is not None and keyless.anchor_problem.position == 0
    assert "no chain key was given" in keyless.anchor_problem.reason
    async with SQLiteEventStore(path, sample_registry(), chain_key=KEY,
                                read_only=True) as audit:
        keyed = await audit.verify(anchors=anchors[1:])
    assert keyed.ok and keyed.anchors_checked == 1


def test_an_anchor_glued_onto_a_torn_line_still_counts(tmp_path: Path) -> None:
    anchors = tmp_path / "ovi.anchors"
    whole = Anchor(position=7, hash="d" * 64)
    anchors.write_bytes(b'{"position": 5, "ha' + b'{"position":7,"hash":"' + b"d" * 64
                        + b'"}\n')  # a writer that could not read the file's end
    torn: list[str] = []
    assert read_anchors(anchors, on_torn=torn.append) == [whole]
    assert torn and f"{anchors}:1" in torn[0]
    append_anchor(anchors, [whole])
    assert read_anchors(anchors) == [whole, whole]
