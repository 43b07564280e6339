"""Choosing a backend from what an operator wrote (``--store``, ``$OVI_STORE``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime

from eventstore._dsn import is_postgres_dsn, looks_like_conninfo, mask_dsn
from eventstore._events import EventRegistry
from eventstore._store import EventStore
from eventstore.sqlite import SQLiteEventStore

__all__ = ["conninfo_refusal", "store_for"]


def conninfo_refusal(spec: str) -> str:
    """The message refusing libpq's ``key=value`` form ``spec`` (masked)."""
    return (f"{mask_dsn(spec)!r} is libpq's key=value form, which Ovi does not take: use a"
            " postgresql:// URL (postgresql://USER@HOST:PORT/DBNAME, the password from"
            " $PGPASSWORD or ~/.pgpass)")


def store_for(
    spec: str | os.PathLike[str],
    registry: EventRegistry,
    *,
    instance_id: str | None = None,
    clock: Callable[[], datetime] | None = None,
    mirror: str | os.PathLike[str] | None = None,
    chain_key: bytes | None = None,
    read_only: bool = False,
    create_schema: bool = False,
) -> EventStore:
    """An unopened store for ``spec``: a ``postgresql://`` or ``postgres://``
    URL gives a :class:`~eventstore.PostgresEventStore` (its schema from the
    URL's ``options=-csearch_path=…``, else the server's default), anything
    else is the path of a :class:`~eventstore.SQLiteEventStore` file.
    ``chain_key`` and ``read_only`` are the stores' (see :class:`~eventstore.EventStore`);
    ``create_schema`` lets a URL's missing ``search_path`` schema be created
    (:class:`~eventstore.PostgresEventStore`).

    With a URL, ``mirror`` names the local SQLite file that mirrors the shared
    log (:class:`~eventstore.MirroredStore`: appends go to the server, reads
    come from the mirror); with a path it is ignored (the file is the log).

    :raises ValueError: if ``spec`` is empty, or libpq's ``key=value`` form
        (which would otherwise become a file named with its password).
    """
    text = os.fspath(spec)
    if not text:
        raise ValueError("store: expected a path or a postgresql:// URL, got an empty string")
    if looks_like_conninfo(text):
        raise ValueError(conninfo_refusal(text))
    if is_postgres_dsn(text):
        from eventstore.postgres import PostgresEventStore

        shared = PostgresEventStore(text, registry, instance_id=instance_id, clock=clock,
                                    chain_key=chain_key, read_only=read_only,
                                    create_schema=create_schema)
        if mirror is None:
            return shared
        from eventstore.mirror import MirroredStore

        # The mirror is written by the copy whatever the audit: never read-only.
        local = SQLiteEventStore(mirror, registry, instance_id=shared.instance_id,
                                 synchronous="NORMAL", chain_key=chain_key)
        return MirroredStore(shared, local)
    return SQLiteEventStore(text, registry, instance_id=instance_id, clock=clock,
                            chain_key=chain_key, read_only=read_only)
