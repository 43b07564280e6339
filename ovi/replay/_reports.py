"""Text and JSON renderings of ``verify``, ``head``, ``rebuild`` and ``backtest``."""

from __future__ import annotations

from typing import Any

import msgspec

from eventstore import EventStore, Head
from ovi.replay._backtest import BacktestReport, Verdict
from ovi.replay._rebuild import RebuildReport
from ovi.replay._render import Output, fmt_count, fmt_time
from ovi.replay._verify import Verification

__all__ = ["show_backtest", "show_head", "show_rebuild", "show_verification"]


def show_head(out: Output, head: Head, store: EventStore) -> None:
    """``head``: what to keep elsewhere, and how to check it later."""
    keyed = store.chain.keyed
    if out.as_json:
        out.json({"position": head.position, "hash": head.hash,
                  "recorded_at": head.recorded_at, "log": store.location, "keyed": keyed})
        return
    out.write(f"head         position {head.position}, hash {head.hash}")
    if head.recorded_at is not None:
        out.write(f"recorded at  {head.recorded_at}")
    out.write(f"chain        {'keyed (HMAC-SHA256)' if keyed else 'unkeyed (SHA-256)'}")
    out.write(f"check later  python -m ovi.replay verify --anchor {head.position}:{head.hash}")


def show_verification(out: Output, v: Verification) -> None:
    first = v.first_problem
    if out.as_json:
        out.json({
            "ok": v.ok,
            "events_checked": v.events_checked,
            "head_position": v.head_position,
            "head_hash": v.head_hash,
            "keyed": v.keyed,
            "hashes_checked": v.hashes_checked,
            "storage": v.storage_problem,
            "anchors": v.anchors,
            "anchors_checked": v.anchors_checked,
            "anchors_unchecked": v.anchors_unchecked,
            "anchor": msgspec.to_builtins(v.anchor_problem) if v.anchor_problem else None,
            "chain": msgspec.to_builtins(v.chain_problem) if v.chain_problem else None,
            "actions": v.actions,
            "violations": msgspec.to_builtins(v.violations),
            "in_doubt": msgspec.to_builtins(v.in_doubt),
            "first_bad_position": first.position if first else None,
            "why": first.reason if first else None,
        })
        return
    chain = v.chain_problem
    kind = ("keyed: every row's HMAC checked under the key" if v.keyed and v.hashes_checked
            else "keyed, but no key given: checked only the unkeyed structure (positions,"
            " links, head), not the HMACs" if v.keyed else "unkeyed")
    if chain is None:
        out.write(f"hash chain   {out.paint('ok', 'green')}: {fmt_count(v.events_checked)}"
                  f" events ({kind})")
    else:
        out.write(f"hash chain   {out.paint('BROKEN', 'red')} at position {chain.position}:"
                  f" {chain.reason}; later events are not checked ({kind})")
    out.write(f"head         position {v.head_position}, hash {v.head_hash}")
    if v.storage_problem is not None:
        out.write(f"storage      {out.paint('BROKEN', 'red')}: {v.storage_problem}")
    anchor = v.anchor_problem
    if anchor is not None:
        # Without the key of a keyed log no anchor can be checked at all.
        label = "UNCHECKED" if v.anchors_unchecked else "REWRITTEN"
        out.write(f"anchors      {out.paint(label, 'red')} at position {anchor.position}:"
                  f" {anchor.reason}")
    elif v.anchors:
        out.write(f"anchors      {out.paint('ok', 'green')}: {v.anchors_checked} of"
                  f" {v.anchors} found where they were anchored")
    else:
        out.write("anchors      none given: the chain alone cannot show a history rewritten"
                  " with every hash recomputed (keep `head` elsewhere, or --anchor-file)")
    if not v.violations:
        out.write(f"causality    {out.paint('ok', 'green')}: {v.actions} executions, each with"
                  " at most one outcome, every action and approval after its decision")
    else:
        out.write(f"causality    {out.paint(f'{len(v.violations)} violation(s)', 'red')}")
        for violation in v.violations:
            out.write(f"  position {violation.position} ({violation.type}): {violation.reason}")
    if v.in_doubt:
        out.write(f"in doubt     {len(v.in_doubt)} execution(s) started without an outcome"
                  " (a crash, or still running; the next start-up resolves them):")
        out.table([((str(d.position), None), (d.action, "bold"), (d.resource_id, None),
                    (d.decision_id, "dim"), (f"by {d.instance_id}", None),
                    (fmt_time(d.recorded_at), "dim")) for d in v.in_doubt], indent="  ")
    if first is not None:
        out.write(out.paint(f"verification failed: first bad position {first.position}:"
                            f" {first.reason}", "red"))


