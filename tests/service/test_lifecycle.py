"""``ovi run``'s life: draining on SIGTERM, reloading on SIGHUP, ``--plan-only``,
overruns, and refusing to execute on a log written by a newer Ovi."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from eventstore import Event, EventRegistry, SQLiteEventStore
from ovi.events import OVI_EVENTS
from tests.e2e.cli import client, write_config
from tests.fault_proxy import Fault, FaultProxy, When
from tests.moto_server import reset_moto
from tests.service.support import NotifySocket, child_env, events, http_get, service, wait_until


@pytest.fixture
def aws(moto_endpoint: str) -> Iterator[str]:
    reset_moto(moto_endpoint)
    yield moto_endpoint


def _buckets(endpoint: str) -> list[str]:
    return sorted(b["Name"] for b in client("s3", endpoint).list_buckets()["Buckets"])


def test_sigterm_during_a_slow_action_records_its_outcome_and_exits_0(
    moto_endpoint: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    reset_moto(moto_endpoint)
    # The fault proxy holds every CreateBucket for 3 s: the first action is in
    # flight when SIGTERM comes; the second is written ahead, waiting for the
    # one call slot (max_concurrency 1), and must not start.
    fault_proxy.add(Fault("s3:CreateBucket", when=When.SLOW, delay=3.0, times=10))
    config = write_config(tmp_path / "ovi.yaml", "{type: s3, name: assets, count: 2}",
                          rules="max_concurrency: 1")
    store = tmp_path / "ovi.db"
    with service(tmp_path, fault_proxy.endpoint, "--config", str(config),
                 "--interval", "30s", "--drain-timeout", "30s") as ovi:
        # (The proxy lists a request once answered: the log says it started.)
        wait_until(lambda: events(store, "ActionExecuting"), 30, "the first write-ahead")
        time.sleep(0.5)  # the CreateBucket is on its way, held by the proxy
        ovi.signal(signal.SIGTERM)
        assert ovi.proc.wait(timeout=30) == 0, ovi.text()
    outcomes = events(store, "ActionExecuting", "ActionExecuted", "ActionFailed")
    kinds = [(t, d["resource_id"]) for _, t, d in outcomes]
    executed = [r for t, r in kinds if t == "ActionExecuted"]
    failed = [d for _, t, d in outcomes if t == "ActionFailed"]
    assert len(executed) == 1, kinds
    assert [f["error"] for f in failed] == ["not started: the service was stopping"], kinds
    assert failed[0]["retryable"] is True and failed[0]["attempts"] == 0
    assert len(fault_proxy.calls("s3:CreateBucket")) == 1  # the second never started
    assert _buckets(moto_endpoint) == [f"{executed[0]}"]
    finished = events(store, "CycleFinished")
    assert len(finished) == 1  # the cycle in flight was finished and recorded
    stop = [line for line in ovi.lines() if line.get("event") == "stop"]
    assert stop[0]["signal"] == "SIGTERM" and stop[-1]["msg"] == "stopped"
    # Both claims were released: nothing is left in doubt for the next start.
    assert len(events(store, "ClaimReleased")) == 2


def test_sighup_with_a_broken_config_keeps_the_old_one(aws: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ovi.yaml", "{type: s3, name: assets}")
    store = tmp_path / "ovi.db"
    with service(tmp_path, aws, "--config", str(config), "--interval", "1s") as ovi:
        ovi.wait_cycles(1)
        first_hash = events(store, "ConfigLoaded")[0][2]["config_hash"]
        config.write_text(config.read_text().replace("name: assets", "name: assets, count: three"))
        ovi.signal(signal.SIGHUP)
        rejected = ovi.wait_line(lambda line: line.get("event") == "reload", what="the reload")
        assert rejected["level"] == "error"
        assert rejected["file"] == str(config) and rejected["line"] == 5
        assert rejected["field"] == "resources[0].count"
        assert "the old one stays" in rejected["msg"]
        seen = len(ovi.cycles())
        ovi.wait_cycles(seen + 2)  # still reconciling, with the old config
        assert _buckets(aws) == ["assets-0"]
        assert [d["config_hash"] for _, _, d in events(store, "ConfigLoaded")] == [first_hash]

        config.write_text(config.read_text().replace("count: three", "count: 2"))
        mark = len(ovi.lines())
        ovi.signal(signal.SIGHUP)
        ovi.wait_line(lambda line: line.get("msg") == "config reloaded", after=mark,
                      what="the accepted reload")
        wait_until(lambda: _buckets(aws) == ["assets-0", "assets-1"], 30, "the new bucket")
        assert ovi.stop() == 0
    assert len(events(store, "ConfigLoaded")) == 2


def test_plan_only_never_executes_and_an_overrun_delays_the_next_cycle(
    moto_endpoint: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    reset_moto(moto_endpoint)
    # Observation of S3 takes 1.5 s; the interval is 1 s: every cycle overruns.
    fault_proxy.add(Fault("s3:ListBuckets", when=When.SLOW, delay=1.5, times=100))
    config = write_config(tmp_path / "ovi.yaml", "{type: s3, name: assets}")
    store = tmp_path / "ovi.db"
    with service(tmp_path, fault_proxy.endpoint, "--config", str(config), "--interval", "1s",
                 "--plan-only") as ovi:
        ovi.wait_cycles(3, timeout=60)
        assert ovi.stop() == 0
    assert _buckets(moto_endpoint) == []
    assert not events(store, "ActionExecuting", "ActionExecuted", "ActionFailed")
    assert {d["mode"] for _, _, d in events(store, "CycleStarted")} == {"plan"}
    # Cycles never overlap: each starts after the one before finished.
    marks = [(p, t) for p, t, _ in events(store, "CycleStarted", "CycleFinished")]
    kinds = [t for _, t in marks]
    assert kinds[:6] == ["CycleStarted", "CycleFinished"] * 3, kinds
    assert any(line.get("event") == "overrun" for line in ovi.lines())


class FutureEvent(Event, frozen=True):
    """A type a newer Ovi might write."""

    what: str


async def _append_future_event(store: Path) -> None:
    future = EventRegistry((*OVI_EVENTS, FutureEvent))
    async with SQLiteEventStore(store, future) as log:
        await log.append("future/1", [FutureEvent(what="from a newer Ovi")])


def test_a_log_with_unknown_event_types_is_observed_but_never_executed(
    aws: str, tmp_path: Path
) -> None:
    store = tmp_path / "ovi.db"
    anyio.run(_append_future_event, store)
    config = write_config(tmp_path / "ovi.yaml", "{type: s3, name: assets}")
    notify = NotifySocket(tmp_path, abstract=False)
    try:
        with service(tmp_path, aws, "--config", str(config), "--interval", "1s",
                     env=child_env(NOTIFY_SOCKET=notify.address)) as ovi:
            ovi.wait_cycles(2)
            port = ovi.port()
            code, body = http_get(f"http://127.0.0.1:{port}/healthz")
            assert code == 503 and json.loads(body)["status"] == "refusing"
            assert "FutureEvent" in json.loads(body)["reason"]
            assert ovi.stop() == 0
        refusal = [line for line in ovi.lines() if line.get("event") == "upgrade"]
        assert len(refusal) == 1 and refusal[0]["unknown_types"] == ["FutureEvent"]
        assert all(c["refusing_to_execute"] == ["FutureEvent"] for c in ovi.cycles())
        assert any("refusing to execute" in m["STATUS"] for m in notify.with_key("STATUS"))
    finally:
        notify.close()
    assert _buckets(aws) == []
    assert not events(store, "ActionExecuting")
    decisions = [d["decision"] for _, _, d in events(store, "DecisionMade")]
    assert [(d["action"], d["resource_id"]) for d in decisions] == [("create", "assets-0")]
    assert {d["mode"] for _, _, d in events(store, "CycleStarted")} == {"plan"}


def test_a_drain_that_times_out_exits_1_and_leaves_the_action_in_doubt(
    moto_endpoint: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    reset_moto(moto_endpoint)
    fault_proxy.add(Fault("s3:CreateBucket", when=When.SLOW, delay=4.0))
    config = write_config(tmp_path / "ovi.yaml", "{type: s3, name: assets}")
    with service(tmp_path, fault_proxy.endpoint, "--config", str(config),
                 "--interval", "30s", "--drain-timeout", "1s") as ovi:
        wait_until(lambda: events(tmp_path / "ovi.db", "ActionExecuting"), 30,
                   "the write-ahead")
        time.sleep(0.5)  # the CreateBucket is on its way, held by the proxy for 4 s
        ovi.signal(signal.SIGTERM)
        assert ovi.proc.wait(timeout=30) == 1, ovi.text()
    stop = [line for line in ovi.lines() if line.get("event") == "stop"]
    assert "drain timeout" in stop[-1]["msg"] and stop[-1]["level"] == "error"
    store = tmp_path / "ovi.db"
    assert [t for _, t, _ in events(store, "ActionExecuting", "ActionExecuted",
                                    "ActionFailed")] == ["ActionExecuting"]  # in doubt
    # The held request still reaches moto: let it land now, not in the next test.
    wait_until(lambda: fault_proxy.calls("s3:CreateBucket"), 30, "the held CreateBucket")


def test_signals_during_a_slow_start_up_keep_a_reload_and_stop_it_before_ready(
    moto_endpoint: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Start-up can take minutes (a refold after an upgrade, a mirror's first
    copy, recovery waiting on the cloud). A SIGHUP then must not kill the
    process, and a SIGTERM must stop it at once and cleanly: exit 0, a
    `stop` line, no READY, and whatever was left in doubt still is."""
    reset_moto(moto_endpoint)
    # First an action left in doubt, as a drain that timed out leaves it.
    fault_proxy.add(Fault("s3:CreateBucket", when=When.SLOW, delay=2.0))
    config = write_config(tmp_path / "ovi.yaml", "{type: s3, name: assets}")
    store = tmp_path / "ovi.db"
    with service(tmp_path, fault_proxy.endpoint, "--config", str(config),
                 "--interval", "30s", "--drain-timeout", "1s", name="first") as first:
        wait_until(lambda: events(store, "ActionExecuting"), 30, "the write-ahead")
        time.sleep(0.5)
        first.signal(signal.SIGTERM)
        assert first.proc.wait(timeout=30) == 1, first.text()
    wait_until(lambda: fault_proxy.calls("s3:CreateBucket"), 30, "the held CreateBucket")
    fault_proxy.clear()
    # Recovery resolves it against the cloud; the cloud answers slowly.
    fault_proxy.add(Fault("s3:ListBuckets", when=When.SLOW, delay=20.0, times=10))
    notify = NotifySocket(tmp_path, abstract=False)
    try:
        with service(tmp_path, fault_proxy.endpoint, "--config", str(config),
                     env=child_env(NOTIFY_SOCKET=notify.address), name="second") as ovi:
            fault_proxy.wait_for("s3:ListBuckets", timeout=30)  # recovery is waiting on it
            ovi.signal(signal.SIGHUP)
            time.sleep(0.5)
            assert ovi.proc.poll() is None, f"SIGHUP during start-up ended it:\n{ovi.text()}"
            started = time.monotonic()
            ovi.signal(signal.SIGTERM)
            assert ovi.proc.wait(timeout=10) == 0, ovi.text()
            assert time.monotonic() - started < 10  # not after the cloud answered (20 s)
    finally:
        notify.close()
    stop = [line for line in ovi.lines() if line.get("event") == "stop"]
    assert stop and "during start-up" in stop[-1]["msg"] and stop[-1]["signal"] == "SIGTERM"
    assert not notify.with_key("READY"), "READY=1 was sent though start-up never finished"
    assert notify.with_key("STOPPING")
    assert [t for _, t, _ in events(store, "ActionExecuting", "ActionExecuted",
                                    "ActionFailed")] == ["ActionExecuting"]  # still in doubt
