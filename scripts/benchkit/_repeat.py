"""Repetitions: a workload and its baseline alternating within one run."""

from __future__ import annotations

import gc
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from scripts.benchkit._figure import format_number

__all__ = ["REPEATS", "Workload", "alternate", "settle"]

REPEATS = 3  # a figure is the median of this many repetitions unless a group says otherwise


def settle() -> None:
    """Start a timed run from the same state: the previous run's garbage
    collected and its dirty pages written back (else the kernel flushes them
    during the next run, which then pays for the previous one's writes)."""
    gc.collect()
    os.sync()


@dataclass(frozen=True)
class Workload:
    """One thing to time: ``run(repetition)`` returns one sample, already in
    the figure's unit (a rate, seconds, ...); ``unit`` labels the progress."""

    label: str
    run: Callable[[int], Awaitable[float]]
    unit: str = ""


async def alternate(
    say: Callable[[str], None],
    workloads: Sequence[Workload],
    *,
    repeats: int = REPEATS,
    warmup: int = 0,
    settle_first: bool = True,
) -> list[list[float]]:
    """Run ``workloads`` in turn, ``warmup + repeats`` rounds (store,
    baseline, store, baseline, ...), so a burst of load elsewhere hits each
    alike; return each workload's samples, warm-up rounds left out, in the
    order given. ``settle_first`` settles the machine before every run."""
    samples: list[list[float]] = [[] for _ in workloads]
    for rep in range(warmup + repeats):
        for workload, into in zip(workloads, samples, strict=True):
            if settle_first:
                settle()
            sample = await workload.run(rep)
            counted = rep >= warmup
            if counted:
                into.append(sample)
            tag = f"#{rep - warmup + 1}" if counted else "warm-up"
            say(f"  {tag} {workload.label}: {format_number(sample)} {workload.unit}".rstrip())
    return samples
