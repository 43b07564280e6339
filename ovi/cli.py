"""The ``ovi`` command (also ``python -m ovi``).

Exit codes: ``plan`` 0 in sync, 2 changes pending, 1 error; ``apply`` 0 when
no action failed, 1 otherwise; every command 1 on bad input or a failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import anyio
import msgspec

from eventstore import EventStoreError
from ovi._exceptions import OviError
from ovi._output import result_json, result_text
from ovi.app import (
    approve_decision,
    grant_adoption,
    pause_automation,
    resume_automation,
    run_once,
)
from ovi.config import parse_duration
from ovi.engine import CycleResult
from ovi.events import PAUSE_ALL
from ovi.evidence import load_chain_key
from ovi.model import CycleMode
from ovi.runtime import default_store, is_shared, store_problem
from projections import ProjectionError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """Bad flags exit 1 like every other bad input (argparse's default is 2,
    which ``plan`` uses for "changes pending")."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {value}")
    return value


def _duration(text: str) -> float:
    value = parse_duration(text)
    if value is None:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 30s, 5m, 1h30m, got {text!r}")
    return value.total_seconds()


def _positive_duration(text: str) -> float:
    seconds = _duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration above 0 like 30s, got {text!r}")
    return seconds


def _address(text: str) -> tuple[str, int] | None:
    if text.lower() in ("off", "none", ""):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT like 127.0.0.1:9464 (or off), got {text!r}")
    return host.strip("[]"), int(port)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ovi", description="Keep an AWS estate aligned with a YAML file.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def store_flag(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--store", default=None,
                         help="the event log: a SQLite file, or a postgresql:// URL shared by"
                              " several hosts (default: $OVI_STORE, else ./ovi.db)")
        sub.add_argument("--mirror", type=Path, default=None,
                         help="with a postgresql:// --store, this host's SQLite mirror of the"
                              " log (default: $OVI_MIRROR, else ./ovi-mirror.db)")
        sub.add_argument("--chain-key-file", type=Path, default=None, metavar="PATH",
                         help="key of a keyed log (default: the systemd credential"
                              " ovi-chain-key, if any); a new log is created keyed with it")

    def anchor_flag(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--anchor-file", type=Path, default=None, metavar="PATH",
                         help="append the log's head (position, hash) after each cycle, one"
                              " JSON line, fsynced: keep it where the log's writer cannot"
                              " rewrite it; `python -m ovi.replay verify --anchors PATH`"
                              " checks it")

    plan = commands.add_parser("plan", help="one cycle without execution")
    apply = commands.add_parser("apply", help="one cycle with execution")
    for sub in (plan, apply):
        sub.add_argument("--config", type=Path, required=True, help="the desired state (YAML)")
        store_flag(sub)
        sub.add_argument("--json", action="store_true", help="print one JSON object")
    apply.add_argument("--dry-run", action="store_true",
                       help="record what would run, change nothing")
    apply.add_argument("--max-concurrency", type=_positive_int, default=None,
                       help="actions in flight at once (default: rules.max_concurrency)")
    anchor_flag(apply)

    approve = commands.add_parser("approve", help="approve a decision that waits for it")
    approve.add_argument("decision_id")
    store_flag(approve)
    approve.add_argument("--by", default=None, help="who approves (default: the user name)")

    run = commands.add_parser("run", help="the reconcile loop, as a (systemd) service")
    run.add_argument("--config", type=Path, required=True, help="the desired state (YAML)")
    store_flag(run)
    run.add_argument("--interval", type=_positive_duration, default=30.0,
                     help="time between cycles, like 30s or 5m (default 30s)")
    run.add_argument("--metrics-addr", type=_address, default=("127.0.0.1", 9464),
                     help="HOST:PORT of /metrics and /healthz, or off (default 127.0.0.1:9464)")
    run.add_argument("--log-format", choices=("text", "json"), default="text",
                     help="stderr log lines (default text)")
    run.add_argument("--plan-only", action="store_true",
                     help="observe, decide and record, never execute")
    run.add_argument("--drain-timeout", type=_duration, default=60.0,
                     help="on SIGTERM, how long actions in flight may take to finish"
                          " (default 60s)")
    anchor_flag(run)
    run.add_argument("--cycle-timeout", type=_positive_duration, default=3600.0,
                     help="a cycle running longer counts as hung: watchdog pings stop"
                          " (default 1h)")

    for name, verb in (("pause", "pause"), ("resume", "resume")):
        sub = commands.add_parser(name, help=f"{verb} automation on resources or everywhere")
        sub.add_argument("resource_ids", nargs="*", metavar="RESOURCE_ID")
        sub.add_argument("--all", action="store_true", help="the whole estate")
        sub.add_argument("--reason", required=name == "pause", default="",
                         help="why (recorded, shown by plan, why, metrics and STATUS=)")
        store_flag(sub)
        sub.add_argument("--by", default=None, help="who (default: the user name)")

    adopt = commands.add_parser(
        "adopt", help="let the next cycle take over an existing resource as a desired id")
    adopt.add_argument("resource", help="its identity as `ovi plan` shows it"
                       " (aws/REGION/TYPE/CLOUD_ID), or its cloud id")
    adopt.add_argument("--as", dest="as_id", required=True, metavar="ID",
                       help="the desired id it becomes (web-0)")
    store_flag(adopt)
    adopt.add_argument("--by", default=None, help="who grants it (default: the user name)")

    demo = commands.add_parser("demo", help="plan and apply against an embedded AWS emulator")
    demo.add_argument("--dir", type=Path, default=None,
                      help="keep the demo's config and log here (default: a temporary folder)")
    return parser


