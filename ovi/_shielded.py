"""An append that a cancellation should not cut short, but not wait on forever.

Some appends leave state only their caller can tidy: claims recorded with no
handle to give them back by, a claim whose version moved on unseen. A plain
shield lets them finish; but a store that does not answer (PostgreSQL has no
command timeout, SQLite waits out its busy timeout) would then hold a stop up
without end, and the store's error, when it comes, would replace the
cancellation. :func:`finish_shielded` lets the append run on for a bounded
time once its caller is cancelled, and then lets the cancellation go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")

#: how long an append goes on once the one waiting for it is cancelled
STOP_GRACE_SECONDS = 5.0


async def finish_shielded(append: Awaitable[T]) -> T:
    """Await ``append``; if the caller is cancelled meanwhile, go on waiting
    for it for at most :data:`STOP_GRACE_SECONDS`.

    Answered in time, its result is returned (the cancellation comes again at
    the caller's next checkpoint, as after any shield). Not answered in time,
    or answered with an error, the cancellation is raised, not the error: a
    stop is a stop. The caller must treat the append's effect as unknown.
    """
    task = asyncio.ensure_future(append)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with anyio.move_on_after(STOP_GRACE_SECONDS, shield=True):
            await asyncio.wait({task})
        if not task.done():
            task.cancel()
            task.add_done_callback(_forget)  # what it raises later has no one to go to
            raise
        if task.cancelled() or task.exception() is not None:
            raise
        return task.result()


def _forget(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
