"""The resources (MVCC) and findings projections over logs made by real cycles."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import SQLiteEventStore
from ovi.events import registry
from ovi.model import ResourceType
from projections import ProjectionRunner
from projections.findings import FindingsProjection
from projections.resources import (
    ResourcesProjection,
    compact,
    current,
    state_at,
    state_at_time,
)
from tests.ovi.harness import config_text, environment, managed, unmanaged

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def dump(db: sqlite3.Connection, tables: tuple[str, ...]) -> dict[str, list[tuple[object, ...]]]:
    return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


TABLES = ResourcesProjection.tables + FindingsProjection.tables


@pytest.mark.asyncio
async def test_compaction_keeps_the_latest_revisions(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        for team in "abcde":
            env.provider.resources["i-1"] = managed("web-0", "i-1", team=team)
            await env.cycle(config_text("{type: ec2, name: web, tags: {team: e}}"))
        await env.views.catch_up()
        dropped = await env.views.query(lambda db: compact(db, keep=2))
        versions = await env.views.query(lambda db: db.execute(
            "SELECT version FROM resource_versions WHERE resource_id = 'web-0'"
            " ORDER BY version").fetchall())
        now = await env.views.query(lambda db: current(db))
    assert dropped == 3
    assert versions == [(4,), (5,)]
    assert [s.resource.tags["team"] for s in now] == ["e"]


@pytest.mark.asyncio
async def test_state_by_owner(tmp_path: Path) -> None:
    estate = [managed("web-0", "i-1"), managed("x-0", "i-2", owner="other"), unmanaged("i-3")]
    async with environment(tmp_path, *estate) as env:
        await env.cycle(config_text("{type: ec2, name: web, size: t3.micro}"))
        await env.views.catch_up()
        ours = await env.views.query(lambda db: current(db, owner="ovi"))
        theirs = await env.views.query(lambda db: current(db, owner="other"))
    assert [s.resource.cloud_id for s in ours] == ["i-1"]
    assert [s.resource.cloud_id for s in theirs] == ["i-2"]


@pytest.mark.asyncio
async def test_state_at_time_matches_state_at_revision(tmp_path: Path, log_backend: str) -> None:
    async with environment(tmp_path, managed("web-0", "i-1", team="a"),
                           backend=log_backend) as env:
        await env.cycle(config_text("{type: ec2, name: web}"))
        moment = env.clock.now
        revision = await env.store.last_position()
        env.clock.advance(hours=1)
        env.provider.resources["i-1"] = managed("web-0", "i-1", team="b")
        await env.cycle(config_text("{type: ec2, name: web}"))
        await env.views.catch_up()
        by_time = await env.views.query(lambda db: state_at_time(db, moment))
        by_rev = await env.views.query(lambda db: state_at(db, revision))
    assert by_time == by_rev
    assert [s.resource.tags["team"] for s in by_rev] == ["a"]


# One step of a generated history: the estate the fake cloud holds for a cycle.
estates = st.lists(
    st.tuples(
        st.sampled_from(["web-0", "web-1", "web-2", "old-0", "i-x", "i-y"]),
        st.sampled_from(["a", "b"]),
        st.sampled_from([ResourceType.EC2, ResourceType.S3]),
    ),
    max_size=5,
)
configs = st.sampled_from([
    "{type: ec2, name: web, count: 2, tags: {team: a}}",
    "{type: ec2, name: web, count: 3, tags: {team: b}}",
    "{type: s3, name: web, count: 1}",
])


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(history=st.lists(st.tuples(estates, configs, st.booleans()), min_size=1, max_size=5),
       loop=st.sampled_from(sorted(LOOPS)))
def test_rebuild_equals_incremental_over_generated_cycles(
    tmp_path_factory: pytest.TempPathFactory,
    history: list[tuple[list[tuple[str, str, ResourceType]], str, bool]],
    loop: str,
) -> None:
    tmp_path = tmp_path_factory.mktemp("cycles")

    async def scenario() -> None:
        async with environment(tmp_path) as env:
            for estate, spec, catch_up in history:
                env.provider.resources = {}
                for name, team, type_ in estate:
                    resource = (managed(name, f"c-{name}-{type_}", type_=type_, team=team)
                                if not name.startswith("i-")
                                else unmanaged(f"{name}-{type_}", type_=type_))
                    env.provider.resources[resource.cloud_id] = resource
                env.clock.advance(minutes=3)
                await env.cycle(config_text(spec, rules="grace_period: 5m"))
                if catch_up:
                    await env.views.catch_up()
            await env.views.catch_up()
            incremental = await env.views.query(lambda db: dump(db, TABLES))
        store_path = tmp_path / "ovi.db"
        async with SQLiteEventStore(store_path, registry()) as store, ProjectionRunner(
            store, tmp_path / "rebuilt.db", [ResourcesProjection(), FindingsProjection()]
        ) as views:
            await views.catch_up()
            rebuilt = await views.query(lambda db: dump(db, TABLES))
            await views.rebuild()
            rebuilt_in_place = await views.query(lambda db: dump(db, TABLES))
        assert rebuilt == incremental
        assert rebuilt_in_place == incremental

    runner = asyncio.Runner(loop_factory=LOOPS[loop])
    with runner:
        runner.run(scenario())

