"""Light event views, and projections folded together in one read of the log."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest

from eventstore import RecordedEvent, SQLiteEventStore
from projections import Projection, ProjectionApplyError, ProjectionRunner
from tests.projections.support import (
    BalancesProjection,
    Deposited,
    LedgerProjection,
    Opened,
    Withdrawn,
    checkpoints,
    open_store,
    snapshot,
)


class Amount(msgspec.Struct):
    amount: int


class Owner(msgspec.Struct):
    owner: int  # wrong on purpose: owners are strings


class Seen(Projection):
    """Records what ``apply`` was given for each event: its Python type and value."""

    name: ClassVar[str] = "seen"
    schema_version: ClassVar[int] = 1
    tables: ClassVar[tuple[str, ...]] = ("seen",)
    event_views: ClassVar[Mapping[str, type[Any]]] = {"Deposited": Amount, "Opened": bytes}
    batches: list[int]

    def __init__(self) -> None:
        self.batches = []

    def create(self, db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE seen (position INTEGER PRIMARY KEY, kind TEXT, value TEXT)")

    def apply(self, db: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        self.batches.append(len(events))
        db.executemany("INSERT INTO seen VALUES (?, ?, ?)", [
            (e.position, type(e.event).__name__,
             e.event.decode() if isinstance(e.event, bytes) else repr(e.event))
            for e in events])


class BadView(Seen):
    name: ClassVar[str] = "bad_view"
    tables: ClassVar[tuple[str, ...]] = ("bad_view",)
    event_views: ClassVar[Mapping[str, type[Any]]] = {"Opened": Owner}

    def create(self, db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE bad_view (position INTEGER PRIMARY KEY, kind TEXT, value TEXT)")

    def apply(self, db: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        db.executemany("INSERT INTO bad_view VALUES (?, ?, ?)",
                       [(e.position, type(e.event).__name__, "") for e in events])


async def fill(store: SQLiteEventStore) -> None:
    await store.append("account-1", [Opened(owner="ada"), Deposited(amount=5),
                                     Withdrawn(amount=2)])


@pytest.mark.asyncio
async def test_each_projection_gets_events_in_the_shape_it_asked_for(tmp_path: Path) -> None:
    async with open_store(tmp_path / "log.db") as store:
        await fill(store)
        async with ProjectionRunner(store, tmp_path / "log.db", [Seen(), LedgerProjection()]) \
                as runner:
            await runner.catch_up()
            rows = (await snapshot(runner))["seen"]
    assert rows == [
        (1, "bytes", '{"owner":"ada"}'),  # the JSON as recorded
        (2, "Amount", "Amount(amount=5)"),  # the view
        (3, "Withdrawn", "Withdrawn(amount=2)"),  # no view: the full event
    ]


@pytest.mark.asyncio
async def test_an_event_that_does_not_fit_a_view_stops_only_that_projection(
        tmp_path: Path) -> None:
    async with open_store(tmp_path / "log.db") as store:
        await fill(store)
        async with ProjectionRunner(store, tmp_path / "p.db",
                                    [BadView(), BalancesProjection()]) as runner:
            with pytest.raises(ProjectionApplyError) as caught:
                await runner.catch_up()
            assert caught.value.name == "bad_view"
            assert (caught.value.first_position, caught.value.last_position) == (1, 1)
            assert "Opened event does not match the projection's view" in str(caught.value)
            assert "Expected `int`, got `str` - at `$.owner`" in str(caught.value)
            # The other projection of the same read went on to the head.
            assert await checkpoints(runner) == {"bad_view": 0, "balances": 3}
            assert (await snapshot(runner))["bad_view"] == []


@pytest.mark.asyncio
async def test_projections_at_one_position_fold_in_one_read_and_batch(tmp_path: Path) -> None:
    seen = Seen()
    async with open_store(tmp_path / "log.db") as store:
        for n in range(5):
            await store.append(f"account-{n}", [Opened(owner=f"o{n}"), Deposited(amount=n)])
        reads = 0
        read_encoded = store.read_encoded

        def counting(**kwargs: Any) -> Any:
            nonlocal reads
            reads += 1
            return read_encoded(**kwargs)

        store.read_encoded = counting  # type: ignore[method-assign]
        async with ProjectionRunner(store, tmp_path / "p.db",
                                    [seen, BalancesProjection(), LedgerProjection()],
                                    batch_size=4) as runner:
            await runner.catch_up("seen")  # seen alone: now ahead of the others
            assert reads == 1
            await store.append("account-9", [Deposited(amount=9)])
            await runner.catch_up()
            # The two that lag fold together up to seen's position, then all three on.
            assert reads == 3
            assert await checkpoints(runner) == {"seen": 11, "balances": 11, "ledger": 11}
            # Batches end at batch_size events of the group's types.
            assert seen.batches == [4, 4, 2, 1]
