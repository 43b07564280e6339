"""Hostile review of the vouched stream reads (projections/_vouched.py,
ProjectionRunner.read_checked, Executor._progress).

The attacker writes the SQLite file between reads (sqlite3 directly: drop
triggers, UPDATE/DELETE/INSERT rows, rebuild the events table) but has no
chain key. A test that passes means the code held; one that fails is a bug.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import pytest_asyncio

from eventstore import EventStoreError, LogCorruptedError, SQLiteEventStore
from projections import ProjectionRunner
from tests.projections.support import (
    BalancesProjection,
    Clock,
    Deposited,
    LedgerProjection,
    Opened,
    Withdrawn,
    registry,
)

pytestmark = pytest.mark.asyncio

KEY = b"R" * 32
DROP_TRIGGERS = ("DROP TRIGGER IF EXISTS events_append_only_update",
                 "DROP TRIGGER IF EXISTS events_append_only_delete")
_COLS = ("position, stream, stream_version, type, recorded_at, instance_id, data,"
         " prev_hash, hash")


def keyed(path: Path, instance_id: str = "test") -> SQLiteEventStore:
    return SQLiteEventStore(path, registry(), instance_id=instance_id, synchronous="NORMAL",
                            clock=Clock(), chain_key=KEY)


def attack(path: Path, *statements: str | tuple[str, tuple[object, ...]]) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        for statement in (*DROP_TRIGGERS, *statements):
            if isinstance(statement, str):
                db.execute(statement)
            else:
                db.execute(*statement)


def rebuilt_table(*extra: str, position_type: str = "INTEGER") -> tuple[str, ...]:
    """Statements that replace ``events`` by a copy without its primary key
    (then ``extra`` run on the copy): what write access to the file allows."""
    return ("ALTER TABLE events RENAME TO events_old",
            f"CREATE TABLE events (position {position_type}, stream TEXT, stream_version"
            " INTEGER, type TEXT, recorded_at TEXT, instance_id TEXT, data TEXT,"
            " prev_hash TEXT, hash TEXT)",
            f"INSERT INTO events SELECT {_COLS} FROM events_old",
            *extra,
            "DROP TABLE events_old")


async def fill(store: SQLiteEventStore) -> None:
    """acct: 1 Opened, 3 Deposited 10, 5 Deposited 30, 7 Withdrawn 5;
    other: 2 Opened, 4 Deposited 20, 6 Deposited 40."""
    await store.append("acct", [Opened(owner="alice")])
    await store.append("other", [Opened(owner="bob")])
    await store.append("acct", [Deposited(amount=10)])
    await store.append("other", [Deposited(amount=20)])
    await store.append("acct", [Deposited(amount=30)])
    await store.append("other", [Deposited(amount=40)])
    await store.append("acct", [Withdrawn(amount=5)])


async def positions(runner: ProjectionRunner, stream: str | None, *,
                    types: tuple[str, ...] | None = ("Deposited",), after: int = 0,
                    until: int | None = None) -> list[int]:
    return [r.position async for r in runner.read_checked(
        stream=stream, types=types, after=after, until=until)]


async def refused(runner: ProjectionRunner, stream: str | None, **kwargs: object) -> int:
    """The position the read refused at; fails the test if it returned rows."""
    try:
        got = await positions(runner, stream, **kwargs)  # type: ignore[arg-type]
    except LogCorruptedError as exc:
        return exc.position
    pytest.fail(f"the read of {stream!r} ({kwargs}) returned {got}: no LogCorruptedError")


async def checked(tmp_path: Path) -> tuple[Path, SQLiteEventStore, ProjectionRunner]:
    path = tmp_path / "log.db"
    store = await keyed(path).open()
    runner = await ProjectionRunner(store, path, [LedgerProjection(), BalancesProjection()]).open()
    await fill(store)
    assert await positions(runner, "acct") == [3, 5]
    assert await positions(runner, "acct", types=None) == [1, 3, 5, 7]
    return path, store, runner


@pytest_asyncio.fixture
async def log(tmp_path: Path):  # type: ignore[no-untyped-def]
    path, store, runner = await checked(tmp_path)
    try:
        yield path, store, runner
    finally:
        await runner.aclose()
        await store.aclose()


# -- 1. a row of the stream hidden -------------------------------------------


@pytest.mark.parametrize(("statement", "where"), [
    ("DELETE FROM events WHERE position = 1", 1),
    ("DELETE FROM events WHERE position = 3", 3),
    ("DELETE FROM events WHERE position = 7", 7),
    ("UPDATE events SET stream = 'ACCT' WHERE position = 3", 3),
    ("UPDATE events SET stream = 'acct ' WHERE position = 5", 5),
    ("UPDATE events SET stream = CAST(stream AS BLOB) WHERE position = 5", 5),
    ("UPDATE events SET type = 'Withdrawn' WHERE position = 3", 3),
    ("UPDATE events SET type = CAST(type AS BLOB) WHERE position = 3", 3),
    ("UPDATE events SET position = 1000 WHERE position = 3", 3),
    ("UPDATE events SET position = -3 WHERE position = 3", 3),
], ids=["first-deleted", "middle-deleted", "last-deleted", "renamed-case", "renamed-space",
        "stream-blob", "retyped", "type-blob", "moved-past-head", "moved-negative"])
@pytest.mark.parametrize("types", [("Deposited",), None, ("Deposited", "Withdrawn", "Opened")],
                         ids=["deposits", "all", "listed"])
async def test_a_hidden_row_of_the_stream_is_refused(
    log: tuple[Path, SQLiteEventStore, ProjectionRunner], statement: str, where: int,
    types: tuple[str, ...] | None,
) -> None:
    path, _, runner = log
    attack(path, statement)
    wanted = {1: ("Opened",), 3: ("Deposited",), 5: ("Deposited",), 7: ("Withdrawn",)}[where]
    if types is not None and not set(wanted) & set(types):
        return  # the hidden row is not one this read asks for
    # Read with the head taken from the log and with an explicit until.
    await refused(runner, "acct", types=types)
    await refused(runner, "acct", types=types, until=7)


async def test_a_hidden_row_with_after_and_until_around_it(
    log: tuple[Path, SQLiteEventStore, ProjectionRunner],
) -> None:
    path, _, runner = log
    attack(path, "DELETE FROM events WHERE position = 5")
    assert await refused(runner, "acct", after=3, until=5) == 5
    assert await refused(runner, "acct", after=4, until=6) == 5
    # Reads that do not cover 5 are still served (nothing of them is missing).
    assert await positions(runner, "acct", until=4) == [3]


async def test_a_hidden_row_of_a_log_of_more_than_255_types_is_refused(tmp_path: Path) -> None:
    """Past 255 type names the reads go unfiltered: the stream's rows of
    every type must then still all be brought."""
    from eventstore import Event, EventRegistry

    classes = [type(f"T{i}", (Event,), {"__annotations__": {"n": int}},
                    frozen=True) for i in range(300)]
    reg = EventRegistry()
    for cls in (*classes, Opened, Deposited, Withdrawn):
        reg.register(cls)
    path = tmp_path / "log.db"
    async with SQLiteEventStore(path, reg, instance_id="t", clock=Clock(),
                                chain_key=KEY) as store, \
            ProjectionRunner(store, path, [LedgerProjection()]) as runner:
        for i, cls in enumerate(classes):
            await store.append("noise", [cls(n=i)])
        await fill(store)
        assert [r.position async for r in runner.read_checked(
            stream="acct", types=("Deposited",))] == [303, 305]
        attack(path, "UPDATE events SET type = 'T7' WHERE position = 303")
        with pytest.raises(LogCorruptedError) as raised:
            _ = [r async for r in runner.read_checked(stream="acct", types=("Deposited",))]
        assert raised.value.position == 303


# -- 2. a row added to the stream --------------------------------------------


async def test_another_streams_row_renamed_into_the_stream_is_refused(
    log: tuple[Path, SQLiteEventStore, ProjectionRunner],
) -> None:
    path, _, runner = log
    attack(path, "UPDATE events SET stream = 'acct', stream_version = 10 WHERE position = 4")
    assert await refused(runner, "acct") == 4


async def test_a_forged_row_appended_to_the_stream_is_refused(
    log: tuple[Path, SQLiteEventStore, ProjectionRunner],
) -> None:
    """A copy of the stream's last deposit, chained onto the head as a
    keyless forger can (the hash column copied, the head moved on)."""
    path, _, runner = log
    attack(path,
           f"INSERT INTO events ({_COLS}) SELECT 8, stream, 5, type, recorded_at,"
           " instance_id, data, (SELECT hash FROM events WHERE position = 7), hash"
           " FROM events WHERE position = 5",
           "UPDATE log_head SET position = 8, hash = (SELECT hash FROM events WHERE"
           " position = 8)")
    assert await refused(runner, "acct") == 8


async def test_a_row_after_the_checked_head_is_not_returned_as_checked(
    log: tuple[Path, SQLiteEventStore, ProjectionRunner],
) -> None:
    """An explicit ``until`` at the checked head: a row forged after it is
    neither read nor vouched for; reading up to it is refused."""
    path, _, runner = log
    attack(path,
           f"INSERT INTO events ({_COLS}) SELECT 8, stream, 5, type, recorded_at,"
           " instance_id, data, prev_hash, hash FROM events WHERE position = 5")
    assert await positions(runner, "acct", until=7) == [3, 5]
    assert await refused(runner, "acct", until=8) == 8


async def test_a_checked_row_duplicated_in_the_stream_is_refused(
    log: tuple[Path, SQLiteEventStore, ProjectionRunner],
) -> None:
    """The events table rebuilt without its primary key, with the checked
    deposit at 3 in it twice: every row read matches its kept hash, and no
    position is missing; but the read brings one more row than was checked."""
    path, _, runner = log
    attack(path, *rebuilt_table(
        f"INSERT INTO events SELECT {_COLS} FROM events_old WHERE position = 3"))
    try:
        got = await positions(runner, "acct")
    except LogCorruptedError:
        return
    assert got == [3, 5], (
        f"the stream read returned {got}: the checked row at 3, duplicated in the"
        " file, was returned twice as checked")


async def test_a_checked_row_duplicated_is_not_folded_twice(
    log: tuple[Path, SQLiteEventStore, ProjectionRunner],
) -> None:
    """The same duplicate, seen by a rebuild of the balances: 'acct' is
    10 + 30 - 5 = 35; with the 10 folded twice it is 45."""
    path, _, runner = log
    await runner.catch_up()
    attack(path, *rebuilt_table(
        f"INSERT INTO events SELECT {_COLS} FROM events_old WHERE position = 3"))
    try:
        await runner.rebuild("balances")
    except LogCorruptedError:
        return
    with closing(sqlite3.connect(path)) as db:
        (balance,) = db.execute("SELECT balance FROM balances WHERE account = 'acct'").fetchone()
    assert balance == 35, (
        f"balance of 'acct' is {balance}, not 35: the checked deposit of 10, duplicated in"
        " a rebuilt events table, was folded twice without a LogCorruptedError")


async def test_a_view_in_place_of_the_events_table_duplicating_a_row_is_refused(
    log: tuple[Path, SQLiteEventStore, ProjectionRunner],
) -> None:
    path, _, runner = log
    attack(path, "ALTER TABLE events RENAME TO events_real",
           "CREATE VIEW events AS SELECT * FROM events_real UNION ALL"
           " SELECT * FROM events_real WHERE position = 5")
    try:
        got = await positions(runner, "acct")
    except LogCorruptedError:
        return
    assert got == [3, 5], f"a view over the events doubling row 5 gave {got} as checked"


@pytest.mark.parametrize("collation", ["NOCASE", "RTRIM"])
async def test_a_genuine_row_of_a_look_alike_stream_is_not_returned_as_the_streams(
    log: tuple[Path, SQLiteEventStore, ProjectionRunner], collation: str,
) -> None:
    """Streams 'ACCT' and 'acct ' are other streams, their rows genuine and
    checked. The events table is rebuilt with its stream column COLLATE
    NOCASE (or RTRIM): ``stream = 'acct'`` then matches them too. Each such
    row hashes to what was checked (it is unchanged), and no checked
    position of 'acct' is missing: the read of 'acct' returns them."""
    path, store, runner = log
    await store.append("ACCT", [Deposited(amount=1000)])
    await store.append("acct ", [Deposited(amount=2000)])
    assert await positions(runner, "acct") == [3, 5]  # 8, 9 checked now
    attack(path, *rebuilt_table()[:1],
           "CREATE TABLE events (position INTEGER PRIMARY KEY, stream TEXT COLLATE"
           f" {collation}, stream_version INTEGER, type TEXT, recorded_at TEXT, instance_id"
           " TEXT, data TEXT, prev_hash TEXT, hash TEXT)",
           *rebuilt_table()[2:])
    try:
        got = [(r.position, r.stream) async for r in runner.read_checked(
            stream="acct", types=("Deposited",))]
    except LogCorruptedError:
        return
    assert got == [(3, "acct"), (5, "acct")], (
        f"the read of stream 'acct' returned {got}: rows of other streams, genuine and"
        f" checked, brought in by a COLLATE {collation} stream column")


# -- 3. payload or metadata of a checked row altered ---------------------------


@pytest.mark.parametrize("statement", [
    "UPDATE events SET data = replace(data, '10', '99') WHERE position = 3",
    "UPDATE events SET data = data || ' ' WHERE position = 3",
    "UPDATE events SET data = CAST(data AS BLOB) WHERE position = 3",
    "UPDATE events SET recorded_at = '2030-01-01T00:00:00.000000Z' WHERE position = 3",
    "UPDATE events SET instance_id = 'evil' WHERE position = 3",
    "UPDATE events SET stream_version = 7 WHERE position = 3",
    "UPDATE events SET stream_version = '2' WHERE position = 3",
    "UPDATE events SET prev_hash = hash WHERE position = 3",
    "UPDATE events SET data = (SELECT data FROM events WHERE position = 4) WHERE position = 3",
], ids=["amount", "whitespace", "blob", "recorded_at", "instance", "version", "version-text",
        "prev_hash", "other-payload"])
async def test_a_checked_row_altered_is_refused(
    log: tuple[Path, SQLiteEventStore, ProjectionRunner], statement: str,
) -> None:
    path, _, runner = log
    attack(path, statement)
    if "'2'" in statement:
        # INTEGER affinity turns '2' back into 2: the row is unchanged.
        assert await positions(runner, "acct") == [3, 5]
        return
    assert await refused(runner, "acct") == 3
    assert await refused(runner, "acct", types=None) == 3


async def test_a_checked_rows_hash_column_rewritten_is_not_passed_on(
    log: tuple[Path, SQLiteEventStore, ProjectionRunner],
) -> None:
    """Only the hash *column* rewritten: the row's contents still hash to what
    was checked, so the read matches; the RecordedEvent then carries the
    forged hash as the row's (an anchor taken from it would be wrong)."""
    path, _, runner = log
    good = {r.position: r.hash async for r in runner.read_checked(stream="acct")}
    attack(path, "UPDATE events SET hash = 'ff' || substr(hash, 3) WHERE position = 3")
    try:
        now = {r.position: r.hash async for r in runner.read_checked(stream="acct")}
    except LogCorruptedError:
        return
    assert now == good, (
        f"row 3's hash column was rewritten and read_checked returned it as checked:"
        f" {good[3][:12]}… became {now[3][:12]}…")


