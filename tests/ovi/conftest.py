"""The engine suite's fixtures."""

from __future__ import annotations

import pytest

from tests.ovi.harness import LOG_BACKENDS


@pytest.fixture(params=LOG_BACKENDS)
def log_backend(request: pytest.FixtureRequest) -> str:
    """The log a store-touching test runs on: ``sqlite`` or ``postgres-mirror``
    (skipped, saying why, without ``$OVI_TEST_POSTGRES_DSN``)."""
    return str(request.param)
