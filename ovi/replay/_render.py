"""Writing results: JSON (lines), aligned text, colour on a terminal, progress."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec

from ovi._text import escaped

__all__ = ["Output", "Progress", "fmt_count", "fmt_time", "is_tty", "note"]

_COLOURS = {"red": "31", "green": "32", "yellow": "33", "blue": "34", "dim": "2", "bold": "1"}


def is_tty(stream: TextIO) -> bool:
    """A terminal that accepts colour (``NO_COLOR`` unset)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and "NO_COLOR" not in os.environ


def fmt_time(moment: datetime | None) -> str:
    """UTC to the second: ``2026-11-26T12:00:00Z``."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fmt_count(n: int) -> str:
    return f"{n:,}"


def note(message: str) -> None:
    """A word on stderr about long work, only for a person at a terminal."""
    if is_tty(sys.stderr):
        sys.stderr.write(f"{message}\n")
        sys.stderr.flush()


class Output:
    """Where results go: one JSON object, JSON lines, or text with optional colour."""

    def __init__(self, stream: TextIO | None = None, *, as_json: bool = False,
                 colour: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.as_json = as_json
        self.colour = is_tty(self.stream) if colour is None else colour
        self._encode = msgspec.json.Encoder().encode

    def write(self, text: str = "") -> None:
        """One line of text."""
        self.stream.write(text + "\n")

    def json(self, value: Any) -> None:
        """One JSON value on one line."""
        self.stream.write(self._encode(value).decode() + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def paint(self, text: str, colour: str | None) -> str:
        if not self.colour or colour is None:
            return text
        return f"\x1b[{_COLOURS[colour]}m{text}\x1b[0m"

    def table(self, rows: Sequence[Sequence[tuple[str, str | None]]], *,
              header: Sequence[str] | None = None, indent: str = "") -> None:
        """Columns aligned on the plain text, then coloured; the last column is
        not padded. ``header`` is printed dim above the rows."""
        every: list[list[tuple[str, str | None]]] = (
            [[(h, "dim") for h in header]] if header else [])
        # Escaped: a cell can hold what a cloud tag or a log row says.
        every.extend([[(escaped(text), colour) for text, colour in row] for row in rows])
        if not every:
            return
        width = [max(len(row[i][0]) for row in every) for i in range(len(every[0]))]
        for row in every:
            cells = [self.paint(text.ljust(width[i]) if i < len(row) - 1 else text, colour)
                     for i, (text, colour) in enumerate(row)]
            self.write((indent + "  ".join(cells)).rstrip())


class Progress:
    """A one-line counter on stderr, only when stderr is a terminal."""

    def __init__(self, what: str, *, total: int | None = None,
                 stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = is_tty(self.stream)
        self.what = what
        self.total = total
        self._shown = 0.0

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._shown < 0.25:
            return
        self._shown = now
        of = f" / {self.total:,}" if self.total else ""
        self.stream.write(f"\r{self.what}: {done:,}{of} events\x1b[K")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
