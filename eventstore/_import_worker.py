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

The helper answers its configuration once it has opened the file; batches
are sent meanwhile (its start overlaps the copy's reading). A helper that
ends before that answer (say an interpreter without this package's
dependencies) cannot have written anything: every batch sent to it fails
with :class:`HelperUnavailable`, and the store copies them in process. It
takes batches in the order they are sent and answers each; a
batch may be sent while the one before is being written (so the helper
never waits for this process's reading). A batch that does not follow the
file's head is refused whole, so a batch sent after a refused one is refused
too, and nothing is ever written out of order. A helper that dies mid-batch
loses only its open transaction (SQLite rolls it back): the file stays a
prefix of the copied log. The helper ends when its input closes (this
process closed it, or died) or when it is killed. A helper that does not
answer a batch within the store's busy timeout and a minute (stopped, or
stuck) is killed, and the copy fails saying so.

Frames on both pipes are a 4-byte little-endian length and a msgpack body.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import struct
import subprocess
from pathlib import Path
from typing import IO

import msgspec

from eventstore._chain import LogHeader
from eventstore._child_python import child_command, child_environment
from eventstore._exceptions import (
    BackendError,
    ChainKeyError,
    ImportRejectedError,
    LogCorruptedError,
)
from eventstore._store_types import RawRow

__all__ = ["Config", "HelperUnavailable", "ImportWorker", "Reply", "RowTuple", "read_frame",
           "write_frame"]

_log = logging.getLogger("eventstore")
_LENGTH = struct.Struct("<I")
#: how long a helper told to stop may take to end its batch and checkpoint
_STOP_TIMEOUT = 30.0
#: on top of the busy timeout (waiting for another writer's lock), how long
#: a helper may take to answer a batch before it is taken for stuck
ANSWER_MARGIN = 60.0


class HelperUnavailable(OSError):
    """The helper process could not be started, or ended before it had
    opened the file: nothing sent to it was written."""

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
                 replies: asyncio.StreamReader, transport: asyncio.BaseTransport, *,
                 answer_timeout: float) -> None:
        self._process = process
        self._path = path
        self._answer_timeout = answer_timeout
        #: answered when the helper has opened the file
        self._ready: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        #: whether it said so
        self._started = False
        #: whether the store said it copies in process, this helper being unavailable
        self.fallback_said = False
        #: whether :meth:`close` told it to end
        self._closing = False
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
        """Start a helper writing to the SQLite log at ``path`` (absolute).

        :raises HelperUnavailable: if the process cannot be started.
        """
        spawn = asyncio.ensure_future(asyncio.to_thread(
            subprocess.Popen, child_command("eventstore._import_helper"), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_environment()))
        try:
            process = await asyncio.shield(spawn)
        except OSError as exc:
            raise HelperUnavailable(str(exc)) from exc
        except asyncio.CancelledError:
            # The thread starts the helper all the same: it must not be left unowned.
            with contextlib.suppress(OSError):
                started = await spawn
                started.kill()
                started.wait()
                _close_pipes(started, None)
            raise
        transport: asyncio.BaseTransport | None = None
        worker: ImportWorker | None = None
        try:
            assert process.stdout is not None
            loop = asyncio.get_running_loop()
            replies = asyncio.StreamReader()
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(replies), process.stdout)
            worker = cls(process, path, replies, transport,
                         answer_timeout=busy_timeout + ANSWER_MARGIN)
            # Its answer is the first awaited: batches are sent meanwhile (the
            # helper's start, ~0.1 s, overlaps the copy's reading).
            worker._waiting.append(worker._ready)
            config = Config(str(path), busy_timeout, synchronous, header.encode())
            try:
                await worker._write(msgspec.msgpack.encode(config))
            except OSError as exc:
                worker._stop("did not start")
                await asyncio.gather(worker._reader, return_exceptions=True)
                raise HelperUnavailable(worker._broken or str(exc)) from exc
        except BaseException:
            process.kill()
            process.wait()
            if worker is not None:
                worker._reader.cancel()
            _close_pipes(process, transport)
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
                if waiting is self._ready:
                    self._started = True
                if not waiting.done():
                    waiting.set_result(reply)
        except asyncio.IncompleteReadError as exc:
            if exc.partial or self._waiting or not self._closing:  # not told to stop
                self._broken = self._broken or await self._ended(exc)
        except (ConnectionError, msgspec.DecodeError) as exc:
            self._broken = self._broken or await self._ended(exc)
        finally:
            while self._waiting:
                waiting = self._waiting.popleft()
                if waiting is self._ready:
                    waiting.cancel()  # awaited by nobody: the batches' answers say it
                elif not waiting.done():
                    waiting.set_exception(self._failure())

    def _failure(self) -> BackendError | HelperUnavailable:
        why = self._broken or f"the helper process writing {self._path} was stopped"
        # Before it opened the file, nothing sent to it can have been written.
        return BackendError(why) if self._started else HelperUnavailable(why)

    async def import_rows(self, rows: list[RawRow]) -> None:
        """Have the helper write ``rows`` (checked by
        :func:`~eventstore._chain.check_chained` already) in one transaction,
        after every batch sent before them.

        :raises ImportRejectedError: if they do not continue the log (nothing
            of them was written).
        :raises LogCorruptedError: if the log's head does not match its rows.
        :raises ChainKeyError: if the log's header changed.
        :raises BackendError: if the database fails, or the helper ended.
        :raises HelperUnavailable: if the helper ended before it had opened
            the file (nothing of these rows was written).
        """
        body = self._encode(rows)
        async with self._send_lock:
            if self._broken is not None:
                raise self._failure()
            answer: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
            self._waiting.append(answer)
            try:
                await self._write(body)
            except OSError as exc:  # a broken pipe: the helper is gone
                answer.cancel()
                await asyncio.shield(self._reader)
                raise self._failure() from exc
            except BaseException:
                self._stop("was stopped")
                raise
        try:
            reply = await asyncio.wait_for(answer, self._answer_timeout)
        except TimeoutError:
            self._stop(f"did not answer within {self._answer_timeout:.0f} s (stopped, or"
                       " stuck?) and was killed")
            failure = self._failure()
            if isinstance(failure, HelperUnavailable):
                raise failure from None
            raise BackendError(f"{self._broken}; the rows of its last batch were not written,"
                               " or were written whole") from None
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
        ended = (f"the helper process writing {self._path} ended (exit code"
                 f" {self._process.returncode}): {last}")
        if not self._started:
            return ended
        return f"{ended}; the rows of its last batch were not written, or were written whole"

    def _last_words(self) -> str:
        self._process.wait()
        stderr = self._process.stderr
        return stderr.read().decode(errors="replace").strip() if stderr else ""

    async def close(self) -> None:
        """Let the helper end (it checkpoints the log's WAL and exits); kill
        it if it takes longer than it should or if this is cancelled."""
        process = self._process
        self._closing = True
        try:
            if process.stdin is not None:
                with contextlib.suppress(OSError):  # a helper already gone
                    await asyncio.to_thread(process.stdin.close)
            try:
                await asyncio.to_thread(process.wait, _STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                # Its batches were all answered: only the checkpoint is cut short.
                self._stop(f"did not end within {_STOP_TIMEOUT:.0f} s and was killed")
                _log.warning("%s: %s", self._path, self._broken)
                await asyncio.to_thread(process.wait)
        except BaseException:
            self._stop("was stopped")
            process.wait()
            raise
        finally:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            _close_pipes(process, self._transport)
        if process.returncode != 0 and self._broken is None:
            _log.warning("%s: the import helper ended with exit code %s", self._path,
                         process.returncode)


def _close_pipes(process: subprocess.Popen[bytes],
                 transport: asyncio.BaseTransport | None) -> None:
    """Close this end of the helper's pipes (its answers': the transport)."""
    if transport is not None:
        transport.close()
    elif process.stdout is not None:
        process.stdout.close()
    for pipe in (process.stdin, process.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):  # a write cut short by the helper's end
                pipe.close()


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
