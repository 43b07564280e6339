"""S3 buckets for the AWS provider.

Buckets are global but each lives in one region: a scope's buckets are the
ones whose region is the scope's. ``ListBuckets`` is always paged (AWS refuses
an unpaginated one for accounts allowed more than 10,000 buckets). A bucket
whose tags or region cannot be read (``AccessDenied`` on another team's
bucket) is reported as :class:`~ovi.model.Unreadable`, alone; the rest of the
scope is observed as usual.

CreateBucket takes no tags, so a bucket is tagged right after it is created.
A bucket that already exists is never taken over by a create: only one this
decision made (tagged with it, or created by this very process before its
tagging failed) is finished; any other is a conflict, which Ovi reports
before calling a create at all and which only an explicit adoption resolves.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import anyio

from ovi.model import (
    DECISION_TAG,
    DesiredResource,
    Resource,
    ResourceType,
    Unreadable,
)
from ovi.providers._aws_common import (
    AWSCalls,
    check_adoptable,
    creation_tags,
    label,
    tag_dict,
    tag_list,
)
from ovi.providers.base import ProviderError

__all__ = ["LIST_PAGE_SIZE", "S3Buckets", "bucket_name_problem"]

_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
# Tags under aws: belong to AWS services: they cannot be written back.
_SYSTEM_PREFIX = "aws:"
_PARALLEL_LOOKUPS = 8  # per scope: a few hundred buckets observe in seconds
#: buckets per ListBuckets page (AWS allows 1 to 10,000); paged responses
#: also name each bucket's region, which saves a GetBucketLocation per bucket
LIST_PAGE_SIZE = 1000
_CONFLICT = "BucketNameTaken"


def bucket_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid S3 bucket name, or ``None`` if it is."""
    if not _NAME.fullmatch(name):
        return ("a bucket name is 3 to 63 lowercase letters, digits, '.' and '-', "
                "starting and ending with a letter or digit")
    if ".." in name or ".-" in name or "-." in name:
        return "a bucket name has no '..', '.-' or '-.'"
    if _IP.fullmatch(name):
        return "a bucket name is not an IP address"
    if name.startswith(_RESERVED_PREFIXES) or name.endswith(_RESERVED_SUFFIXES):
        return "a bucket name does not use a prefix or suffix AWS reserves"
    return None


