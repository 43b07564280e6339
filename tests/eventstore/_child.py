"""A second process on the same log, driven by the backends' test modules.

Run as ``python -m tests.eventstore._child COMMAND PATH ...`` from the
repository root, PATH being a SQLite file or a PostgreSQL DSN (``store_for``):

``append-forever PATH``
    append one event at a time and print each returned position, until killed;
``hammer PATH TAG COUNT``
    print ``ready``, wait for a line on stdin, then append COUNT events to stream
    TAG (``ANY``), racing for every version of stream ``shared`` with exact
    expected versions along the way; print a JSON summary;
``append-on-request PATH STREAM``
    for every line read on stdin, append one event to STREAM and print its
    position; exit at the end of input.
"""

from __future__ import annotations

import asyncio
import json
import sys

from eventstore import WrongExpectedVersion, store_for
from tests.eventstore.sample_events import Note, Ping, sample_registry

#: every this many own appends, a hammer tries to take the next version of "shared"
SHARED_EVERY = 10


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def append_forever(path: str) -> None:
    async with store_for(path, sample_registry(), instance_id="child") as store:
        n = 0
        while True:
            appended = await store.append("durable", [Ping(n=n)])
            say(str(appended.last_position))
            n += 1


async def hammer(path: str, tag: str, count: int) -> None:
    async with store_for(path, sample_registry(), instance_id=tag) as store:
        say("ready")
        await asyncio.to_thread(sys.stdin.readline)
        positions: list[int] = []
        wins = conflicts = 0
        for i in range(count):
            appended = await store.append(tag, [Ping(n=i)])
            positions.append(appended.last_position)
            if i % SHARED_EVERY == 0:
                # Both hammers try every version in turn: exactly one takes each.
                try:
                    appended = await store.append(
                        "shared", [Note(text=tag)], expected_version=i // SHARED_EVERY
                    )
                except WrongExpectedVersion:
                    conflicts += 1
                else:
                    wins += 1
                    positions.append(appended.last_position)
        say(json.dumps({"positions": positions, "wins": wins, "conflicts": conflicts}))


async def append_on_request(path: str, stream: str) -> None:
    async with store_for(path, sample_registry(), instance_id="child") as store:
        say("ready")
        n = 0
        while await asyncio.to_thread(sys.stdin.readline):
            appended = await store.append(stream, [Ping(n=n)], expected_version=n)
            say(str(appended.last_position))
            n += 1


def main(argv: list[str]) -> None:
    match argv:
        case ["append-forever", path]:
            asyncio.run(append_forever(path))
        case ["hammer", path, tag, count]:
            asyncio.run(hammer(path, tag, int(count)))
        case ["append-on-request", path, stream]:
            asyncio.run(append_on_request(path, stream))
        case _:
            raise SystemExit(f"usage: see {__doc__}")


if __name__ == "__main__":
    main(sys.argv[1:])
