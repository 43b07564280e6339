"""``ovi run``: the reconcile loop as a long-running service.

One store, one projections runner and one provider per process; each cycle is
:meth:`ovi.engine.Engine.run_cycle` (mode ``run``, or ``plan`` with
``--plan-only`` and while the log holds event types this Ovi does not know).
Around it:

- **schedule**: one cycle at a time, every ``interval`` plus a little jitter,
  on a fixed grid; a cycle that overruns skips the ticks it covered (the next
  starts on the next free tick), never overlapping and never bursting;
- **reacting to the log**: an ``ApprovalGranted``, ``AutomationPaused`` or
  ``AutomationResumed`` appended by another process starts the next cycle at
  once (the follower polls the head: one indexed query every half second);
- **systemd**: ``READY=1`` once the log is open, the projections caught up and
  crash recovery done; ``STATUS=`` after every cycle; ``WATCHDOG=1`` from the
  loop while no cycle runs longer than ``cycle_timeout``; ``STOPPING=1``;
- **signals**: SIGTERM/SIGINT drain (no new action starts; in-flight ones
  finish and record their outcome within ``drain_timeout``; a second signal
  stops at once); SIGHUP reloads the config, keeping the old one if the new
  one is invalid (logged with file, line and field);
- **metrics, health, notifications and logs** (:mod:`ovi.metrics`,
  :mod:`ovi.notify`, :mod:`ovi.servicelog`).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import anyio
import msgspec
from anyio.abc import TaskGroup

from eventstore import EventStoreError
from ovi._exceptions import ConfigError, OviError
from ovi.compat import UnknownEventTypes
from ovi.config import Config, load_config
from ovi.engine import CycleResult, Engine, new_cycle_id
from ovi.events import PAUSE_ALL, ApprovalGranted, AutomationPaused, AutomationResumed
from ovi.evidence import load_chain_key, write_anchor
from ovi.metrics import Health, MetricsServer, ServiceMetrics
from ovi.model import Action, CycleMode, DecisionStatus, Outcome
from ovi.notify import Notifier, WebhookSink, read_webhook_url
from ovi.providers.base import Provider
from ovi.recovery import recover_in_doubt
from ovi.runtime import Runtime, open_runtime, shown
from ovi.sdnotify import SdNotifier, watchdog_interval
from ovi.servicelog import LogFormat, ServiceLog
from projections import ProjectionError

__all__ = ["ProviderSource", "Service", "ServiceSettings", "aws_provider_source"]

#: appended by other processes, they start the next cycle at once
WAKE_TYPES = ("ApprovalGranted", "AutomationPaused", "AutomationResumed")


class ServiceSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What ``ovi run`` was started with (durations in seconds)."""

    config_path: Path
    #: a SQLite file, or a postgresql:// URL (then the log is read through ``mirror_path``)
    store_path: Path | str
    mirror_path: Path | None = None
    interval: float = 30.0
    metrics_host: str | None = "127.0.0.1"  # None: no metrics server
    metrics_port: int = 9464
    log_format: LogFormat = LogFormat.TEXT
    plan_only: bool = False
    drain_timeout: float = 60.0
    cycle_timeout: float = 3600.0  # a cycle running longer is hung: watchdog pings stop
    jitter: float = 0.1  # of the interval, at most
    follow_interval: float = 0.5
    max_cycles: int | None = None  # stop after this many cycles (benchmarks, tests)
    anchor_file: Path | None = None  # the head is appended here after each cycle
    #: the key of a keyed log (None: the systemd credential ovi-chain-key, if any)
    chain_key_file: Path | None = None


class ProviderSource(msgspec.Struct, frozen=True):
    """How to build the provider for a config, and what of the config it is
    built from (a reload that changes ``key`` rebuilds the provider)."""

    open: Callable[[Config], AbstractAsyncContextManager[Provider]]
    key: Callable[[Config], object]


def _aws_open(config: Config) -> AbstractAsyncContextManager[Provider]:
    from ovi.providers.aws import AWSProvider  # the only path that needs the AWS SDK

    return AWSProvider.from_config(config)


def _aws_key(config: Config) -> object:
    return (config.provider, config.owner, config.rules.allow_resize,
            config.rules.final_snapshot)


