"""``stats``: counts by type, action and outcome; rates; cycle durations.

One streaming pass over undecoded rows; only the few event types whose
fields are counted are decoded, into small structs.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

import msgspec

from eventstore import EventStore
from ovi.model import Outcome
from ovi.replay._render import Output, Progress, fmt_count

__all__ = ["collect_stats", "percentile", "render_stats"]


class _Decision(msgspec.Struct):
    action: str = "?"


class _Decided(msgspec.Struct):
    decision: _Decision = msgspec.field(default_factory=_Decision)


class _Acted(msgspec.Struct):
    action: str = "?"
    reason: str = ""


class _Finished(msgspec.Struct):
    duration_ms: float = 0.0


_decode_decided = msgspec.json.Decoder(_Decided).decode
_decode_acted = msgspec.json.Decoder(_Acted).decode
_decode_finished = msgspec.json.Decoder(_Finished).decode
_OUTCOMES = {"ActionExecuting": Outcome.EXECUTING, "ActionExecuted": Outcome.EXECUTED,
             "ActionFailed": Outcome.FAILED, "ActionSkipped": Outcome.SKIPPED}


def percentile(ordered: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list (``None`` when empty)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def collect_stats(store: EventStore, since: datetime | None) -> dict[str, Any]:
    """The ``stats`` object (see docs/replay.md)."""
    by_type: Counter[str] = Counter()
    decided: Counter[str] = Counter()
    outcomes: defaultdict[str, Counter[str]] = defaultdict(Counter)
    skipped: Counter[str] = Counter()
    durations: list[float] = []
    first: tuple[int, str] | None = None
    last: tuple[int, str] | None = None
    progress = Progress("stats", total=await store.last_position())
    async for page in store.read_raw(since=since):
        for row in page:
            type_ = row[3]
            by_type[type_] += 1
            if type_ == "DecisionMade":
                decided[_safe(_decode_decided, row[6], _Decided()).decision.action] += 1
            elif type_ in _OUTCOMES:
                acted = _safe(_decode_acted, row[6], _Acted())
                outcomes[acted.action][_OUTCOMES[type_]] += 1
                if type_ == "ActionSkipped":
                    skipped[acted.reason] += 1
            elif type_ == "CycleFinished":
                durations.append(_safe(_decode_finished, row[6], _Finished()).duration_ms)
        first = first or (page[0][0], page[0][4])
        last = (page[-1][0], page[-1][4])
        progress.update(sum(by_type.values()))
    progress.done()
    durations.sort()
    executed = sum(c[Outcome.EXECUTED] for c in outcomes.values())
    failed = sum(c[Outcome.FAILED] for c in outcomes.values())
    completed = by_type["ObservationCompleted"]
    not_observed = by_type["ObservationFailed"]
    return {
        "events": sum(by_type.values()),
        "first_position": first[0] if first else None,
        "last_position": last[0] if last else None,
        "first_at": first[1] if first else None,
        "last_at": last[1] if last else None,
        "by_type": dict(sorted(by_type.items())),
        "decisions_by_action": dict(sorted(decided.items())),
        "outcomes_by_action": {a: dict(sorted(c.items())) for a, c in sorted(outcomes.items())},
        "skipped_by_reason": dict(sorted(skipped.items())),
        "executed": executed,
        "failed": failed,
        "success_rate": _rate(executed, executed + failed),
        "error_rate": _rate(failed, executed + failed),
        "observation_error_rate": _rate(not_observed, completed + not_observed),
        "cycles": {
            "count": len(durations),
            **{f"p{p}_ms": _ms(percentile(durations, p)) for p in (50, 90, 99)},
            "max_ms": _ms(durations[-1] if durations else None),
        },
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _safe(decode: Any, data: str, default: Any) -> Any:
    try:
        return decode(data)
    except msgspec.DecodeError:
        return default


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def render_stats(out: Output, stats: dict[str, Any]) -> None:
    if not stats["events"]:
        out.write("no events in the range asked")
        return
    out.write(f"{fmt_count(stats['events'])} events, positions {stats['first_position']}"
              f"..{stats['last_position']}, {stats['first_at']} to {stats['last_at']}")
    cycles = stats["cycles"]
    if cycles["count"]:
        out.write(f"{fmt_count(cycles['count'])} cycles: duration p50 {cycles['p50_ms']} ms,"
                  f" p90 {cycles['p90_ms']} ms, p99 {cycles['p99_ms']} ms,"
                  f" max {cycles['max_ms']} ms")
    out.write(f"actions: {stats['executed']} executed, {stats['failed']} failed; success"
              f" {_pct(stats['success_rate'])}, errors {_pct(stats['error_rate'])};"
              f" observations failed {_pct(stats['observation_error_rate'])}")
    out.write()
    out.table([((t, None), (fmt_count(n), None)) for t, n in stats["by_type"].items()],
              header=("EVENT TYPE", "COUNT"), indent="  ")
    actions = sorted(set(stats["decisions_by_action"]) | set(stats["outcomes_by_action"]))
    if actions:
        out.write()
        columns = ("decided", "skipped", "executing", "executed", "failed")
        rows = []
        for action in actions:
            counts = {"decided": stats["decisions_by_action"].get(action, 0),
                      **stats["outcomes_by_action"].get(action, {})}
            rows.append([(action, "bold"), *((str(counts.get(c, 0)), None) for c in columns)])
        out.table(rows, header=("ACTION", *(c.upper() for c in columns)), indent="  ")
    if stats["skipped_by_reason"]:
        out.write()
        out.table([((r, None), (str(n), None)) for r, n in stats["skipped_by_reason"].items()],
                  header=("SKIPPED BECAUSE", "COUNT"), indent="  ")
