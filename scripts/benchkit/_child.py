"""The child-process protocol: one way to measure in a fresh interpreter.

A measurement that must not inherit this process's heap, threads or peak
RSS runs as::

    python scripts/bench.py --child GROUP:TASK --params JSON --scratch DIR [--quick] [--json-only]

The child looks the task up in its group (``Group.tasks``), decodes
``--params`` into the task's parameter Struct, runs it under uvloop and
prints its result, msgspec JSON, as the only thing on stdout. Its stderr
(progress, a traceback) is relayed to ours as it comes, unless the run is
quiet; if the child fails, the error carries the end of that stderr.
"""

from __future__ import annotations

import codecs
import sys
from collections import deque
from pathlib import Path
from subprocess import DEVNULL, PIPE
from typing import TypeVar

import anyio
import msgspec
from anyio.abc import ByteReceiveStream

__all__ = ["ENTRY", "BenchError", "ChildError", "run_child"]

# The entry point every child re-runs: it holds the registry of groups.
ENTRY = Path(__file__).resolve().parent.parent / "bench.py"
# How much of a failed child's stderr an error quotes.
STDERR_TAIL_LINES = 25

R = TypeVar("R")


class BenchError(Exception):
    """Something went wrong running a benchmark (not a figure that missed
    its target: that is a result)."""


class ChildError(BenchError):
    """A child task exited non-zero or printed no valid result."""

    def __init__(self, task: str, problem: str, stderr: str) -> None:
        self.task = task
        self.problem = problem
        self.stderr = stderr
        message = f"child task {task} {problem}"
        if stderr:
            message += f"; its stderr ended with:\n{stderr}"
        super().__init__(message)


async def run_child(
    task: str,
    params: msgspec.Struct,
    result: type[R],
    *,
    scratch: Path,
    quick: bool,
    quiet: bool,
) -> R:
    """Run ``task`` (``GROUP:TASK``) with ``params`` in a fresh interpreter
    and return its stdout decoded as ``result``.

    :raises ChildError: if the child exits non-zero or its stdout is not a
        valid ``result``; the error quotes the end of the child's stderr.
    """
    flags = [flag for flag, on in (("--quick", quick), ("--json-only", quiet)) if on]
    # A fixed argument list (this interpreter, the entry script); no shell.
    command = [sys.executable, str(ENTRY), "--child", task,
               "--params", msgspec.json.encode(params).decode(), "--scratch", str(scratch),
               *flags]
    out = bytearray()
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)

    async def collect(stream: ByteReceiveStream) -> None:
        async for chunk in stream:
            out.extend(chunk)

    async def relay(stream: ByteReceiveStream) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        async for chunk in stream:
            text = decoder.decode(chunk)
            if not quiet:
                sys.stderr.write(text)
                sys.stderr.flush()
            *lines, pending = (pending + text).split("\n")
            tail.extend(lines)
        if pending := pending + decoder.decode(b"", final=True):
            tail.append(pending)

    async with await anyio.open_process(command, stdin=DEVNULL, stdout=PIPE,
                                        stderr=PIPE) as process:
        assert process.stdout is not None and process.stderr is not None
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(collect, process.stdout)
            tasks.start_soon(relay, process.stderr)
        code = await process.wait()
    stderr = "\n".join(tail)
    if code != 0:
        raise ChildError(task, f"exited with code {code}", stderr)
    try:
        return msgspec.json.decode(bytes(out), type=result)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ChildError(task, f"printed no valid {getattr(result, '__name__', result)} "
                               f"({exc})", stderr) from exc
