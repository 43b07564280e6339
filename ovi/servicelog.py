"""The service's log: one structured line per cycle, decision, action or
incident, on stderr, as text (``key=value``) or JSON.

Under journald (``$JOURNAL_STREAM`` set) lines carry no timestamp of their
own (the journal stamps them) and start with a ``<N>`` syslog priority, which
journald turns into the entry's priority (``journalctl -p warning``).
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import IO

import msgspec

__all__ = ["Level", "LogFormat", "ServiceLog"]


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class Level(IntEnum):
    """Syslog priorities, as journald reads them from a ``<N>`` prefix."""

    ERROR = 3
    WARNING = 4
    INFO = 6


_NAMES = {Level.ERROR: "error", Level.WARNING: "warning", Level.INFO: "info"}
_encode = msgspec.json.Encoder().encode
Field = str | int | float | bool | None | list[str] | dict[str, int]


def _text_value(value: Field) -> str:
    if isinstance(value, list):
        value = ",".join(value)
    elif isinstance(value, dict):
        value = ",".join(f"{k}:{v}" for k, v in value.items())
    elif isinstance(value, float):
        value = f"{value:.3f}"
    text = "" if value is None else str(value)
    if not text or any(c in text for c in ' "=\n\\'):
        return _encode(text).decode()  # quoted, with escapes: one line whatever it holds
    return text


class ServiceLog:
    """Writes log lines; ``stream`` defaults to stderr."""

    def __init__(self, fmt: LogFormat = LogFormat.TEXT, *, stream: IO[str] | None = None,
                 journald: bool | None = None) -> None:
        self.format = fmt
        self._stream = stream
        self.journald = bool(os.environ.get("JOURNAL_STREAM")) if journald is None else journald

    def info(self, event: str, message: str, **fields: Field) -> None:
        self.write(Level.INFO, event, message, **fields)

    def warning(self, event: str, message: str, **fields: Field) -> None:
        self.write(Level.WARNING, event, message, **fields)

    def error(self, event: str, message: str, **fields: Field) -> None:
        self.write(Level.ERROR, event, message, **fields)

    def write(self, level: Level, event: str, message: str, **fields: Field) -> None:
        """One line: ``event`` names what happened (``cycle``, ``decision``,
        ``action``, ``reload`` …), ``message`` says it in words."""
        prefix = f"<{int(level)}>" if self.journald else ""
        if self.format is LogFormat.JSON:
            body: dict[str, Field] = {}
            if not self.journald:
                body["ts"] = datetime.now(UTC).isoformat(timespec="milliseconds")
            body.update(level=_NAMES[level], event=event, msg=message)
            body.update(fields)
            line = prefix + _encode(body).decode()
        else:
            parts = [] if self.journald else [datetime.now(UTC).isoformat(timespec="milliseconds")]
            parts += [_NAMES[level], event, _text_value(message)]
            parts += [f"{k}={_text_value(v)}" for k, v in fields.items()]
            line = prefix + " ".join(parts)
        stream = self._stream or sys.stderr
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full stderr must not stop reconciling
