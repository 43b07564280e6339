"""Hostile review of the shared log's mirrors (issue 12): what breaks them.

Each test here states how a mirror should behave; the ones marked
``xfail(strict=True)`` are problems found and not fixed yet (the reason says
what happens instead).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from eventstore import EventStoreError, MirroredStore, SQLiteEventStore, StreamBatch
from eventstore.postgres import PostgresEventStore
from tests.eventstore.sample_events import Ping, sample_registry
from tests.postgres import PostgresSchema

pytestmark = pytest.mark.asyncio


def host(schema: PostgresSchema, mirror: Path, name: str) -> MirroredStore:
    shared = PostgresEventStore(schema.server_dsn, sample_registry(), schema=schema.name,
                                instance_id=name)
    return MirroredStore(shared, SQLiteEventStore(mirror, sample_registry(), instance_id=name))


async def test_two_processes_sharing_a_mirror_file_both_catch_up(
    postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    async with host(postgres_schema, tmp_path / "other.db", "host-b:1") as other, \
            host(postgres_schema, tmp_path / "mirror.db", "host-a:1") as service, \
            host(postgres_schema, tmp_path / "mirror.db", "host-a:2") as operator:
        for round_ in range(3):
            # Another host appends; both processes of host A look at once.
            await other.append_streams(StreamBatch(f"s-{round_}-{i}", (Ping(n=i),))
                                       for i in range(2_000))
            heads = await asyncio.gather(service.last_position(), operator.last_position(),
                                         return_exceptions=True)
            errors = [h for h in heads if isinstance(h, EventStoreError)]
            assert not errors, f"round {round_}: {errors[0]!r}"
            assert list(heads) == [2_000 * (round_ + 1)] * 2


async def test_a_mirror_file_opened_as_a_log_of_its_own_refuses_appends(
    postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    async with host(postgres_schema, tmp_path / "mirror.db", "host-a:1") as a:
        await a.append("claim/web-0", [Ping(n=1)])
    async with SQLiteEventStore(tmp_path / "mirror.db", sample_registry()) as local:
        assert await local.last_position() == 1  # reading it offline is what it is for
        with pytest.raises(EventStoreError, match="mirror"):
            await local.append("claim/web-0", [Ping(n=2)], expected_version=1)
    async with host(postgres_schema, tmp_path / "mirror.db", "host-a:1") as a:
        assert await a.last_position() == 1
