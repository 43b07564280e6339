"""AWSProvider against a real moto server on loopback (no patched botocore).

Assertions about AWS state are made with boto3, independently of the provider.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import boto3
import msgspec
import pytest
import pytest_asyncio
from aiobotocore.session import get_session

from ovi.model import (
    DECISION_TAG,
    ID_TAG,
    MANAGED_TAG,
    OWNER_TAG,
    DesiredResource,
    FieldChange,
    Resource,
    ResourceType,
    Scope,
    Unreadable,
)
from ovi.providers import AWSProvider, ProviderError
from ovi.providers._aws_ec2 import DEFAULT_AMI_PARAMETER
from tests.fault_proxy import Fault, FaultProxy
from tests.moto_server import reset_moto, set_moto_auth

REGION = "us-east-1"
OTHER_REGION = "eu-west-1"
Boto = Callable[..., Any]  # boto(service, region=REGION) → a boto3 client


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A clean moto and an environment pointing botocore at it, as an operator
    would (no bespoke flags); the user's own AWS config is kept out."""
    reset_moto(moto_endpoint)
    for name, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return moto_endpoint


@pytest.fixture
def boto(aws_env: str) -> Iterator[Boto]:
    """boto3 clients for checking AWS state (one per service and region:
    creating one costs more than most moto calls), closed at the end."""
    clients: dict[tuple[str, str], Any] = {}

    def make(service: str, region: str = REGION) -> Any:
        if (service, region) not in clients:
            clients[service, region] = boto3.client(service, region_name=region)
        return clients[service, region]

    yield make
    for client in clients.values():
        client.close()


@pytest.fixture(scope="session")
def shared_session() -> Any:
    """One aiobotocore session for the tests whose environment stays the
    standard one: a fresh session parses the service models again (~0.2 s)."""
    return get_session()


@pytest_asyncio.fixture
async def aws(aws_env: str, shared_session: Any) -> AsyncIterator[AWSProvider]:
    async with AWSProvider(session=shared_session) as provider:
        yield provider


@pytest.fixture
def calls(shared_session: Any) -> Iterator[list[str]]:
    """Every API call made through the shared session (``ec2:RunInstances``),
    noted by botocore's own event hooks."""
    seen: list[str] = []

    def record(model: Any, **_: Any) -> None:
        seen.append(f"{model.service_model.service_name}:{model.name}")

    shared_session.register("before-call", record, unique_id="ovi-test-calls")
    yield seen
    shared_session.unregister("before-call", unique_id="ovi-test-calls")


def desired(
    rid: str, type_: ResourceType, *, region: str = REGION, size: str | None = None,
    **tags: str,
) -> DesiredResource:
    return DesiredResource(id=rid, type=type_, provider="aws", region=region, size=size,
                           tags=tags)


def scope(type_: ResourceType, region: str = REGION) -> Scope:
    return Scope("aws", region, type_)


async def observed(aws: AWSProvider, where: Scope) -> dict[str, Resource]:
    """What ``observe`` read, by cloud id (asserting that it read everything);
    creation times are checked, then left out of comparisons."""
    found: dict[str, Resource] = {}
    for r in await aws.observe(where):
        assert isinstance(r, Resource), r
        assert r.created_at is not None and r.created_at.tzinfo is not None
        found[r.cloud_id] = msgspec.structs.replace(r, created_at=None)
    return found


def tags_of(items: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in items or ()}


def run_instance(boto: Boto, *, tags: dict[str, str] | None = None,
                 region: str = REGION) -> str:
    params: dict[str, Any] = {"ImageId": "ami-12345678", "MinCount": 1, "MaxCount": 1,
                              "InstanceType": "t3.nano"}
    if tags:
        params["TagSpecifications"] = [{"ResourceType": "instance", "Tags": [
            {"Key": k, "Value": v} for k, v in tags.items()]}]
    return str(boto("ec2", region).run_instances(**params)["Instances"][0]["InstanceId"])


def live_instances(boto: Boto, region: str = REGION) -> list[dict[str, Any]]:
    pages = boto("ec2", region).get_paginator("describe_instances").paginate(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running", "stopped"]}])
    return [i for p in pages for r in p["Reservations"] for i in r["Instances"]]


def create_db(boto: Boto, identifier: str, **tags: str) -> None:
    boto("rds").create_db_instance(
        DBInstanceIdentifier=identifier, Engine="postgres", DBInstanceClass="db.t3.micro",
        AllocatedStorage=20, MasterUsername="someone", ManageMasterUserPassword=True,
        Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
    )


def create_bucket(boto: Boto, name: str, region: str = REGION, **tags: str) -> None:
    s3 = boto("s3", region)
    if region == "us-east-1":
        s3.create_bucket(Bucket=name)
    else:
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
    if tags:
        s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": [
            {"Key": k, "Value": v} for k, v in tags.items()]})


