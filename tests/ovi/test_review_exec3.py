"""Hostile review 3 (commits 74b4deb, 74bce75): shielded claims/renewals and
claims in doubt. A passing test means the code held; a failing one proves a bug."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from eventstore import BackendError, StreamBatch
from ovi.events import ActionExecuted, ActionExecuting, ActionFailed, ClaimReleased
from tests.ovi.harness import config_text, environment, managed
from tests.ovi.test_review_shares import WEB_TAGGED, _twice_on, on_append

pytestmark = pytest.mark.asyncio


def released_with_open_action(events: list[Any]) -> list[str]:
    """Resources whose claim was released while a write-ahead under its token had no outcome."""
    opened: dict[tuple[str, int], set[str]] = {}
    bad = []
    for e in events:
        ev = e.event
        if isinstance(ev, ActionExecuting):
            opened.setdefault((ev.resource_id, ev.token), set()).add(ev.decision_id)
        elif isinstance(ev, ActionExecuted | ActionFailed):
            opened.get((ev.resource_id, ev.token), set()).discard(ev.decision_id)
        elif isinstance(ev, ClaimReleased) and opened.get((ev.resource_id, ev.token)):
            bad.append(ev.resource_id)
    return bad


# -- a non-last outcome that could not be recorded ---------------------------------


async def test_a_non_last_outcome_not_recorded_does_not_let_the_claim_go_with_it_open(
    tmp_path: Path
) -> None:
    """web-0 has two decisions. The first acts; its outcome (fenced, the
    claim kept) cannot be written (BackendError). Its action is in doubt.
    The claim must not be released while that write-ahead has no outcome,
    and the second decision must not act on a resource whose first action is
    in doubt."""
    async with environment(tmp_path, managed("web-0", "i-0000", env="old")) as env:
        _twice_on(env, "web-0")
        failed = [0]

        def fail_first_outcome(batches: list[StreamBatch]) -> None:
            events = [e for b in batches for e in b.events]
            if (not failed[0] and any(isinstance(e, ActionExecuted) for e in events)
                    and not any(isinstance(e, ClaimReleased) for e in events)):
                failed[0] += 1
                raise BackendError("disk I/O error")

        with on_append(env.store, fail_first_outcome):
            result = await env.apply(config_text(WEB_TAGGED % 1), max_concurrency=1)
        events = await env.events()
    assert failed[0] == 1, "the first decision's outcome was never appended"
    seconds = [e for e in result.executions if e.decision_id.endswith("-second")]
    calls = [e for e in events if isinstance(e.event, ActionExecuting)
             and e.event.resource_id == "web-0"]
    assert released_with_open_action(events) == [], (
        f"web-0's claim released with the first decision's write-ahead open;"
        f" second: {seconds}")
    assert len(calls) == 1, f"second decision acted while the first was in doubt: {seconds}"
