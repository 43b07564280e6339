"""What makes the log evidence, on the service's side: the chain key an
operator gives (``--chain-key-file`` or the systemd credential), and the
anchor file the head is appended to after each cycle (``--anchor-file``).

See docs/eventstore.md ("What the chain proves") for why both exist.
"""

from __future__ import annotations

import os
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
    (an unkeyed log). Surrounding whitespace (a trailing newline) is not part
    of the key.

    :raises OviError: naming the file, if it cannot be read or is too short.
    """
    if path is None:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            return None
        path = Path(directory) / CREDENTIAL_NAME
        if not path.exists():
            return None
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise OviError(f"{path}: cannot read the chain key: {exc.strerror}") from exc
    if len(key) < MIN_KEY_BYTES:
        raise OviError(f"{path}: a chain key must be at least {MIN_KEY_BYTES} bytes"
                       f" (32 random bytes are best: head -c 32 /dev/urandom), got {len(key)}")
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
