"""The AWS provider's pure parts: error translation, names, configuration.

No server needed: botocore's exceptions are built as botocore builds them.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
    WaiterError,
)

from ovi._exceptions import OviError
from ovi.config import parse_config
from ovi.model import DesiredResource, FieldChange, Resource, ResourceType, Scope
from ovi.providers import AWSProvider, Provider, ProviderError
from ovi.providers._aws_common import retry_settings, translate_error
from ovi.providers._aws_rds import db_identifier
from ovi.providers._aws_s3 import bucket_name_problem


def client_error(code: str, status: int, message: str = "nope") -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": message},
                     "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "RunInstances")


@pytest.mark.parametrize(
    ("code", "status", "retryable"),
    [
        ("Throttling", 400, True),
        ("ThrottlingException", 400, True),
        ("RequestLimitExceeded", 503, True),
        ("SlowDown", 503, True),
        ("TooManyRequestsException", 429, True),
        ("InternalError", 500, True),
        ("ServiceUnavailable", 503, True),
        ("SomethingNew", 502, True),
        ("IncorrectInstanceState", 400, True),
        ("AccessDenied", 403, False),
        ("UnauthorizedOperation", 403, False),
        ("AuthFailure", 401, False),
        ("InvalidClientTokenId", 403, False),
        ("InvalidParameterValue", 400, False),
        ("ValidationError", 400, False),
    ],
)
def test_client_errors_are_classified(code: str, status: int, retryable: bool) -> None:
    error = translate_error(client_error(code, status), "ec2:RunInstances", "web-0 in us-east-1")

    assert str(error) == f"ec2:RunInstances web-0 in us-east-1: {code}: nope"
    assert (error.retryable, error.operation, error.code) == (
        retryable, "ec2:RunInstances", code)


@pytest.mark.parametrize(
    ("exc", "retryable", "says"),
    [
        (EndpointConnectionError(endpoint_url="http://x"), True, "cannot reach AWS"),
        (ConnectTimeoutError(endpoint_url="http://x"), True, "cannot reach AWS"),
        (ReadTimeoutError(endpoint_url="http://x"), True, "no answer from AWS"),
        (ConnectionResetError("reset by peer"), True, "cannot reach AWS"),
        (NoCredentialsError(), False, "no usable AWS credentials"),
        (ParamValidationError(report="bad MinCount"), False, "bad MinCount"),
        (WaiterError(name="InstanceStopped", reason="Max attempts exceeded",
                     last_response={}), True, "Max attempts exceeded"),
        (WaiterError(name="InstanceStopped", reason="Waiter encountered a terminal failure "
                     "state", last_response={}), False, "terminal failure"),
    ],
)
def test_sdk_and_network_errors_are_classified(
    exc: Exception, retryable: bool, says: str
) -> None:
    error = translate_error(exc, "ec2:DescribeInstances", "in us-east-1")

    assert str(error).startswith("ec2:DescribeInstances in us-east-1: ")
    assert says in str(error)
    assert error.retryable is retryable


def test_provider_error_is_an_ovi_error_and_pickles() -> None:
    error = ProviderError("ec2:RunInstances web-0: Throttling", retryable=True,
                          operation="ec2:RunInstances", code="Throttling")
    copy = pickle.loads(pickle.dumps(error))

    assert isinstance(error, OviError)
    assert (str(copy), copy.retryable, copy.operation, copy.code) == (
        str(error), True, "ec2:RunInstances", "Throttling")


@pytest.mark.parametrize(
    ("resource_id", "identifier"),
    [
        ("orders-0", "orders-0"),
        ("rds-1-0", "rds-1-0"),
        ("a--b-0", "a-b-0"),
        ("9lives-0", "ovi-9lives-0"),
        ("Big_Name.0", "big-name-0"),
        ("x" * 70, "x" * 63),
        ("a" * 62 + "-b", "a" * 62),
    ],
)
def test_db_identifiers_are_made_valid(resource_id: str, identifier: str) -> None:
    assert db_identifier(resource_id) == identifier


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("assets-0", True),
        ("s3-0-0", True),
        ("a.b-c", True),
        ("ab", False),
        ("x" * 64, False),
        ("Upper-0", False),
        ("-lead", False),
        ("a..b", False),
        ("192.168.1.1", False),
        ("xn--punycode", False),
        ("name-s3alias", False),
    ],
)
def test_bucket_names_are_checked(name: str, valid: bool) -> None:
    assert (bucket_name_problem(name) is None) is valid


def test_from_config_takes_the_owner_and_rules() -> None:
    config = parse_config(
        "version: v1\nprovider: aws\nregion: us-east-1\nowner: shop\nresources: []\n"
        "rules: {allow_resize: true, final_snapshot: false}\n",
        "ovi.yaml",
    )
    provider: Provider = AWSProvider.from_config(config)  # mypy checks the protocol
    assert isinstance(provider, AWSProvider)

    assert (provider.name, provider.owner, provider.allow_resize, provider.final_snapshot) == (
        "aws", "shop", True, False)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("change", "says"),
    [
        (FieldChange("region", "eu-west-1", "us-east-1"), "region cannot change in place"),
        (FieldChange("size", "t3.large", "t3.micro"), "resizing t3.micro → t3.large is disabled"),
    ],
)
async def test_update_refuses_before_calling_aws(change: FieldChange, says: str) -> None:
    current = Resource(id="web-0", cloud_id="i-1", type=ResourceType.EC2, provider="aws",
                       region="us-east-1", size="t3.micro")
    want = DesiredResource(id="web-0", type=ResourceType.EC2, provider="aws",
                           region="eu-west-1", size="t3.large")
    async with AWSProvider() as provider:
        with pytest.raises(ProviderError, match=says) as caught:
            await provider.update(want, current, [change])
    assert not caught.value.retryable
    assert str(caught.value).startswith("update web-0 (i-1) in us-east-1: ")


@pytest.mark.asyncio
async def test_a_malformed_endpoint_is_a_permanent_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "not a url")
    async with AWSProvider() as provider:
        with pytest.raises(ProviderError, match="Invalid endpoint: not a url") as caught:
            await provider.observe(Scope("aws", "us-east-1", ResourceType.S3))
    assert not caught.value.retryable


def test_retries_follow_the_operators_settings(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    for name in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    profile = tmp_path / "aws-config"
    profile.write_text("[default]\nretry_mode = standard\nmax_attempts = 5\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert retry_settings(get_session()) == {"mode": "adaptive", "total_max_attempts": 3}
    monkeypatch.setenv("AWS_CONFIG_FILE", str(profile))
    assert retry_settings(get_session()) == {"mode": "standard", "total_max_attempts": 5}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("AWS_RETRY_MODE", "legacy")
    assert retry_settings(get_session()) == {"mode": "legacy", "total_max_attempts": 2}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "0")
    with pytest.raises(ProviderError, match="expected a whole number ≥ 1, got '0'"):
        retry_settings(get_session())
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    monkeypatch.delenv("AWS_MAX_ATTEMPTS")
    # A missing profile is reported by the first call, as before.
    assert retry_settings(get_session())["total_max_attempts"] == 3
