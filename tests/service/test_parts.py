"""The service's small parts: config of notifications, reading the webhook
credential, sd_notify datagrams, log lines, the watchdog's rule."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from ovi._exceptions import ConfigError, OviError
from ovi.config import Notify, parse_config
from ovi.notify import read_webhook_url
from ovi.sdnotify import SdNotifier, watchdog_interval
from ovi.service import Service, ServiceSettings
from ovi.servicelog import LogFormat, ServiceLog

BASE = "version: v1\nprovider: aws\nregion: us-east-1\nresources: []\n"
SECRET = "https://hooks.example.invalid/services/T0/B0/s3cr3t-t0ken"


def test_notify_names_where_the_url_is_never_the_url() -> None:
    config = parse_config(BASE + "notify: {webhook_credential: slack-url}\n", "ovi.yaml")
    assert config.notify == Notify(webhook_credential="slack-url")
    with pytest.raises(ConfigError) as both:
        parse_config(BASE + "notify: {webhook_url_file: /x, webhook_credential: y}\n", "o.yaml")
    assert str(both.value).startswith("o.yaml:5: notify.webhook_credential: expected either"
                                      " webhook_url_file or webhook_credential, not both")
    with pytest.raises(ConfigError) as pasted:  # the URL itself pasted in: not echoed
        parse_config(BASE + f"notify: {{webhook_url: {SECRET}}}\n", "o.yaml")
    assert "notify.webhook_url" in str(pasted.value) and "s3cr3t" not in str(pasted.value)


def test_reading_the_webhook_url_never_puts_it_in_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url_file = tmp_path / "hook"
    url_file.write_text(SECRET + "\n")
    assert read_webhook_url(Notify(webhook_url_file="hook"), str(tmp_path / "o.yaml")) == SECRET
    url_file.write_text("not a url " + SECRET)
    with pytest.raises(OviError) as bad:
        read_webhook_url(Notify(webhook_url_file=str(url_file)), "o.yaml")
    assert "s3cr3t" not in str(bad.value) and "expected one http(s) URL" in str(bad.value)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(OviError, match=r"\$CREDENTIALS_DIRECTORY is not set"):
        read_webhook_url(Notify(webhook_credential="hook"), "o.yaml")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    url_file.write_text(SECRET)
    assert read_webhook_url(Notify(webhook_credential="hook"), "o.yaml") == SECRET
    with pytest.raises(OviError, match="credential 'absent': cannot read it"):
        read_webhook_url(Notify(webhook_credential="absent"), "o.yaml")


def test_sd_notify_sends_one_datagram_of_single_line_fields_to_an_abstract_socket() -> None:
    name = f"ovi-parts-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(5)
        notifier = SdNotifier("@" + name)
        assert notifier.notify(READY="1", STATUS="two\nlines")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=two lines"
        notifier.close()
    assert not SdNotifier("").notify(READY="1")  # not under systemd: nothing, no error


def test_watchdog_interval_is_for_this_process_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 3.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    monkeypatch.delenv("WATCHDOG_PID")
    assert watchdog_interval() is None


def test_log_lines_under_journald_carry_a_priority_and_no_timestamp() -> None:
    out = io.StringIO()
    log = ServiceLog(LogFormat.JSON, stream=out, journald=True)
    log.error("reload", "rejected", file="ovi.yaml", line=3)
    assert out.getvalue() == ('<3>{"level":"error","event":"reload","msg":"rejected",'
                              '"file":"ovi.yaml","line":3}\n')
    text = io.StringIO()
    ServiceLog(LogFormat.TEXT, stream=text, journald=False).info(
        "cycle", "cycle done", paused=["web-0", "web-1"], note="two words")
    stamp, rest = text.getvalue().split(" ", 1)
    assert stamp.endswith("+00:00")
    assert rest == 'info cycle "cycle done" paused=web-0,web-1 note="two words"\n'


@pytest.mark.asyncio
async def test_a_hung_cycle_stops_the_watchdog_pings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "150000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    name = f"ovi-watchdog-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.setblocking(False)
        log = io.StringIO()
        service = Service(ServiceSettings(config_path=tmp_path / "o.yaml",
                                          store_path=tmp_path / "o.db", cycle_timeout=1.0),
                          log=ServiceLog(LogFormat.JSON, stream=log, journald=False),
                          notifier=SdNotifier("@" + name))

        def received() -> list[bytes]:
            got = []
            while True:
                try:
                    got.append(receiver.recv(4096))
                except BlockingIOError:
                    return got

        async with anyio.create_task_group() as group:
            group.start_soon(service._watchdog)
            await anyio.sleep(0.3)
            assert b"WATCHDOG=1" in received()  # idle between cycles: pinging
            service._cycle_started = time.monotonic() - 5  # a cycle stuck for 5 s
            await anyio.sleep(0.1)
            received()
            await anyio.sleep(0.4)
            assert b"WATCHDOG=1" not in received()
            service._cycle_started = None
            await anyio.sleep(0.3)
            assert b"WATCHDOG=1" in received()
            group.cancel_scope.cancel()
        service.sd.close()
    hung = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [line["event"] for line in hung] == ["watchdog"]


@pytest.mark.parametrize(("args", "says"), [
    (["--interval", "5x"], "argument --interval: expected a duration like 30s"),
    (["--interval", "0s"], "argument --interval: expected a duration above 0"),
    (["--metrics-addr", "9464"], "argument --metrics-addr: expected HOST:PORT"),
    (["--log-format", "xml"], "argument --log-format: invalid choice"),
])
def test_bad_flags_of_ovi_run_exit_1_with_the_reason(
    tmp_path: Path, args: list[str], says: str
) -> None:
    done = subprocess.run([sys.executable, "-m", "ovi", "run", "--config", "ovi.yaml", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert says in done.stderr.splitlines()[-1], done.stderr
    assert not (tmp_path / "ovi.db").exists()


def test_an_invalid_config_at_start_is_one_line_and_nothing_is_recorded(tmp_path: Path) -> None:
    (tmp_path / "ovi.yaml").write_text(BASE + "rules: {grace_period: soon}\n")
    done = subprocess.run([sys.executable, "-m", "ovi", "run", "--config", "ovi.yaml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "ovi: error: ovi.yaml:5: rules.grace_period: expected a duration like 30s, 5m, 1h30m"
        " or 2d (or 0), got \"soon\""]
    assert not (tmp_path / "ovi.db").exists()
