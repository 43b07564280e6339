"""``why`` and ``state`` on the story log, as child processes and in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovi.events import ActionExecuted
from ovi.replay import explain
from tests.ovi.harness import config_text, environment, managed
from tests.replay.support import Story, json_object, replay


def test_why_a_deleted_resource_shows_approval_config_and_outcome(story: Story) -> None:
    done = replay("why", "i-old", store=story.path)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith("Why Ovi decided to delete old-0 (cloud id i-old)")
    assert "done: delete executed" in text
    assert "granted by alice" in text
    assert f"config version {story.config_hash[:16]} from test.yaml" in text
    assert "unwanted: managed by Ovi but no longer in the config" in text
    # Seeded by hand: the log never saw Ovi create old-0, so a person approves its delete.
    assert "waiting for a person's approval (rule unrecorded_origin)" in text
    assert "provenance: unrecorded" in text
    assert "ready to run (rule unwanted→delete)" in text
    assert "i-old was no longer found in aws/us-east-1/ec2" in text
    assert story.old_decision in text and story.cycles[2] in text
    assert len(text.splitlines()) <= 40  # one screen


def test_why_json_carries_the_whole_chain(story: Story) -> None:
    chain = json_object(replay("why", "old-0", "--json", store=story.path))
    assert chain["resource_id"] == "old-0" and chain["cloud_id"] == "i-old"
    assert chain["decision"]["decision_id"] == story.old_decision
    assert [s["event"]["decision"]["status"] for s in chain["decided"]] == [
        "awaiting_approval", "ready"]
    assert [s["event"]["by"] for s in chain["approvals"]] == ["alice"]
    assert chain["config_source"]["event"]["config_hash"] == story.config_hash
    assert chain["config_source"]["event"]["source"] == "test.yaml"
    assert [s["type"] for s in chain["actions"]] == [
        "ActionSkipped", "ActionExecuting", "ActionExecuted"]
    assert [s["type"] for s in chain["evidence"]] == ["ResourceObserved",
                                                      "ObservationCompleted"]
    assert chain["claims"][0]["event"]["token"] == chain["actions"][1]["event"]["token"]
    assert chain["cycle"]["event"]["mode"] == "apply"
    assert [s["type"] for s in chain["afterwards"]] == ["ResourceDisappeared", "DiffResolved"]


def test_why_errors_name_what_is_wrong(story: Story) -> None:
    unknown = replay("why", "no-such-thing", store=story.path)
    assert unknown.returncode == 1 and "no-such-thing" in unknown.stderr
    wrong = replay("why", "old-0", "--decision", "d-000000000000", store=story.path)
    assert wrong.returncode == 1 and story.old_decision in wrong.stderr
    never = replay("why", "web-0", store=story.path)  # in sync: never decided about
    assert never.returncode == 1 and "never recorded a decision" in never.stderr
    for done in (unknown, wrong, never):
        assert "Traceback" not in done.stderr and done.stdout == ""


def test_state_at_a_revision_is_what_was_observed_then(story: Story) -> None:
    then = json_object(replay("state", "--at", str(story.revision_1), "--json",
                              store=story.path))
    assert then["revision"] == story.revision_1
    assert [(r["id"], r["cloud_id"], r["size"], r["tags"]) for r in then["resources"]] == [
        (r.id, r.cloud_id, r.size, r.tags) for r in story.estate_1]
    assert all(r["exists"] and r["rev"] <= story.revision_1 for r in then["resources"])
    now = json_object(replay("state", "--json", store=story.path))
    assert sorted(r["id"] for r in now["resources"]) == [
        "aws/us-east-1/ec2/i-stray", "web-0", "web-1"]
    every = json_object(replay("state", "--all", "--json", store=story.path))
    gone = [r for r in every["resources"] if not r["exists"]]
    assert [(r["id"], r["cloud_id"]) for r in gone] == [("old-0", "i-old")]


def test_state_at_a_time_and_in_text(story: Story) -> None:
    by_time = json_object(replay("state", "--at", "2026-11-26T12:03:30", "--json",
                                 store=story.path))
    # deleted by then: gone at the delete's revision, known from the action
    assert "old-0" not in [r["id"] for r in by_time["resources"]]
    with_gone = json_object(replay("state", "--at", "2026-11-26T12:03:30", "--all", "--json",
                                   store=story.path))
    (old,) = [r for r in with_gone["resources"] if r["id"] == "old-0"]
    assert (old["exists"], old["known_from"]) == (False, "action")
    before = json_object(replay("state", "--at", "2026-11-26T11:00:00Z", "--json",
                                store=story.path))
    assert before == {"revision": 0, "resources": []}
    text = replay("state", "--at", str(story.revision_1), store=story.path)
    assert text.returncode == 0
    header, *rows, footer = text.stdout.splitlines()
    assert header.split() == ["ID", "CLOUD", "ID", "TYPE", "REGION", "SIZE", "OWNER",
                              "EXISTS", "REV"]
    assert [row.split()[0] for row in rows] == ["aws/us-east-1/ec2/i-stray", "old-0", "web-0"]
    assert footer.startswith(f"3 resources at revision {story.revision_1}")
    beyond = replay("state", "--at", "99999", store=story.path)
    assert beyond.returncode == 1 and "beyond the log's head" in beyond.stderr


@pytest.mark.asyncio
async def test_explain_an_update_in_process(tmp_path: Path) -> None:
    config = config_text("{type: ec2, name: web, tags: {team: a}}")
    async with environment(tmp_path, managed("web-0", "i-1", team="b")) as env:
        await env.apply(config)
        chain = await explain(env.store, "web-0")
    assert chain.decision.action == "update" and chain.cloud_id == "i-1"
    assert [c.field for c in chain.decision.diff.changes] == ["tags.team"]
    assert isinstance(chain.actions[-1].event, ActionExecuted)
    assert chain.approvals == [] and len(chain.claims) == 2  # acquired, released


@pytest.mark.asyncio
async def test_explain_names_a_given_older_decision(tmp_path: Path) -> None:
    async with environment(tmp_path, managed("old-0", "i-old", team="a")) as env:
        first = await env.cycle(config_text())
        env.provider.resources["i-old"] = managed("old-0", "i-old", team="b")
        await env.cycle(config_text())
        older = first.decisions[0].decision_id
        chain = await explain(env.store, "old-0", older)
        latest = await explain(env.store, "old-0")
    assert chain.decision.decision_id == older and chain.other_decisions
    assert latest.decision.decision_id != older
    assert latest.other_decisions == [older]


def test_a_cloud_id_names_the_resource_it_is_known_by(story: Story) -> None:
    # i-stray is nobody's: known as aws/us-east-1/ec2/i-stray, found by its cloud id.
    done = replay("timeline", "i-stray", store=story.path)
    assert done.returncode == 0, done.stderr
    assert "aws/us-east-1/ec2/i-stray" in done.stdout