def ovi_tags(rid: str, decision: str, owner: str = "ovi", **declared: str) -> dict[str, str]:
    return {**declared, ID_TAG: rid, MANAGED_TAG: "true", OWNER_TAG: owner,
            DECISION_TAG: decision}


# --- observe -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_observe_ec2_maps_instances_and_leaves_out_terminated(
    aws: AWSProvider, boto: Boto
) -> None:
    managed = run_instance(boto, tags={ID_TAG: "web-0", MANAGED_TAG: "true", "team": "a"})
    plain = run_instance(boto)
    gone = run_instance(boto, tags={ID_TAG: "web-1"})
    boto("ec2").terminate_instances(InstanceIds=[gone])
    run_instance(boto, region=OTHER_REGION)

    found = await observed(aws, scope(ResourceType.EC2))

    assert set(found) == {managed, plain}
    assert found[managed] == Resource(  # identities are the observer's to give
        id="", cloud_id=managed, type=ResourceType.EC2, provider="aws", region=REGION,
        size="t3.nano", status="running", tags={ID_TAG: "web-0", MANAGED_TAG: "true", "team": "a"},
    )
    assert found[plain].id == "" and found[plain].tags == {}


@pytest.mark.asyncio
async def test_observe_ec2_pages_past_100_reservations(aws: AWSProvider, boto: Boto) -> None:
    # moto returns 100 reservations per page: only the paginator sees them all.
    ids = {run_instance(boto) for _ in range(105)}

    found = await aws.observe(scope(ResourceType.EC2))

    assert {r.cloud_id for r in found} == ids
    assert len(found) == 105


@pytest.mark.asyncio
async def test_observe_rds_maps_db_instances_with_their_tags(
    aws: AWSProvider, boto: Boto
) -> None:
    create_db(boto, "orders-0", **{ID_TAG: "orders-0", OWNER_TAG: "ovi"})
    create_db(boto, "legacy")
    create_db(boto, "dropped")
    boto("rds").delete_db_instance(DBInstanceIdentifier="dropped", SkipFinalSnapshot=True)

    found = await observed(aws, scope(ResourceType.RDS))

    assert set(found) == {"orders-0", "legacy"}
    assert found["orders-0"] == Resource(
        id="", cloud_id="orders-0", type=ResourceType.RDS, provider="aws",
        region=REGION, size="db.t3.micro", status="available",
        tags={ID_TAG: "orders-0", OWNER_TAG: "ovi"},
    )
    assert found["legacy"].tags == {} and found["legacy"].id == ""
    assert await aws.observe(scope(ResourceType.RDS, OTHER_REGION)) == []


@pytest.mark.asyncio
async def test_observe_s3_keeps_the_scope_region_and_reads_tags(
    aws: AWSProvider, boto: Boto
) -> None:
    create_bucket(boto, "logs-0", **{ID_TAG: "logs-0", MANAGED_TAG: "true"})
    create_bucket(boto, "untagged")
    create_bucket(boto, "far-away", OTHER_REGION, team="eu")

    here = await observed(aws, scope(ResourceType.S3))
    there = list((await observed(aws, scope(ResourceType.S3, OTHER_REGION))).values())

    assert set(here) == {"logs-0", "untagged"}
    assert here["logs-0"] == Resource(
        id="", cloud_id="logs-0", type=ResourceType.S3, provider="aws", region=REGION,
        size=None, status="available", tags={ID_TAG: "logs-0", MANAGED_TAG: "true"},
    )
    assert here["untagged"].tags == {}
    assert [(r.cloud_id, r.region, r.tags) for r in there] == [
        ("far-away", OTHER_REGION, {"team": "eu"})
    ]


