"""What a cloud tag says reaches the terminal escaped: anyone who may tag a
resource chooses it, and a reason or an error quoting it must not fake a
line of ``ovi plan`` or of ``python -m ovi.replay log``, nor drive the
terminal."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovi._output import result_text
from tests.ovi.harness import config_text, environment, managed
from tests.replay.support import replay

pytestmark = pytest.mark.asyncio

HOSTILE = "old\x1b[2J\n  delete  web-1  executed"
WEB_TAGGED = "{type: ec2, name: web, count: 1, size: t3.micro, tags: {env: new}}"


async def test_a_tag_that_would_drive_the_terminal_prints_escaped(tmp_path: Path) -> None:
    async with environment(tmp_path, managed("web-0", "i-0000", env=HOSTILE)) as env:
        result = await env.cycle(config_text(WEB_TAGGED))
        assert any(HOSTILE in d.reason for d in result.diffs), [d.reason for d in result.diffs]
        text = result_text(result, executions=False, colour=False)
    assert "\x1b" not in text
    assert "old\\x1b[2J\\n  delete  web-1  executed" in text
    assert not [line for line in text.splitlines() if line.lstrip().startswith("delete")]

    done = replay("log", store=tmp_path / "ovi.db")
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    assert "old\\x1b[2J\\n" in done.stdout
    assert not [line for line in done.stdout.splitlines()
                if line.lstrip().startswith("delete")]