# -- 4. the log cut short -------------------------------------------------------


@pytest.mark.parametrize("statements", [
    ("DELETE FROM events WHERE position = 7",),
    ("DELETE FROM events WHERE position >= 5",),
    ("DELETE FROM events WHERE position = 7",
     "UPDATE log_head SET position = 6, hash = (SELECT hash FROM events WHERE position = 6)"),
    ("DELETE FROM events WHERE position >= 4",
     "UPDATE log_head SET position = 3, hash = (SELECT hash FROM events WHERE position = 3)"),
    ("DELETE FROM events",
     "UPDATE log_head SET position = 0"),
], ids=["last", "last-three", "last-and-head", "tail-and-head", "all"])
async def test_a_log_cut_short_is_refused(
    log: tuple[Path, SQLiteEventStore, ProjectionRunner], statements: tuple[str, ...],
) -> None:
    path, _, runner = log
    attack(path, *statements)
    # Any stream, even one whose rows are all still there, and the whole log:
    # the head read from the log is below what was checked.
    await refused(runner, "acct", types=None)
    await refused(runner, "other", types=None)
    await refused(runner, None, types=None)
    with pytest.raises(LogCorruptedError):
        await runner.catch_up()


async def test_a_head_row_rewound_alone_does_not_change_what_is_read(
    log: tuple[Path, SQLiteEventStore, ProjectionRunner],
) -> None:
    """log_head rewound, no row deleted: the rows checked are all there, and
    an append on top must not chain a second history after position 3."""
    path, store, runner = log
    attack(path, "UPDATE log_head SET position = 3, hash = (SELECT hash FROM events"
                 " WHERE position = 3)")
    assert await positions(runner, "acct") == [3, 5]
    try:
        await store.append("acct", [Deposited(amount=1)])
    except EventStoreError as exc:
        print(f"append on a rewound head refused: {exc!r}")  # noqa: T201
        return  # refused: good
    # Appended somewhere: what is read must still be exactly a chain Ovi wrote.
    try:
        got = await positions(runner, "acct")
    except LogCorruptedError:
        return
    assert got[:2] == [3, 5] and len(got) == 3, got


