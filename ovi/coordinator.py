"""Claims: so that several Ovi instances never act on the same resource at once.

Claiming appends ``ClaimAcquired`` to ``claim/<resource_id>`` with the stream's
expected version, so two instances can never both hold a claim: the second
append fails. A claim expires; an expired one (or one held by a process of
this host that is no longer alive) may be taken over, and the takeover is
recorded. The claim stream's version after the claim is its fencing token: an
outcome is recorded together with the release, expecting the stream's
version, so an instance whose claim was taken over mid-action finds out and
says so.

While work goes on, the holder renews its claims (``ClaimRenewed``, appended
expecting the stream's version, so a claim taken over is never renewed): an
action longer than the TTL keeps its claim. Renewals move the stream's
version but not the fencing token, so a :class:`Claim` tracks both. A claim
that could not be renewed, or was taken over, is no longer *usable*: no new
work starts under it. One whose renewal merely could not be written is still
renewed at the next heartbeat, for the work already running under it.

"What time is it" for claims is answered in one place, :meth:`Coordinator.now`:
the store's clock, the same for every host sharing the log. The shortcut for
a holder that is gone (:func:`holder_is_gone`) is taken only on the holder's
own host and PID namespace, where its absence can be seen.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from datetime import datetime, timedelta
from typing import NamedTuple

import anyio
import msgspec

from eventstore import (
    Appended,
    Event,
    EventStore,
    EventStoreError,
    StreamBatch,
    WrongExpectedVersion,
    process_home,
)
from ovi._shielded import finish_shielded
from ovi.events import ClaimAcquired, ClaimReleased, ClaimRenewed, claim_stream
from projections import ProjectionRunner
from projections.claims import ClaimState, claim_states

__all__ = ["Claim", "ClaimResult", "Coordinator", "KeptClaims", "holder_is_gone"]


class Claim:
    """A claim this instance holds: a live handle, moved on by renewals.

    ``token`` is the fencing token, recorded in every action done under the
    claim; it never changes. ``version`` is the claim stream's version now:
    what the next append to it (a renewal, a fenced write, the release)
    expects. ``lost`` means the claim was taken over or could not be renewed:
    no new work may start under it; ``released`` that it was given back;
    ``taken_over`` that another instance holds it now; ``in_doubt`` that a
    write-ahead was made (or tried) under it and no outcome recorded since:
    it must not be given back without that outcome. A claim whose renewal
    could not be written is lost but still renewed: the work already under
    way keeps it, and a heartbeat that fails once must not let it run out.
    """

    __slots__ = ("_lock", "confirmed_at", "expires_at", "in_doubt", "lost", "released",
                 "resource_id", "taken_over", "token", "version")

    def __init__(self, resource_id: str, token: int, expires_at: datetime, *,
                 confirmed_at: datetime, version: int | None = None) -> None:
        self.resource_id = resource_id
        self.token = token
        self.version = token if version is None else version
        self.expires_at = expires_at
        self.confirmed_at = confirmed_at  # when an append last proved it ours
        self.lost = False
        self.released = False
        self.taken_over = False
        self.in_doubt = False
        # One append to the claim stream at a time. Almost always free: taken
        # without a trip through the event loop (anyio's checkpoint on every
        # acquire was ~10 % of a 1,000-action execution).
        self._lock = anyio.Lock(fast_acquire=True)

    @property
    def active(self) -> bool:
        """Neither lost nor released."""
        return not (self.lost or self.released)

    @property
    def renewable(self) -> bool:
        """Still ours as far as we know: neither taken over nor released."""
        return not (self.taken_over or self.released)

    def _taken(self) -> None:
        self.lost = self.taken_over = True

    def __repr__(self) -> str:
        return (f"Claim({self.resource_id!r}, token={self.token}, version={self.version},"
                f" expires_at={self.expires_at.isoformat()}, lost={self.lost},"
                f" released={self.released})")


class Reading(NamedTuple):
    """A reading of :meth:`Coordinator.now`, and the store's
    :meth:`~eventstore.EventStore.local_clock` when it was asked for (None
    where the store's clock is another host's)."""

    at: datetime
    asked: datetime | None


class KeptClaims:
    """The claims a :meth:`Coordinator.keeping` block renews; claims taken
    while the block runs are :meth:`add`-ed to them."""

    def __init__(self, claims: Iterable[Claim] = ()) -> None:
        self.claims = list(claims)

    def add(self, claims: Iterable[Claim]) -> None:
        """Renew these too, from the next heartbeat on."""
        self.claims.extend(claims)


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
    """Claims, renews and releases resources for one instance.

    Claims are renewed every :attr:`heartbeat` (a third of the TTL) while
    :meth:`keeping` them; a claim is usable until :attr:`margin` before it
    expires, so work never starts on a claim about to run out.
    """

    #: rounds of optimistic claiming before falling back to one claim at a time
    rounds = 4
    #: how long a :class:`Reading` stands for the claim clock, moved on by
    #: what the store's clock moved since (see :meth:`confirm`)
    fresh_for = timedelta(seconds=1)

    def __init__(
        self,
        store: EventStore,
        views: ProjectionRunner,
        *,
        ttl: timedelta = timedelta(minutes=10),
    ) -> None:
        self.store = store
        self.views = views
        self.instance_id = store.instance_id
        self.ttl = ttl
        self.heartbeat = ttl / 3
        self.margin = min(timedelta(minutes=1), ttl / 4)
        self._reading: asyncio.Future[datetime] | None = None

    async def now(self) -> datetime:
        """The time that claims are judged by: every expiry, renewal and
        takeover asks here (and only here). It is the store's clock — with a
        shared log the database server's, recorded with each claim — never
        this host's: hosts whose clocks disagree judge one claim alike, so a
        host whose clock runs fast cannot take a live claim over early.

        Callers that ask while a reading is under way share it: a reading is
        a query (on SQLite one more job queued for the reader's thread), and
        a thousand actions asking one by one queued ~5,000 of them, ~4 ms
        each. The store samples its clock once the query has run, so a shared
        reading is older than an ask only by the hop back to the event loop,
        milliseconds against a :attr:`margin` of minutes; and an older
        reading only ever errs towards caution (a claim looks held, a renewal
        expires sooner), except in :meth:`usable`, which the margin covers.
        """
        reading = self._reading
        # A reading already done was sampled before this ask: a new one is
        # taken (its done-callback clears it only on the next loop iteration).
        if reading is None or reading.done():
            reading = self._reading = asyncio.ensure_future(self.store.now())
            reading.add_done_callback(self._reading_done)
        # shielded: a caller cancelled while waiting leaves the others' reading alone
        return await asyncio.shield(reading)

    async def reading(self) -> Reading:
        """:meth:`now`, with when it was asked for (see :meth:`confirm`)."""
        asked = self.store.local_clock()
        return Reading(await self.now(), asked)

    def _reading_done(self, reading: asyncio.Future[datetime]) -> None:
        if self._reading is reading:  # not a newer one started meanwhile
            self._reading = None
        if not reading.cancelled():
            reading.exception()  # retrieved: every waiter may have gone

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
        now = await self.now()
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
            claim = Claim(resource_id, version + 1, now + self.ttl, confirmed_at=now)
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

    # -- keeping claims --------------------------------------------------

    async def usable(self, claim: Claim, *, now: datetime | None = None) -> bool:
        """Whether new work may start under ``claim``: not lost, not released,
        and not within :attr:`margin` of running out — at ``now``, a reading
        of :meth:`now` the caller just took, else at a new one."""
        if not claim.active:
            return False
        return (now or await self.now()) < claim.expires_at - self.margin

    async def confirm(self, claim: Claim, *, after: Reading | None = None) -> bool:
        """:meth:`usable`, after renewing ``claim`` if no append proved it ours
        for a heartbeat (work that waited long for a slot finds a takeover
        before it starts, not when it records its outcome).

        ``after``, a :class:`Reading` taken less than :attr:`fresh_for` ago
        (say just before the action's write-ahead), stands for a new one
        where the store's clock is this host's (SQLite): moved on by what
        that clock itself moved since the reading was asked for, read without
        a query. The store samples its clock after it was asked, so that is
        never earlier than the store's clock now, and a step of the clock or
        a suspended host shows in it (it is the clock, not a stopwatch beside
        it): past :attr:`fresh_for`, or backwards, a new reading is taken.
        It spares the action a query's round trip through a busy event loop
        just before its call: ~3 ms for each wave of a 1,000 actions. Where
        the clock is another host's (PostgreSQL's server), a new reading is
        always taken.
        """
        now = None if after is None else self._moved_on(after)
        if now is None:
            now = await self.now()
        if not await self.usable(claim, now=now):
            return False
        if now - claim.confirmed_at < self.heartbeat:
            return True
        try:
            await self.renew([claim])
        except EventStoreError:
            return False
        return await self.usable(claim)

    def _moved_on(self, reading: Reading) -> datetime | None:
        """The claim clock now, from ``reading`` moved on by what the store's
        local clock moved since it was asked for; None where there is no
        local clock, or it moved back or :attr:`fresh_for` or more."""
        local = self.store.local_clock()
        if reading.asked is None or local is None:
            return None
        moved = local - reading.asked
        if not timedelta(0) <= moved < self.fresh_for:
            return None
        return reading.at + moved

    async def renew(self, claims: Iterable[Claim]) -> None:
        """Extend every active claim given to a full TTL from now, in one
        atomic append when none was taken over (else one at a time). A claim
        taken over, or one whose renewal failed, is marked lost; one whose
        renewal failed is renewed again next time (it may still be ours).

        :raises EventStoreError: if the log cannot be written (every claim of
            the append is then marked lost).
        """
        claims = sorted(claims, key=lambda c: c.resource_id)
        async with AsyncExitStack() as locks:
            for claim in claims:
                await locks.enter_async_context(claim._lock)
            live = [c for c in claims if c.renewable]
            if not live:
                return
            now = await self.now()
            expires = now + self.ttl
            # Shielded, for a while: the store commits an append whose caller
            # was cancelled, and a claim whose version did not move on with it
            # could not be given back (the release would expect the old
            # version). Cut short by a cancellation, the claims are lost:
            # nothing new starts under them. One whose renewal was recorded in
            # time is still given back; one whose renewal did not answer
            # expires on its own.
            try:
                await finish_shielded(self._append_renewals(live, now, expires))
            except BaseException:
                for claim in live:
                    claim.lost = True
                raise

    async def _append_renewals(self, live: list[Claim], now: datetime,
                               expires: datetime) -> None:
        try:
            await self.store.append_streams(self._renewal(c, now, expires) for c in live)
        except WrongExpectedVersion:
            for claim in live:  # which one was taken over?
                try:
                    await self.store.append_streams([self._renewal(claim, now, expires)])
                except WrongExpectedVersion:
                    claim._taken()
                else:
                    self._renewed(claim, now, expires)
            return
        except EventStoreError:
            for claim in live:
                claim.lost = True
            raise
        for claim in live:
            self._renewed(claim, now, expires)

    def _renewal(self, claim: Claim, now: datetime, expires: datetime) -> StreamBatch:
        event = ClaimRenewed(resource_id=claim.resource_id, instance_id=self.instance_id,
                             token=claim.token, renewed_at=now, expires_at=expires)
        return StreamBatch(claim_stream(claim.resource_id), (event,),
                           expected_version=claim.version)

    @staticmethod
    def _renewed(claim: Claim, now: datetime, expires: datetime) -> None:
        claim.version += 1
        claim.expires_at = expires
        claim.confirmed_at = now

    @asynccontextmanager
    async def keeping(self, claims: Iterable[Claim] = ()) -> AsyncIterator[KeptClaims]:
        """Renew ``claims``, and those added to what this yields, every
        :attr:`heartbeat` while the block runs, each until it is released or
        lost."""
        kept = KeptClaims(claims)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._heartbeat, kept)
                try:
                    yield kept
                finally:
                    group.cancel_scope.cancel()
        except BaseExceptionGroup as failed:
            # The heartbeat raises nothing of its own: what the block raised
            # goes to the caller as it was, not wrapped in a group.
            if len(failed.exceptions) == 1:
                raise failed.exceptions[0] from None
            raise

    async def _heartbeat(self, kept: KeptClaims) -> None:
        while True:
            await anyio.sleep(self.heartbeat.total_seconds())
            live = [c for c in kept.claims if c.renewable]
            kept.claims = live  # the released and taken over are not looked at again
            if not live:
                continue
            try:
                await self.renew(live)
            except EventStoreError:
                pass  # marked lost: nothing new starts under them; tried again next beat

    # -- appending under a claim -----------------------------------------

    def fence(self, claim: Claim) -> StreamBatch:
        """An empty batch that holds only while the claim stream is still
        where ``claim`` left it: append it with a write to make that write
        fenced (use :meth:`append_fenced`, which keeps renewals out of the way)."""
        return StreamBatch(claim_stream(claim.resource_id), (), expected_version=claim.version)

    def release_batch(self, claim: Claim) -> StreamBatch:
        """The release of ``claim``, expecting the claim stream's version:
        append it together with an outcome to prove the claim was still ours
        (use :meth:`append_releasing`)."""
        event: Event = ClaimReleased(resource_id=claim.resource_id,
                                     instance_id=self.instance_id, token=claim.token)
        return StreamBatch(claim_stream(claim.resource_id), (event,),
                           expected_version=claim.version)

    async def append_fenced(self, claim: Claim, batches: Sequence[StreamBatch], *,
                            checked_at: datetime | None = None,
                            outcome: bool = False) -> Appended:
        """Append ``batches`` only while ``claim`` is still ours. ``checked_at``
        is a reading of :meth:`now` taken before this call: the append proves
        the claim ours as of then (an earlier time than the commit's, so the
        claim is confirmed again no later than it need be), and no reading of
        its own is taken. ``outcome``: ``batches`` record the outcome of what
        was written ahead under the claim, which is then no longer in doubt;
        anything else appended fenced may be a write-ahead.

        :raises WrongExpectedVersion: if the claim was taken over; nothing is
            written and the claim is marked lost.
        :raises EventStoreError: if the log cannot be written.
        """
        async with claim._lock:
            if not outcome:
                # Before the append: one cut short by a cancellation may still commit.
                claim.in_doubt = True

            def refused(exc: BaseException) -> None:
                # Another fence among ``batches`` (a pause stream) may be what moved.
                if (isinstance(exc, WrongExpectedVersion)
                        and exc.stream == claim_stream(claim.resource_id)):
                    claim._taken()

            async def settled(_: Appended) -> None:
                claim.in_doubt = False

            appending = self.store.append_streams([*batches, self.fence(claim)])
            try:
                # An outcome, shielded for a while: one cut short by a
                # cancellation still commits, and the claim, no longer in
                # doubt, can then be given back instead of held to its TTL
                # (or, taken over meanwhile, is known to be).
                appended = await (finish_shielded(appending, settled, refused=refused)
                                  if outcome else appending)
            except WrongExpectedVersion as exc:
                refused(exc)
                raise
            if outcome:
                claim.in_doubt = False
            # Written all the same if the clock cannot be read: the claim is
            # then only proved ours less recently.
            with suppress(EventStoreError):
                claim.confirmed_at = checked_at or await self.now()
            return appended

    async def append_releasing(self, claim: Claim, batches: Sequence[StreamBatch]) -> Appended:
        """Append ``batches`` together with the release of ``claim``.

        :raises WrongExpectedVersion: if the claim was taken over meanwhile;
            nothing is written and the claim is marked lost.
        :raises EventStoreError: if the log cannot be written.
        """
        async with claim._lock:
            try:
                appended = await self.store.append_streams(
                    [*batches, self.release_batch(claim)])
            except WrongExpectedVersion:
                claim._taken()
                raise
            claim.released = True
            return appended

    async def release(self, claim: Claim) -> bool:
        """Release a claim; False when it had been taken over meanwhile."""
        try:
            await self.append_releasing(claim, [])
        except WrongExpectedVersion:
            return False
        return True