def aws_provider_source() -> ProviderSource:
    """The AWS provider, as :meth:`AWSProvider.from_config` builds it."""
    return ProviderSource(_aws_open, _aws_key)


class _Wakeup:
    """A resettable event: set by the follower, reloads and signals; waited
    on, with a deadline, by the loop between cycles."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self.why = ""

    def set(self, why: str) -> None:
        if not self._event.is_set():
            self.why = why
        self._event.set()

    async def wait(self, seconds: float) -> bool:
        """True when woken before ``seconds`` passed."""
        with anyio.move_on_after(max(seconds, 0)):
            await self._event.wait()
        woken = self._event.is_set()
        if woken:
            self._event = anyio.Event()
        return woken


#: what the service answers: stop (drain), stop, reload the config
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Started(NamedTuple):
    """What start-up hands the loop."""

    runtime: Runtime
    engine: Engine
    compat: UnknownEventTypes
    notifier: Notifier
    provider_key: object
    folded: int
    recovered: int


class Service:
    """The loop and everything around it; :meth:`run` returns the exit code."""

    def __init__(self, settings: ServiceSettings, *, provider: ProviderSource | None = None,
                 log: ServiceLog | None = None, notifier: SdNotifier | None = None,
                 on_cycle: Callable[[CycleResult], Awaitable[None]] | None = None) -> None:
        self.settings = settings
        self.source = provider or aws_provider_source()
        self.log = log or ServiceLog(settings.log_format)
        self.sd = notifier or SdNotifier()
        self.on_cycle = on_cycle  # awaited after every finished cycle (benchmarks, embedding)
        self.metrics = ServiceMetrics()
        self.health = Health(max_age=max(3 * settings.interval, 3 * settings.follow_interval))
        self.cycles = 0
        self.metrics_port: int | None = None
        self._config: Config | None = None
        self._webhook_url: str | None = None
        self._reloaded: Config | None = None
        self._draining = False
        self._drain_timed_out = False
        self._cycle_scope: anyio.CancelScope | None = None
        self._cycle_started: float | None = None  # monotonic, while a cycle runs
        self._wake = _Wakeup()
        self._status = "starting"
        self._statuses: dict[str, DecisionStatus] = {}
        self._unknown: frozenset[str] = frozenset()
        self._reported_unknown: frozenset[str] = frozenset()
        self._group: TaskGroup | None = None
        self._notifier: Notifier | None = None
        self._providing = AsyncExitStack()  # the provider's: a reload may replace it
        self._starting = False
        self._stopped_starting: str | None = None  # the signal that stopped start-up
        self._early_signals: list[int] = []  # came before _signals' receiver was in place

    # -- lifecycle -------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or ``max_cycles``); 0 after a clean drain.

        :raises ConfigError: if the config is invalid at start-up.
        :raises OviError: if the webhook credential cannot be read at start-up.
        """
        settings = self.settings
        self._config = load_config(settings.config_path)
        self._webhook_url = self._read_webhook(self._config)
        self.log.info("start", f"ovi run: {len(self._config.desired_resources())} desired"
                      f" resources, log {shown(settings.store_path)}",
                      config=str(settings.config_path), interval=settings.interval,
                      plan_only=settings.plan_only, config_hash=self._config.config_hash[:12])
        try:
            async with AsyncExitStack() as stack:
                started = await self._until_ready(lambda: self._start(stack))
                if started is not None:
                    await self._serve(started)
        finally:
            self.sd.notify(STOPPING="1", STATUS="stopped")
            self.sd.close()
        if self._stopped_starting is not None:
            self.log.info("stop", f"{self._stopped_starting} during start-up: stopped before"
                          " ready (whatever start-up left undone, the next start does)",
                          signal=self._stopped_starting)
            return 0
        if self._drain_timed_out:
            self.log.error("stop", "drain timeout: actions in flight were cancelled and stay"
                           " in doubt; the next start resolves them against the cloud")
            return 1
        self.log.info("stop", "stopped", cycles=self.cycles)
        return 0

    async def _until_ready(self, start: Callable[[], Awaitable[_Started]]) -> _Started | None:
        """``start()``; None if SIGTERM or SIGINT came first. Start-up (a refold
        after an upgrade, a mirror's first copy, recovery) can take minutes,
        and a signal must stop it then too, cleanly: it is cancelled, as a
        crash would stop it, which every step of it is made to survive.

        The handlers are this loop's own until :meth:`_signals` puts its
        receiver in their place: a signal in between is kept for it (a SIGHUP
        during start-up too, which would otherwise end the process)."""
        loop = asyncio.get_running_loop()
        with anyio.CancelScope() as starting:
            def early(signum: signal.Signals) -> None:
                self._early_signals.append(signum)
                if signum != signal.SIGHUP and self._starting:
                    self._stopped_starting = signum.name
                    starting.cancel()

            self._starting = True
            for signum in _SIGNALS:
                loop.add_signal_handler(signum, early, signum)
            try:
                started = await start()
            except BaseException:
                for signum in _SIGNALS:
                    loop.remove_signal_handler(signum)
                raise
            finally:
                self._starting = False
            # A signal that came as start-up ended, too late to cancel it, is
            # kept in _early_signals: the drain handles it.
            self._stopped_starting = None
            return started
        return None

    async def _start(self, stack: AsyncExitStack) -> _Started:
        """Everything before ``READY=1``: the log opened, the projections caught
        up, the provider built, crash recovery done, the metrics server up."""
        assert self._config is not None
        settings = self.settings
        runtime = await stack.enter_async_context(open_runtime(
            settings.store_path, mirror=settings.mirror_path,
            chain_key=load_chain_key(settings.chain_key_file)))
        if runtime.views.reset_on_open:
            self.log.info("projections", "rebuilding projections whose tables changed",
                          projections=list(runtime.views.reset_on_open))
        folded = await runtime.views.catch_up()
        compat = UnknownEventTypes(runtime.store.registry.names)
        self._unknown = await compat.check(runtime.views)
        provider_key = self.source.key(self._config)
        # The provider has a stack of its own: a reload may replace it.
        stack.push_async_callback(lambda: self._providing.aclose())
        provider = await self._providing.enter_async_context(self.source.open(self._config))
        engine = self._engine(runtime, provider, compat)
        recovered = 0
        if not settings.plan_only and not self._unknown:
            recovered = len(await recover_in_doubt(
                runtime.store, runtime.views, provider, engine.coordinator,
                cycle_id=f"start-{new_cycle_id(datetime.now(UTC))}"))
        self._report_unknown()
        notifier = Notifier(runtime.store, runtime.views, self.log,
                            webhook=WebhookSink(self._webhook_url) if self._webhook_url else None)
        stack.push_async_callback(notifier.aclose)
        self._notifier = notifier
        server: MetricsServer | None = None
        if settings.metrics_host is not None:
            server = MetricsServer(self.metrics, self.health, settings.metrics_host,
                                   settings.metrics_port)
            try:
                await server.start()
            except OSError as exc:
                raise OviError(f"--metrics-addr {settings.metrics_host}:"
                               f"{settings.metrics_port}: cannot listen: {exc.strerror}") from exc
            stack.push_async_callback(server.aclose)
            self.metrics_port = server.port
            self.log.info("metrics", f"metrics on http://{settings.metrics_host}:{server.port}"
                          "/metrics, health on /healthz", port=server.port)
        return _Started(runtime, engine, compat, notifier, provider_key, folded, recovered)

    async def _serve(self, started: _Started) -> None:
        runtime, engine, compat, notifier, provider_key, folded, recovered = started
        self.log.info("ready", "ready", folded=folded, recovered=recovered,
                      log_position=await runtime.store.last_position())
        self.sd.notify(READY="1", STATUS="ready; first cycle starting")
        async with anyio.create_task_group() as group:
            self._group = group
            group.start_soon(self._signals, group.cancel_scope)
            group.start_soon(self._follow, runtime)
            group.start_soon(self._watchdog)
            group.start_soon(notifier.run)
            while True:
                await self._loop(runtime, engine, compat, notifier)
                if self._reloaded is None:
                    break
                # A reload changed what the provider is built from: rebuild it
                # between cycles, then go on.
                self._reloaded, config = None, self._reloaded
                assert config is not None
                if self.source.key(config) != provider_key:
                    provider_key = self.source.key(config)
                    await self._providing.aclose()
                    self._providing = AsyncExitStack()
                    provider = await self._providing.enter_async_context(
                        self.source.open(config))
                    engine = self._engine(runtime, provider, compat)
                    self.log.info("reload", "provider rebuilt for the new config")
            group.cancel_scope.cancel()

    def _engine(self, runtime: Runtime, provider: Provider,
                compat: UnknownEventTypes) -> Engine:
        return Engine(runtime.store, runtime.views, provider, stopping=lambda: self._draining,
                      event_types=compat)

    # -- the loop --------------------------------------------------------

    async def _loop(self, runtime: Runtime, engine: Engine, compat: UnknownEventTypes,
                    notifier: Notifier) -> None:
        """Cycles until stopping (returns), or until a reload wants the
        provider rebuilt (returns with ``_reloaded`` set)."""
        settings = self.settings
        interval = settings.interval
        next_at = time.monotonic()
        while not self._draining:
            woken = await self._wake.wait(next_at - time.monotonic())
            if self._draining:
                return
            if self._reloaded is not None:
                return  # the provider must be rebuilt first
            if woken:
                self.log.info("wake", f"woken: {self._wake.why}; cycle now")
            started = time.monotonic()
            await self._cycle(runtime, engine, compat, notifier)
            if self._draining:
                return
            if settings.max_cycles is not None and self.cycles >= settings.max_cycles:
                self._draining = True
                return
            # On the grid of the interval: an overrun skips the ticks it
            # covered (the next one starts at the next tick, not at once).
            ended = time.monotonic()
            ticks = max(1, int((ended - started) // interval) + 1) if interval > 0 else 0
            if interval > 0 and ticks > 1:
                self.log.warning("overrun", f"cycle took {ended - started:.1f}s, over the"
                                 f" {interval:g}s interval: {ticks - 1} tick(s) skipped")
            next_at = started + ticks * interval + random.uniform(0, settings.jitter * interval)

    async def _cycle(self, runtime: Runtime, engine: Engine, compat: UnknownEventTypes,
                     notifier: Notifier) -> None:
        assert self._config is not None
        config = self._config
        try:
            self._unknown = await compat.check(runtime.views)
        except ProjectionError as exc:
            self.log.error("cycle", f"cannot check the log's event types: {exc}")
        self._report_unknown()
        if self._draining:
            return  # a signal came during the check: no cycle starts once draining
        mode = CycleMode.PLAN if self.settings.plan_only or self._unknown else CycleMode.RUN
        result: CycleResult | None = None
        self._cycle_started = time.monotonic()
        try:
            with anyio.CancelScope() as scope:
                self._cycle_scope = scope
                result = await engine.run_cycle(config, source=str(self.settings.config_path),
                                                mode=mode)
        except (OviError, EventStoreError, ProjectionError) as exc:
            self.metrics.cycle_errors.inc()
            self.health.last_error = str(exc)
            self._set_status(f"cycle failed: {exc}")
            self.log.error("cycle", f"cycle failed: {exc}", error=type(exc).__name__)
        finally:
            self._cycle_scope = None
            self._cycle_started = None
        self.cycles += 1
        if result is None:
            return
        await self._after_cycle(runtime, result, mode, notifier)
        if self.on_cycle is not None:
            await self.on_cycle(result)

    async def _after_cycle(self, runtime: Runtime, result: CycleResult, mode: CycleMode,
                           notifier: Notifier) -> None:
        paused = {p.target: p for p in result.paused}
        position = await runtime.store.last_position()
        self.metrics.record(result, log_position=position,
                            paused=sum(t != PAUSE_ALL for t in paused),
                            paused_all=PAUSE_ALL in paused)
        self.metrics.refusing.set(int(bool(self._unknown)))
        self.health.paused = sorted(paused)
        if not result.failed_scopes:
            self.health.success()
        else:
            self.health.last_error = "could not observe " + ", ".join(result.failed_scopes)
        self._log_cycle(result, mode, position)
        if self.settings.anchor_file is not None and result.head is not None:
            try:
                # an fsync or two: not on the event loop
                await anyio.to_thread.run_sync(write_anchor, self.settings.anchor_file,
                                               result.head, self.settings.store_path)
            except OviError as exc:
                # The cycle is recorded either way; a missing anchor weakens
                # what a later audit can prove, so it is loud, not fatal.
                self.log.error("anchor", f"could not write this cycle's anchor: {exc}")
                self.health.last_error = f"anchor not written: {exc}"
        summary = _summary(result, mode)
        if paused:
            summary += "; paused: " + ", ".join(
                f"{'all' if t == PAUSE_ALL else t} ({p.reason})" for t, p in sorted(paused.items()))
        if self._unknown:
            summary += "; refusing to execute: unknown event types in the log"
        self._set_status(summary)
        try:
            await notifier.offer(result)
        except (OviError, EventStoreError, ProjectionError) as exc:
            self.log.error("notify", f"could not queue this cycle's notices: {exc}")

    def _log_cycle(self, result: CycleResult, mode: CycleMode, position: int) -> None:
        executed = sum(e.outcome is Outcome.EXECUTED for e in result.executions)
        self.log.info(
            "cycle", _summary(result, mode), cycle=result.cycle_id, mode=mode.value,
            resources=result.resources_found, diffs=result.diffs_detected,
            decisions=result.decisions_made, executed=executed, errors=result.execution_errors,
            failed_scopes=list(result.failed_scopes), duration=result.duration,
            log_position=position, paused=[p.target for p in result.paused],
            head_position=result.head.position if result.head else None,
            head_hash=result.head.hash if result.head else None,
            refusing_to_execute=sorted(self._unknown))
        for scope, error in result.scope_errors:
            self.log.error("observe", f"could not observe {scope}: {error}", scope=scope)
        statuses: dict[str, DecisionStatus] = {}
        for d in result.decisions:
            statuses[d.decision_id] = d.status
            if self._statuses.get(d.decision_id) != d.status:
                self.log.info("decision", f"{d.action.value} {d.resource_id}: {d.status.value}",
                              decision=d.decision_id, resource=d.resource_id,
                              action=d.action.value, status=d.status.value, rule=d.rule,
                              reason=d.reason)
        self._statuses = statuses  # only the decisions in force: bounded
        for e in result.executions:
            if e.outcome is Outcome.SKIPPED and e.reason is not None and \
                    e.reason.value == self._last_status_value(e.decision_id):
                continue  # a decision still waiting: its decision line said so
            level = self.log.error if e.outcome is Outcome.FAILED else self.log.info
            level("action", f"{e.action.value} {e.resource_id}: {e.outcome.value}",
                  decision=e.decision_id, resource=e.resource_id, action=e.action.value,
                  outcome=e.outcome.value, cloud_id=e.cloud_id,
                  reason=e.reason.value if e.reason else None, error=e.error)

    def _last_status_value(self, decision_id: str) -> str | None:
        status = self._statuses.get(decision_id)
        return status.value if status is not None else None

    def _set_status(self, text: str) -> None:
        self._status = text
        self.sd.notify(STATUS=text[:500])

    def _report_unknown(self) -> None:
        self.health.refusing = self._unknown
        if self._unknown and self._unknown != self._reported_unknown:  # once per new type
            self.log.error("upgrade", "refusing to execute: the log holds event types this Ovi"
                           " does not know (a newer Ovi wrote them); observing and reporting"
                           " only until this instance is upgraded",
                           unknown_types=sorted(self._unknown))
        self._reported_unknown = self._unknown

    # -- tasks around the loop ------------------------------------------

    async def _signals(self, everything: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(*_SIGNALS) as signals:
            # Those that came since start-up ended, before this receiver was in place.
            kept, self._early_signals = self._early_signals, []
            for signum in kept:
                self._on_signal(signum, everything)
            async for signum in signals:
                self._on_signal(signum, everything)

    def _on_signal(self, signum: int, everything: anyio.CancelScope) -> None:
        if signum == signal.SIGHUP:
            self._reload()
        elif self._draining:
            self.log.warning("stop", "second signal: stopping at once")
            self._drain_timed_out = self._cycle_scope is not None
            everything.cancel()
        else:
            self._begin_drain(signal.Signals(signum).name, everything)

    def _begin_drain(self, why: str, everything: anyio.CancelScope) -> None:
        self._draining = True
        self.sd.notify(STOPPING="1", STATUS=f"stopping ({why}): draining")
        busy = self._cycle_scope is not None
        self.log.info("stop", f"{why}: no new action starts"
                      + (f"; waiting up to {self.settings.drain_timeout:g}s for the cycle in"
                         " flight" if busy else ""), signal=why)
        self._wake.set("stop")

        async def deadline() -> None:
            await anyio.sleep(self.settings.drain_timeout)
            if self._cycle_scope is not None:
                self._drain_timed_out = True
                self._cycle_scope.cancel()

        # Always armed, busy or not: a cycle between its checks when the
        # signal came still ends within the timeout. A task of the group:
        # cancelled with it when the drain finishes first.
        self._spawn(deadline)

    def _spawn(self, fn: Callable[[], Coroutine[object, object, None]]) -> None:
        if self._group is not None:
            self._group.start_soon(fn)

    def _reload(self) -> None:
        path = self.settings.config_path
        try:
            config = load_config(path)
            url = self._read_webhook(config)
        except ConfigError as exc:
            self.log.error("reload", f"SIGHUP: new config rejected, the old one stays: {exc}",
                           file=exc.file, line=exc.line, field=exc.path, expected=exc.expected,
                           got=exc.got)
            return
        except OviError as exc:
            self.log.error("reload", f"SIGHUP: new config rejected, the old one stays: {exc}")
            return
        old = self._config
        self._config = config
        if url != self._webhook_url and self._notifier is not None:
            old_sink = self._notifier.webhook
            self._notifier.webhook = WebhookSink(url) if url else None
            self._webhook_url = url
            self.log.info("reload", "webhook sink replaced" if url else "webhook sink removed")
            if old_sink is not None:
                self._spawn(old_sink.aclose)
        changed = old is None or old.config_hash != config.config_hash
        self.log.info("reload", "config reloaded" if changed else "config unchanged",
                      config_hash=config.config_hash[:12])
        if old is not None and self.source.key(old) != self.source.key(config):
            self._reloaded = config
            self._wake.set("reload-provider")
        else:
            self._wake.set("config reloaded")

    async def _follow(self, runtime: Runtime) -> None:
        """Wake the loop when another process appends what a cycle must act on."""
        head = await runtime.store.last_position()
        try:
            async for recorded in runtime.store.follow(
                    after=head, types=WAKE_TYPES, poll_interval=self.settings.follow_interval):
                event = recorded.event
                if isinstance(event, ApprovalGranted):
                    self._wake.set(f"{event.decision_id} approved by {event.by}")
                elif isinstance(event, AutomationPaused | AutomationResumed):
                    verb = "paused" if isinstance(event, AutomationPaused) else "resumed"
                    self._wake.set(f"{event.target} {verb} by {event.actor.by}")
        except EventStoreError:
            return  # the store is closing

    async def _watchdog(self) -> None:
        """``WATCHDOG=1`` at a third of systemd's timeout, from the event loop,
        and only while no cycle has been running longer than ``cycle_timeout``:
        a hung cycle (or a blocked loop) stops the pings and systemd restarts us."""
        timeout = watchdog_interval()
        if timeout is None:
            return
        hung_reported = False
        while True:
            await anyio.sleep(timeout / 3)
            started = self._cycle_started
            if started is not None and time.monotonic() - started > self.settings.cycle_timeout:
                if not hung_reported:
                    self.log.error("watchdog", f"cycle running for over"
                                   f" {self.settings.cycle_timeout:g}s: watchdog pings stop")
                    self.sd.notify(STATUS="hung: a cycle runs past its timeout")
                    hung_reported = True
                continue
            hung_reported = False
            self.sd.notify(WATCHDOG="1")

    def _read_webhook(self, config: Config) -> str | None:
        if config.notify is None:
            return None
        return read_webhook_url(config.notify, str(self.settings.config_path))



def _summary(result: CycleResult, mode: CycleMode) -> str:
    """The one-line summary of a cycle (log line and ``STATUS=``)."""
    executed = sum(e.outcome is Outcome.EXECUTED for e in result.executions)
    pending = sum(d.action is not Action.NOTIFY for d in result.decisions)
    text = (f"cycle {result.cycle_id} ({mode.value}): {result.resources_found} resources,"
            f" {len(result.diffs)} diffs, {pending} pending, {executed} executed,"
            f" {result.execution_errors} failed in {result.duration:.1f}s")
    if result.failed_scopes:
        text += f"; could not observe {', '.join(result.failed_scopes)}"
    return text