async def test_cut_short_and_written_on_again_is_refused(
    log: tuple[Path, SQLiteEventStore, ProjectionRunner],
) -> None:
    """Rows 6, 7 deleted and the head rewound to 5; the owner then appends two
    honest rows (6, 7 again, another history): the log ends where the check
    ended, so only the rows read can tell."""
    path, store, runner = log
    attack(path, "DELETE FROM events WHERE position >= 6",
           "UPDATE log_head SET position = 5, hash = (SELECT hash FROM events WHERE"
           " position = 5)")
    await store.append("other", [Deposited(amount=1)])
    await store.append("other", [Deposited(amount=2)])
    # 'acct' lost its Withdrawn at 7.
    assert await refused(runner, "acct", types=None) == 7
    # 'other' has a row at 6 that is not the one checked.
    assert await refused(runner, "other", types=None) == 6


# -- 5. positions reordered / swapped between streams --------------------------


@pytest.mark.parametrize("statements", [
    ("UPDATE events SET position = -1 WHERE position = 3",
     "UPDATE events SET position = 3 WHERE position = 4",
     "UPDATE events SET position = 4 WHERE position = -1"),
    ("UPDATE events SET stream = 'tmp' WHERE position = 3",
     "UPDATE events SET stream = 'acct' WHERE position = 4",
     "UPDATE events SET stream = 'other' WHERE position = 3"),
    ("UPDATE events SET stream = 'tmp' WHERE position = 3",
     "UPDATE events SET stream = 'acct', stream_version = 10 WHERE position = 4",
     "UPDATE events SET stream = 'other', stream_version = 10 WHERE position = 3",
     "UPDATE events SET stream_version = 2 WHERE position = 4",
     "UPDATE events SET stream_version = 2 WHERE position = 3"),
    ("UPDATE events SET data = CASE position WHEN 3 THEN (SELECT data FROM events WHERE"
     " position = 5) ELSE (SELECT data FROM events WHERE position = 3) END"
     " WHERE position IN (3, 5)",),
], ids=["positions-swapped", "streams-swapped", "streams-and-versions-swapped",
        "payloads-swapped-in-stream"])
