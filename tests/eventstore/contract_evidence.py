"""The log as evidence, as part of the store contract every backend runs:
heads and anchors, the keyed chain and its header, read-only opening.

Mixed into :class:`tests.eventstore.contract.EventStoreContract`; the
fixtures (``store_factory``, ``tamperer``) are the backend's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from eventstore import (
    GENESIS_HASH,
    Anchor,
    BackendError,
    ChainKeyError,
    EventRegistry,
    EventStore,
    ImportRejectedError,
    RawRow,
    SQLiteEventStore,
    row_hash,
)
from tests.eventstore.sample_events import Note, Ping, Secret

if TYPE_CHECKING:
    from tests.eventstore.contract import LogTamperer, StoreFactory

__all__ = ["EvidenceContract"]

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
FORGED = '{"text":"forged"}'


async def _rows(store: EventStore) -> list[RawRow]:
    return [row async for page in store.read_raw() for row in page]


class EvidenceContract:
    """Heads, anchors, keyed chains, read-only audits: on every backend."""

    # -- heads and anchors ---------------------------------------------

    @pytest.mark.asyncio
    async def test_the_head_is_the_newest_rows_position_hash_and_time(
        self, store_factory: StoreFactory
    ) -> None:
        async with store_factory() as store:
            empty = await store.head()
            assert (empty.position, empty.hash, empty.recorded_at) == (0, GENESIS_HASH, None)
            await store.append("a", [Ping(n=1), Note(text="2")])
            head = await store.head()
            (*_, last) = await _rows(store)
            assert (head.position, head.hash, head.recorded_at) == (2, last[8], last[4])

    @pytest.mark.asyncio
    async def test_anchors_catch_a_history_rewritten_with_every_hash_recomputed(
        self, store_factory: StoreFactory, tamperer: LogTamperer
    ) -> None:
        async with store_factory() as store:
            await store.append("a", [Ping(n=1), Ping(n=2), Ping(n=3)])
            early = await store.head()
            await store.append("b", [Note(text="4"), Note(text="5"), Note(text="6")])
            late = await store.head()
            await store.append("c", [Ping(n=7)])
        anchors = [Anchor(position=early.position, hash=early.hash),
                   Anchor(position=late.position, hash=late.hash)]
        await tamperer.forge(5, FORGED)
        async with store_factory() as store:
            plain = await store.verify()
            assert plain.ok  # the chain alone cannot tell: every hash was recomputed
            report = await store.verify(anchors=anchors)
        assert not report.ok and report.problem is None
        assert report.anchor_problem is not None
        assert report.anchor_problem.position == 6
        assert "at or before position 6" in report.anchor_problem.reason
        assert "after position 3" in report.anchor_problem.reason
        assert report.anchors_checked == 1

    @pytest.mark.asyncio
    async def test_anchors_that_still_hold_verify_and_one_past_the_end_does_not(
        self, store_factory: StoreFactory
    ) -> None:
        async with store_factory() as store:
            await store.append("a", [Ping(n=1), Ping(n=2)])
            head = await store.head()
            good = [Anchor(position=0, hash=GENESIS_HASH), Anchor(position=2, hash=head.hash)]
            report = await store.verify(anchors=good)
            assert report.ok and report.anchors_checked == 2
            assert report.head_hash == head.hash
            beyond = await store.verify(anchors=[Anchor(position=9, hash="a" * 64)])
        assert beyond.anchor_problem is not None
        assert beyond.anchor_problem.position == 3
        assert "ends at position 2" in beyond.anchor_problem.reason

    # -- the keyed chain -----------------------------------------------

    @pytest.mark.asyncio
    async def test_a_keyed_log_hashes_rows_with_hmac_and_verifies_with_its_key(
        self, store_factory: StoreFactory
    ) -> None:
        async with store_factory(chain_key=KEY) as store:
            await store.append("a", [Ping(n=1), Secret(code="x")])
            header = await store.read_header()
            assert header.keyed and header.key_id and KEY.hex() not in header.encode()
            rows = await _rows(store)
            assert rows[0][7] != GENESIS_HASH  # the header is what the first row chains on
            assert rows[0][8] != row_hash(rows[0][7], *rows[0][:7])
            report = await store.verify()
            assert report.ok and report.keyed and report.hashes_checked
        async with store_factory(chain_key=KEY) as store:  # reopened: goes on keyed
            await store.append("a", [Ping(n=3)])
            assert (await store.verify()).ok

    @pytest.mark.asyncio
    async def test_a_keyed_log_refuses_no_key_for_writing_and_a_wrong_key_always(
        self, store_factory: StoreFactory
    ) -> None:
        async with store_factory(chain_key=KEY) as store:
            await store.append("a", [Ping(n=1)])
        with pytest.raises(ChainKeyError, match=r"keyed .* no chain key was given"):
            await store_factory().open()
        with pytest.raises(ChainKeyError, match="wrong chain key"):
            await store_factory(chain_key=OTHER_KEY).open()
        with pytest.raises(ChainKeyError, match="wrong chain key"):
            await store_factory(chain_key=OTHER_KEY, read_only=True).open()
        async with store_factory(read_only=True) as audit:
            report = await audit.verify()
        assert report.ok and report.keyed and not report.hashes_checked

    @pytest.mark.asyncio
    async def test_an_unkeyed_log_refuses_a_key(self, store_factory: StoreFactory) -> None:
        async with store_factory() as store:
            await store.append("a", [Ping(n=1)])
        with pytest.raises(ChainKeyError, match="not keyed"):
            await store_factory(chain_key=KEY).open()

    @pytest.mark.asyncio
    async def test_an_unkeyed_forger_cannot_make_a_keyed_log_verify(
        self, store_factory: StoreFactory, tamperer: LogTamperer
    ) -> None:
        async with store_factory(chain_key=KEY) as store:
            await store.append("a", [Ping(n=1), Note(text="2"), Ping(n=3)])
            header = (await store.read_header()).encode()
        # recompute the chain from the edit on, keeping the keyed header
        await tamperer.forge(2, FORGED)
        async with store_factory(chain_key=KEY, read_only=True) as audit:
            report = await audit.verify()
        assert report.problem is not None and report.problem.position == 2
        assert "HMAC" in report.problem.reason
        # or claim the log was never keyed: a key-holding auditor refuses it
        await tamperer.forge(2, FORGED, header='{"format":1,"chain":"sha256"}')
        with pytest.raises(ChainKeyError, match="not keyed"):
            await store_factory(chain_key=KEY, read_only=True).open()
        # and a keyed header kept over plain hashes fails at the first row
        await tamperer.forge(2, FORGED, header=header)
        async with store_factory(chain_key=KEY, read_only=True) as audit:
            report = await audit.verify()
        assert report.problem is not None and report.problem.position == 1

    @pytest.mark.asyncio
    async def test_a_copy_carries_the_header_and_rows_verify_against_the_targets(
        self, store_factory: StoreFactory, tmp_path: Path
    ) -> None:
        registry = EventRegistry([Ping, Note, Secret])
        async with SQLiteEventStore(tmp_path / "keyed.db", registry, chain_key=KEY) as source:
            await source.append("a", [Ping(n=1), Note(text="2")])
            header = await source.read_header()
            rows = await _rows(source)
        async with store_factory(read_only=False) as unkeyed:
            with pytest.raises(ImportRejectedError):
                await unkeyed.import_rows(rows)
        async with store_factory(chain_key=KEY) as target:
            await target.write_header(header)
            await target.import_rows(rows)
            assert await _rows(target) == rows
            assert await target.read_header() == header
            assert (await target.verify()).ok

    @pytest.mark.asyncio
    async def test_an_empty_log_takes_a_copied_header_and_one_with_events_refuses(
        self, store_factory: StoreFactory, tmp_path: Path
    ) -> None:
        async with SQLiteEventStore(tmp_path / "keyed.db", EventRegistry([Ping]),
                                    chain_key=KEY) as source:
            header = await source.read_header()
        async with store_factory() as target:
            with pytest.raises(ChainKeyError):
                await target.write_header(header)  # keyed needs the key here too
            await target.append("a", [Ping(n=1)])
        async with store_factory() as target:
            assert not (await target.read_header()).keyed

    # -- read-only -----------------------------------------------------

    @pytest.mark.asyncio
    async def test_a_read_only_store_reads_verifies_and_refuses_appends(
        self, store_factory: StoreFactory
    ) -> None:
        async with store_factory() as store:
            await store.append("a", [Ping(n=1), Ping(n=2)])
        async with store_factory(read_only=True) as audit:
            assert [e.position async for e in audit.read()] == [1, 2]
            assert (await audit.verify()).ok
            assert (await audit.head()).position == 2
            with pytest.raises(BackendError, match="read-only"):
                await audit.append("a", [Ping(n=3)])
