"""Hostile review (issue 12): the service on a shared PostgreSQL log, in one
process with a fake provider, while another host running a newer Ovi writes
to the same log.

Tests marked ``xfail(strict=True)`` are problems found and not fixed yet; the
reason says what happens instead.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from eventstore import Event, EventRegistry
from eventstore.postgres import PostgresEventStore
from ovi.config import Config
from ovi.events import OVI_EVENTS
from ovi.model import Resource, Scope, Unreadable
from ovi.providers.base import Provider
from ovi.providers.fake import FakeProvider
from ovi.service import ProviderSource, Service, ServiceSettings
from ovi.servicelog import LogFormat, ServiceLog
from tests.postgres import PostgresSchema

pytestmark = pytest.mark.asyncio

CONFIG = ("version: v1\nprovider: aws\nregion: us-east-1\nowner: ovi\n"
          "resources: [{type: s3, name: assets}]\n")


class EstateFrozen(Event, frozen=True):
    """What a newer Ovi might write instead of a pause this one knows."""

    reason: str


class NewerHostWritesDuringObservation(FakeProvider):
    """The estate, observed while another host (a newer Ovi) appends a type
    this Ovi does not know to the shared log: after the cycle's start, before
    its execution."""

    def __init__(self, schema: PostgresSchema) -> None:
        super().__init__()
        self.schema = schema
        self.written = False

    async def observe(self, scope: Scope) -> Sequence[Resource | Unreadable]:
        if not self.written:
            self.written = True
            newer = EventRegistry((*OVI_EVENTS, EstateFrozen))
            async with PostgresEventStore(self.schema.server_dsn, newer,
                                          schema=self.schema.name) as log:
                await log.append("freeze/*", [EstateFrozen(reason="incident")])
        return await super().observe(scope)


async def test_an_unknown_type_appended_during_a_cycle_stops_its_execution(
    postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    config_path = tmp_path / "ovi.yaml"
    config_path.write_text(CONFIG)
    estate = NewerHostWritesDuringObservation(postgres_schema)

    @asynccontextmanager
    async def provider(config: Config) -> AsyncIterator[Provider]:
        yield estate

    settings = ServiceSettings(config_path=config_path, store_path=postgres_schema.dsn,
                               mirror_path=tmp_path / "mirror.db", interval=0.05,
                               metrics_host=None, max_cycles=1, jitter=0.0)
    service = Service(settings, provider=ProviderSource(provider, lambda c: 0),
                      log=ServiceLog(LogFormat.JSON, stream=io.StringIO(), journald=False))
    assert await service.run() == 0
    assert estate.written
    assert [call for call in estate.calls if call[0] == "create"] == []
