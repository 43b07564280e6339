"""The fault proxy itself: faults land before or after the emulator, and
``ClientToken`` is honoured the way AWS honours it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.fault_proxy import Fault, FaultProxy, When
from tests.moto_server import reset_moto

AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"


@pytest.fixture
def via_proxy(fault_proxy: FaultProxy, moto_endpoint: str) -> Iterator[Any]:
    reset_moto(moto_endpoint)
    made: list[Any] = []

    def client(service: str, endpoint: str = fault_proxy.endpoint) -> Any:
        c = boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                         aws_access_key_id="testing", aws_secret_access_key="testing",
                         config=Config(retries={"total_max_attempts": 1}))
        made.append(c)
        return c

    yield client
    for c in made:
        c.close()


def _run(ec2: Any, image: str, token: str | None = None) -> str:
    extra = {"ClientToken": token} if token else {}
    reply = ec2.run_instances(ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                              **extra)
    return str(reply["Instances"][0]["InstanceId"])


def _count(ec2: Any) -> int:
    pages = ec2.get_paginator("describe_instances").paginate()
    return sum(len(r["Instances"]) for p in pages for r in p["Reservations"])


def test_a_fault_before_forwarding_has_no_effect_and_one_after_has(
    via_proxy: Any, fault_proxy: FaultProxy, moto_endpoint: str
) -> None:
    ec2 = via_proxy("ec2")
    image = via_proxy("ssm").get_parameter(Name=AL2023)["Parameter"]["Value"]
    fault_proxy.add(Fault("ec2:RunInstances", when=When.BEFORE))
    with pytest.raises(ClientError, match="RequestLimitExceeded"):
        _run(ec2, image)
    assert _count(via_proxy("ec2", moto_endpoint)) == 0
    fault_proxy.add(Fault("ec2:RunInstances", code="InternalError", status=500,
                          when=When.AFTER))
    with pytest.raises(ClientError, match="InternalError"):
        _run(ec2, image)
    assert _count(via_proxy("ec2", moto_endpoint)) == 1  # it happened; the answer was lost
    assert [r.name for r in fault_proxy.calls("ec2:RunInstances")] == ["ec2:RunInstances"] * 2


def test_a_repeated_client_token_gets_the_first_instance_even_when_terminated(
    via_proxy: Any
) -> None:
    ec2 = via_proxy("ec2")
    image = via_proxy("ssm").get_parameter(Name=AL2023)["Parameter"]["Value"]
    first = _run(ec2, image, token="d-abc")
    ec2.terminate_instances(InstanceIds=[first])
    assert _run(ec2, image, token="d-abc") == first
    assert _run(ec2, image, token="d-abc.2") != first
    assert _count(ec2) == 2


def test_a_repeated_client_token_with_other_parameters_is_a_mismatch(via_proxy: Any) -> None:
    ec2 = via_proxy("ec2")
    _run(ec2, "ami-12345678", token="d-moved")
    with pytest.raises(ClientError, match="IdempotentParameterMismatch"):
        _run(ec2, "ami-87654321", token="d-moved")
    assert _count(ec2) == 1


def test_a_held_request_is_answered_when_the_proxy_stops(
    via_proxy: Any, fault_proxy: FaultProxy, moto_endpoint: str
) -> None:
    ec2 = via_proxy("ec2")
    fault_proxy.add(Fault("ec2:DescribeInstances", delay=60))
    done = threading.Event()

    def call() -> None:
        with contextlib.suppress(ClientError):
            ec2.describe_instances()
        done.set()

    threading.Thread(target=call, daemon=True).start()
    fault_proxy.wait_for("ec2:DescribeInstances")
    assert not done.is_set() and fault_proxy.calls("ec2:DescribeInstances") == []  # held
    fault_proxy.stop()
    assert done.wait(10)


def test_s3_operations_are_named_and_matched_per_bucket(
    via_proxy: Any, fault_proxy: FaultProxy
) -> None:
    s3 = via_proxy("s3")
    for name in ("mine", "theirs"):
        s3.create_bucket(Bucket=name)
    fault_proxy.add(Fault("s3:GetBucketTagging", code="AccessDenied", status=403, times=9,
                          match=lambda r: r.path.strip("/") == "theirs"))
    with pytest.raises(ClientError, match="AccessDenied"):
        s3.get_bucket_tagging(Bucket="theirs")
    with pytest.raises(ClientError, match="NoSuchTagSet"):  # moto's own answer
        s3.get_bucket_tagging(Bucket="mine")
    names = {r.name for r in fault_proxy.seen_requests()}
    assert {"s3:CreateBucket", "s3:GetBucketTagging"} <= names