@pytest.mark.asyncio
async def test_observe_s3_pages_through_every_bucket(
    boto: Boto, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [f"bucket-{i}" for i in range(5)]
    for name in names:
        create_bucket(boto, name)
    # As AWS for an account allowed more than 10,000 buckets: paged requests only.
    fault_proxy.paginated_list_buckets_only = True
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.endpoint)
    async with AWSProvider(s3_page_size=2) as aws:
        found = await observed(aws, scope(ResourceType.S3))

    assert sorted(found) == names
    pages = fault_proxy.calls("s3:ListBuckets")
    assert [r.param("max-buckets") for r in pages] == ["2", "2", "2"]


@pytest.mark.asyncio
async def test_observe_s3_reports_an_unreadable_bucket_alone(
    boto: Boto, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_bucket(boto, "mine", **{ID_TAG: "mine"})
    create_bucket(boto, "theirs")
    denied = fault_proxy.add(Fault("s3:GetBucketTagging", code="AccessDenied", status=403,
                                   times=100, match=lambda r: r.path.strip("/") == "theirs"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.endpoint)
    async with AWSProvider() as aws:
        found = sorted(await aws.observe(scope(ResourceType.S3)), key=lambda r: r.cloud_id)
        (mine, theirs) = found
        assert isinstance(mine, Resource) and mine.tags == {ID_TAG: "mine"}
        assert isinstance(theirs, Unreadable) and "AccessDenied" in theirs.error
        # A read that may pass (throttled) is no verdict on the bucket: the scope fails.
        denied.times = 0
        fault_proxy.add(Fault("s3:GetBucketTagging", code="SlowDown", times=100,
                              match=lambda r: r.path.strip("/") == "theirs"))
        with pytest.raises(ProviderError) as caught:
            await aws.observe(scope(ResourceType.S3))
    assert caught.value.retryable


# --- create ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_create_ec2_tags_at_launch_with_the_default_ami(
    aws: AWSProvider, boto: Boto, calls: list[str]
) -> None:
    created = await aws.create(desired("web-0", ResourceType.EC2, team="a"),
                               decision_id="d-1", owner="ovi")

    # Tagged in RunInstances itself: no CreateTags, no moment without tags.
    # Then a look at what the token answered with (a repeated token answers
    # with the first call's instance, dead or alive).
    assert calls == ["ec2:DescribeInstances", "ssm:GetParameter", "ec2:RunInstances",
                     "ec2:DescribeInstances"]

    [instance] = live_instances(boto)
    expected = ovi_tags("web-0", "d-1", team="a")
    assert tags_of(instance["Tags"]) == expected
    assert instance["InstanceType"] == "t3.micro"
    ami = boto("ssm").get_parameter(Name=DEFAULT_AMI_PARAMETER)["Parameter"]["Value"]
    assert instance["ImageId"] == ami
    assert (created.id, created.cloud_id, created.size) == ("", instance["InstanceId"],
                                                           "t3.micro")
    assert created.tags == expected
    # The AMI is looked up once per region.
    await aws.create(desired("web-1", ResourceType.EC2), decision_id="d-2", owner="ovi")
    assert calls.count("ssm:GetParameter") == 1


@pytest.mark.asyncio
async def test_create_ec2_retried_with_the_same_decision_does_not_duplicate(
    aws: AWSProvider, boto: Boto
) -> None:
    want = msgspec.structs.replace(desired("web-0", ResourceType.EC2, size="t3.small"),
                                   image="ami-12345678")
    first = await aws.create(want, decision_id="d-1", owner="ovi")
    again = await aws.create(want, decision_id="d-1", owner="ovi")

    assert again.cloud_id == first.cloud_id
    [instance] = live_instances(boto)
    assert (instance["ImageId"], instance["InstanceType"]) == ("ami-12345678", "t3.small")


@pytest.mark.asyncio
async def test_create_rds_with_tags_and_a_managed_password(
    aws: AWSProvider, boto: Boto, calls: list[str]
) -> None:
    created = await aws.create(desired("orders-0", ResourceType.RDS, team="b"),
                               decision_id="d-2", owner="shop")

    assert calls == ["rds:CreateDBInstance"]  # tags included, no AddTagsToResource

    [db] = boto("rds").describe_db_instances()["DBInstances"]
    assert db["DBInstanceIdentifier"] == "orders-0"
    assert tags_of(db["TagList"]) == ovi_tags("orders-0", "d-2", "shop", team="b")
    assert (db["Engine"], db["DBInstanceClass"], db["MasterUsername"]) == (
        "postgres", "db.t3.micro", "ovi_admin")
    assert "MasterUserSecret" in db  # AWS keeps the password; Ovi never sees one
    assert (created.id, created.cloud_id, created.status) == ("", "orders-0", "available")


@pytest.mark.asyncio
async def test_create_rds_retry_returns_it_and_a_foreign_one_is_refused(
    aws: AWSProvider, boto: Boto
) -> None:
    want = desired("orders-0", ResourceType.RDS)
    first = await aws.create(want, decision_id="d-2", owner="ovi")
    again = await aws.create(want, decision_id="d-2", owner="ovi")
    assert again.cloud_id == first.cloud_id == "orders-0"
    assert len(boto("rds").describe_db_instances()["DBInstances"]) == 1

    with pytest.raises(ProviderError, match="already exists") as caught:
        await aws.create(want, decision_id="d-other", owner="ovi")
    assert not caught.value.retryable
    assert str(caught.value).startswith("rds:CreateDBInstance orders-0 in us-east-1")


@pytest.mark.asyncio
async def test_create_rds_makes_the_identifier_valid(aws: AWSProvider, boto: Boto) -> None:
    created = await aws.create(desired("9db--x-0", ResourceType.RDS), decision_id="d-3",
                               owner="ovi")
    assert created.cloud_id == "ovi-9db-x-0" and created.tags[ID_TAG] == "9db--x-0"
    [db] = boto("rds").describe_db_instances()["DBInstances"]
    assert tags_of(db["TagList"])[ID_TAG] == "9db--x-0"


@pytest.mark.asyncio
@pytest.mark.parametrize("region", [REGION, OTHER_REGION])
async def test_create_s3_in_its_region_and_tagged(
    aws: AWSProvider, boto: Boto, region: str
) -> None:
    created = await aws.create(desired("assets-0", ResourceType.S3, region=region, team="c"),
                               decision_id="d-4", owner="ovi")

    s3 = boto("s3", region)
    location = s3.get_bucket_location(Bucket="assets-0")["LocationConstraint"] or "us-east-1"
    assert location == region
    tags = tags_of(s3.get_bucket_tagging(Bucket="assets-0")["TagSet"])
    assert tags == ovi_tags("assets-0", "d-4", team="c") == created.tags
    assert (created.cloud_id, created.region) == ("assets-0", region)


@pytest.mark.asyncio
async def test_create_s3_refuses_an_invalid_bucket_name(aws: AWSProvider, boto: Boto) -> None:
    with pytest.raises(ProviderError, match=r"'xn--web-0' cannot be a bucket name") as caught:
        await aws.create(desired("xn--web-0", ResourceType.S3), decision_id="d-5", owner="ovi")
    assert not caught.value.retryable
    assert boto("s3").list_buckets()["Buckets"] == []


@pytest.mark.asyncio
async def test_create_s3_never_takes_over_a_bucket_this_decision_did_not_make(
    aws: AWSProvider, boto: Boto
) -> None:
    create_bucket(boto, "half-made")  # untagged: someone's, for all Ovi can tell
    create_bucket(boto, "theirs", team="x")
    create_bucket(boto, "retried", **{DECISION_TAG: "d-8"})  # our own create, tagged

    for name, decision in (("half-made", "d-6"), ("theirs", "d-7")):
        with pytest.raises(ProviderError, match="this decision did not create it") as caught:
            await aws.create(desired(name, ResourceType.S3), decision_id=decision, owner="ovi")
        assert not caught.value.retryable and "adopt: true" in str(caught.value)
    retried = await aws.create(desired("retried", ResourceType.S3), decision_id="d-8",
                               owner="ovi")

    assert retried.tags == ovi_tags("retried", "d-8")
    assert tags_of(boto("s3").get_bucket_tagging(Bucket="theirs")["TagSet"]) == {"team": "x"}
    with pytest.raises(Exception, match="NoSuchTagSet"):
        boto("s3").get_bucket_tagging(Bucket="half-made")


@pytest.mark.asyncio
@pytest.mark.parametrize("type_", list(ResourceType))
async def test_adopt_tags_an_existing_resource_and_keeps_its_tags(
    aws: AWSProvider, boto: Boto, type_: ResourceType
) -> None:
    if type_ is ResourceType.EC2:
        cloud_id = run_instance(boto, tags={"Name": "hand-made"})
    elif type_ is ResourceType.RDS:
        create_db(boto, "legacy-db", Name="hand-made")
        cloud_id = "legacy-db"
    else:
        create_bucket(boto, "legacy-logs", Name="hand-made")
        cloud_id = "legacy-logs"
    (current,) = (await observed(aws, scope(type_))).values()
    assert current.cloud_id == cloud_id

    adopted = await aws.adopt(desired("thing-0", type_, team="a"), current, decision_id="d-9",
                              owner="shop")

    assert adopted.tags == {"Name": "hand-made", **ovi_tags("thing-0", "d-9", "shop", team="a")}
    (seen,) = (await observed(aws, scope(type_))).values()
    assert seen.tags == adopted.tags


@pytest.mark.asyncio
async def test_adopt_refuses_a_resource_whose_owner_changed_since_it_was_observed(
    aws: AWSProvider, boto: Boto
) -> None:
    create_bucket(boto, "contested")
    (current,) = (await observed(aws, scope(ResourceType.S3))).values()
    boto("s3").put_bucket_tagging(Bucket="contested", Tagging={"TagSet": [
        {"Key": OWNER_TAG, "Value": "team-b"}]})

    with pytest.raises(ProviderError, match="ovi:owner tag changed") as caught:
        await aws.adopt(desired("contested", ResourceType.S3), current, decision_id="d-1",
                        owner="ovi")

    assert caught.value.code == "ChangedSinceObserved" and not caught.value.retryable
    assert tags_of(boto("s3").get_bucket_tagging(Bucket="contested")["TagSet"]) == {
        OWNER_TAG: "team-b"}


@pytest.mark.asyncio
async def test_natural_ids_are_the_names_aws_gives_what_ovi_creates(aws: AWSProvider) -> None:
    assert aws.natural_id(desired("assets-0", ResourceType.S3)) == "assets-0"
    assert aws.natural_id(desired("9db--x-0", ResourceType.RDS)) == "ovi-9db-x-0"
    assert aws.natural_id(desired("web-0", ResourceType.EC2)) is None


# --- update ------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("type_", list(ResourceType))
async def test_update_sets_declared_tags_and_keeps_undeclared_ones(
    aws: AWSProvider, boto: Boto, type_: ResourceType
) -> None:
    current = await aws.create(desired("thing-0", type_, team="old"), decision_id="d-1",
                               owner="ovi")
    extra = [{"Key": "cost-centre", "Value": "42"}]
    if type_ is ResourceType.EC2:
        boto("ec2").create_tags(Resources=[current.cloud_id], Tags=extra)
    elif type_ is ResourceType.RDS:
        arn = boto("rds").describe_db_instances()["DBInstances"][0]["DBInstanceArn"]
        boto("rds").add_tags_to_resource(ResourceName=arn, Tags=extra)
    else:
        tag_set = [*boto("s3").get_bucket_tagging(Bucket="thing-0")["TagSet"], *extra]
        boto("s3").put_bucket_tagging(Bucket="thing-0", Tagging={"TagSet": tag_set})

    updated = await aws.update(
        desired("thing-0", type_, team="new", env="prod"), current,
        [FieldChange("tags.env", "prod", None), FieldChange("tags.team", "new", "old")],
    )

    if type_ is ResourceType.EC2:
        tags = tags_of(live_instances(boto)[0]["Tags"])
    elif type_ is ResourceType.RDS:
        tags = tags_of(boto("rds").describe_db_instances()["DBInstances"][0]["TagList"])
    else:
        tags = tags_of(boto("s3").get_bucket_tagging(Bucket="thing-0")["TagSet"])
    assert tags == {**ovi_tags("thing-0", "d-1"), "team": "new", "env": "prod",
                    "cost-centre": "42"}
    assert updated.tags == tags


@pytest.mark.asyncio
@pytest.mark.parametrize("was_running", [True, False])
async def test_resize_ec2_stops_modifies_and_starts_when_allowed(
    aws_env: str, boto: Boto, shared_session: Any, calls: list[str], was_running: bool
) -> None:
    async with AWSProvider(allow_resize=True, session=shared_session) as aws:
        current = await aws.create(desired("web-0", ResourceType.EC2), decision_id="d-1",
                                   owner="ovi")
        if not was_running:
            boto("ec2").stop_instances(InstanceIds=[current.cloud_id])
            # as the decision's observation shows it: that decides the restart
            current = msgspec.structs.replace(current, status="stopped")
        calls.clear()
        updated = await aws.update(desired("web-0", ResourceType.EC2, size="t3.large"),
                                   current, [FieldChange("size", "t3.large", "t3.micro")])

    [instance] = live_instances(boto)
    assert instance["InstanceType"] == "t3.large" == updated.size
    # moto would change the type of a running instance; AWS would not.
    mutations = [c for c in calls if not c.startswith("ec2:Describe")]
    if was_running:
        assert mutations == ["ec2:StopInstances", "ec2:ModifyInstanceAttribute",
                             "ec2:StartInstances"]
        assert calls.index("ec2:StopInstances") < calls.index("ec2:DescribeInstances", 1)
        assert instance["State"]["Name"] in ("pending", "running")
    else:  # a stopped instance stays stopped
        assert mutations == ["ec2:ModifyInstanceAttribute"]
        assert instance["State"]["Name"] == "stopped"


@pytest.mark.asyncio
async def test_resize_rds_modifies_the_class_when_allowed(
    aws_env: str, boto: Boto, shared_session: Any
) -> None:
    async with AWSProvider(allow_resize=True, session=shared_session) as aws:
        current = await aws.create(desired("orders-0", ResourceType.RDS), decision_id="d-1",
                                   owner="ovi")
        updated = await aws.update(desired("orders-0", ResourceType.RDS, size="db.t3.small"),
                                   current, [FieldChange("size", "db.t3.small", "db.t3.micro")])

    [db] = boto("rds").describe_db_instances()["DBInstances"]
    assert db["DBInstanceClass"] == "db.t3.small" == updated.size


@pytest.mark.asyncio
@pytest.mark.parametrize("type_", [ResourceType.EC2, ResourceType.RDS])
async def test_resize_is_refused_when_disabled(
    aws: AWSProvider, boto: Boto, type_: ResourceType
) -> None:
    current = await aws.create(desired("x-0", type_), decision_id="d-1", owner="ovi")
    size = "t3.large" if type_ is ResourceType.EC2 else "db.t3.large"

    with pytest.raises(ProviderError, match=r"resizing .* is disabled") as caught:
        await aws.update(desired("x-0", type_, size=size, team="a"), current,
                         [FieldChange("size", size, current.size),
                          FieldChange("tags.team", "a", None)])

    assert not caught.value.retryable
    found = await observed(aws, scope(type_))
    assert [(r.size, r.tags.get("team")) for r in found.values()] == [(current.size, None)]


# --- delete ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_delete_ec2_terminates(aws: AWSProvider, boto: Boto) -> None:
    current = await aws.create(desired("web-0", ResourceType.EC2), decision_id="d-1",
                               owner="ovi")
    await aws.delete(current)
    await aws.delete(current)  # already gone: still a success

    [reservation] = boto("ec2").describe_instances(InstanceIds=[current.cloud_id])[
        "Reservations"]
    assert reservation["Instances"][0]["State"]["Name"] in ("shutting-down", "terminated")
    assert await aws.observe(scope(ResourceType.EC2)) == []


@pytest.mark.asyncio
@pytest.mark.parametrize("final_snapshot", [True, False])
async def test_delete_rds_with_a_final_snapshot_unless_disabled(
    aws_env: str, boto: Boto, shared_session: Any, final_snapshot: bool
) -> None:
    async with AWSProvider(final_snapshot=final_snapshot, session=shared_session) as aws:
        current = await aws.create(desired("orders-0", ResourceType.RDS), decision_id="d-1",
                                   owner="ovi")
        await aws.delete(current)
        assert await aws.observe(scope(ResourceType.RDS)) == []

    snapshots = boto("rds").describe_db_snapshots()["DBSnapshots"]
    if final_snapshot:
        [snapshot] = snapshots
        assert snapshot["DBSnapshotIdentifier"].startswith("orders-0-final-")
        assert snapshot["DBInstanceIdentifier"] == "orders-0"
    else:
        assert snapshots == []


@pytest.mark.asyncio
async def test_delete_s3_only_when_empty(aws: AWSProvider, boto: Boto) -> None:
    empty = await aws.create(desired("empty-0", ResourceType.S3), decision_id="d-1",
                             owner="ovi")
    full = await aws.create(desired("full-0", ResourceType.S3), decision_id="d-2",
                            owner="ovi")
    boto("s3").put_object(Bucket="full-0", Key="precious.txt", Body=b"keep me")

    await aws.delete(empty)
    with pytest.raises(ProviderError) as caught:
        await aws.delete(full)

    assert str(caught.value) == (
        "s3:DeleteBucket full-0 in us-east-1: bucket full-0 is not empty; Ovi never deletes "
        "objects (empty it by hand and Ovi will delete it)")
    assert not caught.value.retryable
    assert [b["Name"] for b in boto("s3").list_buckets()["Buckets"]] == ["full-0"]
    assert boto("s3").get_object(Bucket="full-0", Key="precious.txt")["Body"].read() == (
        b"keep me")


@pytest.mark.asyncio
@pytest.mark.parametrize("change", [{"ovi:blessed": "true"}, {"ovi:owner": "team-b"}])
async def test_a_delete_refuses_a_resource_retagged_since_it_was_observed(
    aws: AWSProvider, boto: Boto, change: dict[str, str]
) -> None:
    instance = await aws.create(desired("web-0", ResourceType.EC2), decision_id="d-1",
                                owner="ovi")
    bucket = await aws.create(desired("logs-0", ResourceType.S3), decision_id="d-2",
                              owner="ovi")
    # Between the observation a delete was decided (and approved) on and the
    # call, a person blesses the resource, or another owner takes it.
    boto("ec2").create_tags(Resources=[instance.cloud_id],
                            Tags=[{"Key": k, "Value": v} for k, v in change.items()])
    boto("s3").put_bucket_tagging(Bucket="logs-0", Tagging={"TagSet": [
        {"Key": k, "Value": v} for k, v in {**bucket.tags, **change}.items()]})
    for current in (instance, bucket):
        with pytest.raises(ProviderError) as caught:
            await aws.delete(current)
        assert caught.value.code == "ChangedSinceObserved" and not caught.value.retryable
        assert next(iter(change)) in str(caught.value)
    assert [i["InstanceId"] for i in live_instances(boto)] == [instance.cloud_id]
    assert [b["Name"] for b in boto("s3").list_buckets()["Buckets"]] == ["logs-0"]


# --- errors ------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.asyncio
async def test_a_dead_endpoint_is_a_retryable_error_within_seconds(
    aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    async with AWSProvider() as aws:
        with pytest.raises(ProviderError) as caught:
            await aws.observe(scope(ResourceType.EC2))
    assert time.monotonic() - started < 8
    assert caught.value.retryable
    assert str(caught.value).startswith("ec2:DescribeInstances in us-east-1: cannot reach AWS")
    cause = caught.value.__cause__  # chained from the SDK's own error
    assert type(cause).__module__ == "botocore.exceptions"


@pytest.mark.asyncio
async def test_a_validation_error_is_permanent_and_names_the_call(
    aws: AWSProvider, boto: Boto
) -> None:
    want = msgspec.structs.replace(desired("orders-0", ResourceType.RDS), engine="nosuchdb")
    with pytest.raises(ProviderError) as caught:
        await aws.create(want, decision_id="d-1", owner="ovi")

    error = caught.value
    assert str(error).startswith(
        "rds:CreateDBInstance orders-0 in us-east-1: InvalidParameterValue: ")
    assert (error.retryable, error.operation, error.code) == (
        False, "rds:CreateDBInstance", "InvalidParameterValue")


@pytest.mark.asyncio
async def test_access_denied_is_permanent_and_names_the_call(
    aws_env: str, boto: Boto, monkeypatch: pytest.MonkeyPatch
) -> None:
    iam = boto("iam")
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=msgspec.json.encode({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["ec2:Describe*"], "Resource": "*"}],
    }).decode())
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    want = msgspec.structs.replace(desired("web-0", ResourceType.EC2), image="ami-12345678")
    set_moto_auth(aws_env, 0)
    try:
        async with AWSProvider() as aws:
            assert await aws.observe(scope(ResourceType.EC2)) == []
            with pytest.raises(ProviderError) as ec2_denied:
                await aws.create(want, decision_id="d-1", owner="ovi")
            with pytest.raises(ProviderError) as s3_denied:
                await aws.observe(scope(ResourceType.S3))
    finally:
        set_moto_auth(aws_env, float("inf"))

    assert str(ec2_denied.value).startswith(
        "ec2:RunInstances web-0 in us-east-1: AccessDenied: User: "
        "arn:aws:iam::123456789012:user/reader is not authorized to perform: ec2:RunInstances")
    assert not ec2_denied.value.retryable
    assert str(s3_denied.value).startswith("s3:ListBuckets in us-east-1: AccessDenied")
    assert not s3_denied.value.retryable
    assert live_instances(boto) == []
