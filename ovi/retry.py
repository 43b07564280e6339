"""Retrying transient provider errors: exponential backoff with full jitter,
bounded in attempts and in time."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import msgspec

from ovi.providers.base import ProviderError

__all__ = ["RetryPolicy", "call_with_retries"]

T = TypeVar("T")


class RetryPolicy(msgspec.Struct, frozen=True):
    """How hard to try: at most ``attempts`` calls, and no new attempt once
    ``deadline`` seconds have passed since the first."""

    attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 5.0
    deadline: float = 60.0

    def delay(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Full jitter: uniform in [0, min(max_delay, base_delay · 2^retry))."""
        return rng() * min(self.max_delay, self.base_delay * 2.0**retry)


class Attempted(msgspec.Struct):
    """How many calls were made (filled in even when the last one raised)."""

    count: int = 0


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    attempted: Attempted,
    *,
    rng: Callable[[], float] = random.random,
) -> T:
    """Call ``fn`` until it succeeds, raises a permanent :class:`ProviderError`,
    or the policy's attempts or deadline run out (then the last error is raised)."""
    started = time.monotonic()
    while True:
        attempted.count += 1
        try:
            return await fn()
        except ProviderError as exc:
            if not exc.retryable or attempted.count >= policy.attempts:
                raise
            delay = policy.delay(attempted.count - 1, rng)
            if time.monotonic() - started + delay > policy.deadline:
                raise
            await anyio.sleep(delay)
