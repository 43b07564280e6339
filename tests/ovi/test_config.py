"""The config file: valid files, and one test per class of error."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from ovi._exceptions import ConfigError, OviError
from ovi.config import (
    Config,
    Rules,
    TimeWindow,
    Weekday,
    load_config,
    parse_config,
    parse_duration,
)
from ovi.model import DesiredResource, ResourceType, Scope

# Line numbers below refer to this text.
BASE = """\
version: v1
provider: aws
region: us-east-1
resources:
  - type: ec2
    name: web
    count: 3
    size: t3.micro
    tags: {environment: prod, team: platform}
  - type: rds
    size: db.t3.micro
  - type: s3
"""

FULL = """\
version: v1
provider: aws
region: us-east-1
owner: team-a
resources:
  - type: ec2
    name: web
    count: 2
    size: t3.micro
    region: eu-west-1
    image: ami-0abc
    tags: {environment: prod, team: platform}
  - type: rds
    engine: mysql
    size: db.t3.micro
  - type: s3
    count: 0
rules:
  skip_destructive: true
  require_approval: false
  grace_period: 1h30m
  max_deletes_per_cycle: 0
  max_concurrency: 2
  ignore_tags: ["aws:*", "kubernetes.io/*"]
  allow_resize: true
  final_snapshot: false
  approval_for_sizes: [m5.24xlarge]
  maintenance_window: {days: [sat, sun], start: "22:00", end: "05:00"}
"""


def parse(text: str) -> Config:
    return parse_config(text, "ovi.yaml")


def error_for(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value


# -- valid configs --------------------------------------------------------------


def test_full_config_parses_every_field() -> None:
    config = parse(FULL)
    assert config.owner == "team-a"
    web, db, bucket = config.resources
    assert (web.name, web.count, web.size, web.region, web.image) == (
        "web", 2, "t3.micro", "eu-west-1", "ami-0abc",
    )
    assert web.tags == {"environment": "prod", "team": "platform"}
    assert (db.type, db.engine, bucket.count) == (ResourceType.RDS, "mysql", 0)
    rules = config.rules
    assert rules.skip_destructive and not rules.require_approval and rules.allow_resize
    assert rules.grace_period == timedelta(hours=1, minutes=30)
    assert (rules.max_deletes_per_cycle, rules.max_concurrency) == (0, 2)
    assert rules.ignore_tags == ("aws:*", "kubernetes.io/*")
    assert not rules.final_snapshot
    assert rules.approval_for_sizes == ("m5.24xlarge",)
    assert rules.maintenance_window == TimeWindow(
        days=(Weekday.SAT, Weekday.SUN), start=time(22), end=time(5)
    )


def test_defaults() -> None:
    config = parse("version: v1\nprovider: aws\nregion: us-east-1\nresources: []\n")
    assert config.owner == "ovi"
    rules = config.rules
    assert (rules.skip_destructive, rules.require_approval) == (False, True)
    assert rules.grace_period == timedelta(minutes=5)
    assert (rules.max_deletes_per_cycle, rules.max_concurrency) == (5, 8)
    assert rules.ignore_tags == ("aws:*",)
    assert (rules.allow_resize, rules.final_snapshot) == (False, True)
    assert rules.approval_for_sizes == ()
    assert rules.maintenance_window is None
    assert config.desired_resources() == []


def test_desired_id_uses_name_then_index() -> None:
    ids = [d.id for d in parse(BASE).desired_resources()]
    assert ids == ["web-0", "web-1", "web-2", "rds-1-0", "s3-2-0"]


def test_spec_region_defaults_to_config_region() -> None:
    desired = parse(FULL.replace("    region: eu-west-1\n", "")).desired_resources()
    assert {d.region for d in desired} == {"us-east-1"}
    assert parse(FULL).desired_resources()[0].region == "eu-west-1"


def test_desired_resources_carry_spec_fields() -> None:
    web0, _, db = parse(FULL).desired_resources()
    assert web0 == DesiredResource(
        id="web-0", type=ResourceType.EC2, provider="aws", region="eu-west-1",
        size="t3.micro", image="ami-0abc", tags={"environment": "prod", "team": "platform"},
    )
    assert db.engine == "mysql"


def test_rds_engine_defaults_to_postgres() -> None:
    rds = [d for d in parse(BASE).desired_resources() if d.type is ResourceType.RDS]
    assert [d.engine for d in rds] == ["postgres"]


def test_count_zero_wants_nothing_of_that_spec() -> None:
    assert [d.id for d in parse(FULL).desired_resources()] == ["web-0", "web-1", "rds-1-0"]


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("5m", 300), ("45s", 45), ("1h30m", 5400), ("2d", 172800), ("1d2h3m4s", 93784),
     ("0", 0), ("0s", 0), (0, 0)],
)
def test_grace_period_durations(written: str | int, seconds: int) -> None:
    config = parse(BASE + f"rules:\n  grace_period: {written}\n")
    assert config.rules.grace_period == timedelta(seconds=seconds)
    assert parse_duration(written) == timedelta(seconds=seconds)


def test_config_hash_is_stable_across_key_order_comments_and_defaults() -> None:
    reordered = """\
