"""Running the chosen groups, one after the other, into one report."""

from __future__ import annotations

import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from scripts.benchkit._child import BenchError
from scripts.benchkit._figure import SUMMARY_HEADER, Detail, Figure
from scripts.benchkit._group import Context, Group
from scripts.benchkit._machine import CpuMeter, Machine, machine
from scripts.benchkit._repeat import settle

__all__ = ["GroupRun", "Report", "run_groups", "select", "summary"]


class GroupRun(msgspec.Struct, frozen=True):
    """How one group ran: its workload sizes, wall time, the cores other
    processes kept busy meanwhile, and the error that stopped it, if one did."""

    workload: dict[str, Detail]
    seconds: float
    busy_cores_other_processes: float
    error: str | None = None


class Report(msgspec.Struct, frozen=True):
    """The JSON a run prints (the shape is drawn in ``benchkit``'s docstring)."""

    benchmark: str
    command: str
    date: str
    quick: bool
    machine: Machine
    groups: dict[str, GroupRun]
    figures: dict[str, Figure]
    all_targets_met: bool
    seconds: float


def select(
    groups: Mapping[str, Group], *, names: Sequence[str] = (), only: Sequence[str] = (),
    quick: bool = False,
) -> dict[str, frozenset[str]]:
    """The figures to measure, group by group (in registry order): every
    figure of the groups ``names`` (all groups if empty), narrowed to
    ``only`` (figure names, or group names standing for all their figures);
    with ``quick``, none of the figures measured only in full runs.

    :raises BenchError: naming any unknown group or figure, or a figure
        ``only`` names that ``quick`` leaves out.
    """
    if unknown := [n for n in names if n not in groups]:
        raise BenchError(f"--group: unknown group(s) {', '.join(unknown)}; "
                         f"expected some of {', '.join(groups)}")
    chosen = {n: g for n, g in groups.items() if not names or n in names}
    wanted = {n: frozenset(s.name for s in g.specs) for n, g in chosen.items()}
    if only:
        every = {f for figures in wanted.values() for f in figures}
        if unknown := [n for n in only if n not in every and n not in chosen]:
            raise BenchError(f"--only: unknown figure(s) {', '.join(unknown)}"
                             + (f" in group(s) {', '.join(chosen)}" if names else "")
                             + f"; expected some of {', '.join(sorted(every | set(chosen)))}")
        wanted = {n: figures if n in only else figures & set(only)
                  for n, figures in wanted.items()}
    if quick:
        full_only = {s.name for g in chosen.values() for s in g.specs if not s.quick}
        if named := sorted(full_only & set(only)):
            raise BenchError(f"--only: {', '.join(named)} is measured only without --quick")
        wanted = {n: figures - full_only for n, figures in wanted.items()}
    return {n: figures for n, figures in wanted.items() if figures}


async def _run_group(group: Group, wanted: frozenset[str], ctx: Context) -> tuple[
        list[Figure], GroupRun]:
    meter, started = CpuMeter(), time.perf_counter()
    error = None
    try:
        got = await group.run(ctx)
    except Exception as exc:  # a group that crashes must not lose the other groups' figures
        if not ctx.quiet:
            traceback.print_exc()
        error, got = f"group {group.name} failed: {type(exc).__name__}: {exc}", []
    specs = {s.name: s for s in group.specs}
    if strays := [f.name for f in got if f.name not in specs]:
        raise BenchError(f"group {group.name} returned figures it does not declare: {strays}")
    by_name = {f.name: f for f in got if f.name in wanted}
    figures = []
    for name, spec in specs.items():
        if name in by_name:
            figures.append(by_name[name])
        elif name in wanted:
            figures.append(spec.failed(error or "not measured: the group returned no such figure"))
    run = GroupRun(workload=group.workload(ctx.quick),
                   seconds=round(time.perf_counter() - started, 1),
                   busy_cores_other_processes=meter.others_cores(), error=error)
    return figures, run


async def run_groups(
    groups: Mapping[str, Group],
    plan: Mapping[str, frozenset[str]],
    *,
    quick: bool,
    quiet: bool,
    scratch: str | None,
    command: str,
) -> Report:
    """Measure ``plan`` (from :func:`select`), each group in a scratch
    directory of its own under a temporary one in ``scratch``, the machine
    settled before each group (the earlier groups' big logs must not be
    written back during the next)."""
    started, meter = time.perf_counter(), CpuMeter()
    figures: dict[str, Figure] = {}
    runs: dict[str, GroupRun] = {}
    with tempfile.TemporaryDirectory(prefix="ovi-bench-", dir=scratch) as base:
        for name, wanted in plan.items():
            settle()
            work = Path(base) / name
            work.mkdir()
            got, runs[name] = await _run_group(
                groups[name], wanted, Context(name, work, quick, quiet, wanted))
            figures.update((f.name, f) for f in got)
    host = msgspec.structs.replace(machine(Path(scratch or tempfile.gettempdir())),
                                   busy_cores_other_processes=meter.others_cores())
    return Report(
        benchmark="ovi", command=command,
        date=datetime.now(UTC).isoformat(timespec="seconds"), quick=quick, machine=host,
        groups=runs, figures=figures,
        all_targets_met=bool(figures) and all(f.passed for f in figures.values()),
        seconds=round(time.perf_counter() - started, 1))


def summary(report: Report) -> str:
    """The table printed on stderr: one line per figure, then the errors."""
    lines = [SUMMARY_HEADER, *(fig.row() for fig in report.figures.values())]
    errors = [f"{fig.name}: {fig.error}" for fig in report.figures.values() if fig.error]
    busy = report.machine.busy_cores_other_processes
    lines.append(f"all targets met: {report.all_targets_met} ({report.seconds} s; other "
                 f"processes kept {busy} of {report.machine.cores} cores busy)")
    return "\n".join([*lines, *errors])
