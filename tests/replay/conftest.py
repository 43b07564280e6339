"""The story log, built once by real cycles and shared by the tests; those
that tamper with a log work on a copy."""

from __future__ import annotations

import pytest

from tests.replay.support import Story, build_story


@pytest.fixture(scope="session")
def story(tmp_path_factory: pytest.TempPathFactory) -> Story:
    return build_story(tmp_path_factory.mktemp("story"))
