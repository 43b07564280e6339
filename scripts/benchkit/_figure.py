"""Figures, their targets, and the one place a threshold is compared.

A group declares each of its figures once, as a :class:`FigureSpec` (name,
unit, target, what its baseline is); every :class:`Figure` it reports is made
from that spec, so a target is written once and a figure never restates it.
A figure computes its own ratio and pass/fail when it is made *and* when it
is decoded (a child process's figure is re-judged by the parent, never
trusted), from the rounded numbers it reports, so anyone can re-check a
verdict from the JSON alone.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from enum import StrEnum

import msgspec

__all__ = [
    "SUMMARY_HEADER",
    "Baseline",
    "Detail",
    "Figure",
    "FigureSpec",
    "Target",
    "Unit",
    "format_number",
]

# Free-form context a figure carries next to its value (sizes, counts, the
# API calls seen): JSON scalars, lists of them, or a flat object of them.
Number = int | float  # int kept as int through JSON (a count, a rounded rate)
Scalar = int | float | str | bool
Detail = Scalar | Sequence[int | float | str] | Mapping[str, int | float | str]

# Significant digits kept in reported numbers: far below the run-to-run noise
# (±20 % and more on this machine), enough to re-check a ratio by hand.
VALUE_DIGITS = 6
RATIO_DIGITS = 4


class Unit(StrEnum):
    """What a figure's value counts."""

    EVENTS_PER_S = "events/s"
    SECONDS = "s"
    MB = "MB"
    EVENTS = "events"
    BYTES = "bytes"
    CALLS = "calls"
    EXPONENT = "exponent"


def significant(x: float, digits: int) -> Number:
    """``x`` to ``digits`` significant digits, and whole from 1,000 up; an
    integral result is an int (``2`` rather than ``2.0`` in the JSON)."""
    rounded = float(f"{x:.{digits}g}")
    if abs(rounded) >= 1000:
        rounded = float(round(rounded))
    return int(rounded) if rounded.is_integer() and abs(rounded) < 2**53 else rounded


def format_number(x: float | None) -> str:
    """A number for the summary table: thousands separators from 1,000 up,
    four significant digits below."""
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return str(x) if isinstance(x, int) else f"{x:.4g}"


