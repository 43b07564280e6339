"""The AWS provider: EC2 instances, RDS DB instances and S3 buckets through
aiobotocore.

The standard AWS environment is honoured exactly as botocore reads it
(``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, the credential chain …); the region of
each call is the scope's. Every botocore error becomes a
:class:`~ovi.providers.base.ProviderError` naming the API call, the resource
and the region, ``retryable`` for throttling, 5xx, timeouts and unreachable
endpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from ovi.model import DesiredResource, FieldChange, Resource, ResourceType, Scope, Unreadable
from ovi.providers._aws_common import AWSCalls, label
from ovi.providers._aws_ec2 import EC2Instances
from ovi.providers._aws_rds import RDSInstances
from ovi.providers._aws_s3 import LIST_PAGE_SIZE, S3Buckets
from ovi.providers._naming import natural_id
from ovi.providers.base import DELETE_GUARD, ProviderError, check_unchanged

if TYPE_CHECKING:
    from ovi.config import Config

__all__ = ["AWSProvider"]

_TAG_PREFIX = "tags."


class _Kind(Protocol):
    """What each resource type's module offers (resize only where it applies)."""

    async def observe(self, region: str) -> Sequence[Resource | Unreadable]: ...
    async def get(self, region: str, cloud_id: str, target: str) -> Resource | None: ...
    async def create(self, desired: DesiredResource, decision_id: str, owner: str) -> Resource: ...
    async def adopt(self, desired: DesiredResource, current: Resource, decision_id: str,
                    owner: str) -> Resource: ...
    async def set_tags(self, current: Resource, tags: dict[str, str]) -> None: ...
    async def delete(self, current: Resource) -> None: ...