async def test_rows_swapped_are_refused(
    log: tuple[Path, SQLiteEventStore, ProjectionRunner], statements: tuple[str, ...],
) -> None:
    path, _, runner = log
    attack(path, *statements)
    assert await refused(runner, "acct") == 3
    if "data" not in statements[0]:
        assert await refused(runner, "other", types=None) in (3, 4)
    assert await refused(runner, None, types=None) == 3


async def test_positions_as_text_are_a_log_corrupted_error(
    log: tuple[Path, SQLiteEventStore, ProjectionRunner],
) -> None:
    """The table rebuilt with positions as TEXT: '10' sorts before '9', and a
    read's arithmetic on positions meets a str. Whatever is read must be a
    LogCorruptedError, not a TypeError out of the executor's count."""
    path, _, runner = log
    attack(path, *rebuilt_table(position_type="TEXT"))
    with pytest.raises(LogCorruptedError):
        await positions(runner, "acct")


async def test_positions_as_reals_are_a_log_corrupted_error(
    log: tuple[Path, SQLiteEventStore, ProjectionRunner],
) -> None:
    path, _, runner = log
    attack(path, *rebuilt_table("UPDATE events SET position = position + 0.0",
                                position_type="REAL"))
    with pytest.raises(LogCorruptedError):
        await positions(runner, "acct")


