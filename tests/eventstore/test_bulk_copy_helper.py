"""The import helper process itself (:mod:`eventstore._import_worker`): it
runs this checkout's code whatever the working directory holds, is given
none of the parent's secrets, finds the file it was opened as after a
``chdir``, and a helper that cannot start, dies idle or stops answering is
handled as such (found by the hostile review of the helper)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

import eventstore._import_worker as import_worker
from eventstore import BackendError, SQLiteEventStore
from eventstore._chain import LogHeader
from eventstore._copy import copy_new_rows
from eventstore._store import EventStore
from eventstore._store_types import RawRow
from tests.eventstore.sample_events import sample_registry
from tests.eventstore.test_bulk_copy import filled, helper_ready, helpers, watch_imports

pytestmark = pytest.mark.asyncio


class HookedSource:
    """A store whose page number ``at`` (from 0) is served after ``hook`` ran."""

    def __init__(self, inner: EventStore, at: int, hook: Callable[[], Awaitable[None]]) -> None:
        self.inner, self.at, self.hook = inner, at, hook
        self.location = inner.location

    async def read_header(self) -> LogHeader:
        return await self.inner.read_header()

    async def last_position(self) -> int:
        return await self.inner.last_position()

    async def read_raw(self, *, after: int = 0,
                       limit: int | None = None) -> AsyncIterator[list[RawRow]]:
        pages = 0
        async for page in self.inner.read_raw(after=after, limit=limit):
            if pages == self.at:
                await self.hook()
            pages += 1
            yield page


async def copy(source: EventStore | HookedSource, target: SQLiteEventStore) -> int:
    return await copy_new_rows(source, target, batch=100)  # type: ignore[arg-type]


# A helper that answers "ok" to every batch and writes nothing.
_LYING_HELPER = """
import struct, sys
import msgspec
LENGTH = struct.Struct("<I")
def frame():
    head = sys.stdin.buffer.read(4)
    return None if len(head) < 4 else sys.stdin.buffer.read(LENGTH.unpack(head)[0])
while frame() is not None:
    body = msgspec.msgpack.encode(["ok", 0, ""])
    sys.stdout.buffer.write(LENGTH.pack(len(body)) + body)
    sys.stdout.buffer.flush()
"""


async def test_an_eventstore_package_in_the_working_directory_is_not_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An operator running Ovi from inside another checkout (an older Ovi).
    source = await filled(tmp_path / "source.db", 1_000)
    other = tmp_path / "checkout"
    (other / "eventstore").mkdir(parents=True)
    (other / "eventstore" / "__init__.py").write_text("")
    (other / "eventstore" / "_import_helper.py").write_text(_LYING_HELPER)
    try:
        async with SQLiteEventStore(tmp_path / "copy.db", sample_registry()) as target:
            seen = watch_imports(target)
            monkeypatch.chdir(other)
            assert await copy(source, target) == 1_000
            assert any(seen)
            assert await target.last_position() == 1_000
            assert (await target.verify()).ok
    finally:
        await source.aclose()


async def test_the_helper_is_given_none_of_the_parents_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "secret-one")
    monkeypatch.setenv("OVI_STORE", "postgresql://ovi:secret-two@db/ovi")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    source = await filled(tmp_path / "source.db", 2_000)
    environments: list[bytes] = []

    def read_environments() -> None:
        environments.extend(Path(f"/proc/{pid}/environ").read_bytes() for pid in helpers())

    async def look() -> None:
        await asyncio.to_thread(read_environments)

    try:
        async with SQLiteEventStore(tmp_path / "copy.db", sample_registry()) as target:
            await copy(HookedSource(source, 9, look), target)
    finally:
        await source.aclose()
    assert environments
    for environment in environments:
        for secret in (b"secret-one", b"secret-two", b"CREDENTIALS_DIRECTORY="):
            assert secret not in environment
        assert b"PYTHONPATH=" in environment


async def test_a_relative_path_is_the_file_opened_after_a_chdir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = await filled(tmp_path / "source.db", 1_000)
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    try:
        async with SQLiteEventStore("copy.db", sample_registry()) as target:
            monkeypatch.chdir(tmp_path / "elsewhere")
            seen = watch_imports(target)
            assert await copy(source, target) == 1_000
            assert any(seen)
        assert not (tmp_path / "elsewhere" / "copy.db").exists()
        async with SQLiteEventStore(tmp_path / "here" / "copy.db", sample_registry()) as copied:
            assert await copied.last_position() == 1_000
    finally:
        await source.aclose()


async def test_a_helper_that_dies_before_it_opened_the_file_leaves_the_copy_here(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # An interpreter without the package's dependencies (embedded, frozen…):
    # it starts, then fails at its first import.
    bare = tmp_path / "bare-python"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S -I \"$@\"\n")
    bare.chmod(0o755)
    source = await filled(tmp_path / "source.db", 1_000)
    try:
        async with SQLiteEventStore(tmp_path / "copy.db", sample_registry()) as target:
            monkeypatch.setattr(sys, "executable", str(bare))
            caplog.set_level(logging.WARNING, logger="eventstore")
            assert await copy(source, target) == 1_000
            assert await target.last_position() == 1_000
            assert (await target.verify()).ok
        warned = [r.getMessage() for r in caplog.records if "helper" in r.getMessage()]
        assert any("copying in this process" in m and "ModuleNotFoundError" in m
                   for m in warned), warned
        assert helpers() == []
    finally:
        await source.aclose()


async def test_a_helper_killed_while_idle_is_named_as_gone(tmp_path: Path) -> None:
    source = await filled(tmp_path / "source.db", 2_000)

    async def kill_when_idle() -> None:
        await helper_ready(target)
        await asyncio.sleep(0.5)  # the batches sent so far are answered
        for pid in helpers():
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)

    try:
        async with SQLiteEventStore(tmp_path / "copy.db", sample_registry()) as target:
            with pytest.raises(BackendError) as caught:
                await copy(HookedSource(source, 9, kill_when_idle), target)
            said = str(caught.value)
            assert "helper process writing" in said and "exit code -9" in said, said
            assert helpers() == []
            assert (await target.verify()).ok
            held = await target.last_position()  # a prefix: the next copy goes on from it
            assert await copy(source, target) == 2_000 - held
            assert (await target.verify()).ok
    finally:
        await source.aclose()


async def test_a_helper_that_stops_answering_is_killed_and_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(import_worker, "ANSWER_MARGIN", 1.0)
    source = await filled(tmp_path / "source.db", 2_000)
    stopped: list[int] = []

    async def stop() -> None:
        await helper_ready(target)  # one that never started leaves the copy in process
        for pid in helpers():
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)

    try:
        async with SQLiteEventStore(tmp_path / "copy.db", sample_registry(),
                                    busy_timeout=1.0) as target:
            with pytest.raises(BackendError) as caught:
                async with asyncio.timeout(30):
                    await copy(HookedSource(source, 5, stop), target)
            assert stopped
            assert "did not answer within 2 s" in str(caught.value), str(caught.value)
            assert helpers() == []
        async with SQLiteEventStore(tmp_path / "copy.db", sample_registry()) as target:
            assert (await target.verify()).ok
            held = await target.last_position()
            assert await copy(source, target) == 2_000 - held
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        await source.aclose()