def show_rebuild(out: Output, r: RebuildReport) -> None:
    if out.as_json:
        out.json({
            "equal": r.equal, "position": r.position, "events": r.events,
            "seconds": round(r.seconds, 3), "events_per_s": round(r.events_per_s),
            "workers": r.workers,
            "in_place_seconds": None if r.in_place_seconds is None
            else round(r.in_place_seconds, 3),
            "tables": [{"projection": t.projection, "table": t.table, "rows": t.rows,
                        "equal": t.equal, "only_in_store": t.only_in_store,
                        "only_in_rebuilt": t.only_in_rebuilt, "note": t.note or None}
                       for t in r.tables],
        })
        return
    workers = f", {r.workers} processes" if r.workers > 1 else ""
    out.write(f"rebuilt every projection from {fmt_count(r.events)} events in {r.seconds:.2f} s"
              f" ({fmt_count(round(r.events_per_s))} events/s{workers}), compared at position"
              f" {r.position}")
    rows = []
    for t in r.tables:
        if t.equal:
            verdict = ("equal" + (f" ({t.note})" if t.note else ""), "green")
        else:
            verdict = (f"DIFFERS: {t.only_in_store} rows only in the log's copy,"
                       f" {t.only_in_rebuilt} only in the rebuilt one", "red")
        rows.append([(t.projection, None), (t.table, "bold"), (f"{t.rows} rows", None), verdict])
    out.table(rows, indent="  ")
    if r.in_place_seconds is not None:
        out.write(f"rebuilt the log file's own projection tables in {r.in_place_seconds:.2f} s")


def _verdict(v: Verdict | None) -> str:
    return "nothing" if v is None else f"{v.action} {v.status}"


def show_backtest(out: Output, r: BacktestReport, source: str) -> None:
    if out.as_json:
        body: dict[str, Any] = msgspec.to_builtins(r)
        out.json({"config": source, "differs": bool(r.differences), **body})
        return
    span = (f" ({fmt_time(r.first_at)} to {fmt_time(r.last_at)})" if r.first_at else "")
    out.write(f"backtest of {source} (config {r.config_hash[:12]}) over {r.cycles_compared}"
              f" recorded cycles{span}")
    for m in r.digest_mismatches:
        out.write(out.paint(f"  warning: cycle {m.cycle_id}, {m.scope}: the rebuilt observed"
                            f" set ({m.rebuilt_count} resources) does not match the digest"
                            f" recorded at position {m.position} ({m.recorded_count})", "red"))
    if r.unfinished_cycles:
        out.write(f"  {r.unfinished_cycles} unfinished cycle(s) left out")
    if not r.differences:
        out.write(out.paint("no difference: this config would have decided the same", "green"))
        return
    rows = []
    for d in r.differences:
        when = fmt_time(d.first_at) + (f" .. {fmt_time(d.last_at)}" if d.cycles > 1 else "")
        why = f" (rule {d.backtest.rule})" if d.backtest else ""
        rows.append([(d.resource_id, "bold"), (f"{when} ({d.cycles} cycles)", "dim"),
                     (_verdict(d.recorded), None), ("->", "dim"),
                     (_verdict(d.backtest) + why, "yellow")])
    out.table(rows, header=("RESOURCE", "CYCLES", "RECORDED", "", "WITH THIS CONFIG"),
              indent="  ")
    out.write(f"{len(r.differences)} difference(s)")
