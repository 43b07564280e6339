"""``state --at`` tells what Ovi knew: its own executed actions are versions of
the resources MVCC projection — a delete done is gone at that revision, a
create or update done is the provider's response — marked as known from the
action, until the next observation replaces them."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from ovi.events import ActionExecuted, ObservationCompleted, cycle_stream
from projections.resources import ResourceState, state_at
from tests.ovi.harness import Env, config_text, environment, managed

pytestmark = pytest.mark.asyncio

WEB = "{type: ec2, name: web, count: %d, size: t3.micro}"
QUICK = "grace_period: 0s\nrequire_approval: false"


async def _state(env: Env, *, include_gone: bool = True) -> dict[str, ResourceState]:
    await env.views.catch_up()
    head = await env.store.last_position()
    found = await env.views.query(lambda db: state_at(db, head, include_gone=include_gone))
    return {s.resource.id: s for s in found}


async def test_a_create_is_known_from_the_action_until_it_is_observed(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        await env.apply(config_text(WEB % 2))
        executed = [e.event for e in await env.events() if isinstance(e.event, ActionExecuted)]
        assert [e.resource is not None for e in executed] == [True, True]
        known = await _state(env)
        assert sorted(known) == ["web-0", "web-1"]
        assert all(s.exists and s.from_action for s in known.values())
        assert {s.resource.cloud_id for s in known.values()} == {
            e.cloud_id for e in executed}
        await env.cycle(config_text(WEB % 2))  # observed now
        seen = await _state(env)
        assert all(s.exists and not s.from_action for s in seen.values())
        assert {i: s.resource.cloud_id for i, s in seen.items()} == {
            i: s.resource.cloud_id for i, s in known.items()}


async def test_a_delete_is_gone_at_its_revision_and_stays_gone_once_observed(
    tmp_path: Path
) -> None:
    async with environment(tmp_path, managed("old-0", "i-old")) as env:
        await env.record_created(env.provider.resources["i-old"])
        await env.cycle(config_text(WEB % 0, rules=QUICK))
        before = await _state(env)
        assert before["old-0"].exists and not before["old-0"].from_action
        result = await env.apply(config_text(WEB % 0, rules=QUICK))
        assert [e.outcome for e in result.executions] == ["executed"]
        after = await _state(env)
        assert not after["old-0"].exists and after["old-0"].from_action
        assert "old-0" not in await _state(env, include_gone=False)
        await env.cycle(config_text(WEB % 0, rules=QUICK))
        observed = await _state(env)
        assert not observed["old-0"].exists and not observed["old-0"].from_action


async def test_an_update_the_cloud_does_not_show_is_replaced_by_the_next_observation(
    tmp_path: Path
) -> None:
    async with environment(tmp_path) as env:
        await env.apply(config_text(WEB % 1))
        await env.cycle(config_text(WEB % 1))
        observed = (await _state(env))["web-0"]
        # An update recorded (as another instance would) that the cloud never shows:
        events = await env.events()
        last = next(e.event for e in reversed(events) if isinstance(e.event, ActionExecuted))
        assert last.resource is not None
        claimed = msgspec.structs.replace(last.resource, size="t3.large")
        await env.store.append("resource/web-0", [ActionExecuted(
            cycle_id="x", decision_id=last.decision_id, action=last.action,
            resource_id="web-0", cloud_id=last.cloud_id, token=last.token,
            resource=claimed)])
        told = (await _state(env))["web-0"]
        assert told.from_action and told.resource.size == "t3.large"
        await env.cycle(config_text(WEB % 1))  # the scope, seen whole: nothing new
        again = (await _state(env))["web-0"]
        assert not again.from_action and again.resource.size == observed.resource.size


async def test_an_observation_that_missed_two_creates_of_its_scope_folds(
    tmp_path: Path
) -> None:
    # An observation of an older log, which says nothing of when its listing
    # began (no observed_after), completed after this host created web-0 and
    # web-1: both pending versions end at its one revision.
    async with environment(tmp_path) as env:
        await env.apply(config_text(WEB % 2))
        executed = [e.event for e in await env.events() if isinstance(e.event, ActionExecuted)]
        assert executed[0].resource is not None
        await env.store.append(cycle_stream("other"), [ObservationCompleted(
            cycle_id="other", scope=executed[0].resource.scope, count=0, digest="")])
        known = await _state(env)
        head = await env.store.last_position()
        assert sorted(known) == ["web-0", "web-1"]
        assert {(s.rev, s.from_action) for s in known.values()} == {(head, False)}


async def _observation_of_their_scope(env: Env, *, began: int | None) -> None:
    """Another host's complete observation of the creates' scope that saw
    nothing of them, its listing begun when the log's head was ``began``."""
    executed = [e.event for e in await env.events() if isinstance(e.event, ActionExecuted)]
    assert executed[0].resource is not None
    await env.store.append(cycle_stream("other"), [ObservationCompleted(
        cycle_id="other", scope=executed[0].resource.scope, count=0, digest="",
        observed_after=began)])


async def test_a_listing_begun_before_the_creates_leaves_them_known_from_the_actions(
    tmp_path: Path
) -> None:
    """It could not show them: they stay what the provider's responses said."""
    async with environment(tmp_path) as env:
        await env.apply(config_text(WEB % 2))
        # Begun when this host's own listing was recorded, before its creates.
        began = next(e.position for e in await env.events()
                     if isinstance(e.event, ObservationCompleted))
        await _observation_of_their_scope(env, began=began)
        known = await _state(env)
        assert sorted(known) == ["web-0", "web-1"]
        assert all(s.exists and s.from_action for s in known.values())
        # A listing begun after them that shows nothing new ends them.
        await _observation_of_their_scope(env, began=await env.store.last_position())
        head = await env.store.last_position()
        ended = await _state(env)
        assert {(s.rev, s.exists, s.from_action) for s in ended.values()} == {
            (head, False, False)}


async def test_a_listing_begun_before_a_delete_does_not_bring_the_resource_back(
    tmp_path: Path
) -> None:
    async with environment(tmp_path, managed("old-0", "i-old")) as env:
        await env.record_created(env.provider.resources["i-old"])
        await env.cycle(config_text(WEB % 0, rules=QUICK))
        began = await env.store.last_position()
        await env.apply(config_text(WEB % 0, rules=QUICK))
        scope = next(e.event.scope for e in await env.events()
                     if isinstance(e.event, ObservationCompleted))
        await env.store.append(cycle_stream("other"), [ObservationCompleted(
            cycle_id="other", scope=scope, count=1, digest="", observed_after=began)])
        state = (await _state(env))["old-0"]
        assert not state.exists and state.from_action


async def test_a_listing_begun_on_an_empty_log_leaves_the_creates_known_from_the_actions(
    tmp_path: Path
) -> None:
    """Another host's first listing, begun before anything was recorded
    (observed_after 0, not an older log's missing value), completed after
    this host's creates: it could not show them."""
    async with environment(tmp_path) as env:
        await env.apply(config_text(WEB % 2))
        await _observation_of_their_scope(env, began=0)
        known = await _state(env)
        assert sorted(known) == ["web-0", "web-1"]
        assert all(s.exists and s.from_action for s in known.values())
