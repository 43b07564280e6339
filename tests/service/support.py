"""``ovi run`` in a child process, with what systemd would give it: a real
unix datagram ``NOTIFY_SOCKET`` (path or abstract), signals, and a log file
of its JSON lines; plus a local webhook receiver."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.e2e.cli import ROOT, aws_env

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy (returned)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class NotifySocket:
    """A bound ``AF_UNIX``/``SOCK_DGRAM`` socket collecting sd_notify datagrams."""

    def __init__(self, tmp_path: Path, *, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"ovi-test-{secrets.token_hex(6)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            path = tmp_path / "notify.sock"
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.05)
        self.messages: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    def with_key(self, key: str) -> list[dict[str, str]]:
        return [m for m in list(self.messages) if key in m]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


class OviService:
    """``python -m ovi run …`` with its stderr (JSON lines) in a file."""

    def __init__(self, tmp_path: Path, endpoint: str, *args: str,
                 env: dict[str, str] | None = None, name: str = "run") -> None:
        self.log_path = tmp_path / f"{name}.stderr"
        self.out_path = tmp_path / f"{name}.stdout"
        full_env = aws_env(endpoint)
        full_env.update(env or {})
        self._err = self.log_path.open("w")
        self._out = self.out_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ovi", "run", "--log-format", "json",
             "--metrics-addr", "127.0.0.1:0", *args],
            cwd=tmp_path, env=full_env, stdout=self._out, stderr=self._err, text=True)

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text().splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                found.append({"event": "unparsed", "msg": line})
        return found

    def wait_line(self, match: Callable[[dict[str, Any]], bool], timeout: float = 30,
                  what: str = "a log line", after: int = 0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            self._assert_alive()
            return next((line for line in self.lines()[after:] if match(line)), None)

        line: dict[str, Any] = wait_until(check, timeout, f"{what}; log:\n{self.text()}")
        return line

    def cycles(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == "cycle"]

    def wait_cycles(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        def enough() -> bool:
            self._assert_alive()
            return len(self.cycles()) >= count

        wait_until(enough, timeout, f"{count} cycles; log:\n{self.text()}")
        return self.cycles()

    def port(self) -> int:
        return int(self.wait_line(lambda line: line.get("event") == "metrics",
                                  what="the metrics port")["port"])

    def text(self) -> str:
        return self.log_path.read_text() + self.out_path.read_text()

    def _assert_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"ovi run exited with {self.proc.returncode}:\n{self.text()}")

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._err.close()
        self._out.close()


@contextmanager
def service(tmp_path: Path, endpoint: str, *args: str, env: dict[str, str] | None = None,
            name: str = "run") -> Iterator[OviService]:
    running = OviService(tmp_path, endpoint, *args, env=env, name=name)
    try:
        yield running
    finally:
        running.close()


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with _OPENER.open(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def events(store: Path, *types: str) -> list[tuple[int, str, dict[str, Any]]]:
    """(position, type, data) of the log's events of ``types`` (all when none)."""
    with closing(sqlite3.connect(store)) as db:
        try:
            rows = db.execute("SELECT position, type, data FROM events ORDER BY position")
            return [(p, t, json.loads(d)) for p, t, d in rows if not types or t in types]
        except sqlite3.OperationalError:
            return []


class Webhook:
    """A local HTTP server standing in for a chat webhook: answers with the
    given statuses in turn (200 once they run out) and keeps what it got."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.answered: list[int] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                status = hook.statuses.pop(0) if hook.statuses else 200
                hook.received.append((self.path, body))
                hook.answered.append(status)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.secret = secrets.token_hex(12)
        host, port = self.server.server_address[:2]
        self.url = f"http://{host!s}:{port}/hooks/T000/{self.secret}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def child_env(**extra: str) -> dict[str, str]:
    """Variables to add for the child: none of the parent's systemd ones leak."""
    env = {k: "" for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM",
                           "CREDENTIALS_DIRECTORY") if k in os.environ}
    env.update(extra)
    return env


__all__ = ["ROOT", "NotifySocket", "OviService", "Webhook", "child_env", "events", "http_get",
           "service", "wait_until"]
