"""The MVCC projection of resources: every observed change is a version.

Tables (and one view)::

    resource_rows(resource_id PK, cloud_id, type, provider, region, scope, owner,
                  "exists", first_seen_rev, observed_rev, disappeared_rev,
                  version, fingerprint)
    resource_versions((rev, resource_id) PK, version, recorded_at, "exists", data_rev,
                      from_action)
    scope_observations(scope PK, completed_rev)
    known_from_actions(resource_id PK, scope, data_rev, action_rev)
    VIEW resources  -- resource_rows plus last_seen_rev

Ovi's own outcomes are versions too (``from_action`` = 1), so that the state
at a revision tells what Ovi knew then: a delete done makes the resource gone
at the ``ActionExecuted``; a create or update done makes it what the
provider's response described (``ActionExecuted.resource``). Such a version
is "known from the action, not yet observed": the next observation of the
resource replaces it (a ``ResourceObserved`` or ``ResourceDisappeared``, or,
when the cloud shows nothing new, the next complete observation of its
scope whose listing began after the action was recorded
(``ObservationCompleted.observed_after``), which restores the observed
version; ``known_from_actions`` holds the resources waiting for one). A
listing that began before the action could not show it: it leaves the
action's version standing. ``resource_rows`` — what the engine compares new
observations with — holds only observations.

``rev`` is the log position of the event that made the version, so "the
state at revision N" is, per resource, its newest version with ``rev ≤ N``.
The projection indexes the log rather than copying it: a resource's
attributes and fingerprint are read from the ``ResourceObserved`` event at
``data_rev`` (at ``observed_rev`` for the current row), so the queries below need the log's
``events`` table in the same database: ovi keeps its projections in the log's
own file. (A copy built elsewhere, as ``rebuild`` makes to compare, holds the
same rows and can be compared, not queried.) Copying each resource's JSON made a
rebuild several times slower and the file a third bigger.

``last_seen_rev`` (in the ``resources`` view) moves with every complete
observation of the resource's scope, even when nothing changed: change-only
logging keeps such cycles to one ``ObservationCompleted`` per scope, and the
projection records that per scope, in O(1), instead of touching every row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

import msgspec

from eventstore import RecordedEvent, format_timestamp
from ovi.events import RESOURCE_STREAM, ActionExecuted, ResourceObserved
from ovi.model import Action, Resource
from projections._projection import Projection

__all__ = ["ResourceState", "ResourcesProjection", "compact", "current", "state_at",
           "state_at_time"]

_ROW_COLUMNS = ('resource_id, cloud_id, type, provider, region, scope, owner, "exists",'
                " first_seen_rev, observed_rev, disappeared_rev, version, fingerprint")


class _ObservedResource(msgspec.Struct, gc=False):
    """What the queries read of a ``ResourceObserved`` event's data."""

    resource: Resource
    fingerprint: str = ""  # an ActionExecuted carries none


_decode_observed = msgspec.json.Decoder(_ObservedResource).decode
_decode_observed_event = msgspec.json.Decoder(ResourceObserved).decode
_PREFIX = len(RESOURCE_STREAM)


class ResourceState(msgspec.Struct, frozen=True):
    """A resource as the projection saw it at some revision."""

    resource: Resource
    exists: bool
    rev: int  # the revision of this version
    version: int
    fingerprint: str = ""
    #: known from Ovi's own action (the provider's response), not yet observed
    from_action: bool = False


