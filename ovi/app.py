"""The application layer: what ``plan``, ``apply``, ``approve``, ``adopt`` and
``demo`` do, shared by every front end. The CLI only parses arguments and prints; the demo
only narrates.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import anyio
import msgspec

from eventstore import StreamBatch
from ovi._exceptions import OviError
from ovi.actor import check_free_text, current_actor
from ovi.compat import UnknownEventTypes
from ovi.config import load_config
from ovi.engine import CycleResult, Engine
from ovi.events import (
    PAUSE_ALL,
    Actor,
    AdoptionGranted,
    ApprovalGranted,
    AutomationPaused,
    AutomationResumed,
    pause_stream,
    resource_stream,
)
from ovi.evidence import write_anchor
from ovi.model import CycleMode, Decision
from ovi.runtime import Location, Runtime, is_shared, open_runtime, shown
from projections.findings import find_decision, open_findings
from projections.operations import Pause, pause_state

__all__ = ["AdoptionTarget", "approve_decision", "grant_adoption", "pause_automation",
           "paused_now", "resume_automation", "run_once"]

# What a desired id looks like (config names, then -<index>): never a "/".
_DESIRED_ID = re.compile(r"[a-z][a-z0-9-]*[a-z0-9]")


def _quiet(message: str) -> None:
    """The default progress sink: say nothing."""


async def run_once(
    config_path: Path,
    store_path: Location,
    *,
    mode: CycleMode,
    mirror: Path | None = None,
    dry_run: bool = False,
    max_concurrency: int | None = None,
    progress: Callable[[str], None] = _quiet,
    chain_key: bytes | None = None,
    anchor_file: Path | None = None,
) -> CycleResult:
    """Load the config (nothing happens if it is invalid), then run one cycle
    against AWS. ``progress`` hears what is worth telling a person waiting.
    With ``anchor_file``, the log's head afterwards is appended to it."""
    from ovi.providers.aws import AWSProvider  # the only path that needs the AWS SDK

    config = load_config(config_path)
    progress(f"{mode}: {len(config.desired_resources())} desired resources,"
             f" log {shown(store_path)}")
    async with open_runtime(store_path, mirror=mirror, chain_key=chain_key) as runtime, \
            AWSProvider.from_config(config) as provider:
        events = await runtime.store.last_position()
        if runtime.views.reset_on_open and events:
            progress(f"rebuilding projections ({', '.join(runtime.views.reset_on_open)})"
                     f" from {events:,} events first: their tables changed (once)")
        compat = UnknownEventTypes(runtime.store.registry.names)
        if mode is CycleMode.APPLY and not dry_run:
            await _refuse_unknown_types(runtime, store_path, compat)
        engine = Engine(runtime.store, runtime.views, provider, event_types=compat)
        result = await engine.run_cycle(config, source=str(config_path), mode=mode,
                                        dry_run=dry_run, max_concurrency=max_concurrency)
    if anchor_file is not None and result.head is not None:
        await anyio.to_thread.run_sync(write_anchor, anchor_file, result.head, store_path)
    return result


async def _refuse_unknown_types(runtime: Runtime, store_path: Location,
                                 compat: UnknownEventTypes) -> None:
    """A log holding event types this version does not know was partly
    written by a newer Ovi: acting on it could ignore, say, its pause or
    revocation. ``plan`` still plans; executing waits for an upgrade."""
    unknown = await compat.check(runtime.views)
    if unknown:
        raise OviError(
            f"{shown(store_path)} holds event types this Ovi does not know"
            f" ({', '.join(sorted(unknown))}): a newer Ovi wrote them, and acting on a log"
            " only partly understood could ignore its pauses or revocations; refusing to"
            " execute (`ovi plan` still works): upgrade this Ovi")


async def approve_decision(
    store_path: Location, decision_id: str, *, by: str | None = None,
    mirror: Path | None = None, chain_key: bytes | None = None,
) -> tuple[Decision, str]:
    """Record a person's approval of a decision that is still in force; returns
    the decision and who approved it.

    :raises OviError: if there is no log, no such decision, or the decision is
        no longer in force (its finding changed or was resolved).
    """
    await _require_log(store_path)
    actor = current_actor(by)
    async with open_runtime(store_path, mirror=mirror, chain_key=chain_key) as runtime:
        decision = await _decision_in_force(runtime, store_path, decision_id)
        await runtime.store.append(resource_stream(decision.resource_id), [ApprovalGranted(
            decision_id=decision.decision_id, resource_id=decision.resource_id, by=actor.by,
            at=datetime.now(UTC), actor=actor)])
    return decision, actor.by


async def pause_automation(
    store_path: Location, targets: Sequence[str], *, reason: str, by: str | None = None,
    mirror: Path | None = None, chain_key: bytes | None = None,
) -> tuple[list[str], Actor]:
    """Pause automation on resource ids (``["*"]``: the whole estate); returns
    the targets newly paused (one already paused is left as it is) and the
    actor recorded. Every instance sharing the log stops acting on them.

    :raises OviError: if there is no log or no target.
    """
    return await _set_paused(store_path, targets, reason=reason, by=by, paused=True,
                             mirror=mirror, chain_key=chain_key)


