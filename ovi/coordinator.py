"""Claims: so that several Ovi instances never act on the same resource at once.

Claiming appends ``ClaimAcquired`` to ``claim/<resource_id>`` with the stream's
expected version, so two instances can never both hold a claim: the second
append fails. A claim expires; an expired one (or one held by a process of
this host that is no longer alive) may be taken over, and the takeover is
recorded. The claim stream's version after the claim is its fencing token: an
outcome is recorded together with the release, expecting that version, so an
instance whose claim was taken over mid-action finds out and says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

import msgspec

from eventstore import Event, EventStore, StreamBatch, WrongExpectedVersion, process_home
from ovi.events import ClaimAcquired, ClaimReleased, claim_stream
from projections import ProjectionRunner
from projections.claims import ClaimState, claim_states

__all__ = ["Claim", "ClaimResult", "Coordinator", "holder_is_gone"]


class Claim(msgspec.Struct, frozen=True):
    """A claim this instance holds."""

    resource_id: str
    token: int
    expires_at: datetime


class ClaimResult(msgspec.Struct):
    held: dict[str, Claim]
    blocked: dict[str, str]  # resource id → the instance holding it


def holder_is_gone(instance_id: str) -> bool:
    """True when ``instance_id`` (``home:pid:nonce``, see
    :func:`eventstore.default_instance_id`) names a process of this host and
    PID namespace that no longer runs: its claims need not wait for expiry."""
    parts = instance_id.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != process_home() or not parts[1].isdigit():
        return False
    pid = parts[1]
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Coordinator:
    """Claims and releases resources for one instance."""

    #: rounds of optimistic claiming before falling back to one claim at a time
    rounds = 4

    def __init__(
        self,
        store: EventStore,
        views: ProjectionRunner,
        *,
        clock: Callable[[], datetime],
        ttl: timedelta = timedelta(minutes=10),
    ) -> None:
        self.store = store
        self.views = views
        self.instance_id = store.instance_id
        self._clock = clock
        self.ttl = ttl

    async def claim(self, resource_ids: Iterable[str]) -> ClaimResult:
        """Claim every given resource that is free, in as few atomic appends as
        contention allows (one when nobody else is claiming)."""
        result = ClaimResult(held={}, blocked={})
        pending = set(resource_ids)
        for _ in range(self.rounds):
            if not pending:
                return result
            planned = await self._plan(pending, result)
            if not planned:
                return result
            try:
                await self.store.append_streams(batch for _, batch in planned)
            except WrongExpectedVersion:
                continue  # someone claimed meanwhile: re-read and try again
            for claim, _ in planned:
                result.held[claim.resource_id] = claim
            return result
        # Persistent contention: claim one at a time so free resources still go.
        for claim, batch in await self._plan(pending, result):
            try:
                await self.store.append_streams([batch])
            except WrongExpectedVersion:
                result.blocked[claim.resource_id] = await self._holder(claim.resource_id)
            else:
                result.held[claim.resource_id] = claim
        return result

    async def _plan(
        self, pending: set[str], result: ClaimResult
    ) -> list[tuple[Claim, StreamBatch]]:
        await self.views.catch_up("claims")
        states = await self.views.query(lambda db: claim_states(db, pending))
        now = self._clock()
        planned: list[tuple[Claim, StreamBatch]] = []
        for resource_id in sorted(pending):
            state = states.get(resource_id)
            if state is not None and self._blocks(state, now):
                result.blocked[resource_id] = state.instance_id
                pending.discard(resource_id)
                continue
            version = state.version if state is not None else 0
            takeover = (state.instance_id if state is not None and not state.released
                        and state.instance_id != self.instance_id else None)
            claim = Claim(resource_id, version + 1, now + self.ttl)
            event = ClaimAcquired(resource_id=resource_id, instance_id=self.instance_id,
                                  claimed_at=now, expires_at=claim.expires_at,
                                  token=claim.token, takeover_of=takeover)
            planned.append((claim, StreamBatch(claim_stream(resource_id), (event,),
                                               expected_version=version)))
        return planned

    async def _holder(self, resource_id: str) -> str:
        await self.views.catch_up("claims")
        states = await self.views.query(lambda db: claim_states(db, [resource_id]))
        state = states.get(resource_id)
        return state.instance_id if state is not None else "unknown"

    def _blocks(self, state: ClaimState, now: datetime) -> bool:
        return (state.held_at(now) and state.instance_id != self.instance_id
                and not holder_is_gone(state.instance_id))

    def expired(self, claim: Claim) -> bool:
        """Whether ``claim`` has run out (or is about to, within a minute)."""
        return self._clock() >= claim.expires_at - timedelta(minutes=1)

    def fence(self, claim: Claim) -> StreamBatch:
        """An empty batch that holds only while the claim stream is still at
        ``claim``'s token: append it with a write to make that write fenced."""
        return StreamBatch(claim_stream(claim.resource_id), (),
                           expected_version=claim.token)

    def release_batch(self, claim: Claim) -> StreamBatch:
        """The release of ``claim``, expecting its token: append it together
        with an outcome to prove the claim was still ours."""
        event: Event = ClaimReleased(resource_id=claim.resource_id,
                                     instance_id=self.instance_id, token=claim.token)
        return StreamBatch(claim_stream(claim.resource_id), (event,),
                           expected_version=claim.token)

    async def release(self, claim: Claim) -> bool:
        """Release a claim; False when it had been taken over meanwhile."""
        try:
            await self.store.append_streams([self.release_batch(claim)])
        except WrongExpectedVersion:
            return False
        return True