class Target(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """The bounds a figure must meet, all inclusive: its value at least
    ``min_value`` and at most ``max_value``, its ratio to the baseline at least
    ``min_ratio`` and at most ``max_ratio``. Unset bounds do not apply; at least
    one must be set."""

    min_value: Number | None = None
    max_value: Number | None = None
    min_ratio: Number | None = None
    max_ratio: Number | None = None

    def __post_init__(self) -> None:
        if all(bound is None for bound in msgspec.structs.astuple(self)):
            raise ValueError("a target needs at least one bound")
        for low, high in ((self.min_value, self.max_value), (self.min_ratio, self.max_ratio)):
            if low is not None and high is not None and low > high:
                raise ValueError(f"target: minimum {low} above maximum {high}")

    @property
    def needs_baseline(self) -> bool:
        return self.min_ratio is not None or self.max_ratio is not None

    def met(self, value: float | None, ratio: float | None) -> bool:
        """Whether ``value`` (and ``ratio``, for ratio bounds) meets every set
        bound. A missing value, or a missing ratio where a ratio bound is set,
        does not."""
        return _within(value, self.min_value, self.max_value) and (
            not self.needs_baseline or _within(ratio, self.min_ratio, self.max_ratio))

    def describe(self) -> str:
        """The bounds as the summary table shows them, e.g. ``≥ 100,000, ratio ≥ 0.4``."""
        words = []
        for bound, sign, prefix in ((self.min_value, "≥", ""), (self.max_value, "≤", ""),
                                    (self.min_ratio, "≥", "ratio "),
                                    (self.max_ratio, "≤", "ratio ")):
            if bound is not None:
                words.append(f"{prefix}{sign} {format_number(significant(bound, 6))}")
        return ", ".join(words)


def _within(x: float | None, low: float | None, high: float | None) -> bool:
    return x is not None and (low is None or x >= low) and (high is None or x <= high)


class Baseline(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the figure is compared with, measured in the same run (or, for an
    ideal, computed): its description, value and repetitions."""

    name: str
    value: Number
    runs: list[Number] = []

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(self, "value", significant(self.value, VALUE_DIGITS))
        msgspec.structs.force_setattr(
            self, "runs", [significant(r, VALUE_DIGITS) for r in self.runs])


class Figure(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One measured figure. ``ratio`` (value / baseline value) and ``passed``
    (encoded as ``pass``) are computed from the other fields whenever a
    figure is made or decoded; whatever is passed for them is replaced.
    A figure with an ``error`` (its measurement failed or was invalid) has
    failed, whatever its value. Make figures with :class:`FigureSpec`."""

    name: str
    unit: Unit
    value: Number | None
    runs: list[Number] = []
    baseline: Baseline | None = None
    ratio: Number | None = None
    target: Target
    passed: bool = msgspec.field(default=False, name="pass")
    note: str = ""
    error: str | None = None
    details: dict[str, Detail] = {}

    def __post_init__(self) -> None:
        value = None if self.value is None else significant(self.value, VALUE_DIGITS)
        ratio = None
        if value is not None and self.baseline is not None and self.baseline.value:
            ratio = significant(value / self.baseline.value, RATIO_DIGITS)
        set_ = msgspec.structs.force_setattr
        set_(self, "value", value)
        set_(self, "runs", [significant(r, VALUE_DIGITS) for r in self.runs])
        set_(self, "ratio", ratio)
        set_(self, "passed", self.error is None and self.target.met(value, ratio))

    def row(self) -> str:
        """This figure's line in the summary table (:data:`SUMMARY_HEADER`)."""
        base = self.baseline.value if self.baseline else None
        return (f"{self.name:<30}{format_number(self.value):>10} {self.unit.value:<9}"
                f"{format_number(base):>10}{format_number(self.ratio):>8}  "
                f"{self.target.describe():<24}{'yes' if self.passed else 'NO'}")


SUMMARY_HEADER = (f"{'figure':<30}{'value':>10} {'unit':<9}{'baseline':>10}{'ratio':>8}  "
                  f"{'target':<24}pass")


class FigureSpec(msgspec.Struct, frozen=True):
    """A figure as its group declares it, once: name, unit, target, what its
    baseline is (empty: it has none), a note for the report, and whether it
    is measured in ``--quick`` runs too."""

    name: str
    unit: Unit
    target: Target
    baseline: str = ""
    note: str = ""
    quick: bool = True

    def __post_init__(self) -> None:
        if self.target.needs_baseline and not self.baseline:
            raise ValueError(f"{self.name}: a ratio target needs a baseline")

    def figure(
        self,
        value: float,
        *,
        runs: Sequence[float] = (),
        baseline: float | None = None,
        baseline_runs: Sequence[float] = (),
        details: Mapping[str, Detail] | None = None,
        error: str | None = None,
    ) -> Figure:
        """This figure with its value (and its baseline's, when it has one)."""
        if (baseline is None) == bool(self.baseline):
            wrong = "missing" if baseline is None else "given, but the spec has none"
            raise ValueError(f"{self.name}: baseline value {wrong}")
        return Figure(
            name=self.name, unit=self.unit, value=value, target=self.target, runs=list(runs),
            baseline=None if baseline is None else Baseline(self.baseline, baseline,
                                                            list(baseline_runs)),
            note=self.note, error=error, details=dict(details or {}))

    def from_runs(
        self,
        runs: Sequence[float],
        baseline_runs: Sequence[float] | None = None,
        *,
        baseline: float | None = None,
        details: Mapping[str, Detail] | None = None,
    ) -> Figure:
        """The median of ``runs``, against the median of ``baseline_runs``
        (measured alongside) or a fixed ``baseline`` (an ideal)."""
        if baseline_runs:
            baseline = statistics.median(baseline_runs)
        return self.figure(statistics.median(runs), runs=runs, baseline=baseline,
                           baseline_runs=baseline_runs or (), details=details)

    def failed(self, error: str) -> Figure:
        """This figure when it could not be measured: no value, failed."""
        return Figure(name=self.name, unit=self.unit, value=None, target=self.target,
                      note=self.note, error=error)