class AWSProvider:
    """:class:`~ovi.providers.base.Provider` for AWS.

    Use it as an async context manager (or call :meth:`aclose`): it holds one
    aiobotocore client per (service, region), created on first use.

    ``owner`` is the default owner recorded on what it creates;
    ``allow_resize`` lets :meth:`update` change an instance's size (EC2: stop,
    modify, start); ``final_snapshot`` makes :meth:`delete` snapshot an RDS
    instance first. ``session`` is an ``aiobotocore`` session (default: a new
    one reading the environment). ``s3_page_size`` is the number of buckets
    per ``ListBuckets`` page.
    """

    name = "aws"

    def __init__(
        self,
        *,
        owner: str = "ovi",
        allow_resize: bool = False,
        final_snapshot: bool = True,
        session: Any = None,
        s3_page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        self.owner = owner
        self.allow_resize = allow_resize
        self.final_snapshot = final_snapshot
        self._calls = AWSCalls(session)
        self._ec2 = EC2Instances(self._calls)
        self._rds = RDSInstances(self._calls, final_snapshot=final_snapshot)
        self._s3 = S3Buckets(self._calls, page_size=s3_page_size)
        self._kinds: dict[ResourceType, _Kind] = {
            ResourceType.EC2: self._ec2, ResourceType.RDS: self._rds, ResourceType.S3: self._s3,
        }

    @classmethod
    def from_config(cls, config: Config, *, session: Any = None) -> AWSProvider:
        """The provider a config asks for: its owner and its resize and
        snapshot rules."""
        return cls(owner=config.owner, allow_resize=config.rules.allow_resize,
                   final_snapshot=config.rules.final_snapshot, session=session)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every client. The provider may be used again afterwards."""
        await self._calls.aclose()

    async def observe(self, scope: Scope) -> Sequence[Resource | Unreadable]:
        """Every live resource of ``scope``: instances not terminated or
        shutting down, DB instances not being deleted, the region's buckets
        (one whose tags cannot be read is :class:`~ovi.model.Unreadable`).

        :raises ProviderError: if the scope cannot be listed in full.
        """
        self._check_provider(scope.provider, f"observe {scope.key}")
        return await self._kinds[scope.type].observe(scope.region)

    def natural_id(self, desired: DesiredResource) -> str | None:
        """The cloud id a create of ``desired`` takes: the bucket name (the
        desired id) for S3, the DB identifier for RDS; ``None`` for EC2, whose
        instance ids AWS picks."""
        return natural_id(desired)

    async def adopt(self, desired: DesiredResource, current: Resource, *, decision_id: str,
                    owner: str) -> Resource:
        """Tag the existing ``current`` as Ovi's ``desired``: ``ovi:id``,
        ``ovi:managed``, ``ovi:owner``, ``ovi:decision`` and the declared
        tags; its other tags are kept.

        :raises ProviderError: if it is gone, or its Ovi tags changed since it
            was observed (someone else may have taken it).
        """
        self._check_provider(current.provider, f"adopt {current.cloud_id}")
        return await self._kinds[current.type].adopt(desired, current, decision_id,
                                                     owner or self.owner)

    async def create(self, desired: DesiredResource, *, decision_id: str, owner: str,
                     attempt: int = 1, token_unused: bool = False) -> Resource:
        """Create ``desired`` with ``ovi:id``, ``ovi:managed``, ``ovi:owner``,
        ``ovi:decision`` and its declared tags in the create call itself. A
        retry with the same ``decision_id`` returns what the first attempt
        created instead of creating it twice. ``attempt`` makes the EC2
        ``ClientToken`` (:func:`~ovi.providers.base.create_token`); a DB
        instance or bucket is known by its name, which needs no token.
        ``token_unused``: see :meth:`Provider.create`.

        :raises CreatedResourceGone: if the attempt's token answers with an
            instance that is gone.
        :raises ProviderError: if the resource cannot be created.
        """
        self._check_provider(desired.provider, f"create {desired.id}")
        owner = owner or self.owner
        if desired.type is ResourceType.EC2:
            return await self._ec2.create(desired, decision_id, owner, attempt,
                                          token_unused=token_unused)
        return await self._kinds[desired.type].create(desired, decision_id, owner)

    async def update(
        self, desired: DesiredResource, current: Resource, changes: Sequence[FieldChange]
    ) -> Resource:
        """Set the declared tags among ``changes`` in place (other tags are
        never removed) and, when ``allow_resize``, change the size; a
        ``status`` change to ``running`` starts an EC2 instance (one a resize
        left stopped). An EC2 resize stops the instance and starts it again
        if ``current`` (as the decision saw it) was running; a retry resumes
        where the attempt before stopped.

        :raises ProviderError: if a change cannot be made in place (type,
            region, provider; a size while resizing is disabled), or a call fails.
        """
        self._check_provider(current.provider, f"update {current.id}")
        where = f"{label(current)} in {current.region}"
        tags = {
            c.field.removeprefix(_TAG_PREFIX): c.desired
            for c in changes
            if c.field.startswith(_TAG_PREFIX) and c.desired is not None
        }
        size = None
        start = False
        for change in changes:
            if change.field == "size" and change.desired is not None:
                size = change.desired
            elif (change.field == "status" and change.desired == "running"
                  and current.type is ResourceType.EC2):
                start = True
            elif not change.field.startswith(_TAG_PREFIX) and change.field != "size":
                raise ProviderError(
                    f"update {where}: {change.field} cannot change in place "
                    f"({change.observed} → {change.desired}); it needs a replacement",
                    code="NotUpdatable",
                )
        if size is not None:
            self._check_resize(current, size, where)
        kind = self._kinds[current.type]
        if tags:
            await kind.set_tags(current, tags)
        if size is not None and size != current.size:
            if current.type is ResourceType.EC2:
                await self._ec2.resize(current, size)
            else:
                await self._rds.resize(current, size)
        if start:
            await self._ec2.ensure_running(current)
        return await self._reread(current, tags, size)

    async def delete(self, current: Resource) -> None:
        """Delete ``current``: terminate an instance; delete a DB instance
        (after a final snapshot when ``final_snapshot``); delete a bucket only
        when it is empty. Something already gone counts as deleted.

        :raises ProviderError: if the resource cannot be deleted (a bucket
            that is not empty is a permanent failure), or its ``ovi:owner``,
            ``ovi:id`` or ``ovi:blessed`` tag changed since it was observed.
        """
        self._check_provider(current.provider, f"delete {current.id}")
        kind = self._kinds[current.type]
        # Re-read just before: a delete acts only on the resource as it was
        # decided (and approved) on, never on one re-tagged since.
        fresh = await kind.get(current.region, current.cloud_id, label(current))
        if fresh is None:
            return  # already gone: deleted
        check_unchanged(current, fresh.tags, f"{current.provider}:delete", guard=DELETE_GUARD,
                        doing="deleted")
        await kind.delete(current)

    def _check_resize(self, current: Resource, size: str, where: str) -> None:
        if current.type is ResourceType.S3:
            raise ProviderError(f"update {where}: an s3 bucket has no size", code="NotUpdatable")
        if not self.allow_resize:
            raise ProviderError(
                f"update {where}: resizing {current.size} → {size} is disabled "
                "(rules.allow_resize is false)",
                code="ResizeDisabled",
            )

    async def _reread(
        self, current: Resource, tags: dict[str, str], size: str | None
    ) -> Resource:
        """The resource as AWS now reports it (or as it must be, if AWS no
        longer lists it)."""
        kind = self._kinds[current.type]
        fresh = await kind.get(current.region, current.cloud_id, label(current))
        if fresh is not None:
            return fresh
        return Resource(
            id=current.id, cloud_id=current.cloud_id, type=current.type,
            provider=current.provider, region=current.region, size=size or current.size,
            status=current.status, tags=dict(sorted({**current.tags, **tags}.items())),
        )

    def _check_provider(self, provider: str, what: str) -> None:
        if provider != self.name:
            raise ProviderError(f"{what}: provider {provider!r} is not {self.name!r}",
                                code="WrongProvider")