def _tty(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and "NO_COLOR" not in os.environ


def _progress(message: str) -> None:
    if _tty(sys.stderr):
        sys.stderr.write(f"ovi: {message}\n")


def _print_result(result: CycleResult, *, as_json: bool, executions: bool) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.encode(result_json(result, executions=executions))
                         .decode() + "\n")
    else:
        sys.stdout.write(result_text(result, executions=executions, colour=_tty(sys.stdout)))
    for scope, error in result.scope_errors:
        sys.stderr.write(f"ovi: could not observe {scope}: {error}\n")
    for scope, cloud_id, error in result.unreadable:
        sys.stderr.write(f"ovi: could not read {cloud_id} in {scope}: {error}\n")


async def _plan(args: argparse.Namespace) -> int:
    result = await run_once(args.config, args.store, mode=CycleMode.PLAN, progress=_progress,
                            mirror=args.mirror, chain_key=load_chain_key(args.chain_key_file))
    _print_result(result, as_json=args.json, executions=False)
    if result.failed_scopes:
        return 1
    return 0 if result.in_sync else 2


async def _apply(args: argparse.Namespace) -> int:
    result = await run_once(args.config, args.store, mode=CycleMode.APPLY,
                            dry_run=args.dry_run, max_concurrency=args.max_concurrency,
                            progress=_progress, mirror=args.mirror,
                            chain_key=load_chain_key(args.chain_key_file),
                            anchor_file=args.anchor_file)
    _print_result(result, as_json=args.json, executions=True)
    return 1 if result.execution_errors or result.failed_scopes else 0


async def _approve(args: argparse.Namespace) -> int:
    decision, by = await approve_decision(args.store, args.decision_id, by=args.by,
                                           mirror=args.mirror,
                                           chain_key=load_chain_key(args.chain_key_file))
    sys.stdout.write(f"approved {decision.decision_id}: {decision.action.value} "
                     f"{decision.resource_id} (by {by}); the next apply may execute it\n")
    return 0


async def _run(args: argparse.Namespace) -> int:
    from ovi.service import Service, ServiceSettings
    from ovi.servicelog import LogFormat

    host, port = args.metrics_addr if args.metrics_addr is not None else (None, 0)
    settings = ServiceSettings(
        config_path=args.config, store_path=args.store, mirror_path=args.mirror,
        interval=args.interval,
        metrics_host=host, metrics_port=port, log_format=LogFormat(args.log_format),
        plan_only=args.plan_only, drain_timeout=args.drain_timeout,
        cycle_timeout=args.cycle_timeout, anchor_file=args.anchor_file,
        chain_key_file=args.chain_key_file)
    return await Service(settings).run()


