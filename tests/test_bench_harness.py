"""The benchmark harness (scripts/benchkit): the one place a threshold is
compared, figure selection, and the child-process protocol's two outcomes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest

from scripts.bench_sqlite import At
from scripts.bench_sqlite_workloads import RssRead
from scripts.benchkit import (
    BenchError,
    ChildError,
    Context,
    Detail,
    Figure,
    FigureSpec,
    Group,
    Target,
    Task,
    Unit,
    run_child,
    select,
)

RATE = FigureSpec("rate", Unit.EVENTS_PER_S, Target(min_value=100_000, min_ratio=0.4),
                  baseline="raw")
SLOW = FigureSpec("slow", Unit.SECONDS, Target(max_ratio=1.5), baseline="bare calls")
CAP = FigureSpec("cap", Unit.MB, Target(max_value=200))


@pytest.mark.parametrize(("value", "passed"), [(199.9, True), (200, True), (200.1, False)])
def test_a_maximum_is_inclusive(value: float, passed: bool) -> None:
    assert CAP.figure(value).passed is passed


@pytest.mark.parametrize(("value", "passed"), [(99_999, False), (100_000, True)])
def test_a_minimum_is_inclusive(value: float, passed: bool) -> None:
    assert RATE.figure(value, baseline=value).passed is passed


def test_the_ratio_is_value_over_baseline_and_is_judged_against_its_bounds() -> None:
    assert SLOW.figure(1.5, baseline=1.0).ratio == 1.5
    assert SLOW.figure(1.5, baseline=1.0).passed
    assert not SLOW.figure(1.51, baseline=1.0).passed
    assert SLOW.figure(0.1, baseline=1.0).passed  # no minimum ratio set


def test_every_bound_must_hold_the_absolute_and_the_ratio() -> None:
    assert RATE.figure(150_000, baseline=300_000).passed  # ratio 0.5
    assert not RATE.figure(150_000, baseline=400_000).passed  # ratio 0.375
    assert not RATE.figure(90_000, baseline=100_000).passed  # ratio 0.9, under 100k


def test_a_ratio_target_without_a_ratio_is_not_met() -> None:
    assert not Target(min_ratio=0.4).met(1e9, None)
    assert not Target(max_value=1.0).met(None, None)
    # A baseline of zero gives no ratio, so no pass either.
    assert SLOW.figure(1.0, baseline=0).ratio is None
    assert not SLOW.figure(1.0, baseline=0).passed


def test_a_figure_with_an_error_fails_whatever_its_value() -> None:
    assert not CAP.figure(10, error="read 5 events, expected 10").passed
    failed = CAP.failed("child task sqlite:rss_read exited with code 1")
    assert failed.value is None
    assert not failed.passed
    assert failed.error == "child task sqlite:rss_read exited with code 1"


def test_a_decoded_figure_is_judged_again_not_trusted() -> None:
    claimed = msgspec.json.encode(CAP.figure(500)).replace(b'"pass":false', b'"pass":true')
    assert b'"pass":true' in claimed
    decoded = msgspec.json.decode(claimed, type=Figure)
    assert decoded.passed is False
    forged_ratio = msgspec.json.encode(SLOW.figure(3.0, baseline=1.0)).replace(
        b'"ratio":3', b'"ratio":1')
    assert msgspec.json.decode(forged_ratio, type=Figure).ratio == 3


def test_pass_is_decided_on_the_reported_numbers_and_survives_a_round_trip() -> None:
    # 199.9999996 reports as 200 (6 significant digits): within "≤ 200".
    figure = CAP.figure(199.9999996)
    assert figure.value == 200
    assert figure.passed
    assert msgspec.json.decode(msgspec.json.encode(figure), type=Figure) == figure
    rate = RATE.figure(148_431.26, baseline=194_075.9, runs=[150_002.2, 148_431.26])
    assert (rate.value, rate.baseline and rate.baseline.value) == (148_431, 194_076)
    assert rate.runs == [150_002, 148_431]
    assert rate.ratio == 0.7648
    assert msgspec.json.decode(msgspec.json.encode(rate), type=Figure) == rate


def test_the_json_keeps_the_figure_shape() -> None:
    encoded = msgspec.json.decode(msgspec.json.encode(
        RATE.from_runs([3e5, 1e5, 2e5], [4e5, 5e5, 6e5], details={"events": 7})))
    assert encoded["value"] == 200_000
    assert encoded["runs"] == [300_000, 100_000, 200_000]
    assert encoded["baseline"] == {"name": "raw", "value": 500_000,
                                   "runs": [400_000, 500_000, 600_000]}
    assert encoded["ratio"] == 0.4
    assert encoded["target"] == {"min_value": 100_000, "min_ratio": 0.4}
    assert encoded["pass"] is True
    assert encoded["details"] == {"events": 7}


def test_a_fixed_baseline_stands_for_an_ideal() -> None:
    figure = SLOW.from_runs([0.46, 0.5, 0.45], baseline=0.4)
    assert figure.value == 0.46
    assert figure.baseline is not None and figure.baseline.runs == []
    assert figure.ratio == 1.15


def test_targets_and_specs_refuse_what_cannot_be_judged() -> None:
    with pytest.raises(ValueError, match="at least one bound"):
        Target()
    with pytest.raises(ValueError, match="above maximum"):
        Target(min_ratio=2, max_ratio=1)
    with pytest.raises(ValueError, match="needs a baseline"):
        FigureSpec("x", Unit.SECONDS, Target(max_ratio=1.25))
    with pytest.raises(ValueError, match="baseline value missing"):
        SLOW.figure(1.0)
    with pytest.raises(ValueError, match="the spec has none"):
        CAP.figure(1.0, baseline=2.0)
    with pytest.raises(msgspec.ValidationError, match="at least one bound"):
        msgspec.json.decode(b"{}", type=Target)


def test_a_target_describes_itself_for_the_summary() -> None:
    assert RATE.target.describe() == "≥ 100,000, ratio ≥ 0.4"
    assert Target(max_value=0).describe() == "≤ 0"
    assert Target(min_value=0.5, max_value=2).describe() == "≥ 0.5, ≤ 2"


class FakeGroup:
    """A group that measures nothing: only its name and specs matter here."""

    tasks: Mapping[str, Task[Any]] = {}

    def __init__(self, name: str, *specs: FigureSpec) -> None:
        self.name = name
        self.specs = specs

    def workload(self, quick: bool) -> dict[str, Detail]:
        return {}

    async def run(self, ctx: Context) -> list[Figure]:
        return []


FULL_ONLY = FigureSpec("full", Unit.MB, Target(max_value=1), quick=False)
GROUPS: dict[str, Group] = {"one": FakeGroup("one", RATE, CAP), "two": FakeGroup("two", SLOW,
                                                                               FULL_ONLY)}


def test_select_runs_every_figure_of_the_chosen_groups() -> None:
    assert select(GROUPS) == {"one": {"rate", "cap"}, "two": {"slow", "full"}}
    assert select(GROUPS, names=["two"]) == {"two": {"slow", "full"}}


def test_select_narrows_to_figures_and_takes_a_group_name_for_all_of_its_figures() -> None:
    assert select(GROUPS, only=["cap", "two"]) == {"one": {"cap"}, "two": {"slow", "full"}}
    assert select(GROUPS, only=["slow"]) == {"two": {"slow"}}


def test_select_leaves_full_run_figures_out_of_quick_runs() -> None:
    assert select(GROUPS, quick=True) == {"one": {"rate", "cap"}, "two": {"slow"}}
    assert select(GROUPS, only=["full"], quick=False) == {"two": {"full"}}
    with pytest.raises(BenchError, match="full is measured only without --quick"):
        select(GROUPS, only=["full"], quick=True)


def test_select_names_what_it_does_not_know() -> None:
    with pytest.raises(BenchError, match=re.escape("--group: unknown group(s) three;")):
        select(GROUPS, names=["three"])
    only_slow = re.escape("--only: unknown figure(s) slow in group(s) one;")
    with pytest.raises(BenchError, match=only_slow):
        select(GROUPS, names=["one"], only=["slow"])


@pytest.mark.asyncio
async def test_a_child_task_returns_its_result_decoded(tmp_path: Path) -> None:
    # Reading a log that does not exist yet: the store creates it empty.
    result = await run_child("sqlite:rss_read", At(str(tmp_path / "empty.db")), RssRead,
                             scratch=tmp_path, quick=True, quiet=True)
    assert result.events == 0
    assert result.peak_kb >= result.idle_kb > 0


@pytest.mark.asyncio
async def test_a_failed_child_task_surfaces_the_childs_stderr(tmp_path: Path) -> None:
    with pytest.raises(ChildError) as caught:
        await run_child("sqlite:no_such_task", At(str(tmp_path)), RssRead, scratch=tmp_path,
                        quick=True, quiet=True)
    assert caught.value.problem == "exited with code 1"
    assert "group sqlite has no child task 'no_such_task'" in caught.value.stderr
    assert "its stderr ended with" in str(caught.value)
