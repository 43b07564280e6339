"""Opening what every command needs: the log and its projections.

``--store`` (or ``$OVI_STORE``) is a SQLite file — the log, with the
projections in the same file — or a ``postgresql://`` URL: the shared log of
several hosts, read through a local SQLite *mirror* (``--mirror``, else
``$OVI_MIRROR``, else ``./ovi-mirror.db``) that holds the same rows and the
projections (see docs/postgres.md, "Running several hosts").
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec

from eventstore import (
    EventStore,
    MirroredStore,
    conninfo_refusal,
    is_postgres_dsn,
    looks_like_conninfo,
    mask_dsn,
    store_for,
)
from ovi._fold_workers import fold_in_workers
from ovi.events import registry
from projections import Projection, ProjectionRunner
from projections.claims import ClaimsProjection
from projections.findings import FindingsProjection
from projections.operations import OperationsProjection
from projections.resources import ResourcesProjection
from projections.restarts import RestartsProjection

__all__ = ["Location", "Runtime", "default_mirror_path", "default_store", "is_shared", "local_file",
           "open_runtime", "ovi_projections", "shown"]

#: where a log is, as an operator wrote it: a SQLite path, or a postgresql:// URL
Location = str | os.PathLike[str]


def default_store() -> str:
    """``$OVI_STORE``, else ``ovi.db``: a path, or a ``postgresql://`` URL."""
    return os.environ.get("OVI_STORE") or "ovi.db"


def default_mirror_path() -> Path:
    """``$OVI_MIRROR``, else ``./ovi-mirror.db``: where a host mirrors a shared log."""
    return Path(os.environ.get("OVI_MIRROR") or "ovi-mirror.db")


def is_shared(store: Location) -> bool:
    """Whether ``store`` names a shared (PostgreSQL) log rather than a file."""
    return is_postgres_dsn(os.fspath(store))


def shown(store: Location) -> str:
    """``store`` as messages show it: a URL (or libpq ``key=value`` text,
    which is refused) without its password."""
    text = os.fspath(store)
    return mask_dsn(text) if is_postgres_dsn(text) or looks_like_conninfo(text) else text


def store_problem(store: Location, flag: str = "--store") -> str | None:
    """Why ``store`` is refused before anything opens it (libpq's
    ``key=value`` form, which would become a file named with its password),
    or None."""
    text = os.fspath(store)
    return f"{flag}: {conninfo_refusal(text)}" if looks_like_conninfo(text) else None


def local_file(store: Location, mirror: Path | None = None) -> Path:
    """The SQLite file this host reads: the log itself, or a shared log's mirror."""
    return (mirror or default_mirror_path()) if is_shared(store) else Path(store)


def ovi_projections() -> list[Projection]:
    """The projections the engine reads, in the log's own file."""
    return [ResourcesProjection(), FindingsProjection(), ClaimsProjection(),
            OperationsProjection(), RestartsProjection()]


class Runtime(msgspec.Struct):
    store: EventStore
    views: ProjectionRunner


@asynccontextmanager
async def open_runtime(store: Location, *, mirror: Path | None = None,
                       instance_id: str | None = None,
                       chain_key: bytes | None = None) -> AsyncIterator[Runtime]:
    """Open (creating if needed) the log at ``store`` with its projections:
    in the log's own file, or for a shared log in its mirror ``mirror``
    (default :func:`default_mirror_path`), brought up to date first;
    ``chain_key`` for a keyed log (a new log is created keyed with it).

    :raises EventStoreError: if the log cannot be opened, or the mirror
        disagrees with the shared log (:class:`~eventstore.MirrorMismatchError`).
    """
    file = local_file(store, mirror)
    log = store_for(store, registry(), instance_id=instance_id, chain_key=chain_key,
                    mirror=file if is_shared(store) else None)
    assert not is_shared(store) or isinstance(log, MirroredStore)
    # A refold of the whole log (a projection's tables changed on upgrade)
    # runs in worker processes, one per core, reading the same file.
    async with log, ProjectionRunner(log, file, ovi_projections(),
                                     fold_apart=fold_in_workers(file)) as views:
        yield Runtime(log, views)
