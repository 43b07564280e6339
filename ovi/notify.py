"""Announcing findings: notify decisions, decisions awaiting approval and
failed actions, once per open finding, to the log and an optional webhook.

A cycle only *offers* its notices (:meth:`Notifier.offer`): they go into a
bounded queue that a background task drains, so a slow or failing webhook
never blocks or fails a cycle; a notice that does not fit waits for a later
cycle. Once delivered, ``NotificationSent`` is appended, keyed by the open
finding (resource and position of its ``DiffDetected``), so neither a later
cycle nor a restart announces it again; a notice whose webhook delivery fails
after its retries is offered again by a later cycle.

The webhook URL is a credential (whoever holds a Slack incoming-webhook URL
can post to the channel): it is read from a file or a systemd credential,
kept only in the :class:`WebhookSink`, and never written to the log, the
output, a metric or an error message (errors name the sink, not the URL).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import aiohttp
import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from eventstore import EventStore, EventStoreError
from ovi._exceptions import OviError
from ovi.config import Notify
from ovi.engine import CycleResult
from ovi.events import NotificationSent, resource_stream
from ovi.model import Action, DecisionStatus, Outcome
from ovi.servicelog import ServiceLog
from projections import ProjectionRunner
from projections.findings import open_findings
from projections.operations import announced

__all__ = ["Notice", "Notifier", "Sink", "WebhookSink", "notices", "read_webhook_url"]


class Notice(msgspec.Struct, frozen=True, kw_only=True):
    """One thing worth a person's attention, and the finding behind it."""

    key: str  # kind:resource:position of the finding's DiffDetected
    kind: str  # notify | awaiting_approval | failed
    resource_id: str
    decision_id: str
    action: str
    status: str
    reason: str
    cycle_id: str
    error: str | None = None

    @property
    def text(self) -> str:
        """One line for a chat channel."""
        if self.kind == "failed":
            return (f"Ovi: {self.action} {self.resource_id} failed ({self.decision_id}):"
                    f" {self.error}")
        if self.kind == "awaiting_approval":
            return (f"Ovi: {self.action} {self.resource_id} awaits approval:"
                    f" ovi approve {self.decision_id} ({self.reason})")
        return f"Ovi: {self.resource_id}: {self.reason}"


def notices(result: CycleResult, finding_revs: dict[str, int]) -> list[Notice]:
    """What a cycle has to announce; ``finding_revs`` maps a resource to the
    position of its open finding's ``DiffDetected`` (the notice's identity)."""
    found: list[Notice] = []
    failed = {e.decision_id: e for e in result.executions if e.outcome is Outcome.FAILED}
    for d in result.decisions:
        if d.action is Action.NOTIFY:
            kind = "notify"
        elif d.decision_id in failed:
            kind = "failed"
        elif d.status is DecisionStatus.AWAITING_APPROVAL:
            kind = "awaiting_approval"
        else:
            continue
        rev = finding_revs.get(d.resource_id)
        anchor = str(rev) if rev is not None else d.decision_id
        execution = failed.get(d.decision_id)
        found.append(Notice(
            key=f"{kind}:{d.resource_id}:{anchor}", kind=kind, resource_id=d.resource_id,
            decision_id=d.decision_id, action=d.action.value, status=d.status.value,
            reason=d.reason, cycle_id=result.cycle_id,
            error=execution.error if execution is not None else None))
    return found


class Sink(Protocol):
    """Somewhere a notice goes. ``deliver`` raises :class:`OviError` (with a
    message that holds no secret) when it could not deliver."""

    name: str

    async def deliver(self, notice: Notice) -> None: ...


