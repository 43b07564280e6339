"""The service loop in one process, with a fake provider: the provider is
rebuilt when a reload changes what it is built from."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from eventstore import MirroredStore, SQLiteEventStore
from ovi.config import Config, load_config
from ovi.engine import CycleResult, Engine
from ovi.events import registry
from ovi.model import CycleMode, DesiredResource, Resource
from ovi.providers.base import Provider
from ovi.providers.fake import FakeProvider
from ovi.runtime import Runtime, open_runtime, ovi_projections
from ovi.service import ProviderSource, Service, ServiceSettings
from ovi.servicelog import LogFormat, ServiceLog
from projections import ProjectionRunner
from tests.postgres import PostgresSchema

pytestmark = pytest.mark.asyncio

CONFIG = "version: v1\nprovider: aws\nregion: us-east-1\nowner: {owner}\nresources: []\n"


async def test_a_reload_that_changes_the_owner_rebuilds_the_provider(tmp_path: Path) -> None:
    config_path = tmp_path / "ovi.yaml"
    config_path.write_text(CONFIG.format(owner="team-a"))
    opened: list[tuple[str, FakeProvider]] = []
    closed: list[str] = []

    @asynccontextmanager
    async def open_provider(config: Config) -> AsyncIterator[Provider]:
        provider = FakeProvider()
        opened.append((config.owner, provider))
        try:
            yield provider
        finally:
            closed.append(config.owner)

    log = io.StringIO()
    settings = ServiceSettings(config_path=config_path, store_path=tmp_path / "ovi.db",
                               interval=0.05, metrics_host=None, max_cycles=4, jitter=0.0)

    async def after(result: CycleResult) -> None:
        if service.cycles == 1:
            config_path.write_text(CONFIG.format(owner="team-b"))
            service._reload()

    service = Service(settings, provider=ProviderSource(open_provider, lambda c: c.owner),
                      log=ServiceLog(LogFormat.JSON, stream=log, journald=False),
                      on_cycle=after)
    assert await service.run() == 0
    assert [owner for owner, _ in opened] == ["team-a", "team-b"]
    assert closed == ["team-a", "team-b"]  # the old one closed at the rebuild, the new at exit
    first, second = (provider for _, provider in opened)
    assert {kind for kind, _ in first.calls} == {"observe"}
    assert len(second.calls) >= len(first.calls)  # cycles 2 to 4 observed through the new one
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [line["msg"] for line in lines if line["event"] == "reload"] == [
        "config reloaded", "provider rebuilt for the new config"]


class _Hanging(FakeProvider):
    """A create that never returns: the process 'dies' between write-ahead and outcome."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = anyio.Event()

    async def create(self, desired: DesiredResource, *, decision_id: str,
                     owner: str, attempt: int = 1, token_unused: bool = False) -> Resource:
        self.entered.set()  # the write-ahead is durable by now
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


async def test_actions_left_in_doubt_are_resolved_before_ready(tmp_path: Path) -> None:
    config_path = tmp_path / "ovi.yaml"
    config_path.write_text(CONFIG.format(owner="ovi").replace(
        "resources: []", "resources: [{type: s3, name: assets}]"))
    store = tmp_path / "ovi.db"
    # An earlier process, an hour ago: its claim has long expired. (Claims
    # are judged by the store's clock, so that is the clock set back.)
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    async with SQLiteEventStore(store, registry(), clock=lambda: an_hour_ago) as earlier, \
            ProjectionRunner(earlier, store, ovi_projections()) as views:
        runtime = Runtime(earlier, views)
        hanging = _Hanging()
        engine = Engine(runtime.store, runtime.views, hanging)
        async with anyio.create_task_group() as group:
            async def cycle() -> None:
                await engine.run_cycle(load_config(config_path), source="ovi.yaml",
                                       mode=CycleMode.APPLY)

            group.start_soon(cycle)
            await hanging.entered.wait()
            group.cancel_scope.cancel()  # the process "dies" mid-call
        types = [e.type async for e in runtime.store.read()]
    assert "ActionExecuting" in types and "ActionFailed" not in types  # in doubt

    @asynccontextmanager
    async def fake(config: Config) -> AsyncIterator[Provider]:
        yield FakeProvider()

    log = io.StringIO()
    service = Service(ServiceSettings(config_path=config_path, store_path=store, interval=0.05,
                                      metrics_host=None, max_cycles=1),
                      provider=ProviderSource(fake, lambda c: 0),
                      log=ServiceLog(LogFormat.JSON, stream=log, journald=False))
    assert await service.run() == 0
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    events = [line["event"] for line in lines]
    ready = lines[events.index("ready")]
    assert ready["recovered"] == 1 and events.index("ready") < events.index("cycle")
    async with open_runtime(store) as runtime:
        recorded = [e async for e in runtime.store.read()]
    failed = next(e for e in recorded if e.type == "ActionFailed")
    first_service_cycle = [e for e in recorded if e.type == "CycleStarted"][1]
    assert failed.event.interrupted and failed.position < first_service_cycle.position


async def test_the_service_runs_on_a_shared_log_through_its_mirror(
    tmp_path: Path, postgres_schema: PostgresSchema
) -> None:
    config_path = tmp_path / "ovi.yaml"
    config_path.write_text(CONFIG.format(owner="ovi").replace(
        "resources: []", "resources: [{type: s3, name: assets}]"))
    mirror = tmp_path / "mirror.db"

    @asynccontextmanager
    async def fake(config: Config) -> AsyncIterator[Provider]:
        yield FakeProvider()

    log = io.StringIO()
    service = Service(ServiceSettings(config_path=config_path, store_path=postgres_schema.dsn,
                                      mirror_path=mirror, interval=0.05, metrics_host=None,
                                      max_cycles=2),
                      provider=ProviderSource(fake, lambda c: 0),
                      log=ServiceLog(LogFormat.JSON, stream=log, journald=False))
    assert await service.run() == 0
    assert postgres_schema.server_dsn.split("@")[-1].split("/")[0] in log.getvalue()
    async with open_runtime(postgres_schema.dsn, mirror=mirror) as runtime:
        types = [e.type async for e in runtime.store.read()]
        assert isinstance(runtime.store, MirroredStore)
        shared = [e.type async for e in runtime.store.shared.read()]
    assert types == shared and types.count("CycleStarted") == 2
    assert "ActionExecuted" in types  # the bucket was created, once
