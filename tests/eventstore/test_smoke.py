from __future__ import annotations

from pathlib import Path

import pytest

from eventstore import Event, EventRegistry, SQLiteEventStore


class Ping(Event, frozen=True):
    n: int


@pytest.mark.asyncio
async def test_append_and_read_back(tmp_path: Path) -> None:
    async with SQLiteEventStore(tmp_path / "log.db", EventRegistry([Ping])) as store:
        await store.append("s", [Ping(n=1), Ping(n=2)])
        events = [e.event async for e in store.read()]
    assert events == [Ping(n=1), Ping(n=2)]