async def resume_automation(
    store_path: Location, targets: Sequence[str], *, reason: str = "", by: str | None = None,
    mirror: Path | None = None, chain_key: bytes | None = None,
) -> tuple[list[str], Actor]:
    """Resume automation paused by :func:`pause_automation`; returns the
    targets that were paused and are now resumed.

    :raises OviError: if there is no log, no target, or a target is not paused.
    """
    return await _set_paused(store_path, targets, reason=reason, by=by, paused=False,
                             mirror=mirror, chain_key=chain_key)


async def paused_now(store_path: Location, *, mirror: Path | None = None) -> dict[str, Pause]:
    """The pauses in force, by target."""
    await _require_log(store_path)
    async with open_runtime(store_path, mirror=mirror) as runtime:
        await runtime.views.catch_up("operations")
        return (await runtime.views.query(pause_state)).active


async def _set_paused(store_path: Location, targets: Sequence[str], *, reason: str,
                      by: str | None, paused: bool, mirror: Path | None,
                      chain_key: bytes | None) -> tuple[list[str], Actor]:
    if not targets:
        raise OviError("name the resource ids to act on, or --all for the whole estate")
    await _require_log(store_path)
    actor = current_actor(by)
    check_free_text("--reason", reason)
    async with open_runtime(store_path, mirror=mirror, chain_key=chain_key) as runtime:
        await runtime.views.catch_up("operations")
        state = await runtime.views.query(pause_state)
        now = datetime.now(UTC)
        wanted = list(dict.fromkeys(targets))
        if not paused:
            idle = [t for t in wanted if t not in state.active]
            if idle:  # checked first: nothing is resumed when one target is wrong
                what = ", ".join("the whole estate" if t == PAUSE_ALL else t for t in idle)
                raise OviError(f"{what}: not paused (paused: "
                               f"{', '.join(sorted(state.active)) or 'nothing'})")
        changed = [t for t in wanted if (t in state.active) != paused]
        kind = AutomationPaused if paused else AutomationResumed
        # One atomic append, each stream expecting the version read: two people
        # pausing at once never record a duplicate pause, and a list of targets
        # is paused all together or not at all.
        if changed:
            await runtime.store.append_streams(
                StreamBatch(pause_stream(t), (kind(target=t, reason=reason, actor=actor, at=now),),
                            expected_version=state.versions.get(t, 0))
                for t in changed)
    return changed, actor


async def _require_log(store_path: Location) -> None:
    # A shared log is created on first use like a file, but is not looked for
    # here: the server is asked once, by open_runtime.
    if not is_shared(store_path) and not await anyio.Path(store_path).exists():
        raise OviError(f"{store_path}: no event log here (run `ovi plan` first)")


async def _decision_in_force(runtime: Runtime, store_path: Location,
                             decision_id: str) -> Decision:
    await runtime.views.catch_up()
    decision = await runtime.views.query(lambda db: find_decision(db, decision_id))
    if decision is None:
        raise OviError(f"unknown decision id {decision_id!r} in {shown(store_path)}"
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
    owner: str | None  # its ovi:owner tag as last observed


async def grant_adoption(
    store_path: Location, resource: str, *, as_id: str, by: str | None = None,
    mirror: Path | None = None, chain_key: bytes | None = None,
) -> tuple[AdoptionTarget, Actor]:
    """Record a person's grant that lets the next cycle adopt the unmanaged
    ``resource`` (its identity, ``aws/us-east-1/ec2/i-0abc``, or its cloud id)
    as the desired ``as_id``; returns the resource and who granted it (the
    ``--by`` text, the OS user and the host).

    :raises OviError: if there is no log, ``as_id`` is no desired id, or the
        log knows no such unmanaged resource (one cycle must have seen it).
    """
    if not _DESIRED_ID.fullmatch(as_id):
        raise OviError(f"--as {as_id!r}: expected a desired id like web-0 (lowercase letters,"
                       " digits and '-', as the config makes them)")
    await _require_log(store_path)
    async with open_runtime(store_path, mirror=mirror, chain_key=chain_key) as runtime:
        await runtime.views.catch_up()
        target = await runtime.views.query(lambda db: _adoption_target(db, resource))
        if target is None:
            raise OviError(f"no resource {resource!r} in {shown(store_path)}: give its identity as"
                           " `ovi plan` shows it (aws/REGION/TYPE/CLOUD_ID) or its cloud id;"
                           " a cycle must have observed it")
        if "/" not in target.identity:
            raise OviError(f"{resource} is known as {target.identity!r}, not as a resource Ovi"
                           " does not manage (run `ovi plan` to see it as it is now)")
        actor = current_actor(by)
        await runtime.store.append(resource_stream(as_id), [AdoptionGranted(
            resource_id=as_id, identity=target.identity, cloud_id=target.cloud_id, by=actor.by,
            at=datetime.now(UTC), owner_seen=target.owner, actor=actor)])
    return target, actor


def _adoption_target(db: sqlite3.Connection, text: str) -> AdoptionTarget | None:
    rows = db.execute(
        'SELECT resource_id, cloud_id, scope, owner FROM resource_rows WHERE "exists" = 1'
        " AND (resource_id = ? OR cloud_id = ?) ORDER BY resource_id", (text, text)).fetchall()
    exact = [r for r in rows if r[0] == text]
    if exact or len(rows) == 1:
        row = (exact or rows)[0]
        return AdoptionTarget(row[0], row[1], row[2], row[3])
    if rows:
        names = ", ".join(r[0] for r in rows)
        raise OviError(f"cloud id {text!r} names several resources ({names}): give its identity")
    return None
