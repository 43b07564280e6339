"""``scripts/ovi.service``: valid for systemd, and hardened."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "scripts" / "ovi.service"


def _options() -> dict[str, list[str]]:
    """``Section.Key`` → every value given (a key may repeat)."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def test_the_unit_is_a_hardened_notify_service() -> None:
    options = _options()

    def one(key: str) -> str:
        (value,) = options[f"Service.{key}"]
        return value

    assert one("Type") == "notify"
    assert one("Restart") == "on-failure"
    assert one("WatchdogSec")
    assert one("DynamicUser") == "yes" and one("StateDirectory") == "ovi"
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices",
                "ProtectKernelTunables", "ProtectControlGroups", "RestrictSUIDSGID"):
        assert one(key) == "yes", key
    assert one("ProtectSystem") == "strict"
    assert one("CapabilityBoundingSet") == ""
    assert one("LoadCredential").startswith("webhook-url:")
    assert one("EnvironmentFile").startswith("-/etc/ovi/")
    exec_start = one("ExecStart").split()
    assert exec_start[1] == "run" and "--store" in exec_start
    assert exec_start[exec_start.index("--store") + 1].startswith("/var/lib/ovi/")
    # Stopping waits longer than the drain, so outcomes get recorded.
    drain = exec_start[exec_start.index("--drain-timeout") + 1]
    assert drain.endswith("s") and int(drain[:-1]) < int(one("TimeoutStopSec").rstrip("s"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian: apt-get install systemd)")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this venv's.
    ovi = Path(sys.executable).parent / "ovi"
    unit = tmp_path / "ovi.service"
    unit.write_text(UNIT.read_text().replace("/opt/ovi/venv/bin/ovi", str(ovi)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.strip() == "", done.stderr
