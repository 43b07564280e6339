"""``state``: every resource as the MVCC projection saw it at a revision or time."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from eventstore import SQLiteEventStore
from ovi.replay._args import Revision
from ovi.replay._errors import ReplayError
from ovi.replay._render import Output, fmt_time
from ovi.replay._store import read_views, revision_at_time
from projections.resources import ResourcesProjection, ResourceState, state_at

__all__ = ["show_state", "state_of"]


async def state_of(store: SQLiteEventStore, at: Revision | datetime | None, *,
                   include_gone: bool = False) -> tuple[int, list[ResourceState]]:
    """The revision meant by ``at`` (default: the head) and the resources then.

    The projection is brought up to date first (see :func:`read_views`); on
    a read-only store (every audit) it is folded from the log itself into a
    temporary file, never read from the tables in the log's file, which
    whoever can write the file can edit without touching a hash. That fold
    stops at the revision asked: the state then is the fold of the events up
    to it, and the events after it cannot change it.

    :raises ReplayError: if ``at`` is a revision beyond the log's head.
    """
    head = await store.last_position()
    if at is None:
        revision = head
    elif isinstance(at, Revision):
        if at > head:
            raise ReplayError(f"revision {at} is beyond the log's head ({head})")
        revision = int(at)
    else:
        revision = await revision_at_time(store, at, head)
    async with read_views(store, [ResourcesProjection()], from_log=True,
                          until=revision) as (views, folded):
        if at is None:
            revision = folded  # a writable store folded what was appended meanwhile too
        resources = await views.query(lambda db: state_at(db, revision,
                                                          include_gone=include_gone))
    return revision, resources


def state_record(state: ResourceState) -> dict[str, Any]:
    r = state.resource
    return {"id": r.id, "cloud_id": r.cloud_id, "type": r.type.value, "provider": r.provider,
            "region": r.region, "size": r.size, "status": r.status, "owner": r.owner,
            "tags": r.tags, "exists": state.exists, "rev": state.rev, "version": state.version,
            "known_from": "action" if state.from_action else "observation"}


async def show_state(store: SQLiteEventStore, out: Output, at: Revision | datetime | None, *,
                     include_gone: bool = False) -> None:
    revision, resources = await state_of(store, at, include_gone=include_gone)
    if out.as_json:
        out.json({"revision": revision, "resources": [state_record(s) for s in resources]})
        return
    when = ""
    if revision:
        async for recorded in store.read(after=revision - 1, until=revision, limit=1):
            when = f" ({fmt_time(recorded.recorded_at)})"
    out.table(
        [((s.resource.id, "bold"), (s.resource.cloud_id, None), (s.resource.type.value, None),
          (s.resource.region, None), (s.resource.size or "-", None),
          (s.resource.owner or "-", None),
          (("yes" if s.exists else "gone") + (" (from action, not yet observed)"
                                               if s.from_action else ""),
           None if s.exists else "dim"), (str(s.rev), "dim"))
         for s in resources],
        header=("ID", "CLOUD ID", "TYPE", "REGION", "SIZE", "OWNER", "EXISTS", "REV"),
    )
    gone = "" if include_gone else " (--all adds the ones gone by then)"
    out.write(f"{len(resources)} resources at revision {revision}{when}{gone}")
