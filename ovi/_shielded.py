"""An append that a cancellation should not cut short, but not wait on forever.

Some appends leave state only their caller can tidy: claims recorded with no
handle to give them back by, a claim whose version moved on unseen. A plain
shield lets them finish; but a store that does not answer (PostgreSQL has no
command timeout, SQLite waits out its busy timeout) would then hold a stop up
without end, and the store's error, when it comes, would replace the
cancellation. :func:`finish_shielded` lets the append run on for a bounded
time once its caller is cancelled, tidies what it left, and lets the
cancellation go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")

#: how long an append goes on once the one waiting for it is cancelled (and
#: then how long tidying what it left may take)
STOP_GRACE_SECONDS = 5.0


async def finish_shielded(append: Awaitable[T],
                          tidy: Callable[[T], Awaitable[None]] | None = None, *,
                          refused: Callable[[BaseException], None] | None = None) -> T:
    """Await ``append``; if the caller is cancelled meanwhile, go on waiting
    for it for at most :data:`STOP_GRACE_SECONDS`, then raise the
    cancellation, never the append's error: a stop is a stop.

    Answered in time, what it returned goes to ``tidy`` (bounded by the same
    grace), or the error it raised to ``refused``, before the cancellation
    is raised: the caller never sees either, and must treat the append's
    effect as unknown. The cancellation is never swallowed: asyncio's own
    (Ctrl-C, ``asyncio.timeout``) comes only once.
    """
    task = asyncio.ensure_future(append)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            with anyio.move_on_after(STOP_GRACE_SECONDS, shield=True):
                await asyncio.wait({task})
        finally:
            # Also when a second cancellation cut the wait short: the append
            # is not left running with no one waiting for it.
            if not task.done():
                task.cancel()
                task.add_done_callback(_forget)  # what it raises later has no one to go to
        if task.done() and not task.cancelled():
            error = task.exception()
            if error is not None:
                if refused is not None:
                    refused(error)
            elif tidy is not None:
                with anyio.move_on_after(STOP_GRACE_SECONDS, shield=True):
                    await tidy(task.result())
        raise


def _forget(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
