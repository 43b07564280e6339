"""Opening what every command needs: the log and its projections."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec

from eventstore import SQLiteEventStore
from ovi.events import registry
from projections import Projection, ProjectionRunner
from projections.claims import ClaimsProjection
from projections.findings import FindingsProjection
from projections.operations import OperationsProjection
from projections.resources import ResourcesProjection
from projections.restarts import RestartsProjection

__all__ = ["Runtime", "default_store_path", "open_runtime", "ovi_projections"]


def default_store_path() -> Path:
    """``$OVI_STORE``, else ``./ovi.db``."""
    return Path(os.environ.get("OVI_STORE") or "ovi.db")


def ovi_projections() -> list[Projection]:
    """The projections the engine reads, in the log's own file."""
    return [ResourcesProjection(), FindingsProjection(), ClaimsProjection(),
            OperationsProjection(), RestartsProjection()]


class Runtime(msgspec.Struct):
    store: SQLiteEventStore
    views: ProjectionRunner


@asynccontextmanager
async def open_runtime(path: Path, *, instance_id: str | None = None,
                       chain_key: bytes | None = None) -> AsyncIterator[Runtime]:
    """Open (creating if needed) the log at ``path`` with its projections;
    ``chain_key`` for a keyed log (a new log is created keyed with it)."""
    async with SQLiteEventStore(path, registry(), instance_id=instance_id,
                                chain_key=chain_key) as store, \
            ProjectionRunner(store, path, ovi_projections()) as views:
        yield Runtime(store, views)
