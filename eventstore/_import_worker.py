"""A long copy's SQLite writes, made by a helper process.

A mirror catching up on a shared log (or ``replay copy`` into a SQLite file)
reads rows, checks their chain and writes them. In one process that work is
bound to one core: the driver's decoding and the chain check hold Python's
lock, and sqlite3's ``executemany`` releases and takes it again at every
row, so a writer thread waits for the reading thread at each row and the two
barely overlap (``docs/benchmarks.md``). So a copy longer than one batch
hands its writes to a helper process (:mod:`eventstore._import_helper`), on
the other core:

- this process reads the rows and checks everything about them that needs
  no lock (:func:`~eventstore._chain.check_chained`: shape, positions,
  links, every hash — with the log's key, which never leaves this process);
- the helper takes the file's write lock and checks what only the file can
  tell — the header is still the one this store opened, the head matches
  its rows and the first row follows it, the stream versions go on from
  the file's — then writes the batch in the same transaction.

The helper takes batches in the order they are sent and answers each; a
batch may be sent while the one before is being written (so the helper
never waits for this process's reading). A batch that does not follow the
file's head is refused whole, so a batch sent after a refused one is refused
too, and nothing is ever written out of order. A helper that dies mid-batch
loses only its open transaction (SQLite rolls it back): the file stays a
prefix of the copied log. The helper ends when its input closes (this
process closed it, or died) or when it is killed.

Frames on both pipes are a 4-byte little-endian length and a msgpack body.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import IO

import msgspec

from eventstore._chain import LogHeader
from eventstore._exceptions import (
    BackendError,
    ChainKeyError,
    ImportRejectedError,
    LogCorruptedError,
)
from eventstore._store_types import RawRow

__all__ = ["Config", "ImportWorker", "Reply", "RowTuple", "read_frame", "write_frame"]

_log = logging.getLogger("eventstore")
_LENGTH = struct.Struct("<I")
#: where this package is imported from: the helper imports it from there too,
#: even when it was not installed (a checkout on sys.path)
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
#: how long a helper told to stop may take to end its batch and checkpoint
_STOP_TIMEOUT = 30.0

RowTuple = tuple[int, str, int, str, str, str, str, str, str]


class Config(msgspec.Struct, frozen=True):
    """The helper's first frame: which file, how to open it."""

    path: str
    busy_timeout: float
    synchronous: str
    #: the header the parent's store opened the log with (its text)
    header: str


class Reply(msgspec.Struct, frozen=True, array_like=True):
    """The helper's answer to one batch."""

    #: "ok", or the exception to raise: "rejected", "corrupted", "header", "error"
    outcome: str
    position: int = 0
    reason: str = ""


