"""The helper process of :mod:`eventstore._import_worker`: run as
``python -m eventstore._import_helper`` by :class:`ImportWorker`, never
imported by the package. It reads its :class:`Config` and then batches of
rows on stdin, writes each batch in one transaction, and answers each with
a :class:`Reply` on stdout, until stdin ends.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from pathlib import Path

import msgspec

from eventstore._chain import LogHeader, check_joins, check_versions, decode_header
from eventstore._exceptions import ChainKeyError, ImportRejectedError, LogCorruptedError
from eventstore._import_worker import Config, Reply, RowTuple, read_frame, write_frame
from eventstore.sqlite import _checked_head, _stream_versions, _write_rows
from eventstore.sqlite_plumbing import BULK_PRAGMAS, configure, immediate_transaction


def _open(config: Config) -> sqlite3.Connection:
    # mode=rw: the log exists (the parent opened it); never create another.
    db = sqlite3.connect(f"{Path(config.path).absolute().as_uri()}?mode=rw", uri=True,
                         isolation_level=None, timeout=config.busy_timeout)
    configure(db, busy_timeout=config.busy_timeout, synchronous=config.synchronous)
    for name, value in BULK_PRAGMAS.items():
        db.execute(f"PRAGMA {name} = {int(value)}")
    return db


def write_batch(db: sqlite3.Connection, rows: list[RowTuple], header: LogHeader,
                location: str) -> Reply:
    """Write ``rows`` (chain-checked by the parent) in one transaction, after
    checking under the write lock what only the file can tell: the header is
    still ``header``, the head matches its rows and the first row follows
    it, the stream versions go on from the file's."""

    def body(db: sqlite3.Connection) -> None:
        head = _checked_head(db)
        if decode_header(head.header, location) != header:
            raise ChainKeyError(f"{location}: the log's header changed while it was being"
                                " copied into; nothing of this batch was written")
        problem = check_joins(rows[0], (head.position, head.hash)) or check_versions(
            rows, _stream_versions(db, {row[1] for row in rows}))
        if problem is not None:
            raise ImportRejectedError(problem.position, problem.reason)
        _write_rows(db, rows)

    try:
        immediate_transaction(db, body)
    except ImportRejectedError as exc:
        return Reply("rejected", exc.position, exc.reason)
    except LogCorruptedError as exc:
        return Reply("corrupted", exc.position, exc.reason)
    except ChainKeyError as exc:
        return Reply("header", 0, str(exc))
    except sqlite3.Error as exc:
        return Reply("error", 0, str(exc))
    return Reply("ok")


def main() -> int:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    frame = read_frame(stdin)
    if frame is None:
        return 0
    config = msgspec.msgpack.decode(frame, type=Config)
    header = decode_header(config.header, config.path)
    decode_rows = msgspec.msgpack.Decoder(list[RowTuple]).decode
    encode = msgspec.msgpack.Encoder().encode
    db = _open(config)
    write_frame(stdout, encode(Reply("ok")))  # opened: the parent may send batches
    try:
        while (frame := read_frame(stdin)) is not None:
            rows = decode_rows(frame)
            reply = write_batch(db, rows, header, config.path) if rows else Reply("ok")
            write_frame(stdout, encode(reply))
        # Leave the WAL short for the processes that go on using the file.
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
