"""``replay copy``: move a log between backends (SQLite ↔ PostgreSQL),
row for row: same positions, same hashes, so ``verify`` passes on the copy
and anchors kept for the old log still name the new one's history."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from eventstore import EventStore, EventStoreError, copy_new_rows, store_for
from ovi.events import registry
from ovi.replay._errors import ReplayError
from ovi.replay._render import Progress
from ovi.replay._store import check_log_file
from ovi.runtime import is_shared, shown

__all__ = ["CopyReport", "copy_log"]


class CopyReport(msgspec.Struct, frozen=True):
    """What a copy wrote: events, and the head both logs now share."""

    source: str
    target: str
    events: int
    head_position: int
    head_hash: str


def _opened(store: str, chain_key: bytes | None, *, target: bool = False) -> EventStore:
    # A target URL's search_path schema is created if missing, as --help says.
    return store_for(store, registry(), instance_id=f"replay:{os.getpid()}",
                     chain_key=chain_key, create_schema=target)


def _check_files(source: str, target: str) -> None:
    if is_shared(source):
        return
    check_log_file(Path(source))
    if not is_shared(target) and Path(target).exists() and Path(target).samefile(source):
        raise ReplayError(f"--to {shown(target)}: is the --from log itself")


async def copy_log(source: str, target: str, *, chain_key: bytes | None = None) -> CopyReport:
    """Copy every row of ``source`` into ``target``, which must be empty (a
    missing SQLite file is created). Progress shows on a terminal's stderr.
    The copy carries the source's header: a keyed log (``chain_key``, which
    both need) gives a keyed copy.

    :raises ReplayError: if ``source`` is no log, ``target`` is it, or
        ``target`` already holds events.
    :raises ReplayError: if a row of ``source`` does not verify (checked
        before anything is written), or the copy failed partway (saying
        which positions the target holds).
    :raises EventStoreError: if either store cannot be opened.
    """
    _check_files(source, target)
    async with _opened(source, chain_key) as src, \
            _opened(target, chain_key, target=True) as dst:
        held = await dst.last_position()
        if held:
            raise ReplayError(f"--to {dst.location}: already holds {held:,} events; copy"
                              " writes only into an empty log")
        # The whole source is verified before anything is written: a copy
        # that stopped at a bad row would leave a shorter log that verifies.
        report = await src.verify()
        if report.problem is not None:
            raise ReplayError(
                f"--from {src.location}: position {report.problem.position}:"
                f" {report.problem.reason}; nothing copied ({dst.location} is still empty)")
        total = await src.last_position()
        progress = Progress(f"copying to {dst.location}", total=total)
        try:
            copied = await copy_new_rows(src, dst, progress=progress.update)
        except EventStoreError as exc:
            left = await _left_behind(dst)
            raise ReplayError(f"{exc}; {left}") from exc
        finally:
            progress.done()
        position, hash_ = await dst._read_head()
        return CopyReport(src.location, dst.location, copied, position, hash_)


async def _left_behind(target: EventStore) -> str:
    """What a failed copy left in ``target``, for its message."""
    try:
        held = await target.last_position()
    except EventStoreError:
        return f"{target.location} may hold some of the rows: drop it before copying again"
    if held == 0:
        return f"{target.location} is still empty"
    return (f"{target.location} now holds positions 1..{held:,} only: drop it before copying"
            " again")
