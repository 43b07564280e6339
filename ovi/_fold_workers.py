"""Folding shares of Ovi's projections side by side, one worker process per
share: the :data:`~projections._fold_apart.FoldApart` the runtime gives its
runner (a refold of the whole log after an upgrade changed a projection's
tables), and what ``python -m ovi.replay rebuild`` folds its copies with.

A worker is ``python -m ovi._fold_workers LOG COPY UNTIL NAME…``: it folds
the named projections from position 0 up to UNTIL into the file COPY,
reading the log at LOG, prints the number of events folded and exits 0; on
failure it prints what went wrong as its last line on stderr and exits 1; it
exits at once (3) when its stdin ends, i.e. when its parent died. A
fresh interpreter running this module, rather than a multiprocessing child,
which would import the caller's main module again; started as
:mod:`eventstore._child_python` says (never the working directory's code,
none of the parent's secrets).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import anyio

import ovi
from eventstore import SQLiteEventStore
from eventstore._child_python import child_command, child_environment
from ovi.events import registry
from projections import Projection, ProjectionRunner
from projections._fold_apart import FoldApart, FoldApartFailed

__all__ = ["BATCH", "fold_in_workers", "fold_share", "main"]

#: events per transaction: big batches fold the many events of a resource
#: into one row write (~250 MB peak per worker at this size)
BATCH = 50_000
#: where this ovi was imported from: the workers import it from there too
_ROOT = str(Path(ovi.__file__).resolve().parent.parent)


def fold_in_workers(log: Path) -> FoldApart:
    """A :data:`FoldApart` whose workers read the SQLite log at ``log`` (the
    log's own file, or a shared log's mirror)."""
    log = log.absolute()  # the file meant now, wherever the working directory moves

    async def fold_apart(until: int, shares: Sequence[tuple[Path, tuple[str, ...]]]) -> int:
        env = child_environment(_ROOT)  # nothing secret: a worker only reads the file
        problems: list[str] = []
        folded: list[int] = []

        async def work(copy: Path, names: tuple[str, ...]) -> None:
            # stdin stays open, unused, while the worker runs: it ends at
            # once when this process dies (its end of the pipe closes).
            done = await anyio.run_process(
                child_command("ovi._fold_workers", str(log), str(copy), str(until), *names),
                env=env, check=False, stdin=subprocess.PIPE)
            said = done.stdout.decode(errors="replace").split()
            if done.returncode != 0 or not said or not said[-1].isdigit():
                lines = done.stderr.decode(errors="replace").strip().splitlines()
                problems.append(lines[-1] if lines else f"worker exited {done.returncode}")
                return
            folded.append(int(said[-1]))

        async with anyio.create_task_group() as workers:
            for copy, names in shares:
                workers.start_soon(work, copy, names)
        if problems:
            raise FoldApartFailed(problems[0])
        return sum(folded)

    return fold_apart


def named(name: str) -> Projection:
    from ovi.runtime import ovi_projections  # the runtime gives its runner fold_in_workers

    found = [p for p in ovi_projections() if p.name == name]
    if not found:
        raise ValueError(f"no projection named {name!r}")
    return found[0]


async def fold_share(log: Path, copy: Path, names: list[str], until: int) -> int:
    """Fold the named projections from position 0 up to ``until`` into
    ``copy``; the number of events folded."""
    # The copy is a scratch file: it needs no durability (the caller takes
    # its tables into a durable file, or throws it away). The log is only
    # read: read-only needs no chain key (a keyed log's rows are checked by
    # the caller, with the key), so the key never goes on a command line.
    async with SQLiteEventStore(log, registry(), instance_id=f"fold:{os.getpid()}",
                                read_only=True) as store, \
            ProjectionRunner(store, copy, [named(name) for name in names],
                             synchronous="OFF", batch_size=BATCH) as views:
        return await views.catch_up(until=until)


def _end_with_the_parent() -> None:
    """Exit as soon as stdin ends: the parent died (a ``kill -9`` kills no
    children), and nobody will take this fold in."""

    def watch() -> None:
        # The raw descriptor: a daemon thread blocked in sys.stdin's buffered
        # read holds its lock, and the interpreter's exit would abort on it.
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str], *, watch_parent: bool = False) -> int:
    if watch_parent:
        _end_with_the_parent()
    if len(argv) < 4 or not argv[2].isdigit():
        sys.stderr.write("usage: python -m ovi._fold_workers LOG COPY UNTIL NAME…\n")
        return 2
    log, copy, until, *names = argv
    try:
        folded = anyio.run(fold_share, Path(log), Path(copy), names, int(until),
                           backend_options={"use_uvloop": True})
    except Exception as exc:  # the parent reports it
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        return 1
    sys.stdout.write(f"{folded}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], watch_parent=True))
