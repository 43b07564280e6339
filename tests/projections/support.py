"""Small event types, projections and helpers shared by the projection tests."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from eventstore import Event, EventRegistry, EventStore, RecordedEvent, SQLiteEventStore
from projections import Projection, ProjectionRunner, StreamsProjection
from tests.postgres import mirrored_log


class Opened(Event, frozen=True):
    owner: str


class Deposited(Event, frozen=True):
    amount: int


class Withdrawn(Event, frozen=True):
    amount: int


EVENT_TYPES: tuple[type[Event], ...] = (Opened, Deposited, Withdrawn)


def registry() -> EventRegistry:
    return EventRegistry(EVENT_TYPES)


class Clock:
    """A controllable clock: every call is one millisecond after the last."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def open_store(path: Path) -> SQLiteEventStore:
    return SQLiteEventStore(path, registry(), instance_id="test", synchronous="NORMAL",
                            clock=Clock())


@asynccontextmanager
async def opened_log(path: Path, backend: str) -> AsyncIterator[EventStore]:
    """The test log at ``path`` on ``backend`` (the ``log_backend`` fixture's
    value): the SQLite file itself, or the mirror of a PostgreSQL log."""
    if backend == "sqlite":
        async with open_store(path) as store:
            yield store
    else:
        async with mirrored_log(path, registry(), instance_id="test", clock=Clock()) as store:
            yield store


class BalancesProjection(Projection):
    """Balance per account; folds only money movements (not ``Opened``)."""

    name: ClassVar[str] = "balances"
    schema_version: ClassVar[int] = 1
    tables: ClassVar[tuple[str, ...]] = ("balances",)
    event_types: ClassVar[frozenset[str] | None] = frozenset({"Deposited", "Withdrawn"})

    def create(self, db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE balances (account TEXT PRIMARY KEY, balance INTEGER NOT NULL,"
                   " movements INTEGER NOT NULL)")

    def apply(self, db: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        totals: dict[str, list[int]] = {}
        for recorded in events:
            event = recorded.event
            assert isinstance(event, Deposited | Withdrawn)
            row = totals.setdefault(recorded.stream, [0, 0])
            row[0] += event.amount if isinstance(event, Deposited) else -event.amount
            row[1] += 1
        db.executemany(
            "INSERT INTO balances VALUES (?, ?, ?) ON CONFLICT (account) DO UPDATE SET"
            " balance = balance + excluded.balance, movements = movements + excluded.movements",
            [(account, balance, count) for account, (balance, count) in totals.items()],
        )


class LedgerProjection(Projection):
    """One row per event, keyed by position: applying an event twice fails."""

    name: ClassVar[str] = "ledger"
    schema_version: ClassVar[int] = 1
    tables: ClassVar[tuple[str, ...]] = ("ledger",)

    def create(self, db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE ledger (position INTEGER PRIMARY KEY, stream TEXT NOT NULL,"
                   " type TEXT NOT NULL)")

    def apply(self, db: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        db.executemany("INSERT INTO ledger VALUES (?, ?, ?)",
                       [(e.position, e.stream, e.type) for e in events])


class NeverProjection(Projection):
    """Folds a type that never occurs: its checkpoint must still reach the head."""

    name: ClassVar[str] = "never"
    schema_version: ClassVar[int] = 1
    tables: ClassVar[tuple[str, ...]] = ("never",)
    event_types: ClassVar[frozenset[str] | None] = frozenset({"NoSuchEvent"})

    def create(self, db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE never (position INTEGER PRIMARY KEY)")

    def apply(self, db: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        db.executemany("INSERT INTO never VALUES (?)", [(e.position,) for e in events])


def all_projections() -> list[Projection]:
    return [StreamsProjection(), BalancesProjection(), LedgerProjection(), NeverProjection()]


def table_rows(db: sqlite3.Connection, tables: Sequence[str]) -> dict[str, list[tuple[Any, ...]]]:
    return {table: db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in tables}


async def snapshot(runner: ProjectionRunner) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table the runner's projections own."""
    tables = [table for projection in runner.projections for table in projection.tables]
    return await runner.query(lambda db: table_rows(db, tables))


async def checkpoints(runner: ProjectionRunner) -> dict[str, int]:
    return {p.name: (await runner.checkpoint(p.name)).position for p in runner.projections}
