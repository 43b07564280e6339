"""Claims between hosts that share a PostgreSQL log: judged by one clock."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from ovi.config import parse_config
from ovi.coordinator import Coordinator
from ovi.engine import Engine
from ovi.model import CycleMode
from ovi.providers.fake import FakeProvider
from ovi.runtime import open_runtime
from tests.ovi.harness import config_text
from tests.postgres import PostgresSchema

pytestmark = pytest.mark.asyncio

WEB = "{type: ec2, name: web, count: 1, size: t3.micro}"


async def test_a_host_whose_clock_runs_five_minutes_fast_cannot_take_over_a_live_claim(
    postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    dsn = postgres_schema.dsn
    async with open_runtime(dsn, mirror=tmp_path / "a.db", instance_id="host-a:7:aa") as a, \
            open_runtime(dsn, mirror=tmp_path / "b.db", instance_id="host-b:7:bb") as b:
        # Host A holds web-0 for two minutes, by the server's clock.
        holder = Coordinator(a.store, a.views, ttl=timedelta(minutes=2))
        held = (await holder.claim(["web-0"])).held["web-0"]
        # Host B's clock may run five minutes ahead (by it, A's claim ran out):
        # nothing of B's cycle reads it. The engine, like the claims, reads the
        # store's clock, the server's (test_shared_log_hostile.py moves the two).
        provider = FakeProvider()
        engine = Engine(b.store, b.views, provider, claim_ttl=timedelta(minutes=2))
        result = await engine.run_cycle(parse_config(config_text(WEB), "test.yaml"),
                                        source="test.yaml", mode=CycleMode.APPLY)
        assert [(e.outcome, e.reason) for e in result.executions] == [("skipped", "claimed")]
        assert provider.resources == {}
        contender = Coordinator(b.store, b.views, ttl=timedelta(minutes=2))
        assert (await contender.claim(["web-0"])).blocked == {"web-0": "host-a:7:aa"}
        # The holder's claim is still its own: it renews, and stays usable.
        await holder.renew([held])
        assert not held.lost and await holder.usable(held)