def _targets(args: argparse.Namespace) -> list[str]:
    if args.all and args.resource_ids:
        raise OviError("give resource ids or --all, not both")
    return [PAUSE_ALL] if args.all else list(args.resource_ids)


def _named(target: str) -> str:
    return "the whole estate" if target == PAUSE_ALL else target


async def _pause(args: argparse.Namespace) -> int:
    targets = _targets(args)
    if not args.reason.strip():
        raise OviError("--reason: expected a few words saying why, got nothing")
    changed, actor = await pause_automation(args.store, targets, reason=args.reason,
                                            by=args.by, mirror=args.mirror,
                                            chain_key=load_chain_key(args.chain_key_file))
    who = f"{actor.by} (user {actor.user}, uid {actor.uid} on {actor.host})"
    for target in targets:
        state = "paused" if target in changed else "already paused"
        sys.stdout.write(f"{state}: {_named(target)}"
                         + (f", by {who}: {args.reason}\n" if target in changed else "\n"))
    sys.stdout.write("no Ovi sharing this log acts on it until `ovi resume`; it is still"
                     " observed and reported\n")
    return 0


async def _resume(args: argparse.Namespace) -> int:
    targets = _targets(args)
    changed, actor = await resume_automation(args.store, targets, reason=args.reason,
                                             by=args.by, mirror=args.mirror,
                                             chain_key=load_chain_key(args.chain_key_file))
    for target in changed:
        sys.stdout.write(f"resumed: {_named(target)}, by {actor.by} (user {actor.user},"
                         f" uid {actor.uid} on {actor.host})\n")
    return 0


async def _adopt(args: argparse.Namespace) -> int:
    target, actor = await grant_adoption(args.store, args.resource, as_id=args.as_id,
                                         by=args.by, mirror=args.mirror,
                                         chain_key=load_chain_key(args.chain_key_file))
    sys.stdout.write(f"granted (by {actor.by}, user {actor.user}, uid {actor.uid} on"
                     f" {actor.host}): the next apply adopts {target.identity} as"
                     f" {args.as_id} if {args.as_id} is desired and not there\n")
    return 0


async def _demo(args: argparse.Namespace) -> int:
    from ovi.demo import run_demo

    return await run_demo(args.dir)


_EXPECTED = (OviError, EventStoreError, ProjectionError)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


_COMMANDS = {"plan": _plan, "apply": _apply, "approve": _approve, "adopt": _adopt,
             "run": _run, "pause": _pause, "resume": _resume, "demo": _demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ovi`` console script."""
    args = _parser().parse_args(argv)
    if getattr(args, "store", "absent") is None:
        args.store = default_store()
    problem = store_problem(args.store) if hasattr(args, "store") else None
    if problem is not None:
        sys.stderr.write(f"ovi: error: {problem}\n")
        return 2
    if getattr(args, "mirror", None) is not None and not is_shared(args.store):
        sys.stderr.write("ovi: error: --mirror: only for a shared log (a postgresql:// --store);"
                         f" {args.store} is a SQLite file, the log itself\n")
        return 1
    command = _COMMANDS[args.command]

    async def run() -> int:
        return await command(args)

    try:
        return anyio.run(run, backend_options={"use_uvloop": True})
    except _EXPECTED as exc:
        sys.stderr.write(f"ovi: error: {exc}\n")
        return 1
    except ExceptionGroup as group:
        # Task groups wrap what their tasks raise; an expected error is still
        # reported as one line, not a traceback.
        expected, rest = group.split(_EXPECTED)
        if rest is not None or expected is None:
            raise
        for leaf in _leaves(expected):
            sys.stderr.write(f"ovi: error: {leaf}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("ovi: interrupted\n")
        return 130
