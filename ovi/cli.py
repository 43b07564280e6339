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
from ovi.app import approve_decision, grant_adoption, run_once
from ovi.engine import CycleResult
from ovi.model import CycleMode
from ovi.runtime import default_store_path
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


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ovi", description="Keep an AWS estate aligned with a YAML file.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def store_flag(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--store", type=Path, default=None,
                         help="SQLite event log (default: $OVI_STORE, else ./ovi.db)")

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

    approve = commands.add_parser("approve", help="approve a decision that waits for it")
    approve.add_argument("decision_id")
    store_flag(approve)
    approve.add_argument("--by", default=None, help="who approves (default: the user name)")

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
    result = await run_once(args.config, args.store, mode=CycleMode.PLAN, progress=_progress)
    _print_result(result, as_json=args.json, executions=False)
    if result.failed_scopes:
        return 1
    return 0 if result.in_sync else 2


async def _apply(args: argparse.Namespace) -> int:
    result = await run_once(args.config, args.store, mode=CycleMode.APPLY,
                            dry_run=args.dry_run, max_concurrency=args.max_concurrency,
                            progress=_progress)
    _print_result(result, as_json=args.json, executions=True)
    return 1 if result.execution_errors or result.failed_scopes else 0


async def _approve(args: argparse.Namespace) -> int:
    decision, by = await approve_decision(args.store, args.decision_id, by=args.by)
    sys.stdout.write(f"approved {decision.decision_id}: {decision.action.value} "
                     f"{decision.resource_id} (by {by}); the next apply may execute it\n")
    return 0


async def _adopt(args: argparse.Namespace) -> int:
    target, by = await grant_adoption(args.store, args.resource, as_id=args.as_id, by=args.by)
    sys.stdout.write(f"granted (by {by}): the next apply adopts {target.identity} as"
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
             "demo": _demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ovi`` console script."""
    args = _parser().parse_args(argv)
    if getattr(args, "store", "absent") is None:
        args.store = default_store_path()
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
