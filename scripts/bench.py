"""Ovi's benchmarks: every group of figures, each against its baseline.

    python scripts/bench.py [--quick] [--json-only] [--group GROUP,...]
                            [--only FIGURE,...] [--dir DIR]

Prints one JSON object on stdout: every figure with its unit, the baseline it
is compared with, the ratio, the target and whether it passed, plus the
machine (the shape is drawn in ``scripts/benchkit/__init__.py``). Progress and
a summary table go to stderr (none with ``--json-only``). The exit code is 0
whatever the figures say: this is a measurement, not a test.

``--group`` picks groups (default: all); ``--only`` picks figures, or groups
by name, within them. docs/benchmarks.md describes every figure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Measure this checkout, whatever is installed: an editable install made before
# a package gained its __init__.py resolves it as an empty namespace package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
import uvloop

from scripts.benchkit import (
    BenchError,
    Context,
    Group,
    load_group,
    run_groups,
    select,
    serve_child,
    summary,
)

# The registry: group name -> the module defining its GROUP, in the order the
# groups run. A new group is a module and a line here.
GROUPS = {
    "sqlite": "scripts.bench_sqlite",  # the event store against raw SQLite
    "engine": "scripts.bench_engine",  # reconcile cycles and execution, fake provider
    "aws": "scripts.bench_aws",        # the AWS provider against moto
    "replay": "scripts.bench_replay",  # python -m ovi.replay on a large log
    "postgres": "scripts.bench_postgres",  # the PostgreSQL log and a host's mirror of it
}


def split(text: str | None) -> list[str]:
    return [name for name in (text or "").split(",") if name]


def child(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Run one child task (the child-process protocol, scripts/benchkit/_child.py)."""
    group_name, _, task = args.child.partition(":")
    if group_name not in GROUPS or not task:
        parser.error(f"--child: expected GROUP:TASK with GROUP one of {', '.join(GROUPS)}, "
                     f"got {args.child!r}")
    group = load_group(GROUPS[group_name])
    ctx = Context(group_name, Path(args.scratch), quick=args.quick, quiet=args.json_only)
    try:
        result = uvloop.run(serve_child(group, task, args.params, ctx))
    except BenchError as exc:
        sys.exit(f"bench.py --child {args.child}: {exc}")
    sys.stdout.buffer.write(result + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller workloads")
    parser.add_argument("--json-only", action="store_true", help="no progress on stderr")
    parser.add_argument("--dir", help="scratch directory (default: the system temp dir)")
    parser.add_argument("--group", help=f"comma-separated groups to run, of: {', '.join(GROUPS)}")
    parser.add_argument("--only", help="comma-separated figures (or groups) to run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args, parser)
        return
    groups: dict[str, Group] = {name: load_group(module) for name, module in GROUPS.items()}
    try:
        plan = select(groups, names=split(args.group), only=split(args.only), quick=args.quick)
    except BenchError as exc:
        parser.error(str(exc))
    report = uvloop.run(run_groups(
        groups, plan, quick=args.quick, quiet=args.json_only, scratch=args.dir,
        command=" ".join(["python", "scripts/bench.py", *sys.argv[1:]])))
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    if not args.json_only:
        print(summary(report), file=sys.stderr)


if __name__ == "__main__":
    main()
