"""``backtest``: the recorded cycles replayed through another config."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovi.config import parse_config
from ovi.replay import backtest
from tests.ovi.harness import config_text, environment, managed, unmanaged
from tests.replay.support import CONFIG, Story, json_object, replay


def test_the_recorded_config_finds_no_difference(story: Story) -> None:
    done = replay("backtest", "--config", str(story.config), store=story.path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no difference" in done.stdout
    report = json_object(replay("backtest", "--config", str(story.config), "--json",
                                store=story.path))
    assert report["differs"] is False and report["cycles_compared"] == 4
    assert report["digest_mismatches"] == [] and report["unfinished_cycles"] == 0


def test_one_changed_rule_turns_the_delete_into_a_notification(story: Story,
                                                               tmp_path: Path) -> None:
    changed = tmp_path / "careful.yaml"
    changed.write_text(CONFIG + "  skip_destructive: true\n")
    done = replay("backtest", "--config", str(changed), "--json", store=story.path)
    assert done.returncode == 3, done.stderr
    report = json_object(done)
    assert report["differs"] is True
    assert {d["resource_id"] for d in report["differences"]} == {"old-0"}
    first, second = report["differences"]
    assert (first["recorded"]["action"], first["recorded"]["status"]) == (
        "delete", "awaiting_approval")
    assert (second["recorded"]["action"], second["recorded"]["status"]) == ("delete", "ready")
    for difference in report["differences"]:
        assert difference["backtest"]["action"] == "notify"
        assert difference["backtest"]["rule"] == "skip_destructive"
    assert (first["cycles"], first["first_cycle"], first["last_cycle"]) == (
        2, story.cycles[0], story.cycles[1])
    text = replay("backtest", "--config", str(changed), store=story.path)
    assert text.returncode == 3
    assert "delete ready" in text.stdout and "notify informational" in text.stdout
    since = replay("backtest", "--config", str(changed), "--json", "--since",
                   "2026-11-26T12:02:00Z", store=story.path)
    assert [d["recorded"]["status"] for d in json_object(since)["differences"]] == ["ready"]


def test_a_bad_config_is_an_error(story: Story, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("count: 2", "count: two"))
    done = replay("backtest", "--config", str(bad), store=story.path)
    assert done.returncode == 1 and str(bad) in done.stderr and "count" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.asyncio
async def test_ignoring_a_tag_removes_a_drift(tmp_path: Path) -> None:
    spec = "{type: ec2, name: web, tags: {team: a, cost: x}}"
    async with environment(tmp_path, managed("web-0", "i-1", team="a", cost="y"),
                           unmanaged("i-2")) as env:
        recorded = config_text(spec)
        for _ in range(3):
            await env.cycle(recorded)
            env.clock.advance(minutes=1)
        same = await backtest(env.store, parse_config(recorded, "same.yaml"))
        lenient = parse_config(config_text("{type: ec2, name: web, tags: {team: a}}",
                                           rules="ignore_tags: ['aws:*', cost]"), "new.yaml")
        changed = await backtest(env.store, lenient)
    assert same.differences == [] and same.cycles_replayed == 3
    (difference,) = changed.differences
    assert difference.resource_id == "web-0" and difference.cycles == 3
    assert difference.recorded is not None and difference.recorded.action == "update"
    assert difference.backtest is None
