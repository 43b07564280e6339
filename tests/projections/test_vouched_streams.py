"""A keyed log read one stream at a time (the executor's count of a create's
attempts) is checked as a fold's read is: each row matched with what the
runner checked, and every checked row of the stream (of the types asked for)
brought. The attacker writes the SQLite file but has no chain key."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from eventstore import LogCorruptedError, SQLiteEventStore
from projections import ProjectionRunner
from tests.projections.support import Clock, Deposited, LedgerProjection, Opened, registry

pytestmark = pytest.mark.asyncio

KEY = b"S" * 32
DROP_TRIGGERS = ("DROP TRIGGER IF EXISTS events_append_only_update",
                 "DROP TRIGGER IF EXISTS events_append_only_delete")


def keyed(path: Path) -> SQLiteEventStore:
    return SQLiteEventStore(path, registry(), instance_id="test", synchronous="NORMAL",
                            clock=Clock(), chain_key=KEY)


def attack(path: Path, *statements: str) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        for statement in (*DROP_TRIGGERS, *statements):
            db.execute(statement)


async def fill(store: SQLiteEventStore) -> None:
    """acct: 1 Opened, 3 Deposited 10, 5 Deposited 30; other: 2 Opened, 4 Deposited 20."""
    await store.append("acct", [Opened(owner="alice")])
    await store.append("other", [Opened(owner="bob")])
    await store.append("acct", [Deposited(amount=10)])
    await store.append("other", [Deposited(amount=20)])
    await store.append("acct", [Deposited(amount=30)])


async def deposits(runner: ProjectionRunner, stream: str, after: int = 0) -> list[int]:
    return [r.position async for r in runner.read_checked(
        stream=stream, types=("Deposited",), after=after)]


@pytest.mark.parametrize("keyed_log", [True, False])
async def test_one_stream_of_a_type_is_read(tmp_path: Path, keyed_log: bool) -> None:
    path = tmp_path / "log.db"
    store = keyed(path) if keyed_log else SQLiteEventStore(
        path, registry(), instance_id="test", synchronous="NORMAL", clock=Clock())
    async with store, ProjectionRunner(store, path, [LedgerProjection()]) as runner:
        await fill(store)
        assert await deposits(runner, "acct") == [3, 5]
        assert await deposits(runner, "acct", after=3) == [5]
        assert await deposits(runner, "nobody") == []
        assert [r.position async for r in runner.read_checked(stream="other")] == [2, 4]
        assert [r.position async for r in runner.read_checked(stream="acct", until=3)] == [1, 3]


@pytest.mark.parametrize(("statement", "position"), [
    ("DELETE FROM events WHERE position = 3", 3),
    ("UPDATE events SET type = 'Withdrawn' WHERE position = 3", 3),
    ("UPDATE events SET stream = 'elsewhere' WHERE position = 3", 3),
    ("DELETE FROM events WHERE position = 5", 5),
    ("UPDATE events SET stream = 'acct', stream_version = 4 WHERE position = 4", 4),
], ids=["deleted", "retyped", "moved out", "the last deleted", "moved in"])
async def test_a_stream_read_brings_exactly_the_checked_rows_of_the_stream(
    tmp_path: Path, statement: str, position: int
) -> None:
    """Without the stream's positions kept, the read of 'acct' after the
    first three attacks brought only 5, each row matching its kept hash: the
    deposit at 3 went unseen."""
    path = tmp_path / "log.db"
    async with keyed(path) as store, ProjectionRunner(store, path, [LedgerProjection()]) as runner:
        await fill(store)
        assert await deposits(runner, "acct") == [3, 5]  # every row checked
        attack(path, statement)
        with pytest.raises(LogCorruptedError) as raised:
            await deposits(runner, "acct")
        assert raised.value.position == position


async def test_a_deleted_write_ahead_does_not_make_a_create_look_never_called(
    tmp_path: Path,
) -> None:
    """A crashed instance wrote ahead the create of web-0 (attempt 1): its
    call may have made the instance. The runner checked that row; the
    attacker deletes it. The executor's count of the decision's attempts
    read the stream beside the check: it found none, called the create its
    first ever, and the provider skipped looking for what the token made."""
    from ovi.events import ActionExecuting, resource_stream
    from ovi.events import registry as ovi_registry
    from ovi.model import Action
    from ovi.providers.fake import FakeProvider
    from ovi.runtime import ovi_projections
    from tests.ovi.harness import Clock as OviClock
    from tests.ovi.harness import Env, config_text

    path = tmp_path / "ovi.db"
    clock = OviClock()
    async with SQLiteEventStore(path, ovi_registry(), instance_id="ovi", clock=clock,
                                chain_key=KEY) as store, \
            ProjectionRunner(store, path, ovi_projections()) as views:
        env = Env(store, views, FakeProvider([]), clock)
        config = config_text("{type: ec2, name: web, count: 1, size: t3.small}")
        (decision,) = (await env.cycle(config)).decisions
        assert decision.action is Action.CREATE
        async with SQLiteEventStore(path, ovi_registry(), instance_id="dead:1", clock=clock,
                                    chain_key=KEY) as dead:
            await dead.append(resource_stream("web-0"), [ActionExecuting(
                cycle_id="crashed", decision_id=decision.decision_id, action=Action.CREATE,
                resource_id="web-0", cloud_id=None, token=1, create_attempt=1)])
        executor = env.engine.executor
        progress = await executor._progress(decision)
        assert (progress.attempt, progress.first_ever) == (1, False)
        attack(path, "DELETE FROM events WHERE type = 'ActionExecuting'")
        with pytest.raises(LogCorruptedError):
            await executor._progress(decision)


async def test_a_log_cut_short_below_what_was_checked_stops_a_lagging_fold(
    tmp_path: Path,
) -> None:
    """The newest checked row deleted: the log's last position falls back to
    4, so a projection that lags would fold up to 4 and never see row 5."""
    from tests.projections.support import BalancesProjection

    path = tmp_path / "log.db"
    async with keyed(path) as store, ProjectionRunner(
            store, path, [LedgerProjection(), BalancesProjection()]) as runner:
        await fill(store)
        await runner.catch_up("ledger")  # every row checked, balances lags
        attack(path, "DELETE FROM events WHERE position = 5")
        with pytest.raises(LogCorruptedError) as raised:
            await runner.catch_up("balances")
        assert raised.value.position == 5