# -- 6. the unkeyed fast path ----------------------------------------------------


async def test_a_keyed_log_opened_with_its_key_never_takes_the_fast_path(
    tmp_path: Path,
) -> None:
    """An empty log first opened without a key (its header written unkeyed),
    then by the owner with the key: it becomes keyed at that open. The
    runner over the keyed store then checks (a forged row is refused)."""
    path = tmp_path / "log.db"
    async with SQLiteEventStore(path, registry(), instance_id="a", clock=Clock()):
        pass
    async with keyed(path) as store, ProjectionRunner(store, path, [LedgerProjection()]) as runner:
        assert store.chain.keyed and store.chain.checks_hashes
        await fill(store)
        assert await positions(runner, "acct") == [3, 5]
        assert runner._vouched is not None
        attack(path, "UPDATE events SET data = replace(data, '10', '99') WHERE position = 3")
        assert await refused(runner, "acct") == 3


async def test_a_log_keyed_by_another_process_after_this_one_opened_it(
    tmp_path: Path,
) -> None:
    """Process A opens the empty log without a key (header: unkeyed). The
    owner B then opens it with the key (the header becomes keyed) and
    writes. A's store still says unkeyed: its runner takes the fast path
    and its appends chain plain hashes into a keyed log. A must refuse
    (as it would had it opened after B), not read or write unchecked."""
    path = tmp_path / "log.db"
    async with SQLiteEventStore(path, registry(), instance_id="a", clock=Clock()) as a, \
            ProjectionRunner(a, path, [LedgerProjection()]) as runner_a:
        async with keyed(path, "b") as b:
            assert b.chain.keyed
            await fill(b)
        # The attacker (no key) edits B's deposit of 10 in place.
        attack(path, "UPDATE events SET data = replace(data, '10', '99') WHERE position = 3")
        problems: list[str] = []
        try:
            got = [r.event async for r in runner_a.read_checked(stream="acct",
                                                                types=("Deposited",))]
            problems.append(f"A's read_checked of the now keyed log returned {got} unchecked"
                            " (the 10 edited to 99 by the attacker)")
        except EventStoreError:
            pass
        try:
            await a.append("acct", [Deposited(amount=1)])
            problems.append("A appended an unkeyed row to the keyed log")
        except EventStoreError as exc:
            print(f"A's append refused: {exc!r}")  # noqa: T201
        async with keyed(path, "c") as c:
            report = await c.verify()
        assert not problems, f"{problems}; the owner's verify now says: {report.problem}"


