"""Time, revision and type arguments."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest

from ovi.replay._args import Revision, expand_types, parse_at, parse_when

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "ago"), [
    ("45s", timedelta(seconds=45)), ("90m", timedelta(minutes=90)),
    ("36h", timedelta(hours=36)), ("2d", timedelta(days=2)),
    ("1h30m", timedelta(minutes=90)), ("1w", timedelta(days=7)),
])
def test_relative_times_are_before_now(text: str, ago: timedelta) -> None:
    assert parse_when(text, now=NOW) == NOW - ago


def test_iso_times_with_and_without_zone() -> None:
    assert parse_when("2026-11-26T10:00:00") == datetime(2026, 11, 26, 10, tzinfo=UTC)
    assert parse_when("2026-11-26T10:00:00Z") == datetime(2026, 11, 26, 10, tzinfo=UTC)
    assert parse_when("2026-11-26T12:00:00+02:00") == datetime(2026, 11, 26, 10, tzinfo=UTC)
    assert parse_when("2026-11-26") == datetime(2026, 11, 26, tzinfo=UTC)


@pytest.mark.parametrize("text", ["", "yesterday", "5x", "2026-11-31", "m"])
def test_bad_times_say_what_was_expected(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="ISO-8601"):
        parse_when(text)


def test_at_is_a_revision_or_a_time() -> None:
    assert parse_at("1200") == Revision(1200) and isinstance(parse_at("1200"), Revision)
    assert parse_at("2026-11-26T10:00:00Z") == datetime(2026, 11, 26, 10, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError, match="revision"):
        parse_at("soon")


def test_types_take_kinds_lists_and_unknown_names() -> None:
    assert expand_types(None) == (None, [])
    names, unknown = expand_types(["decided,executed", "ObservationFailed", "Futuristic"])
    assert names == frozenset({"DecisionMade", "ActionExecuted", "ObservationFailed",
                               "Futuristic"})
    assert unknown == ["Futuristic"]
    observed, _ = expand_types(["observed"])
    assert observed == frozenset({"ResourceObserved", "ResourceDisappeared",
                                  "ObservationCompleted", "ObservationFailed"})
    failed, _ = expand_types(["failed"])
    assert failed == frozenset({"ActionFailed", "ObservationFailed"})