class ResourcesProjection(Projection):
    name: ClassVar[str] = "resources"
    # 4: an owner is the ovi:owner tag only (ovi:managed alone no longer means "ovi")
    # 5: Ovi's executed actions are versions too, until the next observation
    # 6: versions keyed by (rev, resource): one ObservationCompleted restores
    #    several resources known from actions at its one revision
    # 7: an observation restores only what is known from actions recorded
    #    before its listing began (known_from_actions.action_rev)
    schema_version: ClassVar[int] = 7
    tables: ClassVar[tuple[str, ...]] = ("resource_rows", "resource_versions",
                                         "scope_observations", "known_from_actions")
    event_types: ClassVar[frozenset[str] | None] = frozenset(
        {"ResourceObserved", "ResourceDisappeared", "ObservationCompleted", "ActionExecuted"}
    )
    event_views: ClassVar[Mapping[str, type[Any]]] = {"ResourceObserved": bytes}

    def create(self, db: sqlite3.Connection) -> None:
        # Version 1 kept ``resources`` as a table; from version 2 it is a view.
        kind = db.execute(
            "SELECT type FROM sqlite_master WHERE name = 'resources'").fetchone()
        if kind is not None:
            db.execute(f"DROP {'VIEW' if kind[0] == 'view' else 'TABLE'} resources")
        # Keyed by resource, no secondary index: every observation rewrites
        # its row, and the table (one row per resource) is cheap to scan.
        db.execute(
            """CREATE TABLE resource_rows (
                resource_id     TEXT PRIMARY KEY,
                cloud_id        TEXT NOT NULL,
                type            TEXT NOT NULL,
                provider        TEXT NOT NULL,
                region          TEXT NOT NULL,
                scope           TEXT NOT NULL,
                owner           TEXT,
                "exists"        INTEGER NOT NULL,
                first_seen_rev  INTEGER NOT NULL,
                observed_rev    INTEGER NOT NULL,
                disappeared_rev INTEGER,
                version         INTEGER NOT NULL,
                fingerprint     TEXT NOT NULL
            ) WITHOUT ROWID"""
        )
        # Keyed by the log position (and the resource: an ObservationCompleted
        # that restores what was observed makes a version of each resource
        # known from an action of its scope): versions are only ever appended,
        # in key order. The state at a revision scans the versions up to it once.
        db.execute(
            """CREATE TABLE resource_versions (
                rev         INTEGER NOT NULL,
                resource_id TEXT NOT NULL,
                version     INTEGER NOT NULL,
                recorded_at TEXT NOT NULL,
                "exists"    INTEGER NOT NULL,
                data_rev    INTEGER NOT NULL,
                from_action INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (rev, resource_id)
            ) WITHOUT ROWID"""
        )
        db.execute(
            """CREATE TABLE known_from_actions (
                resource_id TEXT PRIMARY KEY,
                scope       TEXT NOT NULL,
                data_rev    INTEGER NOT NULL,
                action_rev  INTEGER NOT NULL
            ) WITHOUT ROWID"""
        )
        db.execute(
            """CREATE TABLE scope_observations (
                scope         TEXT PRIMARY KEY,
                completed_rev INTEGER NOT NULL
            )"""
        )
        db.execute(
            """CREATE VIEW resources AS
            SELECT r.resource_id, r.cloud_id, r.type, r.provider, r.region, r.scope, r.owner,
                   r."exists", r.first_seen_rev,
                   CASE WHEN r."exists" AND s.completed_rev > r.observed_rev
                        THEN s.completed_rev ELSE r.observed_rev END AS last_seen_rev,
                   r.observed_rev, r.disappeared_rev, r.version, r.fingerprint
            FROM resource_rows r LEFT JOIN scope_observations s ON s.scope = r.scope"""
        )

    def apply(self, db: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        # Fold the batch in memory, then write each table with one executemany.
        # A version needs only the resource's id (its stream's) and the
        # event's position; only the latest observation of each resource in
        # the batch is decoded, for its row.
        streams = {e.stream for e in events}
        rows = _load_rows(db, {s[_PREFIX:] for s in streams if s.startswith(RESOURCE_STREAM)})
        latest: dict[str, bytes] = {}  # resource id → its latest observation's data
        versions: list[tuple[object, ...]] = []
        scopes: dict[str, int] = {}
        pending = {r: (scope, data_rev, action_rev) for r, scope, data_rev, action_rev
                   in db.execute("SELECT resource_id, scope, data_rev, action_rev"
                                 " FROM known_from_actions")}
        touched = bool(pending)
        at_text = ""
        at_time: datetime | None = None
        # The observations are most of a batch: their branch comes first and
        # binds what it calls (~25 % off a 1M-event refold's resources fold).
        add_version = versions.append
        row_of = rows.get
        for recorded in events:
            rev = recorded.position
            moment = recorded.recorded_at
            if moment is not at_time and moment != at_time:
                at_time, at_text = moment, format_timestamp(moment)
            type_ = recorded.type
            if type_ == "ResourceObserved":
                stream = recorded.stream
                if not stream.startswith(RESOURCE_STREAM):
                    raise ValueError(f"ResourceObserved at {rev} is not in a resource stream")
                resource_id = stream[_PREFIX:]
                row = row_of(resource_id)
                if row is None:
                    row = rows[resource_id] = [resource_id, "", "", "", "", "", None, 1, rev,
                                               rev, None, 1, ""]
                    version = 1
                else:
                    version = row[11] + 1
                    row[7], row[9], row[10], row[11] = 1, rev, None, version
                add_version((rev, resource_id, version, at_text, 1, rev, 0))
                latest[resource_id] = recorded.event
                if pending:
                    pending.pop(resource_id, None)
            elif type_ == "ResourceDisappeared":
                resource_id = recorded.event.resource_id
                row = rows.get(resource_id)
                if row is None:  # never seen: nothing to retire
                    continue
                row[7], row[10], row[11] = 0, rev, row[11] + 1
                versions.append((rev, resource_id, row[11], at_text, 0, row[9], 0))
                latest.setdefault(resource_id, b"")
                pending.pop(resource_id, None)
            elif type_ == "ObservationCompleted":
                scope = recorded.event.scope.key
                scopes[scope] = rev
                # The scope was seen whole and showed nothing new of these:
                # what was observed stands again. Not for an action recorded
                # after the listing began: the listing could not show it, and
                # the action stays what is known until a later one (an older
                # log's observations say nothing of when they began: None).
                began = recorded.event.observed_after
                for resource_id in [r for r, (s, _, acted) in pending.items()
                                    if s == scope and (began is None or acted <= began)]:
                    _, data_rev, _ = pending.pop(resource_id)
                    row = rows.get(resource_id) or _load_rows(db, {resource_id}).get(
                        resource_id)
                    if row is None:  # made by an action, never seen: not there
                        versions.append((rev, resource_id, 0, at_text, 0, data_rev, 0))
                    else:
                        rows.setdefault(resource_id, row)
                        versions.append((rev, resource_id, row[11], at_text, row[7], row[9],
                                         0))
            elif type_ == "ActionExecuted":
                resource_id = getattr(recorded.event, "resource_id", "")
                done = _known_from(recorded.event, rows.get(resource_id), rev)
                if done is not None:
                    exists, data_rev, scope, version = done
                    versions.append((rev, resource_id, version, at_text, exists, data_rev, 1))
                    pending[resource_id] = (scope, data_rev, rev)
                    touched = True
        for resource_id, data in latest.items():
            if data:
                observed = _decode_observed_event(data)
                resource = observed.resource
                rows[resource_id][1:7] = [resource.cloud_id, resource.type, resource.provider,
                                          resource.region, observed.scope.key, resource.owner]
                rows[resource_id][12] = observed.fingerprint
        if latest:
            db.executemany(f"INSERT OR REPLACE INTO resource_rows ({_ROW_COLUMNS})"
                           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [rows[r] for r in sorted(latest)])
        if versions:
            db.executemany("INSERT INTO resource_versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                           versions)
        if touched:
            db.execute("DELETE FROM known_from_actions")
            db.executemany("INSERT INTO known_from_actions VALUES (?, ?, ?, ?)",
                           [(r, s, d, a) for r, (s, d, a) in pending.items()])
        if scopes:
            db.executemany("INSERT OR REPLACE INTO scope_observations VALUES (?, ?)",
                           scopes.items())


def _known_from(event: object, row: list[Any] | None,
                rev: int) -> tuple[int, int, str, int] | None:
    """The version an executed action makes — ``exists``, the rev of the
    event holding its data, its scope, its version number — or None when it
    tells nothing new (an older log's create without the provider's response)."""
    if not isinstance(event, ActionExecuted):
        return None
    if event.action is Action.DELETE:
        if row is None or not row[7]:
            return None
        return 0, row[9], row[5], row[11]
    resource = event.resource
    if resource is None or event.action is Action.NOTIFY:
        return None
    scope = f"{resource.provider}/{resource.region}/{resource.type}"
    return 1, rev, scope, row[11] if row is not None else 0


def _load_rows(db: sqlite3.Connection, ids: set[str]) -> dict[str, list[Any]]:
    rows: dict[str, list[Any]] = {}
    if len(ids) > 500 and len(ids) * 4 > db.execute(
            "SELECT count(*) FROM resource_rows").fetchone()[0]:
        # Most of the table: one scan costs less than a lookup per resource.
        for row in db.execute(f"SELECT {_ROW_COLUMNS} FROM resource_rows"):
            if row[0] in ids:
                rows[row[0]] = list(row)
        return rows
    ordered = sorted(ids)
    for start in range(0, len(ordered), 500):
        chunk = ordered[start:start + 500]
        for row in db.execute(
            f"SELECT {_ROW_COLUMNS} FROM resource_rows"
            f" WHERE resource_id IN ({', '.join('?' * len(chunk))})", chunk
        ):
            rows[row[0]] = list(row)
    return rows


def current(db: sqlite3.Connection, *, owner: str | None = None,
            scope: str | None = None) -> list[ResourceState]:
    """Every resource that exists now (optionally of one owner or scope)."""
    sql = ("SELECT e.data, r.last_seen_rev, r.version FROM resources r"
           ' JOIN events e ON e.position = r.observed_rev WHERE r."exists" = 1')
    params: list[object] = []
    if owner is not None:
        sql += " AND r.owner = ?"
        params.append(owner)
    if scope is not None:
        sql += " AND r.scope = ?"
        params.append(scope)
    return [
        _resource_state(data, True, rev, version)
        for data, rev, version in db.execute(sql + " ORDER BY r.resource_id", params)
    ]


def state_at(db: sqlite3.Connection, revision: int, *,
             include_gone: bool = False) -> list[ResourceState]:
    """Every resource as it stood at ``revision`` (existing ones, unless
    ``include_gone``)."""
    return _state(db, "rev", revision, include_gone)


def state_at_time(db: sqlite3.Connection, moment: datetime, *,
                  include_gone: bool = False) -> list[ResourceState]:
    """Every resource as it stood at ``moment``."""
    return _state(db, "recorded_at", format_timestamp(moment), include_gone)


def _state(db: sqlite3.Connection, column: str, value: object,
           include_gone: bool) -> list[ResourceState]:
    """The newest version of every resource with ``column <= value``."""
    # Per resource, the newest version within the bound is the one with the
    # greatest rev (versions and revs grow together): one grouped scan of the
    # versions in the bound, then a lookup by rev and one by position.
    gone = "" if include_gone else ' WHERE v."exists" = 1'
    rows = db.execute(
        'SELECT e.data, v."exists", v.rev, v.version, v.from_action'
        " FROM (SELECT max(rev) AS rev, resource_id FROM resource_versions"
        f"       WHERE {column} <= ? GROUP BY resource_id) AS newest"
        " JOIN resource_versions v ON v.rev = newest.rev"
        " AND v.resource_id = newest.resource_id"
        f" JOIN events e ON e.position = v.data_rev{gone}"
        " ORDER BY v.resource_id",
        (value,),
    )
    return [_resource_state(data, bool(exists), rev, version, bool(from_action))
            for data, exists, rev, version, from_action in rows]


def _resource_state(data: str, exists: bool, rev: int, version: int,
                    from_action: bool = False) -> ResourceState:
    observed = _decode_observed(data)
    return ResourceState(observed.resource, exists, rev, version, observed.fingerprint,
                         from_action)


def compact(db: sqlite3.Connection, *, keep: int) -> int:
    """Drop all but the newest ``keep`` versions of every resource; returns how
    many versions were dropped. Time travel before the kept versions is then
    answered only by a rebuild from the log (which restores everything)."""
    if keep < 1:
        raise ValueError("compaction must keep at least one version")
    cursor = db.execute(
        "DELETE FROM resource_versions WHERE version <= (SELECT r.version FROM resource_rows r"
        " WHERE r.resource_id = resource_versions.resource_id) - ?",
        (keep,),
    )
    return cursor.rowcount
