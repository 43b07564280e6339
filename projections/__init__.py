"""Read models folded from the event log, with checkpoints."""

from __future__ import annotations

from projections._exceptions import (
    CheckpointError,
    ProjectionApplyError,
    ProjectionDatabaseError,
    ProjectionError,
    RunnerClosedError,
    UnknownProjectionError,
)
from projections._projection import Projection
from projections._runner import CHECKPOINTS_TABLE, Checkpoint, ProjectionRunner
from projections.streams import StreamsProjection

__all__ = [
    "CHECKPOINTS_TABLE",
    "Checkpoint",
    "CheckpointError",
    "Projection",
    "ProjectionApplyError",
    "ProjectionDatabaseError",
    "ProjectionError",
    "ProjectionRunner",
    "RunnerClosedError",
    "StreamsProjection",
    "UnknownProjectionError",
]