# the same estate, written differently
resources:
  - {type: ec2, size: t3.micro, count: 3, name: web, tags: {team: platform, environment: prod}}
  - {size: db.t3.micro, type: rds}
  - type: s3
region: us-east-1   # primary
owner: ovi
provider: aws
version: v1
rules: {grace_period: 300s}
"""
    assert parse(reordered).config_hash == parse(BASE).config_hash
    assert len(parse(BASE).config_hash) == 64
    assert parse(BASE.replace("count: 3", "count: 4")).config_hash != parse(BASE).config_hash


def test_scopes_cover_every_type_in_every_named_region() -> None:
    scopes = parse(FULL).scopes()
    assert scopes == sorted(
        Scope("aws", r, t) for r in ("eu-west-1", "us-east-1") for t in ResourceType
    )


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "ovi.yaml"
    path.write_text(BASE)
    assert load_config(path) == parse(BASE)


def test_unreadable_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value).startswith(f"{missing}: expected a readable file")


def test_maintenance_window_contains_overnight_window() -> None:
    window = TimeWindow(days=(Weekday.SAT,), start=time(22), end=time(5))
    saturday = datetime(2025, 1, 4, tzinfo=UTC)  # a Saturday
    assert not window.contains(saturday.replace(hour=21, minute=59))
    assert window.contains(saturday.replace(hour=22))
    assert window.contains(saturday + timedelta(days=1, hours=4, minutes=59))  # Sunday 04:59
    assert not window.contains(saturday + timedelta(days=1, hours=5))
    assert not window.contains(saturday.replace(hour=3))  # Friday night's window isn't listed


def test_config_error_is_an_ovi_error_and_pickles() -> None:
    err = error_for(BASE.replace("count: 3", "count: -1"))
    assert isinstance(err, OviError)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.file, copy.path, copy.line, str(copy)) == (err.file, err.path, err.line, str(err))


# -- errors: one per class --------------------------------------------------------


def test_negative_count_message_names_file_line_path_and_expectation() -> None:
    err = error_for(BASE.replace("count: 3", "count: -1"))
    assert str(err) == "ovi.yaml:7: resources[0].count: expected an integer ≥ 0, got -1"
    assert (err.file, err.path, err.line) == ("ovi.yaml", "resources[0].count", 7)
    assert err.expected == "an integer ≥ 0"


def _rules(body: str) -> str:
    return BASE + "rules:\n" + body


ERRORS = [
    # (id, text, path, line, fragment of the message)
    ("unknown_key", BASE.replace("count: 3", "cuont: 3"),
     "resources[0].cuont", 7, 'unknown field (did you mean "count"?)'),
    ("unknown_top_level_key", BASE + "extra: 1\n", "extra", 13, "one of the fields version"),
    ("wrong_type", _rules("  max_concurrency: '8'\n"),
     "rules.max_concurrency", 14, 'expected an integer ≥ 1, got "8"'),
    ("wrong_container_type", BASE.replace("tags: {environment: prod, team: platform}", "tags: [a]"),
     "resources[0].tags", 9, "expected a mapping, got a list"),
    ("count_not_an_integer", BASE.replace("count: 3", "count: three"),
     "resources[0].count", 7, 'expected an integer ≥ 0, got "three"'),
    ("integer_in_another_base", BASE.replace("count: 3", "count: 010"),
     "resources[0].count", 7, "which YAML reads as 8"),
    ("missing_required_field", BASE.replace("region: us-east-1\n", ""),
     "region", 1, "the field is required"),
    ("bad_version", BASE.replace("version: v1", "version: v2"), "version", 1, 'expected "v1"'),
    ("bad_provider", BASE.replace("provider: aws", "provider: gcp"), "provider", 2, '"aws"'),
    ("bad_resource_type", BASE.replace("type: rds", "type: rdss"),
     "resources[1].type", 10, 'one of "ec2", "rds", "s3", got "rdss"'),
    ("duplicate_name", BASE + "  - type: ec2\n    name: web\n",
     "resources[3].name", 14, "(resources[0] has it)"),
    ("duplicate_id", BASE + "  - type: ec2\n    name: rds-1\n",
     "resources[3].name", 14, 'id "rds-1-0", also produced by resources[1]'),
    ("duplicate_key", BASE.replace("count: 3", "count: 3\n    count: 4"),
     "resources[0].count", 8, "each key once (first given on line 7)"),
    ("bad_duration", _rules("  grace_period: 5 minutes\n"),
     "rules.grace_period", 14, "expected a duration like 30s, 5m"),
    ("duration_without_unit", _rules("  grace_period: 300\n"),
     "rules.grace_period", 14, "a number without a unit"),
    ("empty_region", BASE.replace("region: us-east-1", "region: ''"),
     "region", 3, 'expected an AWS region like us-east-1, got ""'),
    ("empty_size", BASE.replace("size: t3.micro", "size: ''"),
     "resources[0].size", 8, "expected an instance type like t3.micro"),
    ("rds_size_not_a_db_class", BASE.replace("size: db.t3.micro", "size: t3.micro"),
     "resources[1].size", 11, "an RDS instance class like db.t3.micro"),
    ("size_on_s3", BASE + "    size: t3.micro\n", "resources[2].size", 13, "no size for an s3"),
    ("image_on_non_ec2", BASE + "    image: ami-1\n", "resources[2].image", 13, "only ec2"),
    ("engine_on_non_rds", BASE + "    engine: postgres\n", "resources[2].engine", 13, "only rds"),
    ("empty_name", BASE.replace("name: web", "name: ''"), "resources[0].name", 6, "a name of"),
    ("reserved_tag_key", BASE.replace("environment: prod", "ovi:id: x"),
     "resources[0].tags.ovi:id", 9, 'not starting with "ovi:"'),
    ("ignored_tag_key", _rules("  ignore_tags: ['env*']\n").replace("environment: prod", "e: x")
     .replace("team: platform", "envy: x"), "resources[0].tags.envy", 9, "rules.ignore_tags"),
    ("non_text_tag_key", BASE.replace("environment: prod", "1: prod"),
     "resources[0].tags.1", 9, "a text key (quote it)"),
    ("bool_as_text", BASE.replace("name: web", "name: on"),
     "resources[0].name", 6, 'YAML reads it as the boolean true; quote it, "on"'),
    ("text_as_bool", _rules("  skip_destructive: 'yes'\n"),
     "rules.skip_destructive", 14, 'expected true or false, got "yes"'),
    ("max_concurrency_zero", _rules("  max_concurrency: 0\n"),
     "rules.max_concurrency", 14, "expected an integer ≥ 1, got 0"),
    ("window_unknown_day", _rules("  maintenance_window: {days: [sat, sunday], start: '01:00', "
                                  "end: '05:00'}\n"),
     "rules.maintenance_window.days[1]", 14, '"sun", got "sunday"'),
    ("window_bad_time", _rules("  maintenance_window: {start: '25:00', end: '05:00'}\n"),
     "rules.maintenance_window.start", 14, 'a UTC time "HH:MM"'),
    ("window_unquoted_time", _rules("  maintenance_window: {start: 22:00, end: '05:00'}\n"),
     "rules.maintenance_window.start", 14, "YAML reads it as the number 1320"),
    ("window_empty", _rules("  maintenance_window: {start: '05:00', end: '05:00'}\n"),
     "rules.maintenance_window.end", 14, "the window is empty"),
    ("window_days_repeated", _rules("  maintenance_window: {days: [sat, sat], start: '01:00', "
                                    "end: '05:00'}\n"),
     "rules.maintenance_window.days", 14, "each day once"),
    ("window_unknown_key", _rules("  maintenance_window: {begin: '01:00', end: '05:00'}\n"),
     "rules.maintenance_window.begin", 14, "one of the fields days, start, end"),
    ("count_beyond_max_resources", BASE.replace("count: 3", "count: 100000000"),
     "resources[0].count", 7,
     "expected at most 1000 desired resources in all (rules.max_resources"),
    ("counts_beyond_max_resources_together", _rules("  max_resources: 4\n"),
     "resources[2].count", 12, "got 1 (making 5 in all)"),
    ("max_resources_beyond_its_limit", _rules("  max_resources: 1000001\n"),
     "rules.max_resources", 14, "expected an integer ≤ 1000000"),
    ("max_creates_negative", _rules("  max_creates_per_cycle: -1\n"),
     "rules.max_creates_per_cycle", 14, "expected an integer ≥ 0"),
    ("adopt_on_ec2", BASE.replace("count: 3", "count: 3\n    adopt: true"),
     "resources[0].adopt", 8, "no adopt for ec2"),
    ("rds_identifiers_collide", BASE + "  - type: rds\n    name: rds--1\n",
     "resources[3].name", 14,
     'id "rds--1-0", whose DB identifier "rds-1-0" resources[1] ("rds-1-0") has too'),
]


def test_max_resources_raises_the_bound_and_adopt_is_kept() -> None:
    big = BASE.replace("count: 3", "count: 1500") + "    adopt: true\n"
    config = parse(big + "rules:\n  max_resources: 2000\n  max_creates_per_cycle: 10\n")
    assert len(config.desired_resources()) == 1502
    assert [d.adopt for d in config.desired_resources()][-1] is True
    assert (config.rules.max_resources, config.rules.max_creates_per_cycle) == (2000, 10)
    assert (Rules().max_resources, Rules().max_creates_per_cycle) == (1000, 50)


def test_deep_nesting_is_a_one_line_error_with_its_line() -> None:
    err = error_for(BASE + "  - tags: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert str(err) == ("ovi.yaml:13: expected mappings and lists nested at most 32 deep,"
                        " got more than 32 levels")


def test_aliases_that_expand_beyond_bounds_are_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    err = error_for("\n".join(lines) + "\n" + BASE)
    assert "at most 100,000 values once aliases (*name) are expanded" in str(err)


@pytest.mark.parametrize(
    ("text", "path", "line", "fragment"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_config_error_names_path_line_and_expectation(
    text: str, path: str, line: int, fragment: str
) -> None:
    err = error_for(text)
    assert (err.path, err.line) == (path, line), str(err)
    assert str(err).startswith(f"ovi.yaml:{line}: {path}: expected "), str(err)
    assert fragment in str(err)


@pytest.mark.parametrize(("written", "reads_as"), [("no", "the boolean false"),
                                                   ("1.10", "the number 1.1"),
                                                   ("2024-01-01", "the date 2024-01-01")])
def test_non_string_tag_value_is_rejected_with_a_hint_to_quote(written: str, reads_as: str) -> None:
    err = error_for(BASE.replace("environment: prod", f"environment: {written}"))
    assert str(err) == (
        f"ovi.yaml:9: resources[0].tags.environment: expected a string, got {written} "
        f'(YAML reads it as {reads_as}; quote it, "{written}", to mean the text)'
    )


def test_quoted_tag_values_are_accepted() -> None:
    config = parse(BASE.replace("environment: prod", "environment: 'no', version: \"1.10\""))
    assert config.resources[0].tags["environment"] == "no"
    assert config.resources[0].tags["version"] == "1.10"


@pytest.mark.parametrize(
    ("text", "line", "got"),
    [("", 1, "an empty file"), ("# nothing but a comment\n", 1, "an empty file"),
     ("- type: ec2\n", 1, "a list"), ("just text\n", 1, '"just text"')],
    ids=["empty_file", "comment_only_file", "list_top_level", "scalar_top_level"],
)
def test_top_level_must_be_a_mapping(text: str, line: int, got: str) -> None:
    expected = f"ovi.yaml:{line}: expected a mapping at the top level, got {got}"
    assert str(error_for(text)) == expected


def test_yaml_syntax_error_carries_its_line() -> None:
    err = error_for("version: v1\nprovider: [aws\nregion: us-east-1\n")
    assert err.path == ""
    assert err.line == 3
    assert str(err).startswith("ovi.yaml:3: expected valid YAML, got a syntax error")


def test_unsafe_yaml_tags_are_refused() -> None:
    err = error_for("version: !!python/object/apply:os.system ['true']\n")
    assert "expected valid YAML" in str(err)
    assert err.line == 1
