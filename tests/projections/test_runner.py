"""ProjectionRunner: exactly-once folding, atomic batches, rebuilds, schema bumps."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pytest

from eventstore import EventRegistry, EventStore, RecordedEvent, SQLiteEventStore, StreamBatch
from projections import (
    CHECKPOINTS_TABLE,
    CheckpointError,
    Projection,
    ProjectionApplyError,
    ProjectionDatabaseError,
    ProjectionError,
    ProjectionRunner,
    RunnerClosedError,
    StreamsProjection,
    UnknownProjectionError,
)
from tests.projections.support import (
    BalancesProjection,
    Deposited,
    LedgerProjection,
    NeverProjection,
    Opened,
    Withdrawn,
    all_projections,
    checkpoints,
    open_store,
    opened_log,
    snapshot,
)


async def fill(store: EventStore, accounts: int = 3, rounds: int = 4) -> int:
    for n in range(accounts):
        await store.append(f"account-{n}", [Opened(owner=f"owner-{n}")])
    for r in range(rounds):
        await store.append_streams(
            StreamBatch(f"account-{n}", (Deposited(amount=10 * (n + 1)), Withdrawn(amount=r)))
            for n in range(accounts)
        )
    return await store.last_position()


@pytest.mark.asyncio
@pytest.mark.parametrize("layout", ["same-file", "separate-file"])
async def test_catch_up_applies_each_event_exactly_once(
    tmp_path: Path, layout: str, log_backend: str
) -> None:
    log = tmp_path / "log.db"
    db = log if layout == "same-file" else tmp_path / "projections.db"
    async with opened_log(log, log_backend) as store:
        head = await fill(store)
        async with ProjectionRunner(store, db, all_projections(), batch_size=5) as runner:
            assert await runner.catch_up() == head + 2 * 3 * 4 + head  # streams, balances, ledger
            first = await snapshot(runner)
            assert await runner.catch_up() == 0
            assert await snapshot(runner) == first
            assert await checkpoints(runner) == dict.fromkeys(
                ["streams", "balances", "ledger", "never"], head)
        assert len(first["ledger"]) == head
        assert first["never"] == []
        assert first["balances"] == [
            (f"account-{n}", 4 * 10 * (n + 1) - (0 + 1 + 2 + 3), 8) for n in range(3)
        ]
        assert (await store.verify()).ok


@pytest.mark.asyncio
async def test_catch_up_folds_only_what_was_appended_since(
    tmp_path: Path, log_backend: str
) -> None:
    async with opened_log(tmp_path / "log.db", log_backend) as store:
        runner = ProjectionRunner(store, tmp_path / "p.db", [LedgerProjection(), NeverProjection()])
        async with runner:
            assert await runner.catch_up() == 0
            await store.append("a", [Opened(owner="x"), Deposited(amount=1)])
            assert await runner.catch_up() == 2
            await store.append("b", [Withdrawn(amount=1)])
            assert await runner.catch_up() == 1
            assert (await runner.checkpoint("never")).position == 3
            rows = await snapshot(runner)
    assert rows["ledger"] == [(1, "a", "Opened"), (2, "a", "Deposited"), (3, "b", "Withdrawn")]


@pytest.mark.asyncio
async def test_catch_up_until_stops_there_and_goes_on_to_what_one_fold_gives(
    tmp_path: Path, log_backend: str
) -> None:
    # replay state --at N folds a temporary copy only up to N: the rows must be
    # those of the events up to N, and folding on must give the full fold's.
    async with opened_log(tmp_path / "log.db", log_backend) as store:
        head = await fill(store)
        async with ProjectionRunner(store, tmp_path / "all.db", all_projections(),
                                    batch_size=5) as whole:
            await whole.catch_up()
            full = await snapshot(whole)
        async with ProjectionRunner(store, tmp_path / "part.db", all_projections(),
                                    batch_size=5) as part:
            await part.catch_up(until=7)
            assert await checkpoints(part) == dict.fromkeys(
                ["streams", "balances", "ledger", "never"], 7)
            assert [row[0] for row in (await snapshot(part))["ledger"]] == list(range(1, 8))
            assert await part.catch_up(until=3) == 0  # already past it: left where it is
            await part.catch_up(until=head + 100)  # beyond the head: stops at the head
            assert await snapshot(part) == full
            with pytest.raises(ValueError, match="until"):
                await part.catch_up(until=-1)


class Exploding(Projection):
    """Writes a row per event, and raises on any deposit of a negative amount."""

    name: ClassVar[str] = "exploding"
    schema_version: ClassVar[int] = 1
    tables: ClassVar[tuple[str, ...]] = ("exploding",)
    armed = True

    def create(self, db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE exploding (position INTEGER PRIMARY KEY)")

    def apply(self, db: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        for recorded in events:
            db.execute("INSERT INTO exploding VALUES (?)", (recorded.position,))
            event = recorded.event
            if self.armed and isinstance(event, Deposited) and event.amount < 0:
                raise ValueError(f"negative deposit at {recorded.position}")


@pytest.mark.asyncio
async def test_failure_in_apply_rolls_back_the_whole_batch(tmp_path: Path) -> None:
    exploding = Exploding()
    async with open_store(tmp_path / "log.db") as store:
        await store.append("a", [Deposited(amount=n) for n in range(1, 8)])
        await store.append("a", [Deposited(amount=-1), Deposited(amount=9), Deposited(amount=10)])
        runner = ProjectionRunner(store, tmp_path / "p.db", [LedgerProjection(), exploding],
                                  batch_size=3)
        async with runner:
            with pytest.raises(ProjectionError) as caught:
                await runner.catch_up()
            error = caught.value
            assert isinstance(error, ProjectionApplyError)
            assert isinstance(error.__cause__, ValueError)
            assert (error.name, error.first_position, error.last_position) == ("exploding", 7, 9)
            assert "negative deposit at 8" in str(error)
            # Batches 1-3 and 4-6 committed; 7-9 left no row and no checkpoint move.
            assert (await snapshot(runner))["exploding"] == [(n,) for n in range(1, 7)]
            assert await checkpoints(runner) == {"ledger": 10, "exploding": 6}
            # Still broken: same failure, nothing half-applied.
            with pytest.raises(ProjectionApplyError):
                await runner.catch_up()
            assert (await runner.checkpoint("exploding")).position == 6
            exploding.armed = False
            assert await runner.catch_up() == 4
            assert (await snapshot(runner))["exploding"] == [(n,) for n in range(1, 11)]
            assert await checkpoints(runner) == {"ledger": 10, "exploding": 10}


@pytest.mark.asyncio
async def test_rebuild_gives_the_rows_of_incremental_application(
    tmp_path: Path, log_backend: str
) -> None:
    async with opened_log(tmp_path / "log.db", log_backend) as store:
        async with ProjectionRunner(store, tmp_path / "log.db", all_projections(),
                                    batch_size=4) as runner:
            for r in range(5):
                await fill(store, accounts=2 + r, rounds=r)
                await runner.catch_up()
            incremental = await snapshot(runner)
            head = await store.last_position()
            movements = len([row for row in incremental["ledger"] if row[2] != "Opened"])
            # streams and ledger fold every event, balances the movements, never none.
            assert await runner.rebuild() == 2 * head + movements
            assert await snapshot(runner) == incremental
            assert await runner.rebuild("balances") == movements
            assert await snapshot(runner) == incremental
            assert await checkpoints(runner) == dict.fromkeys(
                ["streams", "balances", "ledger", "never"], head)


class AccountsV1(Projection):
    name: ClassVar[str] = "accounts"
    schema_version: ClassVar[int] = 1
    tables: ClassVar[tuple[str, ...]] = ("accounts",)
    event_types: ClassVar[frozenset[str] | None] = frozenset({"Opened"})

    def create(self, db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE accounts (account TEXT PRIMARY KEY)")

    def apply(self, db: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        db.executemany("INSERT INTO accounts VALUES (?)", [(e.stream,) for e in events])


class AccountsV2(Projection):
    """Same name, new schema: the owner is now a column."""

    name: ClassVar[str] = "accounts"
    schema_version: ClassVar[int] = 2
    tables: ClassVar[tuple[str, ...]] = ("accounts",)
    event_types: ClassVar[frozenset[str] | None] = frozenset({"Opened"})

    def create(self, db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE accounts (account TEXT PRIMARY KEY, owner TEXT NOT NULL)")

    def apply(self, db: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        db.executemany("INSERT INTO accounts VALUES (?, ?)",
                       [(e.stream, e.event.owner) for e in events])


@pytest.mark.asyncio
async def test_schema_version_bump_rebuilds_on_open(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    async with open_store(tmp_path / "log.db") as store:
        head = await fill(store, accounts=2, rounds=1)
        async with ProjectionRunner(store, db, [AccountsV1(), LedgerProjection()]) as runner:
            assert runner.reset_on_open == ("accounts", "ledger")
            await runner.catch_up()
            assert (await snapshot(runner))["accounts"] == [("account-0",), ("account-1",)]
        async with ProjectionRunner(store, db, [AccountsV1(), LedgerProjection()]) as runner:
            assert runner.reset_on_open == ()
            assert (await runner.checkpoint("accounts")).position == head
        async with ProjectionRunner(store, db, [AccountsV2(), LedgerProjection()]) as runner:
            assert runner.reset_on_open == ("accounts",)
            checkpoint = await runner.checkpoint("accounts")
            assert (checkpoint.position, checkpoint.schema_version) == (0, 2)
            assert (await snapshot(runner))["accounts"] == []
            assert (await runner.checkpoint("ledger")).position == head  # untouched
            assert await runner.catch_up() == 2
            rows = await snapshot(runner)
    assert rows["accounts"] == [("account-0", "owner-0"), ("account-1", "owner-1")]
    assert len(rows["ledger"]) == head


@pytest.mark.asyncio
async def test_projections_share_a_file_with_other_runners_projections(tmp_path: Path) -> None:
    async with open_store(tmp_path / "log.db") as store:
        head = await fill(store)
        async with ProjectionRunner(store, tmp_path / "log.db", [LedgerProjection()]) as one:
            await one.catch_up()
        async with ProjectionRunner(store, tmp_path / "log.db", [StreamsProjection()]) as two:
            assert two.reset_on_open == ("streams",)
            await two.catch_up()
        async with ProjectionRunner(store, tmp_path / "log.db", [LedgerProjection()]) as one:
            assert one.reset_on_open == ()
            assert len((await snapshot(one))["ledger"]) == head
            stored = await one.query(
                lambda db: db.execute(f"SELECT name, position FROM {CHECKPOINTS_TABLE}"
                                      " ORDER BY name").fetchall())
    assert stored == [("ledger", head), ("streams", head)]


@pytest.mark.asyncio
async def test_two_runners_on_one_file_never_apply_an_event_twice(tmp_path: Path) -> None:
    async with open_store(tmp_path / "log.db") as store:
        for n in range(20):
            await store.append(f"s-{n % 3}", [Deposited(amount=k) for k in range(7)])
        head = await store.last_position()
        one = ProjectionRunner(store, tmp_path / "p.db", [LedgerProjection(), StreamsProjection()],
                               batch_size=3)
        two = ProjectionRunner(store, tmp_path / "p.db", [LedgerProjection(), StreamsProjection()],
                               batch_size=5)
        async with one, two:
            # The ledger's primary key would reject a second application.
            counts = await asyncio.gather(one.catch_up(), two.catch_up())
            assert sum(counts) == 2 * head
            rows = await snapshot(one)
            assert await checkpoints(two) == {"ledger": head, "streams": head}
            await one.rebuild()
            assert await snapshot(two) == rows
    assert [r[0] for r in rows["ledger"]] == list(range(1, head + 1))
    assert [r[2] for r in rows["streams"]] == [49, 49, 42]


class Slow(LedgerProjection):
    def apply(self, db: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        time.sleep(0.002)
        super().apply(db, events)


@pytest.mark.asyncio
async def test_cancelled_catch_up_resumes_exactly_once(tmp_path: Path) -> None:
    async with open_store(tmp_path / "log.db") as store:
        for _ in range(10):
            await store.append("s", [Deposited(amount=k) for k in range(30)])
        async with ProjectionRunner(store, tmp_path / "p.db", [Slow()], batch_size=4) as runner:
            for delay in (0.0, 0.001, 0.005, 0.01):
                task = asyncio.create_task(runner.catch_up())
                await asyncio.sleep(delay)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            await runner.catch_up()
            rows = await snapshot(runner)
    assert [r[0] for r in rows["ledger"]] == list(range(1, 301))


@pytest.mark.asyncio
async def test_events_of_unknown_types_are_folded_by_generic_projections(tmp_path: Path) -> None:
    log = tmp_path / "log.db"
    async with open_store(log) as store:
        await store.append("a", [Opened(owner="x"), Deposited(amount=2)])
    # A reader that knows only Opened: Deposited comes back as UnknownEvent.
    async with SQLiteEventStore(log, EventRegistry([Opened])) as store:
        projections = [StreamsProjection(), LedgerProjection()]
        async with ProjectionRunner(store, log, projections) as runner:
            assert await runner.catch_up() == 4
            rows = await snapshot(runner)
    assert rows["ledger"] == [(1, "a", "Opened"), (2, "a", "Deposited")]
    assert rows["streams"][0][:6] == ("a", 2, 2, 1, 2, "Deposited")


@pytest.mark.asyncio
async def test_streams_table(tmp_path: Path) -> None:
    async with open_store(tmp_path / "log.db") as store:
        await store.append("a", [Opened(owner="x")])
        await store.append("b", [Opened(owner="y"), Deposited(amount=1)])
        await store.append("a", [Deposited(amount=5), Withdrawn(amount=2)])
        async with ProjectionRunner(store, tmp_path / "p.db", [StreamsProjection()],
                                    batch_size=2) as runner:
            await runner.catch_up()
            rows = (await snapshot(runner))["streams"]
    # The test clock starts at 2026-01-01T00:00:00 and ticks 1 ms per commit.
    assert rows == [
        ("a", 3, 3, 1, 5, "Withdrawn", "2026-01-01T00:00:00.003000Z"),
        ("b", 2, 2, 2, 3, "Deposited", "2026-01-01T00:00:00.002000Z"),
    ]


@pytest.mark.asyncio
async def test_a_checkpoint_beyond_the_head_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    async with open_store(tmp_path / "log.db") as store:
        await fill(store)
        async with ProjectionRunner(store, db, [LedgerProjection()]) as runner:
            await runner.catch_up()
    async with open_store(tmp_path / "other.db") as other:
        await other.append("x", [Opened(owner="z")])
        async with ProjectionRunner(other, db, [LedgerProjection()]) as runner:
            with pytest.raises(CheckpointError, match="built from another log"):
                await runner.catch_up()
            assert await runner.rebuild() == 1
            assert (await snapshot(runner))["ledger"] == [(1, "x", "Opened")]


class BadCreate(LedgerProjection):
    name: ClassVar[str] = "bad"
    tables: ClassVar[tuple[str, ...]] = ("bad",)

    def create(self, db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE bad (x")


class Committing(LedgerProjection):
    def apply(self, db: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        super().apply(db, events)
        db.execute("COMMIT")


@pytest.mark.asyncio
async def test_errors_are_projection_errors(tmp_path: Path) -> None:
    async with open_store(tmp_path / "log.db") as store:
        await store.append("a", [Opened(owner="x")])
        with pytest.raises(ProjectionApplyError, match="'bad' failed on creating tables") as bad:
            await ProjectionRunner(store, tmp_path / "p.db",
                                   [LedgerProjection(), BadCreate()]).open()
        assert isinstance(bad.value.__cause__, sqlite3.Error)
        async with ProjectionRunner(store, tmp_path / "p.db", [LedgerProjection()]) as runner:
            # The failed open reset nothing: the ledger is created only now.
            assert runner.reset_on_open == ("ledger",)
            with pytest.raises(UnknownProjectionError, match=r"'nope' \(known: ledger\)"):
                await runner.rebuild("nope")
            with pytest.raises(UnknownProjectionError):
                await runner.checkpoint("nope")
        with pytest.raises(RunnerClosedError):
            await runner.catch_up()
        async with ProjectionRunner(store, tmp_path / "c.db", [Committing()]) as runner:
            with pytest.raises(ProjectionApplyError, match="ended the runner's transaction"):
                await runner.catch_up()
        with pytest.raises(ProjectionDatabaseError, match="cannot open"):
            await ProjectionRunner(store, tmp_path, [LedgerProjection()]).open()


@pytest.mark.asyncio
async def test_sqlite_errors_become_projection_database_errors(tmp_path: Path) -> None:
    async with open_store(tmp_path / "log.db") as store:
        async with ProjectionRunner(store, tmp_path / "p.db", [LedgerProjection()]) as runner:
            with pytest.raises(ProjectionDatabaseError, match="no such table") as caught:
                await runner.query(lambda db: db.execute("SELECT * FROM missing").fetchall())
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)


@pytest.mark.parametrize(
    ("projections", "message"),
    [
        ([LedgerProjection(), LedgerProjection()], "two projections are named 'ledger'"),
        ([AccountsV1(), BalancesProjection(), AccountsV2()], "two projections are named"),
    ],
)
def test_projection_names_must_be_unique(
    tmp_path: Path, projections: list[Projection], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ProjectionRunner(open_store(tmp_path / "log.db"), tmp_path / "p.db", projections)


class OwnsEvents(LedgerProjection):
    name: ClassVar[str] = "owns-events"
    tables: ClassVar[tuple[str, ...]] = ("Events",)


class OwnsLedger(LedgerProjection):
    name: ClassVar[str] = "owns-ledger"


def test_tables_are_owned_once_and_never_the_logs(tmp_path: Path) -> None:
    store = open_store(tmp_path / "log.db")
    with pytest.raises(ValueError, match="may not own table 'Events'"):
        ProjectionRunner(store, tmp_path / "p.db", [OwnsEvents()])
    with pytest.raises(ValueError, match="owned by both 'ledger' and 'owns-ledger'"):
        ProjectionRunner(store, tmp_path / "p.db", [LedgerProjection(), OwnsLedger()])
    with pytest.raises(ValueError, match="batch_size"):
        ProjectionRunner(store, tmp_path / "p.db", [], batch_size=0)


@pytest.mark.asyncio
async def test_projections_file_is_private(tmp_path: Path) -> None:
    async with open_store(tmp_path / "log.db") as store:
        async with ProjectionRunner(store, tmp_path / "p.db", [LedgerProjection()]):
            pass
    assert (tmp_path / "p.db").stat().st_mode & 0o777 == 0o600


@pytest.mark.asyncio
async def test_query_rolls_back_a_transaction_it_leaves_open(tmp_path: Path) -> None:
    async with open_store(tmp_path / "log.db") as store:
        async with ProjectionRunner(store, tmp_path / "p.db", [LedgerProjection()]) as runner:

            def forgetful(db: sqlite3.Connection) -> int:
                db.execute("BEGIN")
                return int(db.execute("SELECT count(*) FROM ledger").fetchone()[0])

            assert await runner.query(forgetful) == 0
            await store.append("a", [Opened(owner="x")])
            assert await runner.catch_up() == 1


class NoTables(Projection):
    name: ClassVar[str] = "no-tables"
    schema_version: ClassVar[int] = 1

    def create(self, db: sqlite3.Connection) -> None:
        pass

    def apply(self, db: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        pass


def test_a_projection_must_declare_its_tables(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"NoTables\.tables: expected a tuple"):
        ProjectionRunner(open_store(tmp_path / "log.db"), tmp_path / "p.db", [NoTables()])