# -- the executor end ------------------------------------------------------------


async def _ovi_env(tmp_path: Path):  # type: ignore[no-untyped-def]
    from ovi.events import registry as ovi_registry
    from ovi.providers.fake import FakeProvider
    from ovi.runtime import ovi_projections
    from tests.ovi.harness import Clock as OviClock
    from tests.ovi.harness import Env

    path = tmp_path / "ovi.db"
    clock = OviClock()
    store = await SQLiteEventStore(path, ovi_registry(), instance_id="ovi", clock=clock,
                                   chain_key=KEY).open()
    views = await ProjectionRunner(store, path, ovi_projections()).open()
    return path, clock, store, views, Env(store, views, FakeProvider([]), clock)


def _web() -> str:
    from tests.ovi.harness import config_text

    return config_text("{type: ec2, name: web, count: 1, size: t3.small}")


async def _crashed_write_ahead(path: Path, clock, decision, attempt: int = 1,  # type: ignore[no-untyped-def]
                               stream: str | None = None) -> None:
    from ovi.events import ActionExecuting, resource_stream
    from ovi.events import registry as ovi_registry
    from ovi.model import Action

    async with SQLiteEventStore(path, ovi_registry(), instance_id="dead:1", clock=clock,
                                chain_key=KEY) as dead:
        await dead.append(stream or resource_stream("web-0"), [ActionExecuting(
            cycle_id="crashed", decision_id=decision.decision_id, action=Action.CREATE,
            resource_id="web-0", cloud_id=None, token=1, create_attempt=attempt)])


