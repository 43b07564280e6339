"""Errors raised by the projections package.

Every error the runner raises derives from :class:`ProjectionError`;
``sqlite3`` errors and exceptions raised by a projection's own code are
translated at the boundary and chained with ``from``. Errors of the event
store being read (:class:`eventstore.EventStoreError`) pass through unchanged::

    ProjectionError
     ├── ProjectionApplyError     a projection's create() or apply() raised; its
     │                            transaction was rolled back, checkpoint unchanged
     ├── CheckpointError          a checkpoint disagrees with the log or was changed
     │                            under the runner (checkpoint beyond the log's head,
     │                            schema version changed by another process)
     ├── UnknownProjectionError   no projection of that name in this runner
     ├── ProjectionDatabaseError  the projections database failed (I/O error, lock timeout, …)
     └── RunnerClosedError        the runner was used before open or after ``aclose()``
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ProjectionApplyError",
    "ProjectionDatabaseError",
    "ProjectionError",
    "RunnerClosedError",
    "UnknownProjectionError",
]


class ProjectionError(Exception):
    """Root of every error the projections package raises."""


class ProjectionApplyError(ProjectionError):
    """A projection's own code failed; the transaction it ran in was rolled back.

    ``name`` is the projection; ``first_position``/``last_position`` bound the
    batch of events it was folding (both 0 when ``create()`` failed).
    """

    def __init__(self, name: str, first_position: int, last_position: int, detail: str) -> None:
        self.name = name
        self.first_position = first_position
        self.last_position = last_position
        where = (
            f"events {first_position}..{last_position}" if last_position else "creating tables"
        )
        super().__init__(f"projection {name!r} failed on {where}: {detail}; rolled back")


class CheckpointError(ProjectionError):
    """A projection's checkpoint cannot be trusted as it is."""


class UnknownProjectionError(ProjectionError):
    """The runner has no projection of the given name."""


class ProjectionDatabaseError(ProjectionError):
    """The projections database failed; the operation had no effect."""


class RunnerClosedError(ProjectionError):
    """The runner was used before it was opened or after it was closed."""