class S3Buckets:
    """Observe, create, tag, adopt and delete (empty) S3 buckets."""

    def __init__(self, calls: AWSCalls, *, page_size: int = LIST_PAGE_SIZE) -> None:
        self._calls = calls
        self._page_size = page_size
        # Buckets this process created, by decision: a retry whose tagging
        # failed finds its own untagged bucket here, never a stranger's.
        self._created: dict[str, str] = {}

    async def observe(self, region: str) -> list[Resource | Unreadable]:
        """Every bucket whose region is ``region``; a bucket that cannot be
        read is :class:`Unreadable` (when its region cannot be read either, it
        may be this region's, so it is reported here too).

        :raises ProviderError: if the buckets cannot be listed, or a read
            failed in a way that may pass (throttling, 5xx): the next cycle
            tries again.
        """
        # BucketRegion filters on the server where supported; each bucket's
        # region is still checked, as not every endpoint honours the filter.
        pages = await self._calls.pages("s3", region, "list_buckets", BucketRegion=region,
                                        PaginationConfig={"PageSize": self._page_size})
        listed = [b for page in pages for b in page.get("Buckets", ())]
        found: dict[str, Resource | Unreadable] = {}
        errors: list[ProviderError] = []
        limiter = anyio.CapacityLimiter(_PARALLEL_LOOKUPS)

        async def one(bucket: dict[str, Any]) -> None:
            name = str(bucket["Name"])
            try:
                async with limiter:
                    where = bucket.get("BucketRegion") or await self._region(name, region)
                    if where != region:
                        return
                    tags = await self._tags(name, region)
            except ProviderError as exc:
                if exc.code == "NoSuchBucket":  # deleted since it was listed
                    return
                if exc.retryable:
                    errors.append(exc)
                else:  # AccessDenied and the like: this bucket alone is unknown
                    found[name] = Unreadable(name, str(exc))
                return
            if tags is not None:
                found[name] = _resource(name, region, tags, _created(bucket))

        async with anyio.create_task_group() as group:
            for bucket in listed:
                group.start_soon(one, bucket)
        if errors:
            raise errors[0]
        return [found[name] for name in sorted(found)]

    async def get(self, region: str, name: str, target: str) -> Resource | None:
        """The bucket ``name`` of ``region`` with its tags, or ``None`` if it is gone."""
        tags = await self._tags(name, region)
        return None if tags is None else _resource(name, region, tags)

    async def create(self, desired: DesiredResource, decision_id: str, owner: str) -> Resource:
        """Create the bucket and tag it. A retry finishes the bucket this
        decision made (tagged with it, or made by this process before tagging
        failed); a bucket of that name made by anyone else is never touched.

        :raises ProviderError: if the bucket cannot be created, or a bucket of
            that name exists that this decision did not make (not retryable).
        """
        name, region = desired.id, desired.region
        if problem := bucket_name_problem(name):
            raise ProviderError(
                f"s3:CreateBucket {name} in {region}: {name!r} cannot be a bucket name: "
                f"{problem}; rename the resource in the config",
                operation="s3:CreateBucket", code="InvalidBucketName",
            )
        tags = creation_tags(desired, decision_id, owner)
        existing = await self._existing(desired, decision_id)
        if existing is None:
            params: dict[str, Any] = {"Bucket": name}
            if region != "us-east-1":  # us-east-1 refuses its own name as a constraint
                params["CreateBucketConfiguration"] = {"LocationConstraint": region}
            # Noted before the call: a call whose answer was lost may still
            # have made the bucket, and the retry must know it for its own.
            self._created[decision_id] = name
            try:
                await self._calls.call("s3", region, "create_bucket", name, **params)
            except ProviderError as exc:
                if exc.code != "BucketAlreadyOwnedByYou":
                    raise
                # Created by someone else since we looked: judge it again.
                del self._created[decision_id]
                existing = await self._existing(desired, decision_id)
        if existing:
            tags = {**existing, **tags}
        await self._put_tags(name, region, label_for=name, tags=tags)
        return _resource(name, region, tags)

    async def adopt(self, desired: DesiredResource, current: Resource, decision_id: str,
                    owner: str) -> Resource:
        """Tag the existing bucket ``current`` as Ovi's ``desired`` (its other
        tags are kept).

        :raises ProviderError: if it is gone or its Ovi tags changed since it
            was observed.
        """
        name, region = current.cloud_id, current.region
        have = await self._tags(name, region)
        if have is None:
            raise ProviderError(f"s3:PutBucketTagging {label(current)} in {region}: the bucket"
                                " no longer exists", code="NoSuchBucket")
        check_adoptable(current, have, "s3:PutBucketTagging")
        tags = {**have, **creation_tags(desired, decision_id, owner)}
        await self._put_tags(name, region, label_for=label(current), tags=tags)
        return _resource(name, region, tags, current.created_at)

    async def set_tags(self, current: Resource, tags: dict[str, str]) -> None:
        """Merge ``tags`` into the bucket's tag set (PutBucketTagging replaces
        the whole set, so the other tags are read and written back)."""
        name = current.cloud_id
        have = await self._tags(name, current.region)
        if have is None:
            raise ProviderError(f"s3:PutBucketTagging {label(current)} in {current.region}: "
                                "the bucket no longer exists", code="NoSuchBucket")
        await self._put_tags(name, current.region, label_for=label(current),
                             tags={**have, **tags})

    async def delete(self, current: Resource) -> None:
        """Delete the bucket if it is empty; objects are never deleted."""
        target = label(current)
        try:
            await self._calls.call("s3", current.region, "delete_bucket", target,
                                   Bucket=current.cloud_id)
        except ProviderError as exc:
            if exc.code == "NoSuchBucket":
                return
            if exc.code == "BucketNotEmpty":
                raise ProviderError(
                    f"s3:DeleteBucket {target} in {current.region}: bucket "
                    f"{current.cloud_id} is not empty; Ovi never deletes objects "
                    "(empty it by hand and Ovi will delete it)",
                    operation=exc.operation, code=exc.code,
                ) from exc
            raise

    async def _existing(self, desired: DesiredResource, decision_id: str) -> dict[str, str] | None:
        """The tags of the bucket of that name if this decision made it;
        ``None`` if there is no such bucket.

        :raises ProviderError: if a bucket of that name exists that this
            decision did not make.
        """
        name, region = desired.id, desired.region
        try:
            where = await self._region(name, region)
        except ProviderError as exc:
            if exc.code == "NoSuchBucket":
                return None
            raise
        prefix = f"s3:CreateBucket {name} in {region}: bucket {name} already exists"
        if where != region:
            raise ProviderError(f"{prefix} in {where}", operation="s3:CreateBucket",
                                code="BucketAlreadyOwnedByYou")
        tags = await self._tags(name, region) or {}
        own = {k: v for k, v in tags.items() if not k.startswith(_SYSTEM_PREFIX)}
        ours = own.get(DECISION_TAG) == decision_id or (
            not own and self._created.get(decision_id) == name)
        if not ours:
            shown = ", ".join(f"{k}={v}" for k, v in own.items()) or "none"
            raise ProviderError(
                f"{prefix} and this decision did not create it (tags: {shown}); Ovi takes"
                " over an existing bucket only when asked to (adopt: true, or ovi adopt)",
                operation="s3:CreateBucket", code=_CONFLICT)
        return own

    async def _region(self, name: str, region: str) -> str:
        found = await self._calls.call("s3", region, "get_bucket_location", name, Bucket=name)
        # A null LocationConstraint is the historical spelling of us-east-1.
        return str(found.get("LocationConstraint") or "us-east-1")

    async def _tags(self, name: str, region: str) -> dict[str, str] | None:
        """The bucket's tags; ``None`` if the bucket is gone."""
        try:
            found = await self._calls.call("s3", region, "get_bucket_tagging", name, Bucket=name)
        except ProviderError as exc:
            if exc.code == "NoSuchTagSet":
                return {}
            if exc.code == "NoSuchBucket":
                return None
            raise
        return tag_dict(found.get("TagSet"))

    async def _put_tags(self, name: str, region: str, *, label_for: str,
                        tags: dict[str, str]) -> None:
        writable = {k: v for k, v in tags.items() if not k.startswith(_SYSTEM_PREFIX)}
        await self._calls.call("s3", region, "put_bucket_tagging", label_for, Bucket=name,
                               Tagging={"TagSet": tag_list(writable)})


def _created(bucket: dict[str, Any]) -> datetime | None:
    when = bucket.get("CreationDate")
    return when.astimezone(UTC) if isinstance(when, datetime) else None


def _resource(name: str, region: str, tags: dict[str, str],
              created_at: datetime | None = None) -> Resource:
    return Resource(
        id="", cloud_id=name, type=ResourceType.S3, provider="aws", region=region,
        size=None, status="available", tags=dict(sorted(tags.items())), created_at=created_at,
    )
