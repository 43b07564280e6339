"""What the AWS resource modules share: the call boundary (lazily created
aiobotocore clients, every botocore exception translated into
:class:`ProviderError`) and tag helpers.

Everything that reaches the network goes through :class:`AWSCalls`, so no
botocore exception escapes the provider and every error names the API call
(``ec2:RunInstances``), the resource and the region.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from typing import Any

import anyio
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    SSLError,
    WaiterError,
)
from botocore.exceptions import ConnectionError as AWSConnectionError

from ovi.model import DECISION_TAG, ID_TAG, MANAGED_TAG, OWNER_TAG, DesiredResource, Resource
from ovi.providers.base import ADOPT_GUARD, ProviderError, check_unchanged

__all__ = [
    "AWSCalls",
    "Page",
    "check_adoptable",
    "creation_tags",
    "label",
    "retry_settings",
    "tag_dict",
    "tag_list",
    "translate_error",
    "translated",
]

Page = dict[str, Any]  # one parsed AWS response: shapes are the SDK's, not ours

# Codes AWS uses for "slow down" across services; botocore's adaptive mode
# already retried these, so reaching us means the executor should back off.
THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "RequestThrottled", "RequestLimitExceeded", "SlowDown", "TooManyRequestsException",
    "ProvisionedThroughputExceededException", "BandwidthLimitExceeded",
    "EC2ThrottledException", "PriorRequestNotComplete",
})
# Transient server-side or state-transition failures: worth another try later.
TRANSIENT_CODES = frozenset({
    "InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable",
    "RequestTimeout", "RequestTimeoutException", "OperationAborted",
    "IncorrectInstanceState", "InvalidDBInstanceState", "IDPCommunicationError",
})

# A dead endpoint must fail in seconds: botocore's default 60 s timeouts with
# retries would stall a whole reconcile cycle for minutes.
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 15.0
# Three calls at most, backing off up to 1 s then 2 s; the executor's own
# backoff takes over from there.
MAX_ATTEMPTS = 3
# Waiting for an EC2 instance to stop: at most 5 minutes.
WAIT_DELAY = 5
WAIT_ATTEMPTS = 60


def translate_error(exc: Exception, operation: str, where: str) -> ProviderError:
    """The :class:`ProviderError` for ``exc`` raised by ``operation``
    (``ec2:RunInstances``) about ``where`` (``web-0 in us-east-1``)."""
    prefix = f"{operation} {where}"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        message = str(error.get("Message") or "").strip()
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        retryable = (
            code in THROTTLING_CODES or code in TRANSIENT_CODES or status >= 500 or status == 429
        )
        text = f"{prefix}: {code}: {message}" if message else f"{prefix}: {code}"
        return ProviderError(text, retryable=retryable, operation=operation, code=code)
    if isinstance(exc, WaiterError):
        # Out of patience, the resource may still get there; in a terminal
        # state (an instance terminated while we waited for it to stop) it won't.
        terminal = "terminal failure" in str(exc.kwargs.get("reason", ""))
        return ProviderError(f"{prefix}: {exc}", retryable=not terminal, operation=operation,
                             code="WaiterError")
    if isinstance(exc, SSLError):  # a certificate problem does not fix itself
        return ProviderError(f"{prefix}: TLS failure: {exc}", operation=operation,
                             code=type(exc).__name__)
    if isinstance(exc, AWSConnectionError):  # refused, connect timeout, proxy, closed
        return ProviderError(f"{prefix}: cannot reach AWS: {exc}", retryable=True,
                             operation=operation, code=type(exc).__name__)
    if isinstance(exc, HTTPClientError):  # read timeout and other mid-request failures
        return ProviderError(f"{prefix}: no answer from AWS: {exc}", retryable=True,
                             operation=operation, code=type(exc).__name__)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return ProviderError(
            f"{prefix}: no usable AWS credentials ({exc}); set AWS_PROFILE or the "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment variables",
            operation=operation, code=type(exc).__name__,
        )
    if isinstance(exc, BotoCoreError):
        return ProviderError(f"{prefix}: {exc}", operation=operation, code=type(exc).__name__)
    if isinstance(exc, ValueError):  # botocore's word for a malformed AWS_ENDPOINT_URL
        return ProviderError(f"{prefix}: {exc}", operation=operation, code="InvalidConfiguration")
    # Below botocore (aiobotocore wraps nearly all of it): the socket itself.
    return ProviderError(f"{prefix}: cannot reach AWS: {type(exc).__name__}: {exc}",
                         retryable=True, operation=operation, code=type(exc).__name__)


# What translate_error accepts; anything else (bugs, cancellation) propagates.
_TRANSLATED: tuple[type[Exception], ...] = (ClientError, BotoCoreError, OSError)


@contextmanager
def translated(
    operation: str, where: str, *, also: tuple[type[Exception], ...] = ()
) -> Iterator[None]:
    """Re-raise SDK and network exceptions of the block (and ``also``) as
    :class:`ProviderError`."""
    try:
        yield
    except (*_TRANSLATED, *also) as exc:
        raise translate_error(exc, operation, where) from exc


def retry_settings(session: Any) -> dict[str, Any]:
    """Adaptive retries, :data:`MAX_ATTEMPTS` calls in all, unless the operator
    chose otherwise where botocore looks (``AWS_RETRY_MODE`` and
    ``AWS_MAX_ATTEMPTS``, or ``retry_mode`` and ``max_attempts`` in the
    profile): a retries setting in the client's config would override theirs.

    :raises ProviderError: if the chosen number of attempts is not a whole number ≥ 1.
    """
    try:
        scoped = session.get_scoped_config()
    except ProfileNotFound:
        scoped = {}  # the first call reports it, as without this lookup
    mode = os.environ.get("AWS_RETRY_MODE") or scoped.get("retry_mode") or "adaptive"
    chosen = os.environ.get("AWS_MAX_ATTEMPTS") or scoped.get("max_attempts")
    attempts = MAX_ATTEMPTS
    if chosen is not None:
        try:
            attempts = int(chosen)
        except ValueError:
            attempts = 0
        if attempts < 1:
            raise ProviderError(f"AWS_MAX_ATTEMPTS (or max_attempts in the AWS profile):"
                                f" expected a whole number ≥ 1, got {chosen!r}")
    # total_max_attempts counts the first call, like AWS_MAX_ATTEMPTS; the
    # config's older max_attempts counts retries only.
    return {"mode": mode, "total_max_attempts": attempts}


class AWSCalls:
    """aiobotocore clients per (service, region), created on first use and
    closed by :meth:`aclose`, plus translated call helpers.

    The environment is read exactly as botocore reads it (``AWS_ENDPOINT_URL``,
    ``AWS_PROFILE``, the credential chain); only the region is passed, per
    client.
    """

    def __init__(self, session: Any = None) -> None:
        self._session: Any = session if session is not None else get_session()
        self._config = AioConfig(
            retries=retry_settings(self._session),
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
        )
        self._clients: dict[tuple[str, str], Any] = {}
        self._stack = AsyncExitStack()
        self._lock = anyio.Lock()

    async def client(self, service: str, region: str) -> Any:
        """The client for ``service`` in ``region`` (created once, then shared)."""
        key = (service, region)
        found = self._clients.get(key)
        if found is not None:
            return found
        async with self._lock:
            found = self._clients.get(key)
            if found is None:
                # A malformed endpoint or region in the environment shows here.
                with translated(f"{service}:CreateClient", f"in {region}", also=(ValueError,)):
                    found = await self._stack.enter_async_context(
                        self._session.create_client(service, region_name=region,
                                                    config=self._config)
                    )
                self._clients[key] = found
            return found

    async def call(
        self, service: str, region: str, method: str, target: str | None = None, **params: Any
    ) -> Page:
        """``client.method(**params)``; errors name the call, ``target`` and region."""
        client = await self.client(service, region)
        with translated(_operation(client, method), _where(target, region)):
            result: Page = await getattr(client, method)(**params)
        return result

    async def pages(
        self, service: str, region: str, method: str, target: str | None = None, **params: Any
    ) -> list[Page]:
        """Every page of the paginated ``method`` (never just the first)."""
        client = await self.client(service, region)
        with translated(_operation(client, method), _where(target, region)):
            paginator = client.get_paginator(method)
            return [page async for page in paginator.paginate(**params)]

    async def wait(
        self, service: str, region: str, waiter: str, target: str | None = None, **params: Any
    ) -> None:
        """Block until the waiter's condition holds (polls every ``WAIT_DELAY`` s)."""
        client = await self.client(service, region)
        operation = f"{service}:wait:{waiter}"
        with translated(operation, _where(target, region)):
            await client.get_waiter(waiter).wait(
                WaiterConfig={"Delay": WAIT_DELAY, "MaxAttempts": WAIT_ATTEMPTS}, **params
            )

    async def aclose(self) -> None:
        """Close every client; later calls open new ones."""
        stack, self._stack = self._stack, AsyncExitStack()
        self._clients.clear()
        with translated("aws:CloseClients", "(all regions)"):
            await stack.aclose()


