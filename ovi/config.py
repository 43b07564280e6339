"""The config file: what the estate should look like and the rules for changing it.

``load_config`` reads a file, ``parse_config`` a string; both return a frozen
:class:`Config` or raise :class:`~ovi._exceptions.ConfigError` naming the file,
the field path, the line and what was expected. Nothing is coerced silently:
YAML 1.1's ``no`` → false and ``1.10`` → 1.1 are rejected where text is
wanted. The format is documented in ``docs/config.md``.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from ovi._config_source import SourceDocument, load_document
from ovi._exceptions import ConfigError
from ovi.model import DesiredResource, ResourceType, Scope
from ovi.providers._naming import db_identifier

__all__ = [
    "Config",
    "Notify",
    "ResourceSpec",
    "Rules",
    "TimeWindow",
    "Weekday",
    "load_config",
    "parse_config",
    "parse_duration",
]

_NAME = r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$"
_REGION = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"
_SIZE = r"^[a-z0-9-]+(\.[a-z0-9-]+)+$"
_ENGINE = r"^[a-z][a-z0-9-]*$"
_IMAGE = r"^\S+$"
_CREDENTIAL = r"^[A-Za-z0-9_.-]{1,255}$"
_PATTERN_WORDS = {
    _CREDENTIAL: "a systemd credential name (letters, digits, '_', '.', '-')",
    _NAME: "a name of lowercase letters, digits and '-', starting with a letter, "
    "at most 40 characters",
    _REGION: "an AWS region like us-east-1",
    _SIZE: "an instance type like t3.micro (RDS: db.t3.micro)",
    _ENGINE: "an engine name like postgres",
    _IMAGE: "an AMI id like ami-0abc (or resolve:ssm:<parameter>)",
}
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_CLOCK = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")
_RESERVED_TAG_PREFIXES = ("ovi:", "aws:")
#: the most ``rules.max_resources`` may allow: a million desired resources
#: already take a few hundred MB to hold
MAX_RESOURCES_LIMIT = 1_000_000

Name = Annotated[str, msgspec.Meta(pattern=_NAME)]
Region = Annotated[str, msgspec.Meta(pattern=_REGION)]
Size = Annotated[str, msgspec.Meta(pattern=_SIZE)]
Glob = Annotated[str, msgspec.Meta(min_length=1)]


class Weekday(StrEnum):
    """Days of a maintenance window (UTC)."""

    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"


_ALL_DAYS = tuple(Weekday)


class TimeWindow(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A weekly window in UTC: on each of ``days``, from ``start`` until ``end``
    (an ``end`` at or before ``start`` runs past midnight into the next day)."""

    days: Annotated[tuple[Weekday, ...], msgspec.Meta(min_length=1)] = _ALL_DAYS
    start: time
    end: time

    def contains(self, when: datetime) -> bool:
        """Is ``when`` inside the window? A naive ``when`` is taken as UTC."""
        if when.tzinfo is not None:
            when = when.astimezone(UTC).replace(tzinfo=None)
        for back in (0, 1):  # a window that began yesterday may still be open
            day = when.date() - timedelta(days=back)
            if _ALL_DAYS[day.weekday()] not in self.days:
                continue
            opens = datetime.combine(day, self.start)
            closes = datetime.combine(day, self.end)
            if closes <= opens:
                closes += timedelta(days=1)
            if opens <= when < closes:
                return True
        return False


class ResourceSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One entry of ``resources``: ``count`` resources of one kind."""

    type: ResourceType
    name: Name | None = None
    count: Annotated[int, msgspec.Meta(ge=0)] = 1
    size: Size | None = None
    region: Region | None = None
    image: Annotated[str, msgspec.Meta(pattern=_IMAGE)] | None = None
    engine: Annotated[str, msgspec.Meta(pattern=_ENGINE)] | None = None
    tags: dict[str, str] = {}
    adopt: bool = False


class Rules(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How cautiously Ovi acts. ``grace_period`` is a ``timedelta`` here; the
    file writes it as ``5m``, ``1h30m``, ``0`` …"""

    skip_destructive: bool = False
    require_approval: bool = True
    grace_period: timedelta = timedelta(minutes=5)
    max_deletes_per_cycle: Annotated[int, msgspec.Meta(ge=0)] = 5
    max_creates_per_cycle: Annotated[int, msgspec.Meta(ge=0)] = 50
    max_resizes_per_cycle: Annotated[int, msgspec.Meta(ge=0)] = 5
    max_resources: Annotated[int, msgspec.Meta(ge=1, le=MAX_RESOURCES_LIMIT)] = 1000
    max_concurrency: Annotated[int, msgspec.Meta(ge=1)] = 8
    ignore_tags: tuple[Glob, ...] = ("aws:*",)
    allow_resize: bool = False
    final_snapshot: bool = True
    approval_for_sizes: tuple[Size, ...] = ()
    maintenance_window: TimeWindow | None = None

    def ignores_tag(self, key: str) -> bool:
        """Does ``key`` match one of the ``ignore_tags`` globs?"""
        return any(fnmatchcase(key, glob) for glob in self.ignore_tags)


