"""Shared test configuration.

Every async test runs on asyncio and on uvloop. Tests that talk to "AWS" ask
for ``moto_endpoint``: one moto server on loopback for the whole session; those
that need AWS to misbehave ask for ``fault_proxy`` (tests/fault_proxy.py).
Tests that need PostgreSQL ask for ``postgres_schema``: a schema of their own
on the server ``$OVI_TEST_POSTGRES_DSN`` names (they skip without it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

from tests.fault_proxy import fault_proxy as fault_proxy
from tests.moto_server import moto_endpoint as moto_endpoint
from tests.postgres import log_backend as log_backend
from tests.postgres import postgres_schema as postgres_schema


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
