"""``ovi run`` stopped with SIGTERM while actions are in flight, against moto
behind the fault proxy (from the hostile review of cancellation at every
await, tests/ovi/test_review_cancel.py)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cli import client, write_config
from tests.fault_proxy import Fault, When
from tests.moto_server import reset_moto
from tests.service.support import events, service, wait_until


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text and "Exception in" not in text, text


@pytest.mark.parametrize(("drain", "delay"), [("30s", 1.0), ("1s", 2.5)])
def test_sigterm_mid_cycle_drains_or_cancels_cleanly_and_the_next_start_converges(
    moto_endpoint: str, fault_proxy: Any, tmp_path: Path, drain: str, delay: float
) -> None:
    """Four buckets, two calls at a time, every CreateBucket held (longer than a 1 s drain).
    SIGTERM once the calls are in flight. With a 30 s drain the calls finish
    and are recorded (exit 0); with a 1 s drain the cycle is cancelled in the
    middle (exit 1, in doubt). Either way: no traceback, the log verifies, no
    claim released with an action open, and the next start (recovery, then
    a cycle) makes exactly the four buckets, each once."""
    reset_moto(moto_endpoint)
    fault_proxy.add(Fault("s3:CreateBucket", when=When.SLOW, delay=delay, times=20))
    config = write_config(tmp_path / "ovi.yaml", "{type: s3, name: assets, count: 4}",
                          rules="max_concurrency: 2")
    store = tmp_path / "ovi.db"
    with service(tmp_path, fault_proxy.endpoint, "--config", str(config),
                 "--interval", "30s", "--drain-timeout", drain, name="first") as ovi:
        wait_until(lambda: len(events(store, "ActionExecuting")) >= 2, 20, "write-aheads")
        time.sleep(0.3)
        ovi.signal(signal.SIGTERM)
        code = ovi.proc.wait(timeout=20)
        text = ovi.text()
    assert code == (0 if drain == "30s" else 1), text
    _no_traceback(text)
    rows = events(store, "ActionExecuting", "ActionExecuted", "ActionFailed", "ClaimReleased")
    opened: dict[tuple[str, int], int] = {}
    for _, kind, data in rows:
        key = (data["resource_id"], data["token"])
        if kind == "ActionExecuting":
            opened[key] = opened.get(key, 0) + 1
        elif kind in ("ActionExecuted", "ActionFailed"):
            opened[key] = 0
        else:
            assert not opened.get(key), f"{key} released with an action open: {rows}"
    # let the held requests land before the next start
    time.sleep(delay)
    first_calls = len(fault_proxy.calls("s3:CreateBucket"))
    fault_proxy.clear()
    with service(tmp_path, fault_proxy.endpoint, "--config", str(config),
                 "--interval", "30s", name="second") as again:
        again.wait_cycles(1, timeout=30)
        assert again.stop() == 0, again.text()
        _no_traceback(again.text())
    buckets = sorted(b["Name"] for b in client("s3", moto_endpoint).list_buckets()["Buckets"])
    assert buckets == [f"assets-{i}" for i in range(4)], buckets
    created = first_calls + len(fault_proxy.calls("s3:CreateBucket"))
    assert created <= 4, created  # no bucket asked for twice
    rows = events(store, "ActionExecuting", "ActionExecuted", "ActionFailed")
    open_: dict[tuple[str, str, int], bool] = {}
    for _, kind, data in rows:
        action = (data["resource_id"], data["decision_id"], data["token"])
        open_[action] = kind == "ActionExecuting"
    assert not any(open_.values()), rows
    import subprocess
    import sys
    verify = subprocess.run([sys.executable, "-m", "ovi.replay", "--store", str(store), "verify"],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