class Notify(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where ``ovi run`` announces findings besides its log. A webhook URL is
    a credential, so the config says where to read it, never the URL itself:
    a file (``webhook_url_file``) or a systemd credential
    (``webhook_credential``, read from ``$CREDENTIALS_DIRECTORY``)."""

    webhook_url_file: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    webhook_credential: Annotated[str, msgspec.Meta(pattern=_CREDENTIAL)] | None = None


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A parsed, validated config file."""

    version: Literal["v1"]
    provider: Literal["aws"]
    region: Region
    owner: Name = "ovi"
    resources: tuple[ResourceSpec, ...]
    rules: Rules = msgspec.field(default_factory=Rules)
    notify: Notify | None = None

    def desired_resources(self) -> list[DesiredResource]:
        """Every desired resource, in config order, with its desired id."""
        out: list[DesiredResource] = []
        for i, spec in enumerate(self.resources):
            engine = spec.engine or ("postgres" if spec.type is ResourceType.RDS else None)
            out.extend(
                DesiredResource(
                    id=_desired_id(spec, i, j),
                    type=spec.type,
                    provider=self.provider,
                    region=spec.region or self.region,
                    size=spec.size,
                    image=spec.image,
                    engine=engine,
                    tags=dict(spec.tags),
                    adopt=spec.adopt,
                )
                for j in range(spec.count)
            )
        return out

    def scopes(self) -> list[Scope]:
        """Every scope to observe: every type in each region the config names
        (a type whose specs were all removed still has resources to find)."""
        regions = {self.region} | {s.region for s in self.resources if s.region}
        return sorted(Scope(self.provider, r, t) for r in regions for t in ResourceType)

    @property
    def config_hash(self) -> str:
        """sha256 hex of a canonical encoding: stable across key order, comments
        and spelled-out defaults."""
        return hashlib.sha256(msgspec.json.encode(self, order="sorted")).hexdigest()


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the config file at ``path``.

    :raises ConfigError: if the file cannot be read or is not a valid config.
    """
    source = os.fspath(path)
    try:
        text = Path(source).read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(source, "", "a readable file", got=exc.strerror or str(exc)) from exc
    except UnicodeDecodeError as exc:
        got = f"a byte that is not UTF-8 at offset {exc.start}"
        raise ConfigError(source, "", "UTF-8 text", got=got) from exc
    return parse_config(text, source)


def parse_config(text: str, source: str) -> Config:
    """Validate config ``text``; ``source`` names it in error messages.

    :raises ConfigError: if ``text`` is not a valid config.
    """
    doc = load_document(text, source)
    data = _normalise(doc)
    doc.check_integers()
    try:
        config = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise doc.translate(exc, Config, _PATTERN_WORDS) from exc
    _check(config, doc)
    return config


def parse_duration(value: object) -> timedelta | None:
    """``"1h30m"`` → 90 minutes; units d, h, m, s in that order; ``0``/``"0"`` is
    zero. ``None`` if ``value`` is not such a duration."""
    if (type(value) is int and value == 0) or value == "0":
        return timedelta(0)
    if not isinstance(value, str) or not value or not (m := _DURATION.fullmatch(value)):
        return None
    d, h, mins, s = (int(g or 0) for g in m.groups())
    return timedelta(days=d, hours=h, minutes=mins, seconds=s)


def _desired_id(spec: ResourceSpec, index: int, j: int) -> str:
    return f"{spec.name}-{j}" if spec.name else f"{spec.type}-{index}-{j}"


def _normalise(doc: SourceDocument) -> Any:
    """Turn the file's spellings of durations and clock times into the values
    the schema holds; anything else is left for msgspec to judge."""
    data = dict(doc.data)
    rules = data.get("rules")
    if not isinstance(rules, dict):
        return data
    rules = data["rules"] = dict(rules)
    if "grace_period" in rules:
        grace = parse_duration(rules["grace_period"])
        if grace is None:
            value = rules["grace_period"]
            got = f"{value} (a number without a unit)" if type(value) is int else None
            raise doc.error(
                ("rules", "grace_period"), "a duration like 30s, 5m, 1h30m or 2d (or 0)", got=got
            )
        rules["grace_period"] = grace
    window = rules.get("maintenance_window")
    if isinstance(window, dict):
        window = rules["maintenance_window"] = dict(window)
        for edge in ("start", "end"):
            value = window.get(edge)
            if value is None:
                continue
            m = _CLOCK.fullmatch(value) if isinstance(value, str) else None
            if m is None:
                path: tuple[str | int, ...] = ("rules", "maintenance_window", edge)
                got = doc.render_value(path, wants_text=True)
                raise doc.error(path, 'a UTC time "HH:MM" in quotes, like "02:00"', got=got)
            window[edge] = time(int(m[1]), int(m[2]))
    return data


def _check_bounds(config: Config, doc: SourceDocument) -> None:
    """Refuse more desired resources than ``rules.max_resources`` before a
    single id is built: ``count: 100000000`` would take gigabytes."""
    limit = config.rules.max_resources
    total = 0
    for i, spec in enumerate(config.resources):
        total += spec.count
        if total > limit:
            got = f"{spec.count}" if total == spec.count else \
                f"{spec.count} (making {total} in all)"
            raise doc.error(
                ("resources", i, "count"),
                f"at most {limit} desired resources in all (rules.max_resources; raise it,"
                f" up to {MAX_RESOURCES_LIMIT}, to allow more)", got=got,
            )


def _check(config: Config, doc: SourceDocument) -> None:
    """The rules the schema cannot say: per-type fields, uniqueness, tag keys."""
    _check_bounds(config, doc)
    names: dict[str, int] = {}
    ids: dict[str, int] = {}
    identifiers: dict[str, tuple[int, str]] = {}  # RDS DB identifier → (spec, id)
    for i, spec in enumerate(config.resources):
        at = ("resources", i)
        _check_fields(spec, at, doc)
        _check_tags(spec, config.rules, at, doc)
        if spec.name is not None:
            if spec.name in names:
                raise doc.error(
                    (*at, "name"), f"a name no other resource has (resources[{names[spec.name]}] "
                    "has it)",
                )
            names[spec.name] = i
        for j in range(spec.count):
            rid = _desired_id(spec, i, j)
            if rid in ids:
                where = (*at, "name") if spec.name else at
                raise doc.error(
                    where, "resource ids unique across resources",
                    got=f'id "{rid}", also produced by resources[{ids[rid]}]',
                )
            ids[rid] = i
            if spec.type is ResourceType.RDS:
                _check_identifier(identifiers, rid, i, spec, doc)
    notify = config.notify
    if notify is not None and notify.webhook_url_file and notify.webhook_credential:
        raise doc.error(("notify", "webhook_credential"),
                        "either webhook_url_file or webhook_credential, not both")
    window = config.rules.maintenance_window
    if window is not None:
        path = ("rules", "maintenance_window")
        if len(set(window.days)) != len(window.days):
            raise doc.error((*path, "days"), "each day once")
        if window.start == window.end:
            raise doc.error((*path, "end"), "an end different from start (the window is empty)")


def _check_identifier(identifiers: dict[str, tuple[int, str]], rid: str, index: int,
                      spec: ResourceSpec, doc: SourceDocument) -> None:
    """Two DB instances cannot share an identifier, and the one made from an
    id folds runs of '-' (``a--b-0`` and ``a-b-0`` are both ``a-b-0``): the
    second would fail to create on every cycle."""
    identifier = db_identifier(rid)
    other = identifiers.setdefault(identifier, (index, rid))
    if other[1] != rid:
        where = ("resources", index, "name") if spec.name else ("resources", index)
        raise doc.error(
            where, "RDS resources whose DB identifiers differ (runs of '-' count as one)",
            got=f'id "{rid}", whose DB identifier "{identifier}" resources[{other[0]}]'
                f' ("{other[1]}") has too',
        )


def _check_fields(spec: ResourceSpec, at: tuple[str | int, ...], doc: SourceDocument) -> None:
    if spec.size is not None:
        if spec.type is ResourceType.S3:
            raise doc.error((*at, "size"), "no size for an s3 bucket")
        if spec.type is ResourceType.RDS and not spec.size.startswith("db."):
            raise doc.error((*at, "size"), "an RDS instance class like db.t3.micro")
        if spec.type is ResourceType.EC2 and spec.size.startswith("db."):
            raise doc.error((*at, "size"), "an EC2 instance type like t3.micro")
    if spec.image is not None and spec.type is not ResourceType.EC2:
        raise doc.error((*at, "image"), f"no image for {spec.type} (only ec2 has one)")
    if spec.engine is not None and spec.type is not ResourceType.RDS:
        raise doc.error((*at, "engine"), f"no engine for {spec.type} (only rds has one)")
    if spec.adopt and spec.type is ResourceType.EC2:
        raise doc.error(
            (*at, "adopt"), "no adopt for ec2 (an instance has no name to match; grant one"
            " with `ovi adopt <resource> --as <id>`)",
        )


def _check_tags(
    spec: ResourceSpec, rules: Rules, at: tuple[str | int, ...], doc: SourceDocument
) -> None:
    for key, value in spec.tags.items():
        path: tuple[str | int, ...] = (*at, "tags", key)
        if not 1 <= len(key) <= 128:
            raise doc.error(path, "a tag key of 1 to 128 characters", key=True, got=f'"{key}"')
        if key.startswith(_RESERVED_TAG_PREFIXES):
            raise doc.error(
                path, 'a tag key not starting with "ovi:" or "aws:" (reserved)',
                key=True, got=f'"{key}"',
            )
        if rules.ignores_tag(key):
            raise doc.error(
                path, "a tag key not matched by rules.ignore_tags (it would never be checked)",
                key=True, got=f'"{key}"',
            )
        if len(value) > 256:
            raise doc.error(path, "a tag value of at most 256 characters", got=f"{len(value)}")
