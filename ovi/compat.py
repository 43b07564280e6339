"""Rolling upgrades: which event types does the log hold that this Ovi does
not know? A newer Ovi wrote them; an older one must not act on a log it only
partly understands (it keeps observing and reporting, and refuses to execute).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection

from projections import ProjectionRunner

__all__ = ["UnknownEventTypes"]


def _types_after(db: sqlite3.Connection, after: int) -> tuple[int, set[str]]:
    db.execute("BEGIN")  # one snapshot: the head and the types up to it
    try:
        head = int(db.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()[0])
        types = {row[0] for row in db.execute(
            "SELECT DISTINCT type FROM events WHERE position > ? AND position <= ?",
            (after, head))}
    finally:
        db.execute("COMMIT")
    return head, types


class UnknownEventTypes:
    """Tracks the unknown types of one log, reading only what was appended
    since the last :meth:`check` (a big log is scanned once, at start-up).

    The log is read through the projections connection: the projections live
    in the log's own file (or in the mirror of a shared log, next to its copy).
    """

    def __init__(self, known: Collection[str]) -> None:
        self.known = frozenset(known)
        self.position = 0
        self.found: frozenset[str] = frozenset()

    async def check(self, views: ProjectionRunner) -> frozenset[str]:
        """The unknown type names found in the log so far (empty: all known)."""
        # A shared log's mirror copies what other hosts appended first: asking
        # the store for its head does that (and is one cheap query on a file).
        await views.store.last_position()
        head, types = await views.query(lambda db: _types_after(db, self.position))
        self.position = head
        if not types <= self.known:
            self.found = self.found | (types - self.known)
        return self.found
