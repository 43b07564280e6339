"""In-memory (or file-shared) providers with injectable latency and failures,
for tests and benchmarks. They also measure how many calls were in flight."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import secrets
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import anyio
import msgspec

from ovi.model import (
    DECISION_TAG,
    ID_TAG,
    MANAGED_TAG,
    OWNER_TAG,
    RUNNING_STATUSES,
    DesiredResource,
    FieldChange,
    Resource,
    ResourceType,
    Scope,
    Unreadable,
)
from ovi.providers.base import (
    DELETE_GUARD,
    CreatedResourceGone,
    ProviderError,
    check_unchanged,
    create_token,
)

__all__ = ["FakeProvider", "SharedFakeProvider"]

T = TypeVar("T")
Estate = dict[str, Resource]


class FakeProvider:
    """A cloud in a dict (cloud id → resource).

    ``latency`` seconds are slept in every call, and ``slow[kind]`` more in
    each call of that kind (``"update"``…); scopes in ``failing_scopes`` fail
    to observe; resources whose cloud id is in ``unreadable`` are listed but
    cannot be read (the value is the error); ``fail_next`` holds errors raised
    by the next calls of create/update/delete, in order. Like AWS, buckets and
    DB instances are named after their desired id (:meth:`natural_id`),
    instances get ids of the cloud's choosing.

    Creates behave as AWS's idempotency tokens make them: a live resource the
    decision made is returned; a token used before answers with what it made,
    and when that died (:meth:`die`) the create raises
    :class:`~ovi.providers.base.CreatedResourceGone`, so only a new attempt
    creates it again. An EC2 resize stops the instance, changes its size and
    starts it again (if it was running when the decision saw it), one step at
    a time: ``fail_steps["stop" | "modify" | "start"]`` holds errors raised
    by the next such steps, leaving the estate as that step found it (a
    resize interrupted between stop and start leaves the instance stopped).
    """

    name = "aws"

    def __init__(self, resources: Iterable[Resource] = (), *, latency: float = 0.0) -> None:
        self.resources: Estate = {r.cloud_id: r for r in resources}
        self.latency = latency
        self.failing_scopes: set[Scope] = set()
        self.unreadable: dict[str, str] = {}
        self.fail_next: list[ProviderError] = []
        self.fail_steps: dict[str, list[ProviderError]] = {}
        self.slow: dict[str, float] = {}
        self.steps: list[tuple[str, str]] = []  # (resize/start step, cloud id) made
        self.calls: list[tuple[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._created = itertools.count(1)
        self._by_decision: dict[str, str] = {}  # decision id → cloud id
        self.tokens: dict[str, Resource] = {}  # idempotency token → what it made

    def _new_cloud_id(self, desired: DesiredResource) -> str:
        return self.natural_id(desired) or f"{desired.type}-{next(self._created):012x}"

    def natural_id(self, desired: DesiredResource) -> str | None:
        return None if desired.type is ResourceType.EC2 else desired.id

    def _made_by(self, estate: Estate, decision_id: str) -> Resource | None:
        """What an earlier attempt of this decision created, if anything."""
        cloud_id = self._by_decision.get(decision_id)
        return estate.get(cloud_id) if cloud_id is not None else None

    async def _state(self, change: Callable[[Estate], T]) -> T:
        """Apply ``change`` to the estate (a file-backed fake overrides this)."""
        return change(self.resources)

    async def _call(self, kind: str, target: str) -> None:
        self.calls.append((kind, target))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            delay = self.latency + self.slow.get(kind, 0.0)
            if delay:
                await anyio.sleep(delay)
        finally:
            self.in_flight -= 1
        if kind != "observe" and self.fail_next:
            raise self.fail_next.pop(0)

    async def observe(self, scope: Scope) -> Sequence[Resource | Unreadable]:
        await self._call("observe", scope.key)
        if scope in self.failing_scopes:
            raise ProviderError(f"cannot observe {scope.key}: injected failure", retryable=True)

        def listed(estate: Estate) -> list[Resource | Unreadable]:
            found: list[Resource | Unreadable] = []
            for r in estate.values():
                if (r.region, r.type, r.provider) != (scope.region, scope.type, scope.provider):
                    continue
                error = self.unreadable.get(r.cloud_id)
                found.append(Unreadable(r.cloud_id, error) if error is not None
                             else msgspec.structs.replace(r, id=""))
            return found

        return await self._state(listed)

    async def create(self, desired: DesiredResource, *, decision_id: str, owner: str,
                     attempt: int = 1, token_unused: bool = False) -> Resource:
        await self._call("create", desired.id)
        token = create_token(decision_id, attempt)

        def create(estate: Estate) -> Resource:
            if token_unused and (decision_id in self._by_decision or token in self.tokens):
                # The executor said no call was ever made for this decision: a
                # real provider would then have made it twice. A bug, loudly.
                raise AssertionError(f"create {desired.id}: called with token_unused, but"
                                     f" decision {decision_id} already made a resource")
            existing = self._made_by(estate, decision_id)
            if existing is not None:
                return existing
            made = self.tokens.get(token)
            if made is not None:
                if made.cloud_id in estate:
                    return estate[made.cloud_id]
                raise CreatedResourceGone(
                    f"create {desired.id}: token {token} answers with {made.cloud_id},"
                    " which no longer exists", cloud_id=made.cloud_id)
            cloud_id = self._new_cloud_id(desired)
            if cloud_id in estate:
                raise ProviderError(f"create {desired.id}: {cloud_id} already exists and this"
                                    " decision did not create it", code="NameTaken")
            self._by_decision[decision_id] = cloud_id
            tags = {**desired.tags, ID_TAG: desired.id, MANAGED_TAG: "true", OWNER_TAG: owner,
                    DECISION_TAG: decision_id}
            resource = Resource(
                id=desired.id, cloud_id=cloud_id, type=desired.type, provider=desired.provider,
                region=desired.region, size=desired.size, status="running", tags=tags,
            )
            estate[cloud_id] = resource
            self.tokens[token] = resource
            return resource

        return _answered(await self._state(create))

    def die(self, cloud_id: str) -> None:
        """The resource dies (an instance terminated by AWS or by hand)."""
        del self.resources[cloud_id]

    async def adopt(self, desired: DesiredResource, current: Resource, *, decision_id: str,
                    owner: str) -> Resource:
        await self._call("adopt", current.cloud_id)

        def adopt(estate: Estate) -> Resource:
            existing = estate.get(current.cloud_id)
            if existing is None:
                raise ProviderError(f"{current.cloud_id} does not exist")
            for key in (OWNER_TAG, ID_TAG):
                if existing.tags.get(key) != current.tags.get(key):
                    raise ProviderError(f"{current.cloud_id}: {key} changed since observed",
                                        code="ChangedSinceObserved")
            tags = {**existing.tags, **desired.tags, ID_TAG: desired.id, MANAGED_TAG: "true",
                    OWNER_TAG: owner, DECISION_TAG: decision_id}
            adopted = msgspec.structs.replace(existing, tags=tags)
            estate[current.cloud_id] = adopted
            return adopted

        return _answered(await self._state(adopt))

    async def update(
        self, desired: DesiredResource, current: Resource, changes: Sequence[FieldChange]
    ) -> Resource:
        await self._call("update", current.cloud_id)
        size = next((c.desired for c in changes if c.field == "size"), None)
        start = any(c.field == "status" and c.desired == "running" for c in changes)

        def update(estate: Estate) -> Resource:
            existing = self._existing(estate, current)
            tags = dict(existing.tags)
            for change in changes:
                if change.field.startswith("tags.") and change.desired is not None:
                    tags[change.field.removeprefix("tags.")] = change.desired
            updated = msgspec.structs.replace(existing, tags=tags)
            if size is not None and current.type is not ResourceType.EC2:
                updated = msgspec.structs.replace(updated, size=size)  # in place
            estate[current.cloud_id] = updated
            return updated

        updated = await self._state(update)
        # As decided from the observation, never from what a retry finds.
        restore = start or (size is not None and current.status in RUNNING_STATUSES)
        if size is not None and current.type is ResourceType.EC2 and updated.size != size:
            if updated.status != "stopped":
                await self._step("stop", current, status="stopped")
            try:
                await self._step("modify", current, size=size)
            except ProviderError:
                if restore:  # stopped is worse than running at the old size
                    with contextlib.suppress(ProviderError):
                        await self._start(current)
                raise
        if restore:
            await self._start(current)
        return _answered(await self._state(lambda estate: self._existing(estate, current)))

    async def _start(self, current: Resource) -> None:
        found = await self._state(lambda estate: self._existing(estate, current))
        if found.status not in RUNNING_STATUSES:
            await self._step("start", current, status="running")

    async def _step(self, step: str, current: Resource, **change: str) -> None:
        """One step of a resize or start, failing if ``fail_steps`` says so."""
        failures = self.fail_steps.get(step)
        if failures:
            raise failures.pop(0)

        def apply(estate: Estate) -> None:
            estate[current.cloud_id] = msgspec.structs.replace(
                self._existing(estate, current), **change)

        await self._state(apply)
        self.steps.append((step, current.cloud_id))

    @staticmethod
    def _existing(estate: Estate, current: Resource) -> Resource:
        existing = estate.get(current.cloud_id)
        if existing is None:
            raise ProviderError(f"{current.cloud_id} does not exist")
        return existing

    async def delete(self, current: Resource) -> None:
        await self._call("delete", current.cloud_id)

        def delete(estate: Estate) -> None:
            existing = estate.get(current.cloud_id)
            if existing is None:
                raise ProviderError(f"{current.cloud_id} does not exist")
            check_unchanged(current, existing.tags, "fake:delete", guard=DELETE_GUARD,
                            doing="deleted")
            del estate[current.cloud_id]

        await self._state(delete)


_estate_codec = msgspec.json.Decoder(dict[str, Resource])


class SharedFakeProvider(FakeProvider):
    """A fake cloud kept in a JSON file, shared by every process that opens it
    (each change runs under an exclusive ``flock``): for multi-process tests."""

    def __init__(self, path: str | os.PathLike[str], *, latency: float = 0.0) -> None:
        super().__init__(latency=latency)
        self.path = Path(path)

    def _new_cloud_id(self, desired: DesiredResource) -> str:
        # unique across processes
        return self.natural_id(desired) or f"{desired.type}-{secrets.token_hex(6)}"

    def _made_by(self, estate: Estate, decision_id: str) -> Resource | None:
        # Another process may have made it: look at the shared estate itself.
        for existing in estate.values():
            if existing.tags.get(DECISION_TAG) == decision_id:
                return existing
        return None

    def die(self, cloud_id: str) -> None:
        self._locked(lambda estate: estate.pop(cloud_id))

    def seed(self, resources: Iterable[Resource]) -> None:
        """Write an initial estate."""
        self.path.write_bytes(msgspec.json.encode({r.cloud_id: r for r in resources}))

    def snapshot(self) -> Estate:
        return self._locked(dict)

    async def _state(self, change: Callable[[Estate], T]) -> T:
        return await anyio.to_thread.run_sync(self._locked, change)

    def _locked(self, change: Callable[[Estate], T]) -> T:
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            raw = self.path.read_bytes() if self.path.exists() else b"{}"
            estate = _estate_codec.decode(raw)
            result = change(estate)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_bytes(msgspec.json.encode(estate))
            tmp.replace(self.path)
            return result


def _answered(resource: Resource) -> Resource:
    """``resource`` as a cloud's answer carries it: without Ovi's id (as the
    AWS provider's), so that tests catch a caller that relies on one."""
    return msgspec.structs.replace(resource, id="")
