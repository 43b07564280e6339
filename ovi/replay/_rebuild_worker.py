"""A rebuild worker: ``python -m ovi.replay._rebuild_worker LOG COPY NAME…``.

Folds the named projections from position 0 into the file COPY, reading the
log at LOG, and exits 0; on failure, prints what went wrong as its last line
on stderr and exits 1. ``rebuild`` starts one per share of the projections: a
fresh interpreter running this module, rather than a multiprocessing child,
which would import the caller's main module again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio

from eventstore import SQLiteEventStore
from ovi.events import registry
from ovi.runtime import ovi_projections
from projections import Projection, ProjectionRunner

__all__ = ["BATCH", "fold_share", "main"]

#: events per transaction: big batches fold the many events of a resource
#: into one row write (~250 MB peak per worker at this size)
BATCH = 50_000


def named(name: str) -> Projection:
    found = [p for p in ovi_projections() if p.name == name]
    if not found:
        raise ValueError(f"no projection named {name!r}")
    return found[0]


async def fold_share(log: Path, copy: Path, names: list[str]) -> None:
    """Fold the named projections from position 0 into ``copy``."""
    # The copy is thrown away after the comparison: it needs no durability.
    # The log is only read: read-only needs no chain key (a keyed log is
    # walked without one), so the key never goes on a worker's command line.
    async with SQLiteEventStore(log, registry(), instance_id=f"replay:{os.getpid()}",
                                read_only=True) as store, \
            ProjectionRunner(store, copy, [named(name) for name in names],
                             synchronous="OFF", batch_size=BATCH) as views:
        await views.catch_up()


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        sys.stderr.write("usage: python -m ovi.replay._rebuild_worker LOG COPY NAME…\n")
        return 2
    log, copy, *names = argv
    try:
        anyio.run(fold_share, Path(log), Path(copy), names,
                  backend_options={"use_uvloop": True})
    except Exception as exc:  # the parent reports it
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
