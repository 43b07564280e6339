"""S3 buckets for the AWS provider.

Buckets are global but each lives in one region: a scope's buckets are the
ones whose region is the scope's. CreateBucket takes no tags, so a bucket is
tagged right after it is created; a bucket left untagged by a crash in
between is adopted by the retried create.
"""

from __future__ import annotations

import re
from typing import Any

import anyio

from ovi.model import DECISION_TAG, ID_TAG, OWNER_TAG, DesiredResource, Resource, ResourceType
from ovi.providers._aws_common import AWSCalls, creation_tags, label, tag_dict, tag_list
from ovi.providers.base import ProviderError

__all__ = ["S3Buckets", "bucket_name_problem"]

_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
# Tags under aws: belong to AWS services: they cannot be written back.
_SYSTEM_PREFIX = "aws:"
_PARALLEL_LOOKUPS = 8  # per scope: a few hundred buckets observe in seconds


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
    """Observe, create, tag and delete (empty) S3 buckets."""

    def __init__(self, calls: AWSCalls) -> None:
        self._calls = calls

    async def observe(self, region: str) -> list[Resource]:
        """Every bucket whose region is ``region``."""
        # BucketRegion filters on the server where supported; each bucket's
        # region is still checked, as not every endpoint honours the filter.
        pages = await self._calls.pages("s3", region, "list_buckets", BucketRegion=region)
        listed = [b for page in pages for b in page.get("Buckets", ())]
        found: dict[str, Resource] = {}
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
                if exc.code != "NoSuchBucket":  # deleted since it was listed
                    errors.append(exc)
                return
            if tags is not None:
                found[name] = _resource(name, region, tags)

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
        """Create the bucket and tag it; a retry adopts the bucket an earlier
        attempt created, tagged or not, but never anybody else's bucket."""
        name, region = desired.id, desired.region
        if problem := bucket_name_problem(name):
            raise ProviderError(
                f"s3:CreateBucket {name} in {region}: {name!r} cannot be a bucket name: "
                f"{problem}; rename the resource in the config",
                operation="s3:CreateBucket", code="InvalidBucketName",
            )
        tags = creation_tags(desired, decision_id, owner)
        existing = await self._existing(desired, decision_id, owner)
        if existing is None:
            params: dict[str, Any] = {"Bucket": name}
            if region != "us-east-1":  # us-east-1 refuses its own name as a constraint
                params["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                await self._calls.call("s3", region, "create_bucket", name, **params)
            except ProviderError as exc:
                if exc.code != "BucketAlreadyOwnedByYou":
                    raise
                # Created by a concurrent attempt since we looked: judge it again.
                existing = await self._existing(desired, decision_id, owner)
        if existing:
            tags = {**existing, **tags}
        await self._put_tags(name, region, label_for=name, tags=tags)
        return _resource(name, region, tags)

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

    async def _existing(
        self, desired: DesiredResource, decision_id: str, owner: str
    ) -> dict[str, str] | None:
        """The tags of the bucket of that name if it exists and may be taken
        over; ``None`` if there is no such bucket."""
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
        adoptable = (
            not own  # created by an attempt that died before tagging it
            or own.get(DECISION_TAG) == decision_id
            or (own.get(ID_TAG) == desired.id and own.get(OWNER_TAG) == owner)
        )
        if not adoptable:
            shown = ", ".join(f"{k}={v}" for k, v in own.items())
            raise ProviderError(f"{prefix} and is not Ovi's to take over (tags: {shown})",
                                operation="s3:CreateBucket", code="BucketAlreadyOwnedByYou")
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


def _resource(name: str, region: str, tags: dict[str, str]) -> Resource:
    tags = dict(sorted(tags.items()))
    return Resource(
        id=tags.get(ID_TAG) or name, cloud_id=name, type=ResourceType.S3, provider="aws",
        region=region, size=None, status="available", tags=tags,
    )