class WebhookSink:
    """POSTs ``{"text": …, "finding": {…}}`` (Slack-compatible) to a URL,
    retrying with exponential backoff and jitter on errors and 5xx answers."""

    name = "webhook"

    def __init__(self, url: str, *, attempts: int = 5, base_delay: float = 0.5,
                 timeout: float = 10.0) -> None:
        self._url = url
        self.attempts = attempts
        self.base_delay = base_delay
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return "WebhookSink(<url withheld>)"

    async def deliver(self, notice: Notice) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout))
        body = {"text": notice.text, "finding": msgspec.to_builtins(notice)}
        why = ""
        for attempt in range(self.attempts):
            if attempt:
                await anyio.sleep(random.uniform(0.5, 1.0) * self.base_delay * 2 ** (attempt - 1))
            try:
                async with self._session.post(self._url, json=body) as response:
                    if response.status < 300:
                        return
                    why = f"answered HTTP {response.status}"
                    if response.status < 500 and response.status != 429:
                        break  # refused: asking again will not help
            except (aiohttp.ClientError, TimeoutError, OSError, RuntimeError) as exc:
                # The exception's text may hold the URL: only its kind is told.
                why = f"{type(exc).__name__}"
        raise OviError(f"webhook: not delivered after {attempt + 1} attempt(s): {why}")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def read_webhook_url(notify: Notify, config_source: str) -> str | None:
    """The webhook URL the config points at, or None when it names none.

    :raises OviError: naming the file or credential (never its content) when
        it cannot be read or does not hold an http(s) URL.
    """
    if notify.webhook_url_file:
        path = Path(notify.webhook_url_file)
        if not path.is_absolute():
            path = Path(config_source).parent / path
        where = f"notify.webhook_url_file {path}"
    elif notify.webhook_credential:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise OviError(f"{config_source}: notify.webhook_credential: $CREDENTIALS_DIRECTORY"
                           " is not set (LoadCredential= in the unit provides it)")
        path = Path(directory) / notify.webhook_credential
        where = f"credential {notify.webhook_credential!r}"
    else:
        return None
    try:
        url = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise OviError(f"{config_source}: {where}: cannot read it: {reason}") from None
    if not url.startswith(("https://", "http://")) or any(c.isspace() for c in url):
        raise OviError(f"{config_source}: {where}: expected one http(s) URL in it")
    return url


class Notifier:
    """The queue between cycles and the sinks, and the task that drains it."""

    def __init__(self, store: EventStore, views: ProjectionRunner, log: ServiceLog, *,
                 webhook: WebhookSink | None = None, queue_size: int = 256,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.store = store
        self.views = views
        self.log = log
        self.webhook = webhook
        self._clock = clock or (lambda: datetime.now(UTC))
        self._pending: set[str] = set()  # offered, not yet delivered or given up
        send, receive = anyio.create_memory_object_stream[Notice](queue_size)
        self._send: MemoryObjectSendStream[Notice] = send
        self._receive: MemoryObjectReceiveStream[Notice] = receive
        self.delivered = 0
        self.failed = 0

    async def offer(self, result: CycleResult) -> int:
        """Queue this cycle's notices not announced yet; returns how many
        were queued. Never raises for a full queue (the rest waits)."""
        if not notices(result, {}):
            return 0  # nothing to announce: no query at all (the steady case)
        # Deliveries recorded during the cycle must be seen (not offered
        # again), and the findings it opened give the notices their keys.
        await self.views.catch_up("operations", "findings")
        revs = {r: f.detected_rev for r, f in (await self.views.query(open_findings)).items()}
        candidates = [n for n in notices(result, revs) if n.key not in self._pending]
        if not candidates:
            return 0
        done = await self.views.query(lambda db: announced(db, (n.key for n in candidates)))
        queued = 0
        for notice in candidates:
            if notice.key in done:
                continue
            try:
                self._send.send_nowait(notice)
            except anyio.WouldBlock:
                self.log.warning("notify", "notification queue full: the rest waits for a"
                                 " later cycle", waiting=len(self._pending))
                break
            self._pending.add(notice.key)
            queued += 1
        return queued

    async def run(self) -> None:
        """Deliver queued notices until cancelled."""
        async for notice in self._receive:
            try:
                await self._deliver(notice)
            finally:
                self._pending.discard(notice.key)

    async def _deliver(self, notice: Notice) -> None:
        self.log.warning("notice", notice.text, kind=notice.kind, resource=notice.resource_id,
                         decision=notice.decision_id, status=notice.status)
        sinks = ["log"]
        if self.webhook is not None:
            try:
                await self.webhook.deliver(notice)
            except OviError as exc:
                self.failed += 1
                self.log.error("notify", f"{exc}; offered again next cycle",
                               resource=notice.resource_id, kind=notice.kind)
                return
            sinks.append(self.webhook.name)
        try:
            await self.store.append(resource_stream(notice.resource_id), [NotificationSent(
                key=notice.key, kind=notice.kind, resource_id=notice.resource_id,
                decision_id=notice.decision_id, sinks=tuple(sinks), at=self._clock())])
        except EventStoreError as exc:
            self.log.error("notify", f"delivered, but not recorded (may be repeated): {exc}",
                           resource=notice.resource_id)
            return
        self.delivered += 1

    async def aclose(self) -> None:
        self._send.close()
        self._receive.close()
        if self.webhook is not None:
            await self.webhook.aclose()