@pytest.mark.parametrize("statement", [
    "UPDATE events SET data = replace(data, '\"create_attempt\":2', '\"create_attempt\":1')"
    " WHERE type = 'ActionExecuting'",
    "DELETE FROM events WHERE type = 'ActionExecuting'",
    "UPDATE events SET type = 'ActionSkipped' WHERE type = 'ActionExecuting'",
    "UPDATE events SET stream = 'resource:elsewhere' WHERE type = 'ActionExecuting'",
], ids=["attempt-lowered", "deleted", "retyped", "moved-out"])
async def test_a_create_attempt_hidden_or_lowered_is_refused(
    tmp_path: Path, statement: str,
) -> None:
    """A crashed instance's write-ahead of attempt 2 (its token may have made
    the instance): lowered to 1 or hidden, the next create would reuse
    attempt 1's token (a dead resource behind it: made again) or think its
    call the first ever."""
    path, clock, store, views, env = await _ovi_env(tmp_path)
    try:
        (decision,) = (await env.cycle(_web())).decisions
        await _crashed_write_ahead(path, clock, decision, attempt=2)
        progress = await env.engine.executor._progress(decision)
        assert (progress.attempt, progress.first_ever) == (2, False)
        attack(path, statement)
        try:
            progress = await env.engine.executor._progress(decision)
        except LogCorruptedError:
            return
        pytest.fail(f"after the attack the executor counts attempt {progress.attempt},"
                    f" first_ever={progress.first_ever}: no LogCorruptedError")
    finally:
        await views.aclose()
        await store.aclose()


