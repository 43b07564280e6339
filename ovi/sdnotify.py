"""The sd_notify protocol: one datagram per state change to ``$NOTIFY_SOCKET``.

systemd's ``Type=notify`` units wait for ``READY=1``; ``STATUS=`` shows in
``systemctl status``; ``WATCHDOG=1`` must come at least every
``$WATCHDOG_USEC`` or the unit is restarted; ``STOPPING=1`` says shutdown
began. The socket is a unix datagram socket, by path or, when the variable
starts with ``@``, in the abstract namespace. Without the variable every call
does nothing, so the service runs the same outside systemd.
"""

from __future__ import annotations

import os
import socket

__all__ = ["SdNotifier", "watchdog_interval"]


class SdNotifier:
    """Sends sd_notify messages; never raises (a lost status line must not
    stop the service: systemd itself treats the protocol as best effort)."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self._address: str | None = None
        self._socket: socket.socket | None = None
        if address:
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def notify(self, **fields: str) -> bool:
        """Send ``KEY=value`` lines (``notify(READY="1", STATUS="…")``); False
        when not under systemd or the datagram could not be sent."""
        if self._socket is None or self._address is None:
            return False
        # A STATUS is one line: a newline would start a bogus assignment.
        text = "\n".join(f"{key}={' '.join(str(value).splitlines())}"
                         for key, value in fields.items())
        try:
            self._socket.sendto(text.encode(), self._address)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval() -> float | None:
    """Seconds systemd waits for a ``WATCHDOG=1``, when it expects them from
    this process (``$WATCHDOG_USEC``, and ``$WATCHDOG_PID`` if set is ours)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000
