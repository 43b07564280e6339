"""Opening a log for reading without ever creating one, and finding things in it."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from datetime import datetime
from pathlib import Path

import msgspec

from eventstore import SQLiteEventStore, format_timestamp
from ovi.events import (
    ResourceDisappeared,
    claim_stream,
    registry,
    resource_stream,
    stream_resource,
)
from ovi.replay._errors import ReplayError
from ovi.runtime import ovi_projections
from projections import ProjectionRunner

__all__ = [
    "check_log_file",
    "open_log",
    "open_views",
    "resolve_resource",
    "revision_at_time",
]


def check_log_file(path: Path) -> None:
    """Refuse anything but an existing Ovi event log, without creating or
    changing a file (the store would create a missing one).

    :raises ReplayError: naming the path and what is wrong with it.
    """
    if not path.exists():
        raise ReplayError(f"{path}: no such event log (give --store PATH or set $OVI_STORE)")
    if path.is_dir():
        raise ReplayError(f"{path}: is a directory, not an event log")
    if not os.access(path, os.R_OK):
        raise ReplayError(f"{path}: cannot read it (permission denied)")
    uri = path.absolute().as_uri() + "?mode=ro"
    try:
        with closing(sqlite3.connect(uri, uri=True)) as db:
            found = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
            ).fetchone()
    except sqlite3.Error as exc:
        raise ReplayError(f"{path}: not an SQLite event log ({exc})") from exc
    if found is None:
        raise ReplayError(f"{path}: not an Ovi event log (it has no events table)")


@asynccontextmanager
async def open_log(path: Path) -> AsyncIterator[SQLiteEventStore]:
    """The log at ``path``, which must exist. Nothing is appended through it."""
    check_log_file(path)
    async with SQLiteEventStore(path, registry(), instance_id=f"replay:{os.getpid()}") as store:
        yield store


@asynccontextmanager
async def open_views(store: SQLiteEventStore, path: Path | None = None, *,
                     synchronous: str = "NORMAL") -> AsyncIterator[ProjectionRunner]:
    """The engine's projections over ``store``, in the log's own file unless
    ``path`` names another (they are created or brought up to date there)."""
    async with ProjectionRunner(store, path or store.path, ovi_projections(),
                                synchronous=synchronous) as views:
        yield views


class _Observed(msgspec.Struct):
    cloud_id: str = ""


class _CloudRef(msgspec.Struct):
    resource: _Observed | None = None
    cloud_id: str | None = None


_decode_ref = msgspec.json.Decoder(_CloudRef).decode


async def resolve_resource(store: SQLiteEventStore, text: str) -> str:
    """The resource id (``ovi:id``, or the cloud id of an unmanaged resource)
    that ``text`` names: a resource id the log has events for, else a cloud id
    seen in an observation or an executed action.

    :raises ReplayError: if the log knows no such resource, or the cloud id
        belonged to several resources.
    """
    if await store.stream_version(resource_stream(text)):
        return await _renamed(store, text)
    if await store.stream_version(claim_stream(text)):
        return text
    needle = msgspec.json.encode(text)
    found: list[str] = []
    async for page in store.read_encoded(types=("ResourceObserved", "ActionExecuted")):
        for row in page:
            data = row[6]
            if needle not in data:
                continue  # the cheap test first: most rows don't mention it at all
            resource_id = stream_resource(row[1])
            if resource_id is None:
                continue
            try:
                ref = _decode_ref(data)
            except msgspec.DecodeError:
                continue
            cloud_id = ref.resource.cloud_id if ref.resource is not None else ref.cloud_id
            if cloud_id == text and resource_id not in found:
                found.append(resource_id)
    if not found:
        raise ReplayError(f"no resource {text!r} in {store.path}: neither a resource id (ovi:id)"
                          " nor a cloud id the log has seen")
    if len(found) > 1:
        raise ReplayError(f"cloud id {text!r} belonged to several resources over time"
                          f" ({', '.join(found)}): name one of them")
    return found[0]


async def _renamed(store: SQLiteEventStore, resource_id: str) -> str:
    """The identity a resource is known by now: a log written before
    identities were ``provider/region/type/cloud id`` keyed foreign resources
    by their cloud id, and the first cycle after the upgrade recorded the new
    key (``ResourceDisappeared.now_known_as``). Only such a key (the stream of
    a cloud id) is followed."""
    seen = {resource_id}
    current = resource_id
    while "/" not in current:
        renamed: str | None = None
        async for recorded in store.read(stream=resource_stream(current),
                                         types=("ResourceDisappeared", "ResourceObserved")):
            event = recorded.event
            renamed = (event.now_known_as if isinstance(event, ResourceDisappeared)
                       and event.cloud_id == current else None)
        if renamed is None or renamed in seen:
            return current
        seen.add(renamed)
        current = renamed
    return current


async def revision_at_time(store: SQLiteEventStore, moment: datetime, head: int) -> int:
    """The last position recorded at or before ``moment`` (0 if none).

    Positions are commit order and ``recorded_at`` the commit time, so the
    log is in time order (up to clock skew between hosts sharing it): a
    binary search over positions costs ~log2(head) one-row reads.
    """
    bound = format_timestamp(moment)
    low, high = 0, head  # invariant: time(low) <= bound (position 0: the empty log)
    while low < high:
        middle = (low + high + 1) // 2
        recorded = await _recorded_at(store, middle)
        if recorded is not None and recorded <= bound:
            low = middle
        else:
            high = middle - 1
    return low


async def _recorded_at(store: SQLiteEventStore, position: int) -> str | None:
    async for page in store.read_raw(after=position - 1, until=position, limit=1):
        for row in page:
            return row[4]
    return None
