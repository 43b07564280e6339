"""The decision maker: base rules and policies, one test per rule in docs/architecture.md."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import msgspec
import pytest

from ovi._exceptions import PolicyError
from ovi.comparator import Context, DefaultComparator
from ovi.config import Rules, TimeWindow, Weekday, parse_config
from ovi.decisions import DecisionContext, DecisionMaker, Policy
from ovi.model import (
    BLESSED_TAG,
    ID_TAG,
    MANAGED_TAG,
    OWNER_TAG,
    Action,
    Decision,
    DecisionStatus,
    DesiredResource,
    Diff,
    DiffType,
    Provenance,
    Resource,
    ResourceType,
    decision_id_for,
)
from ovi.policies import (
    ApprovalForSizes,
    BlastRadius,
    CreateCap,
    GracePeriod,
    MaintenanceWindow,
    Paused,
    RequireApproval,
    ResizeCap,
    UnrecordedOrigin,
)

NOW = datetime(2025, 1, 4, 12, 0, tzinfo=UTC)  # a Saturday, noon
LONG_AGO = NOW - timedelta(days=1)
READY, INFO = DecisionStatus.READY, DecisionStatus.INFORMATIONAL


def want(rid: str, *, size: str = "t3.micro", tags: dict[str, str] | None = None,
         region: str = "us-east-1") -> DesiredResource:
    return DesiredResource(id=rid, type=ResourceType.EC2, provider="aws", region=region,
                           size=size, tags=tags or {})


def seen(rid: str, *, size: str = "t3.micro", tags: dict[str, str] | None = None,
         managed: bool = True, region: str = "us-east-1") -> Resource:
    own = {ID_TAG: rid, MANAGED_TAG: "true", OWNER_TAG: "ovi"} if managed else {}
    return Resource(id=rid if managed else f"i-{rid}", cloud_id=f"i-{rid}",
                    type=ResourceType.EC2, provider="aws", region=region, size=size,
                    tags={**own, **(tags or {})})


def diffs_of(desired: list[DesiredResource], observed: list[Resource]) -> list[Diff]:
    return DefaultComparator().compare(desired, observed)


# The log records Ovi creating every web-N of these tests (unless a test says otherwise).
CREATED = {(f"web-{i}", f"i-web-{i}"): Provenance.CREATED for i in range(10)}


def ctx(*, detected: dict[str, datetime] | None = None, approved: frozenset[str] = frozenset(),
        now: datetime = NOW,
        provenance: dict[tuple[str, str], Provenance] | None = None,
        grants: dict[str, str] | None = None) -> DecisionContext:
    return DecisionContext(now=now, detected_at=detected or {}, approved=approved,
                           provenance=CREATED if provenance is None else provenance,
                           grants=grants or {})


def decide(diffs: list[Diff], rules: Rules | None = None, context: DecisionContext | None = None,
           policies: list[Policy] | None = None) -> list[Decision]:
    return DecisionMaker(rules or Rules(), policies).decide(diffs, context or ctx())


def summary(decisions: list[Decision]) -> list[tuple[str, Action, DecisionStatus, str]]:
    return [(d.resource_id, d.action, d.status, d.rule) for d in decisions]


# -- base rules ---------------------------------------------------------------------


def test_missing_becomes_create() -> None:
    [d] = decide(diffs_of([want("web-0")], []))
    assert summary([d]) == [("web-0", Action.CREATE, READY, "missing→create")]
    assert d.cloud_id is None and d.resource_type is ResourceType.EC2


def test_drifted_tags_become_an_update_in_place() -> None:
    diffs = diffs_of([want("web-0", tags={"team": "a"})], [seen("web-0", tags={"team": "b"})])
    [d] = decide(diffs)
    assert summary([d]) == [("web-0", Action.UPDATE, READY, "drifted→update")]
    assert d.cloud_id == "i-web-0"


def test_size_change_is_reported_not_replaced() -> None:
    diffs = diffs_of([want("web-0", size="t3.large")], [seen("web-0")])
    [d] = decide(diffs)
    assert summary([d]) == [("web-0", Action.NOTIFY, INFO, "resize-needs-replacement")]
    assert "reported, not done" in d.reason
    [d] = decide(diffs, Rules(allow_resize=True))
    assert summary([d]) == [("web-0", Action.UPDATE, READY, "drifted→update")]


def test_region_or_type_change_is_reported_not_replaced() -> None:
    diffs = diffs_of([want("web-0", region="eu-west-1")], [seen("web-0")])
    [d] = decide(diffs, Rules(allow_resize=True))
    assert summary([d]) == [("web-0", Action.NOTIFY, INFO, "drift-needs-replacement")]
    assert "region needs a replacement" in d.reason


def test_unmanaged_is_notified() -> None:
    [d] = decide(diffs_of([], [seen("x", managed=False)]))
    assert summary([d]) == [("i-x", Action.NOTIFY, INFO, "unmanaged→notify")]


def test_unwanted_becomes_delete() -> None:
    no_gates = Rules(require_approval=False, grace_period=timedelta(0))
    [d] = decide(diffs_of([], [seen("web-9")]), no_gates)
    assert summary([d]) == [("web-9", Action.DELETE, READY, "unwanted→delete")]
    assert d.cloud_id == "i-web-9"


def test_blessed_unwanted_is_notified_not_deleted() -> None:
    [d] = decide(diffs_of([], [seen("web-9", tags={BLESSED_TAG: "true"})]))
    assert summary([d]) == [("web-9", Action.NOTIFY, INFO, "blessed")]


def test_skip_destructive_turns_delete_into_notify() -> None:
    [d] = decide(diffs_of([], [seen("web-9")]), Rules(skip_destructive=True))
    assert summary([d]) == [("web-9", Action.NOTIFY, INFO, "skip_destructive")]
    # Creates and updates still happen.
    [c] = decide(diffs_of([want("web-0")], []), Rules(skip_destructive=True))
    assert c.action is Action.CREATE


def test_decision_id_is_bound_to_the_finding_and_its_first_detection() -> None:
    [diff] = diffs_of([], [seen("web-9")])
    [d] = decide([diff], context=ctx(detected={"web-9": LONG_AGO}))
    assert d.decision_id == decision_id_for(diff, Action.DELETE, LONG_AGO)
    [again] = decide([diff], context=ctx(detected={"web-9": LONG_AGO}, now=NOW + timedelta(1)))
    assert again.decision_id == d.decision_id
    [fresh] = decide([diff])  # new this cycle: detected now
    assert fresh.decision_id == decision_id_for(diff, Action.DELETE, NOW)


# -- policies ---------------------------------------------------------------------------


def test_delete_waits_grace_period() -> None:
    rules = Rules(require_approval=False, grace_period=timedelta(minutes=5))
    [diff] = diffs_of([], [seen("web-9")])
    almost = ctx(detected={"web-9": NOW - timedelta(minutes=4, seconds=59)})
    [d] = decide([diff], rules, almost)
    assert (d.status, d.rule) == (DecisionStatus.GRACE_PERIOD, "grace_period")
    assert "grace period until 2025-01-04T12:00:01+00:00" in d.reason
    [d] = decide([diff], rules, ctx(detected={"web-9": NOW - timedelta(minutes=5)}))
    assert d.status is READY


def test_grace_period_starts_when_the_finding_is_first_recorded() -> None:
    # A finding new this cycle (absent from detected_at) has the whole period ahead.
    rules = Rules(require_approval=False)
    [d] = decide(diffs_of([], [seen("web-9")]), rules)
    assert d.status is DecisionStatus.GRACE_PERIOD


def test_delete_needs_approval() -> None:
    [diff] = diffs_of([], [seen("web-9")])
    old = ctx(detected={"web-9": LONG_AGO})
    [d] = decide([diff], context=old)
    assert (d.status, d.rule) == (DecisionStatus.AWAITING_APPROVAL, "require_approval")
    assert f"ovi approve {d.decision_id}" in d.reason
    approved = ctx(detected={"web-9": LONG_AGO}, approved=frozenset({d.decision_id}))
    [d] = decide([diff], context=approved)
    assert (d.status, d.rule) == (READY, "unwanted→delete")


def test_approval_lapses_when_the_finding_changes() -> None:
    [diff] = diffs_of([], [seen("web-9")])
    [first] = decide([diff], context=ctx(detected={"web-9": LONG_AGO}))
    # The resource came back and went unwanted again: a new finding, a new decision id.
    later = ctx(detected={"web-9": NOW - timedelta(hours=1)},
                approved=frozenset({first.decision_id}))
    [d] = decide([diff], context=later)
    assert d.decision_id != first.decision_id
    assert d.status is DecisionStatus.AWAITING_APPROVAL


def test_blast_radius_cap() -> None:
    rules = Rules(require_approval=False, max_deletes_per_cycle=2)
    diffs = diffs_of([], [seen(f"web-{i}") for i in (3, 1, 4, 0, 2)])
    decisions = decide(diffs, rules, ctx(detected={f"web-{i}": LONG_AGO for i in range(5)}))
    assert [(d.resource_id, d.status) for d in decisions] == [
        ("web-0", READY), ("web-1", READY), ("web-2", DecisionStatus.CAPPED),
        ("web-3", DecisionStatus.CAPPED), ("web-4", DecisionStatus.CAPPED),
    ]
    assert decisions[2].rule == "blast_radius"
    assert "over the cap of 2 deletes per cycle" in decisions[2].reason


def test_blast_radius_counts_only_deletes_that_would_run() -> None:
    rules = Rules(require_approval=False, max_deletes_per_cycle=1)
    diffs = diffs_of([want("new-0")], [seen("web-0"), seen("web-1")])
    # web-0 is still in its grace period, so web-1 is the one delete of the cycle.
    decisions = decide(diffs, rules, ctx(detected={"web-1": LONG_AGO}))
    assert [(d.resource_id, d.status) for d in decisions] == [
        ("new-0", READY), ("web-0", DecisionStatus.GRACE_PERIOD), ("web-1", READY),
    ]


def test_zero_delete_cap_holds_every_delete() -> None:
    rules = Rules(require_approval=False, max_deletes_per_cycle=0)
    [d] = decide(diffs_of([], [seen("web-0")]), rules, ctx(detected={"web-0": LONG_AGO}))
    assert d.status is DecisionStatus.CAPPED


def test_approval_for_sizes_policy() -> None:
    rules = Rules(approval_for_sizes=("m5.24xlarge",), allow_resize=True)
    big, small = want("big-0", size="m5.24xlarge"), want("small-0")
    [b, s] = decide(diffs_of([big, small], []), rules)
    assert (b.status, b.rule) == (DecisionStatus.AWAITING_APPROVAL, "approval_for_sizes")
    assert s.status is READY
    [b, _] = decide(diffs_of([big, small], []), rules, ctx(approved=frozenset({b.decision_id})))
    assert b.status is READY
    # Resizing to a listed size needs it too; a tag-only update of a big one does not.
    [resize] = decide(diffs_of([big], [seen("big-0")]), rules)
    assert resize.status is DecisionStatus.AWAITING_APPROVAL
    retag = diffs_of([want("big-0", size="m5.24xlarge", tags={"t": "1"})],
                     [seen("big-0", size="m5.24xlarge")])
    assert decide(retag, rules)[0].status is READY


def test_maintenance_window_policy() -> None:
    window = TimeWindow(days=(Weekday.SAT,), start=time(22), end=time(2))
    rules = Rules(require_approval=False, maintenance_window=window)
    diffs = diffs_of([want("web-0")], [seen("web-9")])
    old = {"web-9": LONG_AGO}
    create, delete = decide(diffs, rules, ctx(detected=old))
    assert create.status is READY  # only destructive actions wait for the window
    assert (delete.status, delete.rule) == (DecisionStatus.MAINTENANCE_WINDOW, "maintenance_window")
    inside = NOW.replace(hour=23)
    _, delete = decide(diffs, rules, ctx(detected=old, now=inside))
    assert delete.status is READY
    past_midnight = NOW + timedelta(hours=13, minutes=30)  # Sunday 01:30
    assert decide(diffs, rules, ctx(detected=old, now=past_midnight))[1].status is READY


def test_disruptive_changes_wait_for_the_window_and_a_start_owed_does_not() -> None:
    window = TimeWindow(days=(Weekday.SAT,), start=time(22), end=time(2))
    rules = Rules(allow_resize=True, maintenance_window=window)
    resize = diffs_of([want("web-0", size="t3.large")], [seen("web-0")])
    retag = diffs_of([want("web-1", tags={"team": "a"})], [seen("web-1")])
    stopped = msgspec.structs.replace(seen("web-2"), status="stopped")
    restart = DefaultComparator().compare([want("web-2")], [stopped],
                                          context=Context(restart_owed={"web-2"}))
    held, tags, start = decide(resize + retag + restart, rules)
    assert (held.status, held.rule) == (DecisionStatus.MAINTENANCE_WINDOW, "maintenance_window")
    assert tags.status is READY  # tags change in place: nothing is disrupted
    assert (start.action, start.status, start.rule) == (Action.UPDATE, READY,
                                                         "restart-owed→start")
    assert decide(resize, rules, ctx(now=NOW.replace(hour=23)))[0].status is READY


def test_policies_only_hold_back_never_release() -> None:
    class Release:
        name = "release"

        def apply(self, decisions: list[Decision], ctx: DecisionContext) -> list[Decision]:
            return [msgspec.structs.replace(d, status=READY) for d in decisions]

    class Act:
        name = "act"

        def apply(self, decisions: list[Decision], ctx: DecisionContext) -> list[Decision]:
            return [msgspec.structs.replace(d, action=Action.DELETE) for d in decisions]

    class Drop:
        name = "drop"

        def apply(self, decisions: list[Decision], ctx: DecisionContext) -> list[Decision]:
            return decisions[1:]

    held = diffs_of([], [seen("web-9")])
    with pytest.raises(PolicyError, match="'release' broke its contract: released held"):
        decide(held, policies=[RequireApproval(), Release()])
    notify = diffs_of([], [seen("x", managed=False)])
    with pytest.raises(PolicyError, match="'act'"):
        decide(notify, policies=[Act()])
    with pytest.raises(PolicyError, match="returned 0 decisions for 1"):
        decide(notify, policies=[Drop()])


def test_policy_chain_is_replaceable() -> None:
    [d] = decide(diffs_of([], [seen("web-9")]), policies=[])
    assert d.status is READY and d.action is Action.DELETE


def test_default_chain_follows_the_rules() -> None:
    window = TimeWindow(start=time(1), end=time(2))
    full = Rules(approval_for_sizes=("m5.large",), maintenance_window=window)
    chain = DecisionMaker(full).policies
    assert [type(p) for p in chain] == [
        Paused, GracePeriod, UnrecordedOrigin, RequireApproval, ApprovalForSizes,
        MaintenanceWindow, BlastRadius, CreateCap, ResizeCap,
    ]
    bare = Rules(require_approval=False)
    # The approval of unrecorded deletes and the caps cannot be switched off.
    assert [p.name for p in DecisionMaker(bare).policies] == [
        "paused", "grace_period", "unrecorded_origin", "blast_radius", "create_cap",
        "resize_cap"]


def test_a_delete_of_what_the_log_never_saw_ovi_make_waits_for_a_person() -> None:
    no_gates = Rules(require_approval=False, grace_period=timedelta(0))
    diffs = diffs_of([], [seen("web-1"), seen("web-2"), seen("web-3")])
    origins = {("web-1", "i-web-1"): Provenance.CREATED, ("web-2", "i-web-2"): Provenance.ADOPTED}
    made, adopted, forged = decide(diffs, no_gates, ctx(provenance=origins))
    assert [d.provenance for d in (made, adopted, forged)] == [
        Provenance.CREATED, Provenance.ADOPTED, Provenance.UNRECORDED]
    assert made.status is READY and adopted.status is READY
    assert (forged.status, forged.rule) == (DecisionStatus.AWAITING_APPROVAL, "unrecorded_origin")
    assert "no record of Ovi creating or adopting it" in forged.reason
    assert f"ovi approve {forged.decision_id}" in forged.reason
    approved = ctx(provenance=origins, approved=frozenset({forged.decision_id}))
    assert decide(diffs, no_gates, approved)[2].status is READY


def test_a_duplicate_ovi_created_is_recorded_under_its_ovi_id() -> None:
    copy = Resource(id="aws/us-east-1/ec2/i-dup", cloud_id="i-dup", type=ResourceType.EC2,
                    provider="aws", region="us-east-1",
                    tags={ID_TAG: "web-0", MANAGED_TAG: "true", OWNER_TAG: "ovi"})
    diff = Diff(type=DiffType.UNWANTED, resource_id=copy.id, resource_type=copy.type,
                scope=copy.scope, reason="duplicate of web-0", cloud_id="i-dup", observed=copy)
    [d] = decide([diff], context=ctx(provenance={("web-0", "i-dup"): Provenance.CREATED}))
    assert d.provenance is Provenance.CREATED
    [d] = decide([diff], context=ctx(provenance={}))
    assert d.provenance is Provenance.UNRECORDED


def test_creates_beyond_the_cap_wait_for_the_next_cycle() -> None:
    diffs = diffs_of([want(f"web-{i}") for i in range(5)], [])
    decisions = decide(diffs, Rules(max_creates_per_cycle=3))
    assert [(d.resource_id, d.status) for d in decisions] == [
        ("web-0", READY), ("web-1", READY), ("web-2", READY),
        ("web-3", DecisionStatus.CAPPED), ("web-4", DecisionStatus.CAPPED),
    ]
    assert decisions[3].rule == "create_cap"
    assert "over the cap of 3 creates per cycle" in decisions[3].reason
    assert Rules().max_creates_per_cycle == 50


def test_resizes_beyond_the_cap_wait_for_the_next_cycle() -> None:
    """A size typed wrong for a fleet of 6 stops at most 2 instances per cycle;
    a tag-only update and a start owed are not resizes and are never capped."""
    rules = Rules(allow_resize=True, max_resizes_per_cycle=2)
    desired = [want(f"web-{i}", size="m5.large") for i in range(6)]
    desired.append(want("tagged-0", tags={"team": "new"}))
    observed = [seen(f"web-{i}") for i in (4, 1, 5, 0, 3, 2)] + [seen("tagged-0")]
    decisions = decide(diffs_of(desired, observed), rules)
    statuses = {d.resource_id: (d.status, d.rule) for d in decisions}
    assert [rid for rid, (status, _) in sorted(statuses.items()) if status is READY] == [
        "tagged-0", "web-0", "web-1"]
    assert statuses["web-2"] == (DecisionStatus.CAPPED, "resize_cap")
    capped = next(d for d in decisions if d.resource_id == "web-5")
    assert "over the cap of 2 resizes per cycle" in capped.reason
    assert Rules().max_resizes_per_cycle == 5
    # A resize held by another rule (outside the maintenance window) is not
    # counted: the cap counts what would run.
    night = TimeWindow(start=time(1), end=time(2))
    held = decide(diffs_of([want("web-0", size="m5.large"), want("web-1", size="m5.large")],
                           [seen("web-0"), seen("web-1")]),
                  Rules(allow_resize=True, max_resizes_per_cycle=1, maintenance_window=night))
    assert {(d.status, d.rule) for d in held} == {
        (DecisionStatus.MAINTENANCE_WINDOW, "maintenance_window")}
    [d] = decide(diffs_of([want("web-0", size="m5.large")], [seen("web-0")]),
                 Rules(allow_resize=True, max_resizes_per_cycle=0))
    assert (d.status, d.rule) == (DecisionStatus.CAPPED, "resize_cap")


def _conflict(holder: Resource, *, adopt: bool = False) -> Diff:
    desired = DesiredResource(id="assets-0", type=ResourceType.S3, provider="aws",
                              region="us-east-1", adopt=adopt)
    return Diff(type=DiffType.CONFLICT, resource_id="assets-0", resource_type=ResourceType.S3,
                scope=desired.scope, reason="assets-0 is desired, but …",
                cloud_id=holder.cloud_id, desired=desired, observed=holder)


def test_a_conflict_is_adopted_only_when_asked_for_or_ovis_own() -> None:
    theirs = Resource(id="aws/us-east-1/s3/assets-0", cloud_id="assets-0",
                      type=ResourceType.S3, provider="aws", region="us-east-1")
    [d] = decide([_conflict(theirs)])
    assert (d.action, d.status, d.rule) == (Action.NOTIFY, INFO, "name-conflict")
    assert "adopt: true" in d.reason and f"ovi adopt {theirs.id} --as assets-0" in d.reason
    [d] = decide([_conflict(theirs, adopt=True)])
    assert (d.action, d.status, d.rule) == (Action.ADOPT, READY, "adopt")
    granted = ctx(grants={"assets-0": theirs.id})
    assert decide([_conflict(theirs)], context=granted)[0].rule == "adoption-granted"
    made = ctx(provenance={("assets-0", "assets-0"): Provenance.CREATED})
    assert decide([_conflict(theirs)], context=made)[0].action is Action.ADOPT
    # adopt: true never takes over another Ovi owner's resource; only a grant does.
    owned = msgspec.structs.replace(theirs, tags={OWNER_TAG: "team-b"})
    [d] = decide([_conflict(owned, adopt=True)])
    assert d.action is Action.NOTIFY and "from that owner" in d.reason


def test_from_config_uses_the_config_rules() -> None:
    config = parse_config(
        "version: v1\nprovider: aws\nregion: us-east-1\nresources: []\n"
        "rules: {skip_destructive: true}\n", "ovi.yaml",
    )
    maker = DecisionMaker.from_config(config)
    assert maker.rules == config.rules
    [d] = maker.decide(diffs_of([], [seen("web-9")]), ctx())
    assert d.action is Action.NOTIFY
