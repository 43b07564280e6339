"""The application layer: what ``plan``, ``apply``, ``approve`` and ``demo`` do,
shared by every front end. The CLI only parses arguments and prints; the demo
only narrates.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio

from ovi._exceptions import OviError
from ovi.config import load_config
from ovi.engine import CycleResult, Engine
from ovi.events import ApprovalGranted, resource_stream
from ovi.model import CycleMode, Decision
from ovi.runtime import Runtime, open_runtime
from projections.findings import find_decision, open_findings

__all__ = ["approve_decision", "run_once"]


def _quiet(message: str) -> None:
    """The default progress sink: say nothing."""


async def run_once(
    config_path: Path,
    store_path: Path,
    *,
    mode: CycleMode,
    dry_run: bool = False,
    max_concurrency: int | None = None,
    progress: Callable[[str], None] = _quiet,
) -> CycleResult:
    """Load the config (nothing happens if it is invalid), then run one cycle
    against AWS. ``progress`` hears what is worth telling a person waiting."""
    from ovi.providers.aws import AWSProvider  # the only path that needs the AWS SDK

    config = load_config(config_path)
    progress(f"{mode}: {len(config.desired_resources())} desired resources, log {store_path}")
    async with open_runtime(store_path) as runtime, AWSProvider.from_config(config) as provider:
        events = await runtime.store.last_position()
        if runtime.views.reset_on_open and events:
            progress(f"rebuilding projections ({', '.join(runtime.views.reset_on_open)})"
                     f" from {events:,} events first: their tables changed (once)")
        engine = Engine(runtime.store, runtime.views, provider)
        return await engine.run_cycle(config, source=str(config_path), mode=mode,
                                      dry_run=dry_run, max_concurrency=max_concurrency)


async def approve_decision(
    store_path: Path, decision_id: str, *, by: str | None = None
) -> tuple[Decision, str]:
    """Record a person's approval of a decision that is still in force; returns
    the decision and who approved it.

    :raises OviError: if there is no log, no such decision, or the decision is
        no longer in force (its finding changed or was resolved).
    """
    if not await anyio.Path(store_path).exists():
        raise OviError(f"{store_path}: no event log here (run `ovi plan` first)")
    async with open_runtime(store_path) as runtime:
        decision = await _decision_in_force(runtime, store_path, decision_id)
        who = by or getpass.getuser()
        await runtime.store.append(resource_stream(decision.resource_id), [ApprovalGranted(
            decision_id=decision.decision_id, resource_id=decision.resource_id, by=who,
            at=datetime.now(UTC))])
    return decision, who


async def _decision_in_force(runtime: Runtime, store_path: Path, decision_id: str) -> Decision:
    await runtime.views.catch_up()
    decision = await runtime.views.query(lambda db: find_decision(db, decision_id))
    if decision is None:
        raise OviError(f"unknown decision id {decision_id!r} in {store_path}"
                       " (`ovi plan` lists the decisions in force)")
    findings = await runtime.views.query(open_findings)
    current = findings.get(decision.resource_id)
    if current is None or current.decision is None or \
            current.decision.decision_id != decision.decision_id:
        raise OviError(f"decision {decision.decision_id} is no longer in force: the finding"
                       " behind it changed or was resolved (run `ovi plan` again)")
    return decision
