"""The application layer: what ``plan``, ``apply``, ``approve``, ``adopt`` and
``demo`` do, shared by every front end. The CLI only parses arguments and prints; the demo
only narrates.
"""

from __future__ import annotations

import getpass
import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio
import msgspec

from ovi._exceptions import OviError
from ovi.config import load_config
from ovi.engine import CycleResult, Engine
from ovi.events import AdoptionGranted, ApprovalGranted, resource_stream
from ovi.model import CycleMode, Decision
from ovi.runtime import Runtime, open_runtime
from projections.findings import find_decision, open_findings

__all__ = ["AdoptionTarget", "approve_decision", "grant_adoption", "run_once"]

# What a desired id looks like (config names, then -<index>): never a "/".
_DESIRED_ID = re.compile(r"[a-z][a-z0-9-]*[a-z0-9]")


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


class AdoptionTarget(msgspec.Struct, frozen=True):
    """The resource an ``ovi adopt`` grant names, as the log knows it."""

    identity: str
    cloud_id: str
    scope: str


async def grant_adoption(
    store_path: Path, resource: str, *, as_id: str, by: str | None = None
) -> tuple[AdoptionTarget, str]:
    """Record a person's grant that lets the next cycle adopt the unmanaged
    ``resource`` (its identity, ``aws/us-east-1/ec2/i-0abc``, or its cloud id)
    as the desired ``as_id``; returns the resource and who granted it.

    :raises OviError: if there is no log, ``as_id`` is no desired id, or the
        log knows no such unmanaged resource (one cycle must have seen it).
    """
    if not _DESIRED_ID.fullmatch(as_id):
        raise OviError(f"--as {as_id!r}: expected a desired id like web-0 (lowercase letters,"
                       " digits and '-', as the config makes them)")
    if not await anyio.Path(store_path).exists():
        raise OviError(f"{store_path}: no event log here (run `ovi plan` first)")
    async with open_runtime(store_path) as runtime:
        await runtime.views.catch_up()
        target = await runtime.views.query(lambda db: _adoption_target(db, resource))
        if target is None:
            raise OviError(f"no resource {resource!r} in {store_path}: give its identity as"
                           " `ovi plan` shows it (aws/REGION/TYPE/CLOUD_ID) or its cloud id;"
                           " a cycle must have observed it")
        if "/" not in target.identity:
            raise OviError(f"{resource} is known as {target.identity!r}, not as a resource Ovi"
                           " does not manage (run `ovi plan` to see it as it is now)")
        who = by or getpass.getuser()
        await runtime.store.append(resource_stream(as_id), [AdoptionGranted(
            resource_id=as_id, identity=target.identity, cloud_id=target.cloud_id, by=who,
            at=datetime.now(UTC))])
    return target, who


def _adoption_target(db: sqlite3.Connection, text: str) -> AdoptionTarget | None:
    rows = db.execute(
        'SELECT resource_id, cloud_id, scope FROM resource_rows WHERE "exists" = 1'
        " AND (resource_id = ? OR cloud_id = ?) ORDER BY resource_id", (text, text)).fetchall()
    exact = [r for r in rows if r[0] == text]
    if exact or len(rows) == 1:
        row = (exact or rows)[0]
        return AdoptionTarget(row[0], row[1], row[2])
    if rows:
        names = ", ".join(r[0] for r in rows)
        raise OviError(f"cloud id {text!r} names several resources ({names}): give its identity")
    return None
