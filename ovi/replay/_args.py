"""Parsing the arguments every subcommand shares: times, revisions, event types."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from ovi.events import OVI_EVENTS

__all__ = [
    "KINDS",
    "KNOWN_TYPES",
    "Revision",
    "expand_types",
    "parse_at",
    "parse_when",
]

_RELATIVE = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_TIME_WORDS = ("an ISO-8601 time (2026-11-26T12:00:00Z; no zone means UTC) or a duration "
               "ago like 45s, 90m, 36h, 2d, 1h30m")

#: The coarse kinds of the original design, for ``--type``.
KINDS: dict[str, frozenset[str]] = {
    "observed": frozenset({"ResourceObserved", "ResourceDisappeared", "ObservationCompleted",
                           "ObservationFailed"}),
    "decided": frozenset({"DecisionMade"}),
    "executing": frozenset({"ActionExecuting"}),
    "executed": frozenset({"ActionExecuted"}),
    "failed": frozenset({"ActionFailed", "ObservationFailed"}),
    "skipped": frozenset({"ActionSkipped"}),
}
KNOWN_TYPES = frozenset(cls.__name__ for cls in OVI_EVENTS)


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """``--since``/``--until``: ISO-8601 (naive = UTC) or a duration before now.

    :raises argparse.ArgumentTypeError: naming what was expected.
    """
    value = text.strip()
    match = _RELATIVE.fullmatch(value)
    if value and match is not None and any(match.groups()):
        w, d, h, m, s = (int(g or 0) for g in match.groups())
        ago = timedelta(weeks=w, days=d, hours=h, minutes=m, seconds=s)
        return (now or datetime.now(UTC)) - ago
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {_TIME_WORDS}, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


class Revision(int):
    """A log position given to ``--at`` (as opposed to a time)."""


def parse_at(text: str) -> Revision | datetime:
    """``state --at``: a revision (a log position, digits only) or a time."""
    value = text.strip()
    if value.isdigit():
        return Revision(int(value))
    try:
        return parse_when(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a revision (a log position like 1200) or {_TIME_WORDS}, got {text!r}"
        ) from None


def expand_types(values: Iterable[str] | None) -> tuple[frozenset[str] | None, list[str]]:
    """``--type`` values (repeatable, comma-separated) to event type names.

    Returns the names (``None``: no filter) and the names given that this Ovi
    does not know (kept: a newer log may hold them; the caller warns).
    """
    if not values:
        return None, []
    names: set[str] = set()
    unknown: list[str] = []
    for value in values:
        for part in value.split(","):
            name = part.strip()
            if not name:
                continue
            kind = KINDS.get(name.lower())
            if kind is not None:
                names |= kind
                continue
            if name not in KNOWN_TYPES:
                unknown.append(name)
            names.add(name)
    return frozenset(names), unknown