def _operation(client: Any, method: str) -> str:
    api = client.meta.method_to_api_mapping.get(method, method)
    return f"{client.meta.service_model.service_name}:{api}"


def _where(target: str | None, region: str) -> str:
    return f"{target} in {region}" if target else f"in {region}"


def tag_dict(tags: list[Any] | None) -> dict[str, str]:
    """``[{"Key": k, "Value": v}, …]`` → ``{k: v}``, sorted by key so that an
    unchanged resource always has the same fingerprint."""
    pairs = ((str(t["Key"]), str(t.get("Value", ""))) for t in tags or ())
    return dict(sorted(pairs))


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    """``{k: v}`` → ``[{"Key": k, "Value": v}, …]``."""
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def creation_tags(desired: DesiredResource, decision_id: str, owner: str) -> dict[str, str]:
    """Every tag a created resource carries: the declared ones and Ovi's own."""
    return dict(sorted({
        **desired.tags, ID_TAG: desired.id, MANAGED_TAG: "true", OWNER_TAG: owner,
        DECISION_TAG: decision_id,
    }.items()))


def label(resource: Resource) -> str:
    """``web-0 (i-0abc)`` for error messages; just the cloud id when the
    resource is known by nothing else (no ``ovi:id`` of ours)."""
    if not resource.id or resource.id == resource.cloud_id or "/" in resource.id:
        return resource.cloud_id
    return f"{resource.id} ({resource.cloud_id})"


def check_adoptable(current: Resource, tags: dict[str, str], operation: str) -> None:
    """Refuse to adopt ``current`` when its Ovi tags (now ``tags``) changed
    since the observation the adoption was decided on.

    :raises ProviderError: not retryable, code ``ChangedSinceObserved``.
    """
    check_unchanged(current, tags, operation, guard=ADOPT_GUARD, doing="adopted")
