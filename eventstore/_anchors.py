"""Anchors: a log's head (position and hash) kept somewhere its writer cannot reach.

The hash chain alone proves only that the rows agree with each other: whoever
can write the file can edit a row, recompute every later hash and the head,
and the chain verifies again. An *anchor* is a head copied out of the log
at the time (another disk, a write-once mount, journald, a file another user
owns). A log that still holds, at each anchored position, exactly the hash
anchored there still holds exactly that prefix: a rewrite changes the hash at
the row it touched and at every row after it.

An anchor file holds one JSON object per line, appended and fsynced after each
cycle (``ovi apply``/``ovi run --anchor-file``)::

    {"position": 412, "hash": "9f…", "recorded_at": "2026-12-02T01:00:00.000000Z",
     "anchored_at": "2026-12-02T01:00:00.120000Z", "log": "/var/lib/ovi/ovi.db"}

Only ``position`` and ``hash`` are needed to check one; the rest is for a person.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from eventstore._exceptions import AnchorError

__all__ = ["Anchor", "append_anchor", "parse_anchor", "read_anchors"]

_HASH = re.compile(r"[0-9a-f]{64}")


class Anchor(msgspec.Struct, frozen=True, kw_only=True):
    """The log's head at some moment: ``hash`` is the row hash at ``position``
    (for position 0, the empty log, the genesis value)."""

    position: int
    hash: str
    #: ``recorded_at`` of the row at ``position`` (None for the empty log)
    recorded_at: str | None = None
    #: when the anchor was taken, by the clock of whoever took it
    anchored_at: str | None = None
    #: where the log was, for a person reading the file
    log: str | None = None


_decode_anchor = msgspec.json.Decoder(Anchor).decode
_encode = msgspec.json.Encoder().encode


def _checked(anchor: Anchor, where: str) -> Anchor:
    if anchor.position < 0:
        raise AnchorError(f"{where}: position must be ≥ 0, got {anchor.position}")
    if not _HASH.fullmatch(anchor.hash):
        raise AnchorError(f"{where}: hash must be 64 lowercase hex digits, got {anchor.hash!r}")
    return anchor


def parse_anchor(text: str) -> Anchor:
    """``POS:HASH`` as given on a command line.

    :raises AnchorError: naming what was expected.
    """
    position, sep, hash_ = text.strip().partition(":")
    if not sep or not position.isdigit():
        raise AnchorError(f"anchor {text!r}: expected POSITION:HASH, like 412:9f3c…")
    return _checked(Anchor(position=int(position), hash=hash_.lower()), f"anchor {text!r}")


def read_anchors(path: Path, on_torn: Callable[[str], None] | None = None) -> list[Anchor]:
    """Every anchor in an anchor file (blank lines are skipped).

    A *torn* line — the start of an anchor whose write was cut short by a
    crash or power loss, which :func:`append_anchor` leaves behind on a line of
    its own — is skipped, and ``on_torn`` (if given) is told where it is: the
    anchors before and after it still count.

    :raises AnchorError: naming the file and line of the first bad one, or
        why the file cannot be read.
    """
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise AnchorError(f"{path}: cannot read the anchor file: {exc.strerror}") from exc
    anchors: list[Anchor] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            anchor = _decode_anchor(line)
        except msgspec.ValidationError as exc:
            raise AnchorError(f"{where}: {exc}") from exc
        except msgspec.DecodeError as exc:
            torn, anchor_after = _torn(line, str(exc))
            if torn:
                if on_torn is not None:
                    on_torn(f"{where}: a torn anchor (its write was cut short), skipped")
                if anchor_after is not None:
                    anchors.append(_checked(anchor_after, where))
                continue
            raise AnchorError(f"{where}: expected one JSON object with position and hash,"
                              f" got {line[:60].decode(errors='replace')!r}") from exc
        anchors.append(_checked(anchor, where))
    return anchors


def _torn(line: bytes, error: str) -> tuple[bool, Anchor | None]:
    """Whether ``line`` is a torn anchor: the start of one cut short, alone
    (what :func:`append_anchor` leaves), or followed by a whole anchor glued
    onto it by a writer that could not read the file's end (returned)."""
    if not line.lstrip().startswith(b"{"):
        return False, None
    if "truncated" in error:
        return True, None
    start = line.rfind(b'{"position"')
    if start > 0:
        try:
            return True, _decode_anchor(line[start:])
        except msgspec.DecodeError:
            pass
    return False, None


def append_anchor(path: Path, anchors: Iterable[Anchor]) -> None:
    """Append anchors to ``path`` as JSON lines and fsync it; a file created
    here also gets its directory fsynced, so that the new name survives a
    power loss too.

    :raises AnchorError: if the file cannot be written.
    """
    lines = b"".join(_encode(anchor) + b"\n" for anchor in anchors)
    created = not path.exists()
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            torn = _ends_mid_line(fd)
        except PermissionError:
            # A file the writer may append to but not read (kept by another
            # user): it cannot look at its end; read_anchors copes with a glued line.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            torn = False
        try:
            if torn:
                # A torn write (crash mid-line): keep it on a line of its own,
                # or this anchor would be glued onto it and lost with it.
                lines = b"\n" + lines
            view = memoryview(lines)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
    except OSError as exc:
        raise AnchorError(f"{path}: cannot append to the anchor file: {exc.strerror}") from exc


def _ends_mid_line(fd: int) -> bool:
    """Whether the file open at ``fd`` is not empty and does not end with a newline."""
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"
