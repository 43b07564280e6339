"""The replay tool's error: an expected failure, reported in one line."""

from __future__ import annotations

from ovi._exceptions import OviError

__all__ = ["ReplayError"]


class ReplayError(OviError):
    """Bad input or a state of the log the command cannot work with (no such
    store, unknown resource, decision or cycle). Reported without a traceback."""
