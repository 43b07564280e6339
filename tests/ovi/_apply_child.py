"""Run apply cycles in a child process against a shared log and a shared fake
cloud: ``python -m tests.ovi._apply_child LOG ESTATE CONFIG CYCLES [PAUSE WHERE]``.

PAUSE (seconds) makes every create stall ``before`` or ``after`` it changes the
cloud, announcing it on stdout, so that a parent can kill the process after
``ActionExecuting`` was recorded and before the outcome is.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
import uvloop

from eventstore import SQLiteEventStore
from ovi.config import load_config
from ovi.engine import Engine
from ovi.events import registry
from ovi.model import CycleMode, DesiredResource, Resource
from ovi.providers.fake import SharedFakeProvider
from ovi.runtime import ovi_projections
from projections import ProjectionRunner


class PausingProvider(SharedFakeProvider):
    def __init__(self, path: Path, pause: float, where: str) -> None:
        super().__init__(path, latency=0.01)
        self.pause = pause
        self.where = where

    async def create(self, desired: DesiredResource, *, decision_id: str, owner: str,
                     attempt: int = 1, token_unused: bool = False) -> Resource:
        if self.pause and self.where == "before":
            print(f"creating {desired.id}", flush=True)  # noqa: T201
            await anyio.sleep(self.pause)
        resource = await super().create(desired, decision_id=decision_id, owner=owner,
                                        attempt=attempt, token_unused=token_unused)
        if self.pause and self.where == "after":
            print(f"created {desired.id}", flush=True)  # noqa: T201
            await anyio.sleep(self.pause)
        return resource


async def main(argv: Sequence[str]) -> None:
    log, estate, config_path, cycles = Path(argv[0]), Path(argv[1]), argv[2], int(argv[3])
    pause = float(argv[4]) if len(argv) > 4 else 0.0
    where = argv[5] if len(argv) > 5 else "after"
    config = load_config(config_path)
    provider = PausingProvider(estate, pause, where)
    async with SQLiteEventStore(log, registry()) as store, ProjectionRunner(
        store, log, ovi_projections()
    ) as views:
        engine = Engine(store, views, provider)
        for _ in range(cycles):
            result = await engine.run_cycle(config, source=config_path, mode=CycleMode.APPLY)
            outcomes = ",".join(f"{e.resource_id}:{e.outcome}:{e.reason or ''}"
                                for e in result.executions)
            line = f"cycle {result.cycle_id} recovered={result.recovered} {outcomes}"
            print(line, flush=True)  # noqa: T201


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1:]))
