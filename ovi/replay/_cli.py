"""``python -m ovi.replay``: the parser, the commands, the exit codes.

Exit codes: 0 ok; 1 an error, or ``verify``/``rebuild`` found a problem;
2 bad usage; 3 ``backtest`` found decisions that would have differed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path

import anyio
import msgspec

from eventstore import (
    Anchor,
    AnchorError,
    EventStoreError,
    MirroredStore,
    SQLiteEventStore,
    parse_anchor,
    read_anchors,
    store_for,
)
from ovi._exceptions import OviError
from ovi.config import load_config
from ovi.events import registry
from ovi.evidence import load_chain_key
from ovi.replay._args import expand_types, parse_at, parse_when
from ovi.replay._backtest import backtest
from ovi.replay._copy import copy_log
from ovi.replay._listing import Filters, follow_events, list_events
from ovi.replay._rebuild import rebuild_and_compare, rebuild_in_place
from ovi.replay._render import Output, is_tty, note
from ovi.replay._reports import show_backtest, show_head, show_rebuild, show_verification
from ovi.replay._state import show_state
from ovi.replay._stats import collect_stats, render_stats
from ovi.replay._store import open_log, resolve_resource
from ovi.replay._verify import verify_log
from ovi.replay._why import explain
from ovi.replay._why_text import render_chain
from ovi.runtime import default_mirror_path, default_store, is_shared, store_problem
from projections import ProjectionError

__all__ = ["main", "parser"]

PROG = "python -m ovi.replay"
EXIT_DIFFERENCES = 3


def _limit(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}")
    return int(text)


def _anchor(text: str) -> Anchor:
    try:
        return parse_anchor(text)
    except AnchorError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    """The command line (also documented in docs/replay.md)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS,
                        help="the event log: a SQLite file, or a postgresql:// URL read"
                             " through this host's mirror (default: $OVI_STORE, else ./ovi.db)")
    common.add_argument("--mirror", type=Path, default=argparse.SUPPRESS,
                        help="with a postgresql:// --store, the SQLite mirror brought up to"
                             " date and read (default: $OVI_MIRROR, else ./ovi-mirror.db)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="JSON lines for listings, one JSON object otherwise")
    common.add_argument("--chain-key-file", type=Path, default=argparse.SUPPRESS,
                        metavar="PATH", help="the key of a keyed log, to check its HMACs"
                        " (default: the systemd credential ovi-chain-key, if any)")
    main = argparse.ArgumentParser(prog=PROG, parents=[common],
                                   description="Audit and debug an Ovi event log.")
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def sub(name: str, help_: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], help=help_, description=help_)

    def filters(p: argparse.ArgumentParser, *, until: bool = True) -> None:
        p.add_argument("--since", type=parse_when, metavar="T",
                       help="from time T: ISO-8601 or a duration ago (90m, 2d)")
        if until:
            p.add_argument("--until", type=parse_when, metavar="T", help="before time T")
        p.add_argument("--type", action="extend", nargs="+", metavar="TYPE", dest="types",
                       help="event types, or kinds: observed decided executing executed"
                            " failed skipped")
        p.add_argument("--resource", metavar="ID", help="an ovi:id or a cloud id")
        p.add_argument("--cycle", metavar="ID", help="a cycle id")
        p.add_argument("--limit", type=_limit, metavar="N", help="stop after N events")

    filters(sub("log", "list events, filtered"))
    timeline = sub("timeline", "every event about one resource, in order")
    timeline.add_argument("resource", metavar="RESOURCE", help="an ovi:id or a cloud id")
    why = sub("why", "the causal chain behind a resource's latest (or given) decision")
    why.add_argument("resource", metavar="RESOURCE", help="an ovi:id or a cloud id")
    why.add_argument("--decision", metavar="ID", help="this decision instead of the latest")
    state = sub("state", "every resource at a revision or time (default: now)")
    state.add_argument("--at", type=parse_at, metavar="REV|TIME",
                       help="a log position, or a time (ISO-8601 or a duration ago)")
    state.add_argument("--all", action="store_true", help="also resources gone by then")
    stats = sub("stats", "counts, rates and cycle durations")
    stats.add_argument("--since", type=parse_when, metavar="T", help="only events from T on")
    verify = sub("verify", "check the hash chain (and anchors) and the causal consistency"
                 " of executions")
    verify.add_argument("--anchor", type=_anchor, action="append", default=[],
                        metavar="POS:HASH", dest="anchors",
                        help="a head kept elsewhere: the log must still hold that hash at"
                             " that position (repeatable)")
    verify.add_argument("--anchors", type=Path, action="append", default=[], metavar="FILE",
                        dest="anchor_files",
                        help="an anchor file (ovi apply/run --anchor-file): every line checked")
    sub("head", "the position and hash of the log's newest row: an anchor to keep elsewhere")
    rebuild = sub("rebuild", "rebuild every projection from the log and compare")
    rebuild.add_argument("--in-place", action="store_true",
                         help="then also rebuild the log file's own projection tables")
    filters(sub("follow", "print new events as they are appended (Ctrl-C stops)"),
            until=False)
    back = sub("backtest", "what another config would have decided on the recorded cycles")
    back.add_argument("--config", type=Path, required=True, metavar="NEW.yaml")
    back.add_argument("--since", type=parse_when, metavar="T", help="cycles started from T on")
    copy = sub("copy", "copy a log into an empty one, same positions and hashes"
                       " (SQLite ↔ PostgreSQL)")
    copy.add_argument("--from", dest="source", required=True, metavar="STORE",
                      help="the log to copy: a SQLite file or a postgresql:// URL")
    copy.add_argument("--to", dest="target", required=True, metavar="STORE",
                      help="an empty log (a missing file, or the missing schema a URL's"
                           " search_path names, is created)")
    return main


