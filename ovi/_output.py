"""What ``ovi plan`` / ``ovi apply`` print: one JSON object, or a concise table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from ovi._text import escaped
from ovi.engine import CycleResult
from ovi.model import Action, Decision, Outcome

__all__ = ["result_json", "result_text"]


def result_json(result: CycleResult, *, executions: bool) -> dict[str, Any]:
    """The documented ``--json`` object."""
    body: dict[str, Any] = {
        "cycle_id": result.cycle_id,
        "in_sync": result.in_sync,
        "diffs": [
            {"type": d.type.value, "resource_id": d.resource_id, "cloud_id": d.cloud_id,
             "resource_type": d.resource_type.value, "reason": d.reason}
            for d in result.diffs
        ],
        "decisions": [
            {"decision_id": d.decision_id, "action": d.action.value,
             "resource_id": d.resource_id, "cloud_id": d.cloud_id, "reason": d.reason,
             "status": d.status.value,
             "provenance": d.provenance.value if d.provenance is not None else None}
            for d in result.decisions
        ],
        "failed_scopes": list(result.failed_scopes),
        "paused": [
            {"target": p.target, "reason": p.reason, "by": p.by, "user": p.user, "uid": p.uid,
             "host": p.host, "at": p.at.isoformat()}
            for p in result.paused
        ],
        "unreadable": [{"scope": scope, "cloud_id": cloud_id, "error": error}
                       for scope, cloud_id, error in result.unreadable],
        "head": None if result.head is None else {
            "position": result.head.position, "hash": result.head.hash,
            "recorded_at": result.head.recorded_at},
    }
    if executions:
        body["executions"] = [
            {"decision_id": e.decision_id, "action": e.action.value,
             "resource_id": e.resource_id, "cloud_id": e.cloud_id, "outcome": e.outcome,
             "error": e.error if e.outcome is Outcome.FAILED else e.reason}
            for e in result.executions
        ]
    return body


_COLOURS = {"red": "31", "green": "32", "yellow": "33", "blue": "34", "dim": "2", "bold": "1"}


class _Paint:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, colour: str) -> str:
        if not self.enabled:
            return text
        return f"\x1b[{_COLOURS[colour]}m{text}\x1b[0m"


Cell = tuple[str, str | None]  # text, colour


def _table(rows: Sequence[Sequence[Cell]], paint: _Paint) -> str:
    """Align columns on the plain text, then colour. Every cell is escaped: a
    reason or an error can carry a cloud tag's value, which anyone who may tag
    a resource chose."""
    rows = [[(escaped(text), colour) for text, colour in row] for row in rows]
    widths = [max(len(row[i][0]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = []
        for i, (text, colour) in enumerate(row):
            padded = text.ljust(widths[i]) if i < len(row) - 1 else text
            cells.append(paint(padded, colour) if colour else padded)
        lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)


_ACTION_COLOUR = {Action.CREATE: "green", Action.UPDATE: "yellow", Action.DELETE: "red",
                  Action.NOTIFY: "blue", Action.ADOPT: "yellow"}
_OUTCOME_COLOUR = {Outcome.EXECUTED: "green", Outcome.FAILED: "red", Outcome.SKIPPED: "dim",
                   Outcome.EXECUTING: "yellow"}


def _status(d: Decision) -> str:
    """A delete's status says where the resource came from, by the log."""
    if d.provenance is None:
        return d.status.value
    return f"{d.status.value} ({d.provenance.value})"


def result_text(result: CycleResult, *, executions: bool, colour: bool) -> str:
    """A few aligned sections a person reads at a glance."""
    paint = _Paint(colour)
    out = [paint(f"cycle {result.cycle_id}", "bold")
           + f" · {result.resources_found} resources observed · {len(result.diffs)} diffs"
           + f" · {result.duration:.2f}s"]
    out.extend(paint(escaped(f"  observation failed: {scope}: {error}")
                     + " (no decision taken there)", "red")
               for scope, error in result.scope_errors)
    out.extend(paint(escaped(f"  unreadable: {cloud_id} in {scope}: {error}")
                     + " (nothing decided about it)", "yellow")
               for scope, cloud_id, error in result.unreadable)
    if result.paused:
        out.append("\npaused (ovi resume lifts it)")
        out.append(_table([((("all" if p.target == "*" else p.target), "bold"),
                            (p.describe(), "yellow")) for p in result.paused], paint))
    if result.diffs and not executions:  # apply: the decisions say it all
        out.append("\ndiffs")
        out.append(_table([((d.type.value, None), (d.resource_id, "bold"),
                            (d.resource_type.value, None), (d.cloud_id or "-", "dim"),
                            (d.reason, None)) for d in result.diffs], paint))
    if result.decisions:
        out.append("\ndecisions")
        out.append(_table([
            ((d.action.value, _ACTION_COLOUR[d.action]), (d.resource_id, "bold"),
             (_status(d), None), (d.decision_id, "dim"), (d.reason, None))
            for d in result.decisions
        ], paint))
    if executions and result.executions:
        out.append("\nexecutions")
        out.append(_table([
            ((e.outcome, _OUTCOME_COLOUR[e.outcome]), (e.action.value, None),
             (e.resource_id, "bold"), (e.cloud_id or "-", "dim"), (e.error or e.reason or "", None))
            for e in result.executions
        ], paint))
    if result.failed_scopes:
        summary = paint("incomplete: some scopes could not be observed", "red")
    elif executions:
        counts = Counter(e.outcome for e in result.executions)
        summary = (f"{counts[Outcome.EXECUTED]} executed · {counts[Outcome.FAILED]} failed · "
                   f"{counts[Outcome.SKIPPED]} skipped or waiting")
        summary = paint(summary, "red" if counts[Outcome.FAILED] else "green")
    elif result.in_sync:
        summary = paint("in sync", "green")
    else:
        pending = sum(d.action != Action.NOTIFY for d in result.decisions)
        summary = paint(f"{pending} change(s) pending", "yellow")
    out.append("\n" + summary)
    if result.head is not None:
        out.append(paint(f"log head {result.head.position}:{result.head.hash}", "dim"))
    return "\n".join(out) + "\n"