class ImportWorker:
    """The parent's end of one helper process; see the module docstring.

    Batches are written to its input by a thread, blocking: a batch is
    megabytes, and pushed through a pipe from the event loop it would move
    only as fast as the loop comes back to it between the pages it reads.
    Its answers are small and read on the event loop.
    """

    def __init__(self, process: subprocess.Popen[bytes], path: Path,
                 replies: asyncio.StreamReader, transport: asyncio.BaseTransport) -> None:
        self._process = process
        self._path = path
        self._replies = replies
        self._transport = transport
        self._send_lock = asyncio.Lock()
        self._waiting: collections.deque[asyncio.Future[Reply]] = collections.deque()
        # A row that is not a tuple (a driver's record) is sent as one.
        self._encode = msgspec.msgpack.Encoder(enc_hook=tuple).encode
        self._decode = msgspec.msgpack.Decoder(Reply).decode
        #: why the helper cannot take another batch, once it cannot
        self._broken: str | None = None
        self._reader = asyncio.ensure_future(self._read_replies())

    @classmethod
    async def start(cls, path: Path, *, header: LogHeader, busy_timeout: float,
                    synchronous: str) -> ImportWorker:
        """Start a helper writing to the SQLite log at ``path``.

        :raises OSError: if the process cannot be started.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            part for part in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if part)
        process = await asyncio.to_thread(
            subprocess.Popen, [sys.executable, "-m", "eventstore._import_helper"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            assert process.stdout is not None
            loop = asyncio.get_running_loop()
            replies = asyncio.StreamReader()
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(replies), process.stdout)
            config = Config(str(path), busy_timeout, synchronous, header.encode())
            worker = cls(process, path, replies, transport)
            await worker._write(msgspec.msgpack.encode(config))
        except BaseException:
            process.kill()
            process.wait()
            raise
        return worker

    async def _write(self, body: bytes) -> None:
        stdin = self._process.stdin
        assert stdin is not None

        def write() -> None:
            stdin.write(_LENGTH.pack(len(body)))
            stdin.write(body)
            stdin.flush()

        await asyncio.to_thread(write)

    async def _read_replies(self) -> None:
        """Hand each answer to the batch it is for (the oldest unanswered)."""
        try:
            while True:
                head = await self._replies.readexactly(_LENGTH.size)
                reply = self._decode(await self._replies.readexactly(_LENGTH.unpack(head)[0]))
                waiting = self._waiting.popleft()
                if not waiting.done():
                    waiting.set_result(reply)
        except asyncio.IncompleteReadError as exc:
            if exc.partial or self._waiting:  # not the end of a helper told to stop
                self._broken = self._broken or await self._ended(exc)
        except (ConnectionError, msgspec.DecodeError) as exc:
            self._broken = self._broken or await self._ended(exc)
        finally:
            while self._waiting:
                waiting = self._waiting.popleft()
                if not waiting.done():
                    waiting.set_exception(BackendError(
                        self._broken or f"the helper process writing {self._path} was stopped"))

    async def import_rows(self, rows: list[RawRow]) -> None:
        """Have the helper write ``rows`` (checked by
        :func:`~eventstore._chain.check_chained` already) in one transaction,
        after every batch sent before them.

        :raises ImportRejectedError: if they do not continue the log (nothing
            of them was written).
        :raises LogCorruptedError: if the log's head does not match its rows.
        :raises ChainKeyError: if the log's header changed.
        :raises BackendError: if the database fails, or the helper ended.
        """
        body = self._encode(rows)
        async with self._send_lock:
            if self._broken is not None:
                raise BackendError(self._broken)
            answer: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
            self._waiting.append(answer)
            try:
                await self._write(body)
            except OSError as exc:  # a broken pipe: the helper is gone
                answer.cancel()
                await asyncio.shield(self._reader)
                raise BackendError(self._broken or str(exc)) from exc
            except BaseException:
                self._stop("was stopped")
                raise
        try:
            reply = await answer
        except asyncio.CancelledError:
            # Cancelled with a batch in the helper: the copy is being given
            # up. Whether the batch committed is for the next copy to see (it
            # starts from the file's head).
            self._stop("was stopped")
            raise
        if reply.outcome == "ok":
            return
        if reply.outcome == "rejected":
            raise ImportRejectedError(reply.position, reply.reason)
        if reply.outcome == "corrupted":
            raise LogCorruptedError(reply.position, reply.reason)
        if reply.outcome == "header":
            raise ChainKeyError(reply.reason)
        raise BackendError(f"import into {self._path} failed, nothing written: {reply.reason}")

    def _stop(self, why: str) -> None:
        self._broken = self._broken or f"the helper process writing {self._path} {why}"
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()

    async def _ended(self, exc: BaseException) -> str:
        """Why the helper stopped answering: its exit code and last words."""
        self._stop("ended")
        said = await asyncio.to_thread(self._last_words)
        last = said.splitlines()[-1] if said else str(exc) or type(exc).__name__
        return (f"the helper process writing {self._path} ended (exit code"
                f" {self._process.returncode}): {last}; the rows of its last batch were not"
                " written, or were written whole")

    def _last_words(self) -> str:
        self._process.wait()
        stderr = self._process.stderr
        return stderr.read().decode(errors="replace").strip() if stderr else ""

    async def close(self) -> None:
        """Let the helper end (it checkpoints the log's WAL and exits); kill
        it if it takes longer than it should or if this is cancelled."""
        process = self._process
        try:
            if process.stdin is not None:
                with contextlib.suppress(OSError):  # a helper already gone
                    await asyncio.to_thread(process.stdin.close)
            await asyncio.to_thread(process.wait, _STOP_TIMEOUT)
        except BaseException:
            self._stop("was stopped")
            process.wait()
            raise
        finally:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._transport.close()
            if process.stderr is not None:
                process.stderr.close()
        if process.returncode != 0 and self._broken is None:
            _log.warning("%s: the import helper ended with exit code %s", self._path,
                         process.returncode)


def read_frame(stream: IO[bytes]) -> bytes | None:
    """One frame from ``stream``; None at its end (the other side closed it)."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    length = _LENGTH.unpack(head)[0]
    body = stream.read(length)
    if len(body) < length:
        return None
    return body


def write_frame(stream: IO[bytes], body: bytes) -> None:
    stream.write(_LENGTH.pack(len(body)) + body)
    stream.flush()
