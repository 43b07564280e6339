"""The service loop in one process, with a fake provider: the provider is
rebuilt when a reload changes what it is built from."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from ovi.config import Config
from ovi.engine import CycleResult
from ovi.providers.base import Provider
from ovi.providers.fake import FakeProvider
from ovi.service import ProviderSource, Service, ServiceSettings
from ovi.servicelog import LogFormat, ServiceLog

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
