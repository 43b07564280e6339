"""RDS DB instances for the AWS provider."""

from __future__ import annotations

from datetime import UTC, datetime

from ovi.model import DECISION_TAG, DesiredResource, Resource, ResourceType
from ovi.providers._aws_common import (
    AWSCalls,
    Page,
    check_adoptable,
    creation_tags,
    label,
    tag_dict,
    tag_list,
)
from ovi.providers._naming import db_identifier
from ovi.providers.base import ProviderError

__all__ = ["RDSInstances", "db_identifier"]

DEFAULT_ENGINE = "postgres"
DEFAULT_CLASS = "db.t3.micro"
ALLOCATED_STORAGE_GB = 20
MASTER_USERNAME = "ovi_admin"
_NOT_FOUND = ("DBInstanceNotFound", "DBInstanceNotFoundFault")
_EXISTS = ("DBInstanceAlreadyExists", "DBInstanceAlreadyExistsFault")
_INVALID_STATE = ("InvalidDBInstanceState", "InvalidDBInstanceStateFault")


class RDSInstances:
    """Observe, create, tag, resize and delete RDS DB instances."""

    def __init__(self, calls: AWSCalls, *, final_snapshot: bool) -> None:
        self._calls = calls
        self._final_snapshot = final_snapshot

    async def observe(self, region: str) -> list[Resource]:
        """Every DB instance in ``region`` that is not being deleted."""
        pages = await self._calls.pages("rds", region, "describe_db_instances")
        return [
            _resource(item, region)
            for page in pages
            for item in page.get("DBInstances", ())
            if item.get("DBInstanceStatus") != "deleting"
        ]

    async def get(self, region: str, identifier: str, target: str) -> Resource | None:
        """The DB instance ``identifier``, or ``None`` if it is gone or going."""
        item = await self._describe(region, identifier, target)
        if item is None or item.get("DBInstanceStatus") == "deleting":
            return None
        return _resource(item, region)

    async def create(self, desired: DesiredResource, decision_id: str, owner: str) -> Resource:
        """Create the DB instance with every tag and an AWS-managed master
        password (never one of ours); a retry of the same decision returns the
        instance it already created."""
        region, identifier = desired.region, db_identifier(desired.id)
        tags = creation_tags(desired, decision_id, owner)
        try:
            result = await self._calls.call(
                "rds", region, "create_db_instance", desired.id,
                DBInstanceIdentifier=identifier, Engine=desired.engine or DEFAULT_ENGINE,
                DBInstanceClass=desired.size or DEFAULT_CLASS,
                AllocatedStorage=ALLOCATED_STORAGE_GB, MasterUsername=MASTER_USERNAME,
                ManageMasterUserPassword=True, CopyTagsToSnapshot=True, Tags=tag_list(tags),
            )
        except ProviderError as exc:
            if exc.code not in _EXISTS:
                raise
            existing = await self.get(region, identifier, desired.id)
            if existing is not None and existing.tags.get(DECISION_TAG) == decision_id:
                return existing
            raise ProviderError(
                f"rds:CreateDBInstance {desired.id} in {region}: DB instance {identifier} "
                f"already exists and was not created by decision {decision_id}",
                operation=exc.operation, code=exc.code,
            ) from exc
        return _resource({**result["DBInstance"], "TagList": tag_list(tags)}, region)

    async def set_tags(self, current: Resource, tags: dict[str, str]) -> None:
        """Set ``tags`` on the DB instance, leaving its other tags alone."""
        target = label(current)
        item = await self._describe(current.region, current.cloud_id, target)
        if item is None:
            raise ProviderError(f"rds:AddTagsToResource {target} in {current.region}: "
                                "the DB instance no longer exists", code=_NOT_FOUND[0])
        await self._calls.call("rds", current.region, "add_tags_to_resource", target,
                               ResourceName=item["DBInstanceArn"], Tags=tag_list(tags))

    async def adopt(self, desired: DesiredResource, current: Resource, decision_id: str,
                    owner: str) -> Resource:
        """Tag the existing DB instance ``current`` as Ovi's ``desired`` (its
        other tags are kept).

        :raises ProviderError: if it is gone or its Ovi tags changed since it
            was observed.
        """
        target = label(current)
        item = await self._describe(current.region, current.cloud_id, target)
        if item is None:
            raise ProviderError(f"rds:AddTagsToResource {target} in {current.region}: "
                                "the DB instance no longer exists", code=_NOT_FOUND[0])
        fresh = _resource(item, current.region)
        check_adoptable(current, fresh.tags, "rds:AddTagsToResource")
        tags = creation_tags(desired, decision_id, owner)
        await self._calls.call("rds", current.region, "add_tags_to_resource", target,
                               ResourceName=item["DBInstanceArn"], Tags=tag_list(tags))
        return _resource({**item, "TagList": tag_list({**fresh.tags, **tags})}, current.region)

    async def resize(self, current: Resource, size: str) -> None:
        """Change the instance class now (not at the next maintenance window)."""
        await self._calls.call("rds", current.region, "modify_db_instance", label(current),
                               DBInstanceIdentifier=current.cloud_id, DBInstanceClass=size,
                               ApplyImmediately=True)

    async def delete(self, current: Resource) -> None:
        """Delete the DB instance, after a final snapshot unless configured
        otherwise; one already gone, or already being deleted (a repeat of a
        delete whose answer was lost gets ``InvalidDBInstanceState``), counts
        as deleted."""
        params: dict[str, object] = {"SkipFinalSnapshot": not self._final_snapshot}
        if self._final_snapshot:
            stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
            params["FinalDBSnapshotIdentifier"] = f"{current.cloud_id}-final-{stamp}"
        target = label(current)
        try:
            await self._calls.call("rds", current.region, "delete_db_instance", target,
                                   DBInstanceIdentifier=current.cloud_id, **params)
        except ProviderError as exc:
            if exc.code in _NOT_FOUND:
                return
            if exc.code not in _INVALID_STATE:
                raise
            # Refused because of its state: fine if that state is "deleting"
            # (or it is gone by now); any other state is a real refusal.
            item = await self._describe(current.region, current.cloud_id, target)
            if item is not None and item.get("DBInstanceStatus") != "deleting":
                raise

    async def _describe(self, region: str, identifier: str, target: str) -> Page | None:
        try:
            page = await self._calls.call("rds", region, "describe_db_instances", target,
                                          DBInstanceIdentifier=identifier)
        except ProviderError as exc:
            if exc.code in _NOT_FOUND:
                return None
            raise
        items: list[Page] = page.get("DBInstances", [])
        return items[0] if items else None


def _resource(item: Page, region: str) -> Resource:
    created = item.get("InstanceCreateTime")
    return Resource(
        id="", cloud_id=str(item["DBInstanceIdentifier"]), type=ResourceType.RDS,
        provider="aws", region=region, size=item.get("DBInstanceClass"),
        status=str(item.get("DBInstanceStatus", "")), tags=tag_dict(item.get("TagList")),
        created_at=created.astimezone(UTC) if isinstance(created, datetime) else None,
    )