Command = Callable[[argparse.Namespace, SQLiteEventStore, Output], Awaitable[int]]


async def _filters(args: argparse.Namespace, store: SQLiteEventStore) -> Filters:
    types, unknown = expand_types(args.types)
    for name in unknown:
        sys.stderr.write(f"{PROG}: note: {name!r} is not an event type this Ovi knows;"
                         " listing it as recorded\n")
    resource = await resolve_resource(store, args.resource) if args.resource else None
    return Filters(since=args.since, until=getattr(args, "until", None), types=types,
                   resource=resource, cycle=args.cycle, limit=args.limit)


async def _log(args: argparse.Namespace, store: SQLiteEventStore, out: Output) -> int:
    await list_events(store, await _filters(args, store), out)
    return 0


async def _timeline(args: argparse.Namespace, store: SQLiteEventStore, out: Output) -> int:
    await list_events(store, Filters(resource=await resolve_resource(store, args.resource)),
                      out)
    return 0


async def _why(args: argparse.Namespace, store: SQLiteEventStore, out: Output) -> int:
    chain = await explain(store, await resolve_resource(store, args.resource), args.decision)
    if out.as_json:
        out.json(msgspec.to_builtins(chain))
    else:
        render_chain(out, chain)
    return 0


async def _state(args: argparse.Namespace, store: SQLiteEventStore, out: Output) -> int:
    await show_state(store, out, args.at, include_gone=args.all)
    return 0


async def _stats(args: argparse.Namespace, store: SQLiteEventStore, out: Output) -> int:
    stats = await collect_stats(store, args.since)
    if out.as_json:
        out.json(stats)
    else:
        render_stats(out, stats)
    return 0


async def _verify(args: argparse.Namespace, store: SQLiteEventStore, out: Output) -> int:
    anchors = list(args.anchors)
    for path in args.anchor_files:
        anchors.extend(_anchor_file(path, store.path))
    note(f"verifying {await store.last_position():,} events…")
    verification = await verify_log(store, anchors=anchors)
    show_verification(out, verification)
    return 0 if verification.ok else 1


def _anchor_file(path: Path, log: Path) -> list[Anchor]:
    """The anchors in ``path``, warning of torn lines and of anchors of another log.

    :raises AnchorError: if it cannot be read, or holds no anchor.
    """
    found = read_anchors(path, on_torn=_warn)
    if not found:
        # The service appends one after every cycle: an empty file was
        # emptied or replaced, and checking nothing must not read as "ok".
        raise AnchorError(f"{path}: holds no anchor (expected one JSON line per cycle)")
    here = os.path.abspath(log)
    others = sorted({a.log for a in found if a.log and a.log != here})
    if others:  # a copy or a moved log is fine, but say whose anchors these are
        _warn(f"{path}: holds anchors of {', '.join(others[:3])}, checked against {here}")
    return found


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


async def _head(args: argparse.Namespace, store: SQLiteEventStore, out: Output) -> int:
    show_head(out, await store.head(), store)
    return 0


async def _rebuild(args: argparse.Namespace, store: SQLiteEventStore, out: Output) -> int:
    note(f"rebuilding every projection from {await store.last_position():,} events…")
    report = await rebuild_and_compare(store)
    if args.in_place:
        report.in_place_seconds = await rebuild_in_place(store)
    show_rebuild(out, report)
    return 0 if report.equal or args.in_place else 1


