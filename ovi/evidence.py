"""What makes the log evidence, on the service's side: the chain key an
operator gives (``--chain-key-file`` or the systemd credential), and the
anchor file the head is appended to after each cycle (``--anchor-file``).

See docs/eventstore.md ("What the chain proves") for why both exist.
"""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path

from eventstore import (
    MIN_KEY_BYTES,
    Anchor,
    AnchorError,
    Head,
    append_anchor,
    format_timestamp,
    is_postgres_dsn,
    mask_dsn,
)
from ovi._exceptions import OviError

__all__ = ["CREDENTIAL_NAME", "load_chain_key", "write_anchor"]

#: the credential ``LoadCredential=ovi-chain-key:…`` puts in $CREDENTIALS_DIRECTORY
CREDENTIAL_NAME = "ovi-chain-key"


def load_chain_key(path: Path | None) -> bytes | None:
    """The chain key: the file given, else the systemd credential
    ``$CREDENTIALS_DIRECTORY/ovi-chain-key`` when there is one, else None
    (an unkeyed log).

    The file's bytes are the key, except that a *text* key (printable ASCII,
    like a hex or base64 string) loses one trailing newline: a random binary
    key is taken byte for byte, since stripping whitespace off it would change
    (and sometimes shorten below the minimum) a key that merely ends in one.

    Whoever reads the key can forge every row of a keyed log, so a key file
    that other users may read, or that its group may write, is refused (its
    group may read it: a key owned by root, readable by the service's group).

    :raises OviError: naming the file, if it cannot be read, others may read
        it, or it is too short.
    """
    if path is None:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            return None
        path = Path(directory) / CREDENTIAL_NAME
        if not path.exists():
            return None
    try:
        with path.open("rb") as file:
            mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
            key = file.read()
    except OSError as exc:
        raise OviError(f"{path}: cannot read the chain key: {exc.strerror}") from exc
    if mode & _TOO_OPEN:
        raise OviError(f"{path}: the chain key file has mode {mode:04o}: other users may"
                       " read it (or its group write it), and whoever reads the key can"
                       f" forge the log; make it private: chmod 600 {path}")
    key = _without_text_newline(key)
    if len(key) < MIN_KEY_BYTES:
        raise OviError(f"{path}: a chain key must be at least {MIN_KEY_BYTES} bytes"
                       f" (32 random bytes are best: head -c 32 /dev/urandom), got {len(key)}")
    return key


#: mode bits a chain key file must not have: any for others, write for its group
_TOO_OPEN = stat.S_IRWXO | stat.S_IWGRP
_PRINTABLE = frozenset(range(0x20, 0x7F))


def _without_text_newline(key: bytes) -> bytes:
    """``key`` without the one newline (``\\n`` or ``\\r\\n``) an editor or
    ``echo`` ends a text key with; a key with any other byte is binary, kept whole."""
    for end in (b"\r\n", b"\n"):
        if key.endswith(end) and set(key[:-len(end)]) <= _PRINTABLE:
            return key[:-len(end)]
    return key


def write_anchor(anchor_file: Path, head: Head, log: str | os.PathLike[str]) -> Anchor:
    """Append ``head`` of the log at ``log`` (a path, or a shared log's URL,
    recorded with its password masked) to ``anchor_file`` (fsynced) and
    return the anchor written. Blocking: call it from a worker thread.

    :raises OviError: if the file cannot be written.
    """
    text = os.fspath(log)
    where = mask_dsn(text) if is_postgres_dsn(text) else os.path.abspath(text)
    anchor = Anchor(position=head.position, hash=head.hash, recorded_at=head.recorded_at,
                    anchored_at=format_timestamp(datetime.now(UTC)), log=where)
    try:
        append_anchor(anchor_file, [anchor])
    except AnchorError as exc:
        raise OviError(f"--anchor-file {exc}") from exc
    return anchor
