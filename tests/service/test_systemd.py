"""``ovi run`` as systemd runs it: sd_notify over a real datagram socket,
signals, metrics and health over HTTP, against the moto server."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cli import write_config
from tests.moto_server import reset_moto
from tests.service.support import NotifySocket, child_env, events, http_get, service, wait_until

BUCKET = "{type: s3, name: assets, tags: {team: platform}}"


@pytest.fixture
def aws(moto_endpoint: str) -> Iterator[str]:
    reset_moto(moto_endpoint)
    yield moto_endpoint


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_ready_status_watchdog_and_stopping_over_a_path_socket(aws: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ovi.yaml", BUCKET)
    notify = NotifySocket(tmp_path, abstract=False)
    try:
        with service(tmp_path, aws, "--config", str(config), "--interval", "1s",
                     env=child_env(NOTIFY_SOCKET=notify.address,
                                   WATCHDOG_USEC="600000")) as ovi:
            wait_until(lambda: notify.with_key("READY"), 30, "READY=1")
            ovi.wait_cycles(2)
            port = ovi.port()
            statuses = wait_until(lambda: [m["STATUS"] for m in notify.with_key("STATUS")
                                           if m["STATUS"].startswith("cycle ")], 10, "STATUS=")
            assert "1 resources" in statuses[-1] and "(run)" in statuses[-1]
            # Pinged at a third of the 0.6 s timeout: several by now.
            wait_until(lambda: len(notify.with_key("WATCHDOG")) >= 3, 10, "WATCHDOG=1 pings")

            code, body = http_get(f"http://127.0.0.1:{port}/metrics")
            assert code == 200
            text = body.decode()
            for name in ("ovi_reconcile_duration_seconds_bucket", "ovi_resources_observed{",
                         "ovi_decisions_total{", "ovi_executions_total{",
                         "ovi_paused_resources", "ovi_pending_approvals", "ovi_log_position",
                         "ovi_last_successful_cycle_timestamp_seconds"):
                assert name in text, name
            assert 'ovi_resources_observed{region="us-east-1",type="s3"} 1.0' in text
            assert 'ovi_executions_total{action="create",outcome="executed"} 1.0' in text
            code, body = http_get(f"http://127.0.0.1:{port}/healthz")
            health = json.loads(body)
            assert code == 200 and health["status"] == "ok", health

            ready_at = next(i for i, m in enumerate(notify.messages) if "READY" in m)
            assert all("READY" not in m for m in notify.messages[:ready_at])
            assert ovi.stop() == 0
        stopping = notify.with_key("STOPPING")
        assert stopping and stopping[0]["STOPPING"] == "1"
        assert ovi.lines()[-1]["msg"] == "stopped"
    finally:
        notify.close()


def test_abstract_socket_and_a_503_health_while_aws_is_unreachable(tmp_path: Path) -> None:
    config = write_config(tmp_path / "ovi.yaml", BUCKET)
    notify = NotifySocket(tmp_path, abstract=True)
    nowhere = f"http://127.0.0.1:{_free_port()}"
    try:
        with service(tmp_path, nowhere, "--config", str(config), "--interval", "1s",
                     env=child_env(NOTIFY_SOCKET=notify.address)) as ovi:
            wait_until(lambda: notify.with_key("READY"), 30, "READY=1 (abstract socket)")
            port = ovi.port()

            def stale() -> dict[str, object] | None:
                code, body = http_get(f"http://127.0.0.1:{port}/healthz")
                report: dict[str, object] = json.loads(body)
                return report if code == 503 and report["status"] == "stale" else None

            ovi.wait_cycles(1)
            report = wait_until(stale, 30, "/healthz to answer 503 stale")
            reason = str(report["reason"])
            assert "could not observe" in reason and "aws/us-east-1/s3" in reason, reason
            assert any("could not observe" in m["STATUS"] for m in notify.with_key("STATUS"))
            ovi.signal(signal.SIGINT)
            assert ovi.proc.wait(timeout=30) == 0
        assert notify.with_key("STOPPING")
        assert not events(tmp_path / "ovi.db", "ActionExecuting")
    finally:
        notify.close()
