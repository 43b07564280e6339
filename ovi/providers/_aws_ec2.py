"""EC2 instances for the AWS provider."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import anyio

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
from ovi.providers.base import ProviderError

__all__ = ["DEFAULT_AMI_PARAMETER", "EC2Instances"]

DEFAULT_AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
DEFAULT_INSTANCE_TYPE = "t3.micro"
_SSM_PREFIX = "resolve:ssm:"
# Terminated instances stay listed for a while (tags and all): never report them.
LIVE_STATES = ("pending", "running", "stopping", "stopped")
_NOT_FOUND = "InvalidInstanceID.NotFound"


class EC2Instances:
    """Observe, create, tag, resize and terminate EC2 instances."""

    def __init__(self, calls: AWSCalls) -> None:
        self._calls = calls
        self._images: dict[tuple[str, str], str] = {}
        self._images_lock = anyio.Lock()

    async def observe(self, region: str) -> list[Resource]:
        """Every live instance in ``region``."""
        pages = await self._calls.pages(
            "ec2", region, "describe_instances",
            Filters=[{"Name": "instance-state-name", "Values": list(LIVE_STATES)}],
        )
        return [_resource(item, region) for page in pages for item in _instances(page)]

    async def get(self, region: str, instance_id: str, target: str) -> Resource | None:
        """The live instance ``instance_id``, or ``None`` if it is gone."""
        try:
            page = await self._calls.call("ec2", region, "describe_instances", target,
                                          InstanceIds=[instance_id])
        except ProviderError as exc:
            if exc.code == _NOT_FOUND:
                return None
            raise
        live = [i for i in _instances(page) if i["State"]["Name"] in LIVE_STATES]
        return _resource(live[0], region) if live else None

    async def create(self, desired: DesiredResource, decision_id: str, owner: str) -> Resource:
        """Launch one instance with every tag at launch; a retry of the same
        decision returns the instance it already launched."""
        region = desired.region
        # Real AWS dedupes on ClientToken; moto (and a token that expired after
        # 24 h) does not, so look for this decision's instance first.
        pages = await self._calls.pages(
            "ec2", region, "describe_instances", desired.id,
            Filters=[
                {"Name": f"tag:{DECISION_TAG}", "Values": [decision_id]},
                {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
            ],
        )
        existing = sorted((i for p in pages for i in _instances(p)), key=lambda i: i["InstanceId"])
        if existing:
            return _resource(existing[0], region)
        image = await self._image(desired, region)
        tags = creation_tags(desired, decision_id, owner)
        result = await self._calls.call(
            "ec2", region, "run_instances", desired.id,
            ImageId=image, InstanceType=desired.size or DEFAULT_INSTANCE_TYPE,
            MinCount=1, MaxCount=1, ClientToken=decision_id,
            TagSpecifications=[{"ResourceType": "instance", "Tags": tag_list(tags)}],
        )
        item = result["Instances"][0]
        # RunInstances does not always echo the tags back; they are the ones sent.
        return _resource({**item, "Tags": tag_list(tags)}, region)

    async def set_tags(self, current: Resource, tags: dict[str, str]) -> None:
        """Set ``tags`` on the instance, leaving its other tags alone."""
        await self._calls.call("ec2", current.region, "create_tags", label(current),
                               Resources=[current.cloud_id], Tags=tag_list(tags))

    async def adopt(self, desired: DesiredResource, current: Resource, decision_id: str,
                    owner: str) -> Resource:
        """Tag the existing instance ``current`` as Ovi's ``desired`` (its
        other tags are kept).

        :raises ProviderError: if it is gone or its Ovi tags changed since it
            was observed.
        """
        target = label(current)
        fresh = await self.get(current.region, current.cloud_id, target)
        if fresh is None:
            raise ProviderError(f"ec2:CreateTags {target} in {current.region}: the instance"
                                " no longer exists", code=_NOT_FOUND)
        check_adoptable(current, fresh.tags, "ec2:CreateTags")
        tags = creation_tags(desired, decision_id, owner)
        await self._calls.call("ec2", current.region, "create_tags", target,
                               Resources=[current.cloud_id], Tags=tag_list(tags))
        return Resource(id="", cloud_id=fresh.cloud_id, type=fresh.type, provider=fresh.provider,
                        region=fresh.region, size=fresh.size, status=fresh.status,
                        tags=dict(sorted({**fresh.tags, **tags}.items())),
                        created_at=fresh.created_at)

    async def resize(self, current: Resource, size: str) -> None:
        """Stop (if running), change the instance type, start again (if it was
        running). AWS only changes the type of a stopped instance."""
        region, target = current.region, label(current)
        fresh = await self.get(region, current.cloud_id, target)
        if fresh is None:
            raise ProviderError(f"ec2:ModifyInstanceAttribute {target} in {region}: "
                                "the instance no longer exists", code=_NOT_FOUND)
        was_running = fresh.status in ("pending", "running")
        if fresh.status != "stopped":
            if was_running:
                await self._calls.call("ec2", region, "stop_instances", target,
                                       InstanceIds=[current.cloud_id])
            await self._calls.wait("ec2", region, "instance_stopped", target,
                                   InstanceIds=[current.cloud_id])
        try:
            await self._calls.call("ec2", region, "modify_instance_attribute", target,
                                   InstanceId=current.cloud_id, InstanceType={"Value": size})
        except ProviderError:
            # A stopped instance is worse than one running at the old size; the
            # type change's error is the one worth reporting.
            if was_running:
                with contextlib.suppress(ProviderError):
                    await self._start(region, current.cloud_id, target)
            raise
        if was_running:
            await self._start(region, current.cloud_id, target)

    async def _start(self, region: str, instance_id: str, target: str) -> None:
        await self._calls.call("ec2", region, "start_instances", target, InstanceIds=[instance_id])

    async def delete(self, current: Resource) -> None:
        """Terminate the instance; one already gone counts as deleted."""
        try:
            await self._calls.call("ec2", current.region, "terminate_instances", label(current),
                                   InstanceIds=[current.cloud_id])
        except ProviderError as exc:
            if exc.code != _NOT_FOUND:
                raise

    async def _image(self, desired: DesiredResource, region: str) -> str:
        image = desired.image or _SSM_PREFIX + DEFAULT_AMI_PARAMETER
        if not image.startswith(_SSM_PREFIX):
            return image
        # Resolved here rather than by EC2 so that every endpoint (moto too)
        # gets a plain AMI id; once per region and parameter.
        parameter = image.removeprefix(_SSM_PREFIX)
        key = (region, parameter)
        async with self._images_lock:
            if key not in self._images:
                found = await self._calls.call("ssm", region, "get_parameter", parameter,
                                               Name=parameter)
                self._images[key] = str(found["Parameter"]["Value"])
            return self._images[key]


def _instances(page: Page) -> list[Page]:
    return [i for r in page.get("Reservations", ()) for i in r.get("Instances", ())]


def _resource(item: Page, region: str) -> Resource:
    launched = item.get("LaunchTime")
    return Resource(
        id="", cloud_id=str(item["InstanceId"]), type=ResourceType.EC2,
        provider="aws", region=region, size=item.get("InstanceType"),
        status=str(item.get("State", {}).get("Name", "")), tags=tag_dict(item.get("Tags")),
        created_at=launched.astimezone(UTC) if isinstance(launched, datetime) else None,
    )
