"""The comparator: one test per identity and diff rule in docs/architecture.md.
Observed resources get their identities first (``identify``), as the observer
gives them."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import msgspec

from ovi.comparator import Comparator, Context, DefaultComparator
from ovi.config import parse_config
from ovi.model import (
    BLESSED_TAG,
    ID_TAG,
    MANAGED_TAG,
    OWNER_TAG,
    DesiredResource,
    Diff,
    DiffType,
    FieldChange,
    Location,
    Resource,
    ResourceType,
    Scope,
    identify,
)

EC2 = ResourceType.EC2
US = Scope("aws", "us-east-1", EC2)
EU = Scope("aws", "eu-west-1", EC2)
US_S3 = Scope("aws", "us-east-1", ResourceType.S3)


def want(rid: str, *, region: str = "us-east-1", size: str | None = "t3.micro",
         tags: dict[str, str] | None = None, type: ResourceType = EC2) -> DesiredResource:
    return DesiredResource(id=rid, type=type, provider="aws", region=region, size=size,
                           tags=tags or {})


def ours(rid: str, cloud_id: str, *, owner: str = "ovi", region: str = "us-east-1",
         size: str | None = "t3.micro", tags: dict[str, str] | None = None,
         type: ResourceType = EC2) -> Resource:
    all_tags = {ID_TAG: rid, MANAGED_TAG: "true", OWNER_TAG: owner, **(tags or {})}
    return Resource(id=rid, cloud_id=cloud_id, type=type, provider="aws", region=region,
                    size=size, status="running", tags=all_tags)


def foreign(cloud_id: str, *, tags: dict[str, str] | None = None,
            region: str = "us-east-1") -> Resource:
    return Resource(id=cloud_id, cloud_id=cloud_id, type=EC2, provider="aws", region=region,
                    size="t3.micro", tags=tags or {})


def bucket(name: str, **tags: str) -> Resource:
    return Resource(id="", cloud_id=name, type=ResourceType.S3, provider="aws",
                    region="us-east-1", tags=tags)


def compare(desired: list[DesiredResource], observed: list[Resource],
            unknown: tuple[Scope, ...] = (), comparator: Comparator | None = None,
            context: Context | None = None, owner: str = "ovi") -> list[Diff]:
    comparator = comparator or DefaultComparator(owner=owner)
    complete = {r.scope for r in observed} - set(unknown)
    known = context.last_seen if context is not None else {}
    return comparator.compare(
        desired, identify(observed, owner=owner, recorded=known, complete=complete),
        unknown_scopes=unknown, context=context or Context())


def kinds(diffs: list[Diff]) -> list[tuple[DiffType, str]]:
    return [(d.type, d.resource_id) for d in diffs]


def test_in_sync_estate_has_no_diffs() -> None:
    assert compare([want("web-0")], [ours("web-0", "i-1", tags={"extra": "x"})]) == []


def test_missing_when_desired_not_observed() -> None:
    [diff] = compare([want("web-0")], [])
    assert (diff.type, diff.resource_id, diff.scope, diff.cloud_id) == (
        DiffType.MISSING, "web-0", US, None,
    )
    assert diff.desired == want("web-0")
    assert diff.reason == "web-0 is desired but was not observed"


def test_unwanted_when_managed_but_not_desired() -> None:
    [diff] = compare([], [ours("web-9", "i-9")])
    assert kinds([diff]) == [(DiffType.UNWANTED, "web-9")]
    assert diff.cloud_id == "i-9"
    assert diff.observed == ours("web-9", "i-9")
    assert "no longer desired" in diff.reason


def test_unmanaged_when_not_managed_and_not_desired() -> None:
    [diff] = compare([], [foreign("i-5")])
    assert kinds([diff]) == [(DiffType.UNMANAGED, "aws/us-east-1/ec2/i-5")]
    assert diff.reason == "i-5 is not managed by Ovi"


def test_match_by_ovi_id_never_cloud_id() -> None:
    # A resource whose cloud id equals a desired id is no match without the tag …
    diffs = compare([want("web-0")], [foreign("web-0")])
    assert kinds(diffs) == [(DiffType.UNMANAGED, "aws/us-east-1/ec2/web-0"),
                            (DiffType.MISSING, "web-0")]
    # … and one whose cloud id is anything at all matches by its ovi:id tag.
    assert compare([want("web-0")], [ours("web-0", "i-0123")]) == []
    renamed = ours("web-1", "web-0")
    assert kinds(compare([want("web-0")], [renamed])) == [
        (DiffType.MISSING, "web-0"), (DiffType.UNWANTED, "web-1"),
    ]


def test_managed_means_the_owner_tag_equals_this_owner() -> None:
    only_managed = Resource(id="", cloud_id="i-a", type=EC2, provider="aws",
                            region="us-east-1", tags={ID_TAG: "a", MANAGED_TAG: "true"})
    only_owner = Resource(id="", cloud_id="i-b", type=EC2, provider="aws",
                          region="us-east-1", tags={ID_TAG: "b", OWNER_TAG: "ovi"})
    managed_false = Resource(id="", cloud_id="i-c", type=EC2, provider="aws",
                             region="us-east-1", tags={ID_TAG: "c", MANAGED_TAG: "false"})
    diffs = compare([], [only_managed, only_owner, managed_false])
    # ovi:managed=true names no owner: not the default owner's, not anybody's.
    assert kinds(diffs) == [
        (DiffType.UNMANAGED, "aws/us-east-1/ec2/i-a"),
        (DiffType.UNMANAGED, "aws/us-east-1/ec2/i-c"), (DiffType.UNWANTED, "b"),
    ]
    assert diffs[0].reason == "i-a is not managed by Ovi"


def test_another_owners_resources_are_unmanaged_here() -> None:
    theirs = ours("web-0", "i-theirs", owner="team-b")
    diffs = compare([want("web-0")], [theirs])
    # Their web-0 is not ours: ours is still missing, theirs known by its own identity.
    assert kinds(diffs) == [(DiffType.UNMANAGED, "aws/us-east-1/ec2/i-theirs"),
                            (DiffType.MISSING, "web-0")]
    assert diffs[0].reason == "i-theirs belongs to Ovi owner 'team-b', not 'ovi'"
    assert compare([want("web-0")], [theirs], owner="team-b") == []


def test_a_bucket_named_like_an_instance_shares_no_identity_with_it() -> None:
    diffs = compare([want("web-0")], [ours("web-0", "i-1"), bucket("web-0")])
    assert kinds(diffs) == [(DiffType.UNMANAGED, "aws/us-east-1/s3/web-0")]
    diffs = compare([], [ours("web-0", "i-1"), bucket("web-0")])
    assert kinds(diffs) == [(DiffType.UNWANTED, "web-0"),
                            (DiffType.UNMANAGED, "aws/us-east-1/s3/web-0")]
    assert [d.cloud_id for d in diffs] == ["i-1", "web-0"]


def test_drift_on_type_provider_region_or_size() -> None:
    have = ours("db-0", "i-1", region="eu-west-1", size="t3.large")
    [diff] = compare([want("db-0", type=ResourceType.RDS, size="db.t3.micro")], [have])
    assert diff.type is DiffType.DRIFTED
    assert diff.changes == (
        FieldChange("type", "rds", "ec2"),
        FieldChange("region", "us-east-1", "eu-west-1"),
        FieldChange("size", "db.t3.micro", "t3.large"),
    )
    assert (diff.resource_id, diff.cloud_id, diff.scope) == ("db-0", "i-1", EU)
    assert diff.desired is not None and diff.observed == have


def test_declared_tag_that_differs_or_is_absent_is_drift() -> None:
    desired = want("web-0", tags={"team": "platform", "env": "prod"})
    [diff] = compare([desired], [ours("web-0", "i-1", tags={"team": "data"})])
    assert diff.changes == (
        FieldChange("tags.env", "prod", None),
        FieldChange("tags.team", "platform", "data"),
    )
    assert diff.reason == "web-0 differs from the config: tags.env (absent) → prod, " \
        "tags.team data → platform"


def test_extra_undeclared_tags_are_not_drift() -> None:
    have = ours("web-0", "i-1", tags={"team": "platform", "cost-centre": "42", "Name": "x"})
    assert compare([want("web-0", tags={"team": "platform"})], [have]) == []


def test_ignore_tags_globs() -> None:
    desired = want("web-0", tags={"team": "platform", "aws:cloudformation:stack": "s"})
    have = ours("web-0", "i-1", tags={"team": "other"})
    lenient = DefaultComparator(ignore_tags=["t*", "aws:*"])
    assert compare([desired], [have], comparator=lenient) == []
    [diff] = compare([desired], [have])  # default ["aws:*"]: team still counts
    assert [c.field for c in diff.changes] == ["tags.team"]


def test_no_size_in_config_is_not_drift() -> None:
    assert compare([want("web-0", size=None)], [ours("web-0", "i-1", size="m5.large")]) == []


def test_spec_region_defaults_to_config_region() -> None:
    config = parse_config(
        "version: v1\nprovider: aws\nregion: eu-west-1\nresources: [{type: ec2, name: web}]\n",
        "ovi.yaml",
    )
    comparator = DefaultComparator.from_config(config)
    observed = [ours("web-0", "i-1", region="eu-west-1")]
    assert comparator.compare(config.desired_resources(), observed) == []


def test_of_duplicates_the_oldest_keeps_the_id_when_the_log_recorded_none() -> None:
    old, new = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)
    copies = [msgspec.structs.replace(ours("web-0", "i-a"), created_at=new),
              msgspec.structs.replace(ours("web-0", "i-c"), created_at=old),
              ours("web-0", "i-b", size="t3.large")]  # no creation time: counts as newest
    diffs = compare([want("web-0")], copies)
    assert kinds(diffs) == [(DiffType.UNWANTED, "aws/us-east-1/ec2/i-a"),
                            (DiffType.UNWANTED, "aws/us-east-1/ec2/i-b")]
    assert {d.reason for d in diffs} == {"duplicate of web-0"}


def test_of_duplicates_the_one_the_log_recorded_keeps_the_id() -> None:
    recorded = Context(last_seen={"web-0": Location(US, "i-z")})
    diffs = compare([want("web-0")], [ours("web-0", "i-a"), ours("web-0", "i-z")],
                    context=recorded)
    assert kinds(diffs) == [(DiffType.UNWANTED, "aws/us-east-1/ec2/i-a")]


def test_a_duplicate_whose_keeper_was_not_seen_gets_no_diff() -> None:
    # The log saw web-0 in eu-west-1, which failed this cycle: the copy in
    # us-east-1 is neither the keeper nor deletable, and nothing is missing.
    recorded = Context(last_seen={"web-0": Location(EU, "i-eu")})
    diffs = compare([want("web-0")], [ours("web-0", "i-us")], unknown=(EU,), context=recorded)
    assert diffs == []


def test_managed_resource_without_ovi_id_is_unwanted_by_its_identity() -> None:
    stray = bucket("web-0", **{OWNER_TAG: "ovi", MANAGED_TAG: "true"})
    diffs = compare([want("web-0", type=ResourceType.S3, size=None)], [stray])
    assert kinds(diffs) == [(DiffType.UNWANTED, "aws/us-east-1/s3/web-0"),
                            (DiffType.MISSING, "web-0")]
    assert "has no ovi:id tag" in diffs[0].reason


def test_unknown_scope_gets_no_diffs() -> None:
    desired = [want("web-0"), want("web-1"), want("eu-0", region="eu-west-1")]
    observed = [
        ours("web-9", "i-9"),  # unwanted, in the failed scope
        foreign("i-5"),  # unmanaged, in the failed scope
        ours("web-1", "i-eu", region="eu-west-1"),  # desired in the failed scope, seen elsewhere
    ]
    diffs = compare(desired, observed, unknown=(US,))
    assert kinds(diffs) == [(DiffType.MISSING, "eu-0")]


def test_missing_needs_every_place_the_log_saw_it_observed() -> None:
    moved = want("web-0")  # desired in us-east-1, last seen in eu-west-1
    recorded = Context(last_seen={"web-0": Location(EU, "i-eu")})
    assert compare([moved], [], unknown=(EU,), context=recorded) == []
    assert kinds(compare([moved], [], context=recorded)) == [(DiffType.MISSING, "web-0")]


def test_an_unreadable_resource_is_neither_missing_nor_anything_else() -> None:
    logs = want("logs-0", type=ResourceType.S3, size=None)
    known = Context(last_seen={"logs-0": Location(US_S3, "logs-0")},
                    unreadable=frozenset({Location(US_S3, "logs-0")}))
    assert compare([logs], [], context=known) == []
    named = Context(natural_ids={"logs-0": "logs-0"},
                    unreadable=frozenset({Location(US_S3, "logs-0")}))
    assert compare([logs], [], context=named) == []


def test_a_foreign_resource_holding_the_name_is_a_conflict_not_missing() -> None:
    assets = want("assets-0", type=ResourceType.S3, size=None)
    named = Context(natural_ids={"assets-0": "assets-0"})
    [diff] = compare([assets], [bucket("assets-0")], context=named)
    assert (diff.type, diff.resource_id, diff.cloud_id) == (
        DiffType.CONFLICT, "assets-0", "assets-0")
    assert diff.observed is not None and diff.observed.id == "aws/us-east-1/s3/assets-0"
    assert "already exists" in diff.reason


def test_a_granted_resource_is_a_conflict_of_its_desired_id() -> None:
    granted = Context(grants={"web-0": "aws/us-east-1/ec2/i-9"})
    [diff] = compare([want("web-0")], [foreign("i-9")], context=granted)
    assert (diff.type, diff.resource_id, diff.cloud_id) == (DiffType.CONFLICT, "web-0", "i-9")
    other = compare([want("web-0")], [foreign("i-8")], context=granted)
    assert kinds(other) == [(DiffType.UNMANAGED, "aws/us-east-1/ec2/i-8"),
                            (DiffType.MISSING, "web-0")]


def test_blessed_tag_does_not_hide_a_finding() -> None:
    # Blessing changes the decision (notify), not the finding.
    [diff] = compare([], [ours("web-9", "i-9", tags={BLESSED_TAG: "true"})])
    assert diff.type is DiffType.UNWANTED and diff.observed is not None and diff.observed.blessed


def test_output_order_is_deterministic() -> None:
    desired = [want(f"w-{i}", region=r) for i in range(5) for r in ("us-east-1", "eu-west-1")]
    observed = [ours(f"x-{i}", f"i-{i}", region="eu-west-1") for i in range(5)]
    observed += [foreign(f"i-f{i}") for i in range(5)]
    expected = compare(desired, observed)
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(desired)
        rng.shuffle(observed)
        assert compare(desired, observed) == expected
    keys = [(d.scope.key, d.resource_id) for d in expected]
    assert keys == sorted(keys)


def test_a_start_owed_is_a_status_change_only_while_not_running() -> None:
    stopped = msgspec.structs.replace(ours("web-0", "i-1", size="t3.small"), status="stopped")
    comparator = DefaultComparator()
    # Owed a start: only the start is reported, whatever else differs.
    [diff] = comparator.compare([want("web-0", size="t3.large")], [stopped],
                                context=Context(restart_owed={"web-0"}))
    assert (diff.type, diff.changes) == (
        DiffType.DRIFTED, (FieldChange("status", "running", "stopped"),))
    assert "starts it again" in diff.reason
    # Not owed (stopped by someone else): a stopped instance is not drift.
    assert comparator.compare([want("web-0", size="t3.small")], [stopped]) == []
    # Owed, but running already: nothing to start.
    running = msgspec.structs.replace(stopped, status="running")
    assert comparator.compare([want("web-0", size="t3.small")], [running],
                              context=Context(restart_owed={"web-0"})) == []