async def test_a_forged_create_attempt_is_refused(tmp_path: Path) -> None:
    """A forged write-ahead with a high create_attempt (no key: its hash is
    not an HMAC): it would move the create to a new token, making the
    instance a second time. The executor must refuse, not count it."""
    import msgspec

    path, clock, store, views, env = await _ovi_env(tmp_path)
    try:
        (decision,) = (await env.cycle(_web())).decisions
        await _crashed_write_ahead(path, clock, decision, attempt=1)
        assert (await env.engine.executor._progress(decision)).attempt == 1
        with closing(sqlite3.connect(path)) as db:
            row = db.execute(f"SELECT {_COLS} FROM events WHERE type = 'ActionExecuting'"
                             ).fetchone()
            head = db.execute("SELECT max(position), (SELECT hash FROM events ORDER BY"
                              " position DESC LIMIT 1) FROM events").fetchone()
        data = msgspec.json.decode(row[6])
        data["create_attempt"] = 5
        attack(path, (f"INSERT INTO events ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (head[0] + 1, row[1], row[2] + 1, row[3], row[4], row[5],
                       msgspec.json.encode(data).decode(), head[1], "00" * 32)),
               ("UPDATE log_head SET position = ?, hash = ?", (head[0] + 1, "00" * 32)))
        with pytest.raises(LogCorruptedError):
            await env.engine.executor._progress(decision)
    finally:
        await views.aclose()
        await store.aclose()


async def test_a_duplicated_write_ahead_does_not_change_the_attempt(tmp_path: Path) -> None:
    """The write-ahead duplicated in a rebuilt table: a count of rows (not a
    max) would move the attempt on; the read must refuse or the attempt stay."""
    path, clock, store, views, env = await _ovi_env(tmp_path)
    try:
        (decision,) = (await env.cycle(_web())).decisions
        await _crashed_write_ahead(path, clock, decision, attempt=1)
        assert (await env.engine.executor._progress(decision)).attempt == 1
        attack(path, *rebuilt_table(f"INSERT INTO events SELECT {_COLS} FROM events_old"
                                    " WHERE type = 'ActionExecuting'"))
        try:
            progress = await env.engine.executor._progress(decision)
        except LogCorruptedError:
            return
        assert (progress.attempt, progress.first_ever) == (1, False)
    finally:
        await views.aclose()
        await store.aclose()


@pytest.mark.parametrize("statement", [
    "DELETE FROM events WHERE type = 'ActionExecuting'",
    "UPDATE events SET data = replace(data, '\"create_attempt\":1', '\"create_attempt\":5')"
    " WHERE type = 'ActionExecuting'",
], ids=["deleted", "attempt-raised"])
async def test_an_apply_on_a_forged_attempt_errors_and_does_not_create(
    tmp_path: Path, statement: str,
) -> None:
    """End to end: a crashed instance's write-ahead of the create (attempt 1),
    then the attacker deletes it (the create would look never called) or
    raises its attempt to 5 (a new token: made twice). The next apply (the
    claim expired) must raise a LogCorruptedError (possibly in a group) and
    never call the provider's create."""
    from datetime import timedelta

    from ovi.events import ClaimAcquired, claim_stream
    from ovi.events import registry as ovi_registry

    path, clock, store, views, env = await _ovi_env(tmp_path)
    try:
        (decision,) = (await env.cycle(_web())).decisions
        async with SQLiteEventStore(path, ovi_registry(), instance_id="dead:1", clock=clock,
                                    chain_key=KEY) as dead:
            await dead.append(claim_stream("web-0"), [ClaimAcquired(
                resource_id="web-0", instance_id="dead:1", claimed_at=clock(),
                expires_at=clock() + timedelta(minutes=1), token=1)], expected_version=0)
        await _crashed_write_ahead(path, clock, decision, attempt=1)
        await views.catch_up()  # every row checked
        attack(path, statement)
        clock.advance(minutes=5)
        raised: BaseException | None = None
        try:
            await env.apply(_web())
        except BaseException as exc:
            raised = exc
        print(f"apply raised {raised!r}")  # noqa: T201
        calls = list(env.provider.steps)
        assert isinstance(raised, LogCorruptedError) or (
            isinstance(raised, BaseExceptionGroup)
            and raised.subgroup(LogCorruptedError) is not None), (
            f"the apply raised {raised!r}; provider steps {calls}")
        assert not env.provider.resources, f"created anyway: {env.provider.resources}"
    finally:
        await views.aclose()
        await store.aclose()
