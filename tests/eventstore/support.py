"""Driving tests/eventstore/_child.py: another process on the same log."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

__all__ = ["child", "read_line", "tell"]

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def child(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run tests/eventstore/_child.py; kill it if the test leaves it running."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.eventstore._child", *args,
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.communicate()


async def read_line(process: asyncio.subprocess.Process, within: float = 30) -> str:
    assert process.stdout is not None
    async with asyncio.timeout(within):
        line = await process.stdout.readline()
    assert line, f"child exited early with status {await process.wait()}"
    return line.decode().strip()


async def tell(process: asyncio.subprocess.Process, line: str) -> None:
    assert process.stdin is not None
    process.stdin.write(line.encode() + b"\n")
    await process.stdin.drain()
