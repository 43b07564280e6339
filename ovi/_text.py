"""Free text from the cloud or the log, made safe to print on a terminal."""

from __future__ import annotations

__all__ = ["escaped"]


def escaped(text: str) -> str:
    """``text`` as it prints on one line: a character that would not print as
    itself (a newline, an escape sequence, a bidi override) is shown escaped,
    so text a tag or a log row carries cannot fake a line or drive the
    terminal. Printable text is returned as it is (escaping twice changes
    nothing)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)
