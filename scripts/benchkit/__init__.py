"""The harness every benchmark group plugs into.

A group (``scripts/bench_<name>.py``, listed once in the registry in
``scripts/bench.py``) declares its figures as :class:`FigureSpec` values —
name, unit, :class:`Target`, what the baseline is — and implements
:class:`Group`: ``run(ctx)`` measures them and returns :class:`Figure` values
made from those specs. The harness owns everything else: choosing groups and
figures, scratch directories, settling the machine, repetitions with the
workload and its baseline alternating (:func:`alternate`), the one
child-process protocol (:meth:`Context.child`, ``bench.py --child
GROUP:TASK``), machine information, the CPU meter, the JSON report and the
summary table. :meth:`Target.met` is the only place a threshold is compared.

The report ``python scripts/bench.py`` prints on stdout::

    {
      "benchmark": "ovi",
      "command": "python scripts/bench.py --quick",
      "date": "2026-12-01T20:20:11+00:00",
      "quick": true,
      "machine": {"python": ..., "sqlite": ..., "cores": 2, "cpu": ..., "platform": ...,
                  "scratch_dir": ..., "scratch_fs": ..., "packages": {...},
                  "event_loop": "uvloop", "busy_cores_other_processes": 0.01},
      "groups": {"sqlite": {"workload": {...sizes...}, "seconds": 61.2,
                            "busy_cores_other_processes": 0.0, "error": null}, ...},
      "figures": {
        "batched_append": {
          "name": "batched_append",
          "unit": "events/s",                 # one of Unit
          "value": 148431,                    # median of "runs"; null if not measured
          "runs": [150002, 148431, 139870],   # the repetitions ([] for a single measurement)
          "baseline": {"name": "plain sqlite3: ...", "value": 194075,
                       "runs": [...]},        # null when the figure has none
          "ratio": 0.7648,                    # value / baseline value; null without one
          "target": {"min_value": 100000, "min_ratio": 0.4},  # only the bounds set
          "pass": true,                       # computed from target, value, ratio, error
          "note": "",
          "error": null,                      # why it failed to measure, if it did
          "details": {...}                    # context: sizes, counts, calls seen
        }, ...
      },
      "all_targets_met": true,
      "seconds": 122.4
    }

Numbers keep 6 significant digits (whole from 1,000 up), ratios 4; ``pass``
is decided on those reported numbers, so the JSON alone re-checks it.
Error tree::

    BenchError      a benchmark could not run (not a figure missing its target)
    └── ChildError  a child task exited non-zero or printed no valid result
"""

from __future__ import annotations

from scripts.benchkit._child import BenchError, ChildError, run_child
from scripts.benchkit._figure import Baseline, Detail, Figure, FigureSpec, Target, Unit
from scripts.benchkit._group import Context, Group, Task, load_group, serve_child
from scripts.benchkit._machine import CpuMeter, Machine, machine
from scripts.benchkit._repeat import REPEATS, Workload, alternate, settle
from scripts.benchkit._run import GroupRun, Report, run_groups, select, summary

__all__ = [
    "REPEATS",
    "Baseline",
    "BenchError",
    "ChildError",
    "Context",
    "CpuMeter",
    "Detail",
    "Figure",
    "FigureSpec",
    "Group",
    "GroupRun",
    "Machine",
    "Report",
    "Target",
    "Task",
    "Unit",
    "Workload",
    "alternate",
    "load_group",
    "machine",
    "run_child",
    "run_groups",
    "select",
    "serve_child",
    "settle",
    "summary",
]
