"""The service's metrics (Prometheus text format) and its health, served over
HTTP from the event loop (``/metrics``, ``/healthz``), loopback by default.

``/healthz`` answers 200 while the last *successful* cycle (finished, every
scope observed) is recent — within :attr:`Health.max_age` — and 503 otherwise,
or while the service refuses to execute (the log holds event types this Ovi
does not know), with a short JSON body saying why.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import Counter as PromCounter

from ovi.engine import CycleResult
from ovi.model import DecisionStatus, Outcome, SkipReason

__all__ = ["Health", "MetricsServer", "ServiceMetrics"]

# Skips that repeat every cycle while a decision waits are states, not events:
# they are not counted (the decisions' statuses and the gauges tell them).
_WAITING = frozenset({SkipReason.AWAITING_APPROVAL, SkipReason.GRACE_PERIOD,
                      SkipReason.MAINTENANCE_WINDOW, SkipReason.CAPPED, SkipReason.PAUSED,
                      SkipReason.ALREADY_EXECUTED, SkipReason.IN_DOUBT,
                      SkipReason.FAILED_PERMANENTLY})


class ServiceMetrics:
    """Every metric of one service process, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.duration = Histogram(
            "ovi_reconcile_duration_seconds", "Duration of one reconcile cycle", registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))
        self.observed = Gauge("ovi_resources_observed", "Resources seen in the last cycle",
                              ["type", "region"], registry=r)
        self.findings = Gauge("ovi_open_findings", "Open findings by diff type", ["type"],
                              registry=r)
        self.decisions = PromCounter("ovi_decisions", "Decisions made (each counted once)",
                                     ["action"], registry=r)
        self.executions = PromCounter(
            "ovi_executions", "Actions executed, failed, or skipped for the executor's own"
            " reasons (dry-run, claimed, stale, paused meanwhile, draining …)",
            ["action", "outcome"], registry=r)
        self.observation_failures = PromCounter(
            "ovi_observation_failures", "Scopes that could not be observed", ["scope"],
            registry=r)
        self.paused = Gauge("ovi_paused_resources", "Resources paused one by one (ovi pause)",
                            registry=r)
        self.paused_all = Gauge("ovi_paused_all", "1 while the whole estate is paused",
                                registry=r)
        self.pending_approvals = Gauge("ovi_pending_approvals",
                                       "Decisions waiting for ovi approve", registry=r)
        self.log_position = Gauge("ovi_log_position", "The event log's last position",
                                  registry=r)
        self.last_success = Gauge("ovi_last_successful_cycle_timestamp_seconds",
                                  "When the last cycle that observed every scope finished",
                                  registry=r)
        self.refusing = Gauge("ovi_execution_refused",
                              "1 while the log holds event types this Ovi does not know",
                              registry=r)
        self.cycle_errors = PromCounter("ovi_cycle_errors", "Cycles that raised an error",
                                        registry=r)
        self._seen_decisions: set[str] = set()

    def record(self, result: CycleResult, *, log_position: int, paused: int,
               paused_all: bool) -> None:
        """Fold one finished cycle into the metrics."""
        self.duration.observe(result.duration)
        self.observed.clear()
        for key, count in result.scope_counts:
            _, region, type_ = key.split("/", 2)
            self.observed.labels(type=type_, region=region).inc(count)
        self.findings.clear()
        for diff_type, count in Counter(d.type.value for d in result.diffs).items():
            self.findings.labels(type=diff_type).set(count)
        # Decisions in force stay in force for many cycles: count each once.
        current = {d.decision_id for d in result.decisions}
        for d in result.decisions:
            if d.decision_id not in self._seen_decisions:
                self.decisions.labels(action=d.action.value).inc()
        self._seen_decisions = current
        for e in result.executions:
            if e.outcome is Outcome.SKIPPED and e.reason in _WAITING:
                continue
            self.executions.labels(action=e.action.value, outcome=e.outcome.value).inc()
        for scope in result.failed_scopes:
            self.observation_failures.labels(scope=scope).inc()
        self.paused.set(paused)
        self.paused_all.set(int(paused_all))
        self.pending_approvals.set(
            sum(d.status is DecisionStatus.AWAITING_APPROVAL for d in result.decisions))
        self.log_position.set(log_position)
        if not result.failed_scopes:
            self.last_success.set(time.time())

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class HealthReport(msgspec.Struct, frozen=True, kw_only=True):
    status: str  # ok | starting | stale | refusing
    reason: str
    last_successful_cycle: str | None
    age_seconds: float | None
    max_age_seconds: float
    paused: list[str]


class Health:
    """What ``/healthz`` says; the service updates it after every cycle."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self.started = time.monotonic()
        self.last_success: float | None = None  # monotonic
        self.last_success_at: datetime | None = None
        self.last_error: str | None = None
        self.refusing: frozenset[str] = frozenset()
        self.paused: list[str] = []

    def success(self) -> None:
        self.last_success = time.monotonic()
        self.last_success_at = datetime.now(UTC)
        self.last_error = None

    def report(self) -> tuple[int, HealthReport]:
        now = time.monotonic()
        age = None if self.last_success is None else now - self.last_success
        if self.refusing:
            code, status = 503, "refusing"
            reason = ("refusing to execute: the log holds event types this Ovi does not know"
                      f" ({', '.join(sorted(self.refusing))}); upgrade Ovi")
        elif age is not None and age <= self.max_age:
            code, status, reason = 200, "ok", "the last cycle observed every scope"
        elif age is None and now - self.started <= self.max_age:
            code, status, reason = 503, "starting", "no cycle has finished yet"
        else:
            code, status = 503, "stale"
            since = "ever" if age is None else f"for {age:.0f}s"
            reason = f"no successful cycle {since} (limit {self.max_age:.0f}s)"
            if self.last_error:
                reason += f"; last error: {self.last_error}"
        at = self.last_success_at.isoformat(timespec="seconds") if self.last_success_at else None
        return code, HealthReport(status=status, reason=reason, last_successful_cycle=at,
                                  age_seconds=None if age is None else round(age, 3),
                                  max_age_seconds=self.max_age, paused=list(self.paused))


class MetricsServer:
    """``/metrics`` and ``/healthz`` on ``host:port`` (port 0: any free one,
    see :attr:`port` once started)."""

    def __init__(self, metrics: ServiceMetrics, health: Health, host: str, port: int) -> None:
        self.metrics = metrics
        self.health = health
        self.host = host
        self.port = port
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server: Any = site._server
        if server is not None and server.sockets:
            self.port = int(server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        code, report = self.health.report()
        return web.Response(status=code, body=msgspec.json.encode(report),
                            content_type="application/json")