async def _follow(args: argparse.Namespace, store: SQLiteEventStore, out: Output) -> int:
    f = await _filters(args, store)
    after = await store.last_position()
    if f.since is not None:
        async for recorded in store.read(since=f.since, limit=1):
            after = recorded.position - 1
    if is_tty(sys.stderr):
        sys.stderr.write(f"following {store.path} after position {after} (Ctrl-C stops)\n")
    async with anyio.create_task_group() as group:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    group.cancel_scope.cancel()
                    return

        group.start_soon(stop_on_signal)
        await follow_events(store, f, out, after=after)
        group.cancel_scope.cancel()
    return 0


async def _backtest(args: argparse.Namespace, store: SQLiteEventStore, out: Output) -> int:
    config = load_config(args.config)
    report = await backtest(store, config, since=args.since)
    show_backtest(out, report, str(args.config))
    return EXIT_DIFFERENCES if report.differences else 0


_COMMANDS: dict[str, Command] = {
    "log": _log, "timeline": _timeline, "why": _why, "state": _state, "stats": _stats,
    "verify": _verify, "rebuild": _rebuild, "follow": _follow, "backtest": _backtest,
    "head": _head,
}
#: every command but these opens the log read-only (an audit changes nothing)
_WRITING = frozenset({"rebuild"})


async def _copy(args: argparse.Namespace, out: Output) -> int:
    report = await copy_log(args.source, args.target,
                            chain_key=load_chain_key(getattr(args, "chain_key_file", None)))
    if out.as_json:
        out.json(report)
    else:
        out.write(f"copied {report.events:,} events from {report.source} to {report.target};"
                  f" head {report.head_position:,} {report.head_hash} (as in the source)")
    return 0


async def _run(command: Command, args: argparse.Namespace, store: str, out: Output) -> int:
    key = load_chain_key(getattr(args, "chain_key_file", None))
    read_only = args.command not in _WRITING
    if not is_shared(store):
        async with open_log(Path(store), read_only=read_only, chain_key=key) as log:
            return await command(args, log, out)
    # A shared log: bring this host's mirror up to date (checked against the
    # log as it is copied), then work on the mirror like on any SQLite log.
    mirror = getattr(args, "mirror", None) or default_mirror_path()
    async with store_for(store, registry(), instance_id=f"replay:{os.getpid()}",
                         mirror=mirror, chain_key=key, read_only=read_only) as shared:
        assert isinstance(shared, MirroredStore)
        async with open_log(mirror, read_only=read_only, chain_key=key) as log:
            if args.command == "follow":
                return await _following(command, args, log, shared, out)
            code = await command(args, log, out)
            if args.command == "verify":
                code = max(code, await _verify_shared(shared))
            return code


async def _following(command: Command, args: argparse.Namespace, log: SQLiteEventStore,
                     shared: MirroredStore, out: Output) -> int:
    """``follow`` on a mirror that keeps copying the shared log meanwhile."""
    async with anyio.create_task_group() as group:

        async def keep_copying() -> None:
            async for _ in shared.follow(after=await shared.last_position()):
                pass  # each wake-up copies; the mirror's followers see the rows

        group.start_soon(keep_copying)
        code = await command(args, log, out)
        group.cancel_scope.cancel()
    return code


async def _verify_shared(shared: MirroredStore) -> int:
    """The mirror's rows were checked as copied; the shared log's own chain
    and head are checked here too (a row changed there after it was copied)."""
    report = await shared.shared.verify()
    if report.problem is None:
        return 0
    sys.stderr.write(f"{PROG}: the shared log {shared.shared.location} is broken at position"
                     f" {report.problem.position}: {report.problem.reason}\n")
    return 1


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; return its exit code."""
    args = parser().parse_args(argv)
    store: str = getattr(args, "store", None) or default_store()
    out = Output(as_json=getattr(args, "json", False))
    specs = ([("--from", args.source), ("--to", args.target)] if args.command == "copy"
             else [("--store", store)])
    for flag, spec in specs:
        problem = store_problem(spec, flag)
        if problem is not None:
            sys.stderr.write(f"{PROG}: error: {problem}\n")
            return 2
    if getattr(args, "mirror", None) is not None and not is_shared(store) \
            and args.command != "copy":
        sys.stderr.write(f"{PROG}: error: --mirror: only for a shared log (a postgresql://"
                         f" --store); {store} is a SQLite file, the log itself\n")
        return 2
    work = (partial(_copy, args, out) if args.command == "copy"
            else partial(_run, _COMMANDS[args.command], args, store, out))
    try:
        return anyio.run(work, backend_options={"use_uvloop": True})
    except BaseException as raised:
        exc = _leaf(raised)
        if isinstance(exc, OviError | EventStoreError | ProjectionError):
            sys.stderr.write(f"{PROG}: error: {exc}\n")
            return 1
        if isinstance(exc, BrokenPipeError):
            # The reader went away (`| head`): stop quietly, like `cat` does.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        if isinstance(exc, KeyboardInterrupt):
            return 0 if args.command == "follow" else 130
        raise
