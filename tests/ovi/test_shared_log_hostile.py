"""Hostile review of several hosts on one PostgreSQL log (issue 12), at the
engine: each host an :class:`Engine` with its own clock and its own SQLite
mirror of one shared log, all on one (fake) estate.

Tests marked ``xfail(strict=True)`` are problems found and not fixed yet; the
reason says what happens instead.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eventstore import EventStoreError, MirroredStore, SQLiteEventStore, StreamBatch
from eventstore.postgres import PostgresEventStore
from ovi.coordinator import Coordinator
from ovi.events import PAUSE_ALL, Actor, AutomationPaused, pause_stream, registry
from ovi.model import Action, DecisionStatus, Outcome, Resource, Scope, Unreadable
from ovi.providers.fake import FakeProvider
from ovi.runtime import ovi_projections
from projections import ProjectionRunner
from tests.ovi.harness import Clock, Env, config_text, environment, managed
from tests.postgres import PostgresSchema

pytestmark = pytest.mark.asyncio

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
GRACE = "grace_period: 10m\nrequire_approval: false"


@asynccontextmanager
async def host(schema: PostgresSchema, mirror: Path, name: str, *, server: Clock,
               clock: Clock, provider: FakeProvider) -> AsyncIterator[Env]:
    """One Ovi host: its engine runs on ``clock`` (the host's wall clock),
    its store on ``server`` (the database server's, the same for all)."""
    shared = PostgresEventStore(schema.server_dsn, registry(), schema=schema.name,
                                instance_id=name, clock=server)
    local = SQLiteEventStore(mirror, registry(), instance_id=name, synchronous="NORMAL")
    async with MirroredStore(shared, local) as store, \
            ProjectionRunner(store, mirror, ovi_projections()) as views:
        yield Env(store, views, provider, clock)


def advance(*clocks: Clock, minutes: float) -> None:
    for clock in clocks:
        clock.advance(minutes=minutes)


async def test_a_host_whose_clock_runs_5_minutes_fast_does_not_cut_a_grace_period_short(
    postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    server, a_clock, b_clock = Clock(T0), Clock(T0), Clock(T0 + timedelta(minutes=5))
    estate = FakeProvider([managed("gone-0", "i-9")])
    async with host(postgres_schema, tmp_path / "a.db", "host-a:1", server=server,
                    clock=a_clock, provider=estate) as a, \
            host(postgres_schema, tmp_path / "b.db", "host-b:1", server=server,
                 clock=b_clock, provider=estate) as b:
        await a.record_created(managed("gone-0", "i-9"))
        first = await a.cycle(config_text(rules=GRACE))
        assert [d.status for d in first.decisions] == [DecisionStatus.GRACE_PERIOD]
        advance(server, a_clock, b_clock, minutes=6)
        # 6 minutes after the finding was first recorded: 4 more to wait.
        later = await b.apply(config_text(rules=GRACE))
    assert [d.status for d in later.decisions] == [DecisionStatus.GRACE_PERIOD]
    assert "i-9" in estate.resources
    assert not [call for call in estate.calls if call[0] == "delete"]


async def test_a_mirror_row_edited_in_place_is_refused_not_refolded(tmp_path: Path) -> None:
    config = config_text("{type: ec2, name: web, count: 1, size: t3.micro}")
    async with environment(tmp_path, backend="postgres-mirror") as env:
        assert isinstance(env.store, MirroredStore)
        actor = Actor(by="oncall", user="oncall", uid=1000, host="laptop")
        appended = await env.store.append_streams([StreamBatch(pause_stream(PAUSE_ALL), (
            AutomationPaused(target=PAUSE_ALL, reason="incident", actor=actor, at=T0),))])
        held = await env.apply(config)
        assert [d.status for d in held.decisions] == [DecisionStatus.PAUSED]
        tamper(tmp_path / "ovi.db", appended.last_position)
        try:
            await env.views.rebuild("operations")
            result = await env.apply(config)
        except EventStoreError as exc:  # refused: the mirror is not the shared log
            assert f"position {appended.last_position}" in str(exc)
        else:
            created = [e for e in result.executions
                       if e.action is Action.CREATE and e.outcome is Outcome.EXECUTED]
            assert not created, "created while the shared log pauses the whole estate"
            assert [d.status for d in result.decisions] == [DecisionStatus.PAUSED]


def tamper(mirror: Path, position: int) -> None:
    """Edit one row of a mirror file in place, as a person with sqlite3 could."""
    with closing(sqlite3.connect(mirror)) as db:
        db.execute("DROP TRIGGER events_append_only_update")
        db.execute("UPDATE events SET type = 'AutomationResumed' WHERE position = ?",
                   (position,))
        db.commit()


async def test_a_host_whose_clock_runs_5_minutes_fast_deletes_only_inside_the_window(
    postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    rules = ("grace_period: 1m\nrequire_approval: false\nmaintenance_window:"
             " {days: [mon, tue, wed, thu, fri, sat, sun], start: \"02:00\", end: \"05:00\"}")
    before = datetime(2026, 11, 26, 1, 56, tzinfo=UTC)
    server, b_clock = Clock(before), Clock(before + timedelta(minutes=5))
    estate = FakeProvider([managed("gone-0", "i-9")])
    async with host(postgres_schema, tmp_path / "b.db", "host-b:1", server=server,
                    clock=b_clock, provider=estate) as b:
        await b.record_created(managed("gone-0", "i-9"))
        await b.cycle(config_text(rules=rules))
        advance(server, b_clock, minutes=2)  # the grace period is over; 01:58 by the server
        result = await b.apply(config_text(rules=rules))
    assert [d.status for d in result.decisions] == [DecisionStatus.MAINTENANCE_WINDOW]
    assert "i-9" in estate.resources

def twin_instance_id() -> str:
    """The instance id a process writes on a machine cloned from this one's
    image: the same hostname and, on a VM, the same PID namespace inode (the
    initial namespace's is the kernel constant 4026531836; containers set up
    alike on two hosts get alike ones too). Its pid does not run here."""
    namespace = os.stat("/proc/self/ns/pid").st_ino
    return f"{socket.gethostname()}/{namespace}:{2**22 + 7}:0a0b0c"


async def test_a_live_claim_of_another_machine_with_the_same_hostname_is_not_taken_over(
    postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    server = Clock(T0)
    estate = FakeProvider()
    async with host(postgres_schema, tmp_path / "twin.db", twin_instance_id(), server=server,
                    clock=Clock(T0), provider=estate) as twin, \
            host(postgres_schema, tmp_path / "a.db", "host-a:1", server=server,
                 clock=Clock(T0), provider=estate) as a:
        taken = await Coordinator(twin.store, twin.views).claim(["web-0"])
        assert list(taken.held) == ["web-0"]
        server.advance(minutes=1)  # the twin's claim has 9 minutes to run
        mine = await Coordinator(a.store, a.views).claim(["web-0"])
    assert mine.held == {} and mine.blocked == {"web-0": twin_instance_id()}


class PausedDuringObservation(FakeProvider):
    """The estate, observed while an operator on another host pauses it all."""

    def __init__(self, other: Env) -> None:
        super().__init__()
        self.other = other
        self.paused = False

    async def observe(self, scope: Scope) -> Sequence[Resource | Unreadable]:
        if not self.paused:
            self.paused = True
            actor = Actor(by="oncall", user="oncall", uid=1000, host="host-b")
            await self.other.store.append_streams([StreamBatch(pause_stream(PAUSE_ALL), (
                AutomationPaused(target=PAUSE_ALL, reason="incident", actor=actor, at=T0),))])
        return await super().observe(scope)


async def test_a_pause_another_host_appends_while_a_cycle_observes_stops_its_create(
    postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    """Held: the write-ahead's pause fence is checked by the shared log, not the mirror."""
    server = Clock(T0)
    config = config_text("{type: ec2, name: web, count: 1, size: t3.micro}")
    async with host(postgres_schema, tmp_path / "b.db", "host-b:1", server=server,
                    clock=Clock(T0), provider=FakeProvider()) as b:
        estate = PausedDuringObservation(b)
        async with host(postgres_schema, tmp_path / "a.db", "host-a:1", server=server,
                        clock=Clock(T0), provider=estate) as a:
            result = await a.apply(config)
    assert estate.paused
    assert [d.status for d in result.decisions] == [DecisionStatus.READY]  # decided before
    assert [call for call in estate.calls if call[0] == "create"] == []
    assert not [e for e in result.executions if e.outcome is Outcome.EXECUTED]
