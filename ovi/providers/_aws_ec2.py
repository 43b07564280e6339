"""EC2 instances for the AWS provider."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import anyio

from ovi.model import (
    DECISION_TAG,
    RUNNING_STATUSES,
    DesiredResource,
    Resource,
    ResourceType,
)
from ovi.providers._aws_common import (
    AWSCalls,
    Page,
    check_adoptable,
    creation_tags,
    label,
    tag_dict,
    tag_list,
)
from ovi.providers.base import CreatedResourceGone, ProviderError, create_token

__all__ = ["DEFAULT_AMI_PARAMETER", "EC2Instances"]

DEFAULT_AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
DEFAULT_INSTANCE_TYPE = "t3.micro"
_SSM_PREFIX = "resolve:ssm:"
# Terminated instances stay listed for a while (tags and all): never report them.
LIVE_STATES = ("pending", "running", "stopping", "stopped")
_NOT_FOUND = "InvalidInstanceID.NotFound"
_DEAD_STATES = ("shutting-down", "terminated")
_MISMATCH = "IdempotentParameterMismatch"
# A launched instance may not be listed for a few seconds; one launched longer
# ago than this and not listed is gone (terminated instances stay listed for
# about an hour, a ClientToken is remembered for at least a day).
_LISTING_DELAY = timedelta(minutes=10)


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

    async def create(self, desired: DesiredResource, decision_id: str, owner: str,
                     attempt: int = 1, *, token_unused: bool = False) -> Resource:
        """Launch one instance with every tag at launch, ``ClientToken`` the
        attempt's token; a retry of the same decision returns the instance it
        already launched.

        :raises CreatedResourceGone: if the token answers with an instance
            that is gone (AWS remembers a token for at least a day, and
            answers with the first call's instance even once terminated), or
            the token was used with other parameters (an AMI parameter that
            moved) and this decision has no live instance.

        With ``token_unused`` (no call was ever made for this decision, see
        :meth:`~ovi.providers.base.Provider.create`) it neither looks for the
        decision's instance first nor checks the answer's instance after:
        the answer is the instance this call launched.
        """
        region, target = desired.region, desired.id
        if not token_unused:
            # Real AWS dedupes on ClientToken; moto (and a token that expired
            # after 24 h) does not, so look for this decision's instance first.
            pages = await self._calls.pages(
                "ec2", region, "describe_instances", target,
                Filters=[
                    {"Name": f"tag:{DECISION_TAG}", "Values": [decision_id]},
                    {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
                ],
            )
            existing = sorted((i for p in pages for i in _instances(p)),
                              key=lambda i: i["InstanceId"])
            if existing:
                return _resource(existing[0], region)
        image = await self._image(desired, region)
        tags = creation_tags(desired, decision_id, owner)
        token = create_token(decision_id, attempt)
        try:
            result = await self._calls.call(
                "ec2", region, "run_instances", target,
                ImageId=image, InstanceType=desired.size or DEFAULT_INSTANCE_TYPE,
                MinCount=1, MaxCount=1, ClientToken=token,
                TagSpecifications=[{"ResourceType": "instance", "Tags": tag_list(tags)}],
            )
        except ProviderError as exc:
            if exc.code != _MISMATCH:
                raise
            # What the token's first call made is not alive (looked for above).
            raise CreatedResourceGone(
                f"{exc}; ClientToken {token} was used before with other parameters and"
                f" nothing decision {decision_id} made is alive", operation=exc.operation,
                code=exc.code) from exc
        item = result["Instances"][0]
        if not token_unused and await self._dead(region, item, target):
            instance_id = item["InstanceId"]
            raise CreatedResourceGone(
                f"ec2:RunInstances {target} in {region}: ClientToken {token} answers with"
                f" {instance_id}, launched {item.get('LaunchTime')}, which is gone",
                operation="ec2:RunInstances", cloud_id=str(instance_id))
        # RunInstances does not always echo the tags back; they are the ones sent.
        return _resource({**item, "Tags": tag_list(tags)}, region)

    async def _dead(self, region: str, item: Page, target: str) -> bool:
        """Whether the instance a ``RunInstances`` answered with is gone: a
        repeated token gets the first call's answer, whatever became of it."""
        if item.get("State", {}).get("Name") in _DEAD_STATES:
            return True
        try:
            page = await self._calls.call("ec2", region, "describe_instances", target,
                                          InstanceIds=[item["InstanceId"]])
        except ProviderError as exc:
            if exc.code != _NOT_FOUND:
                raise
            page = {}
        found = _instances(page)
        if found:
            return bool(found[0]["State"]["Name"] in _DEAD_STATES)
        launched = item.get("LaunchTime")
        return isinstance(launched, datetime) and \
            datetime.now(UTC) - launched > _LISTING_DELAY

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
        """Stop, change the instance type, start again if ``current`` (the
        instance as the decision saw it) was running. AWS only changes the
        type of a stopped instance.

        Resumable: each step is skipped when a look at the instance shows it
        done, and whether to start it again comes from ``current``, never
        from what a retry finds (an attempt that stopped it and lost the start
        to throttling leaves it stopped: the retry must still start it).
        """
        region, target = current.region, label(current)
        restore = current.status in RUNNING_STATUSES
        fresh = await self._fresh(current, "ec2:ModifyInstanceAttribute")
        if fresh.size != size:
            if fresh.status != "stopped":
                if fresh.status in RUNNING_STATUSES:
                    await self._calls.call("ec2", region, "stop_instances", target,
                                           InstanceIds=[current.cloud_id])
                await self._calls.wait("ec2", region, "instance_stopped", target,
                                       InstanceIds=[current.cloud_id])
            try:
                await self._calls.call("ec2", region, "modify_instance_attribute", target,
                                       InstanceId=current.cloud_id,
                                       InstanceType={"Value": size})
            except ProviderError:
                # A stopped instance is worse than one running at the old size;
                # the type change's error is the one worth reporting.
                if restore:
                    with contextlib.suppress(ProviderError):
                        await self.ensure_running(current)
                raise
        if restore:
            await self.ensure_running(current)

    async def ensure_running(self, current: Resource) -> None:
        """Start the instance unless it is running or starting (one that is
        stopping is waited for first), then wait until it runs."""
        region, target = current.region, label(current)
        fresh = await self._fresh(current, "ec2:StartInstances")
        if fresh.status in RUNNING_STATUSES:
            return
        if fresh.status != "stopped":
            await self._calls.wait("ec2", region, "instance_stopped", target,
                                   InstanceIds=[current.cloud_id])
        await self._calls.call("ec2", region, "start_instances", target,
                               InstanceIds=[current.cloud_id])
        await self._calls.wait("ec2", region, "instance_running", target,
                               InstanceIds=[current.cloud_id])

    async def _fresh(self, current: Resource, operation: str) -> Resource:
        fresh = await self.get(current.region, current.cloud_id, label(current))
        if fresh is None:
            raise ProviderError(f"{operation} {label(current)} in {current.region}: "
                                "the instance no longer exists", code=_NOT_FOUND)
        return fresh

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
