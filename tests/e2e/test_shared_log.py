"""Several hosts, one log: ``ovi`` processes sharing a PostgreSQL log, each
with its own working directory (its own mirror), against one moto server."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from eventstore import Event, EventRegistry
from eventstore.postgres import PostgresEventStore
from ovi.events import OVI_EVENTS
from tests.e2e.cli import ROOT, aws_env, client, ovi_ids, write_config
from tests.moto_server import reset_moto
from tests.postgres import PostgresSchema, create_schema, drop_schema

WEB3 = "{type: ec2, name: web, count: 3, size: t3.micro}"
BUCKET = "{type: s3, name: assets}"


@pytest.fixture
def shared_log() -> Iterator[PostgresSchema]:
    """A schema of its own on the test server (the tests here are plain
    functions: their child processes do the asynchronous work)."""
    schema = asyncio.run(create_schema())
    try:
        yield schema
    finally:
        asyncio.run(drop_schema(schema.server_dsn, schema.name))


@pytest.fixture
def aws(moto_endpoint: str) -> Iterator[str]:
    reset_moto(moto_endpoint)
    yield moto_endpoint


def start(*args: str, endpoint: str, cwd: Path) -> subprocess.Popen[bytes]:
    """``python -m ARGS`` (``ovi`` or ``ovi.replay``) in a child process."""
    return subprocess.Popen([sys.executable, "-m", *args], cwd=cwd,
                            env=aws_env(endpoint) | {"PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(child: subprocess.Popen[bytes]) -> subprocess.CompletedProcess[bytes]:
    out, err = child.communicate(timeout=180)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def run(*args: str, endpoint: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return finish(start(*args, endpoint=endpoint, cwd=cwd))


def text(done: subprocess.CompletedProcess[bytes]) -> str:
    return (done.stdout.decode() + done.stderr.decode())


def mirrored(path: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT position, hash FROM events ORDER BY position").fetchall()


def test_four_hosts_applying_at_once_create_each_missing_resource_exactly_once(
    aws: str, shared_log: PostgresSchema, tmp_path: Path
) -> None:
    dsn = shared_log.dsn
    config = write_config(tmp_path / "ovi.yaml", WEB3, BUCKET, rules="grace_period: 0s")
    hosts = [tmp_path / f"host-{i}" for i in range(4)]
    for cwd in hosts:
        cwd.mkdir()
    children = [start("ovi", "apply", "--config", str(config), "--store", dsn,
                      endpoint=aws, cwd=cwd) for cwd in hosts]
    results = [finish(child) for child in children]
    assert all(done.returncode == 0 for done in results), [text(d) for d in results]
    assert ovi_ids(aws) == {"web-0": 1, "web-1": 1, "web-2": 1}
    assert len(client("s3", aws).list_buckets()["Buckets"]) == 1
    verified = run("ovi.replay", "verify", "--store", dsn, endpoint=aws, cwd=hosts[0])
    assert verified.returncode == 0, text(verified)
    # Every host's mirror holds the same rows (a host that finished first
    # copies the others' rows the next time it looks: here, a plan).
    for cwd in hosts:
        planned = run("ovi", "plan", "--config", str(config), "--store", dsn,
                            endpoint=aws, cwd=cwd)
        assert planned.returncode == 0, text(planned)  # in sync
    heads = [mirrored(cwd / "ovi-mirror.db") for cwd in hosts]
    assert all(rows[:len(heads[0])] == heads[0][:len(rows)] for rows in heads)


class FutureEvent(Event, frozen=True):
    """A type a newer Ovi might write."""

    what: str


async def _append_future_event(schema: PostgresSchema) -> None:
    future = EventRegistry((*OVI_EVENTS, FutureEvent))
    async with PostgresEventStore(schema.server_dsn, future, schema=schema.name) as newer:
        await newer.append("future/1", [FutureEvent(what="a newer Ovi's pause, say")])


def test_apply_refuses_a_shared_log_with_event_types_it_does_not_know(
    aws: str, shared_log: PostgresSchema, tmp_path: Path
) -> None:
    asyncio.run(_append_future_event(shared_log))
    config = write_config(tmp_path / "ovi.yaml", BUCKET)
    dsn = shared_log.dsn
    applied = run("ovi", "apply", "--config", str(config), "--store", dsn,
                        endpoint=aws, cwd=tmp_path)
    err = applied.stderr.decode()
    assert applied.returncode == 1 and err.count("\n") == 1, text(applied)
    assert "FutureEvent" in err and "refusing to execute" in err
    assert client("s3", aws).list_buckets()["Buckets"] == []
    planned = run("ovi", "plan", "--config", str(config), "--store", dsn,
                        endpoint=aws, cwd=tmp_path)
    assert planned.returncode == 2, text(planned)  # it still plans: changes pending


def test_a_password_in_the_store_url_never_reaches_the_output(
    aws: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "ovi.yaml", BUCKET)
    dsn = "postgresql://ovi:s3cr3t-pw@127.0.0.1:9/ovi?connect_timeout=2"
    done = run("ovi", "plan", "--config", str(config), "--store", dsn,
                     endpoint=aws, cwd=tmp_path)
    assert done.returncode == 1 and "s3cr3t-pw" not in text(done)
    assert "ovi:***@127.0.0.1:9" in done.stderr.decode()
    assert done.stderr.decode().count("\n") == 1


def test_a_pause_on_one_host_is_seen_and_resumed_on_another(
    aws: str, shared_log: PostgresSchema, tmp_path: Path
) -> None:
    dsn = shared_log.dsn
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    paused = run("ovi", "pause", "--all", "--reason", "db migration", "--store", dsn,
                 endpoint=aws, cwd=one)
    assert paused.returncode == 0, text(paused)
    again = run("ovi", "pause", "--all", "--reason", "db migration", "--store", dsn,
                endpoint=aws, cwd=two)
    assert again.returncode == 0 and "already paused" in again.stdout.decode(), text(again)
    resumed = run("ovi", "resume", "--all", "--store", dsn, endpoint=aws, cwd=two)
    assert resumed.returncode == 0, text(resumed)
    assert "resumed: the whole estate" in resumed.stdout.decode()
    # Each host keeps its own mirror: host one's, not used since its pause,
    # is the start of host two's.
    first, second = mirrored(one / "ovi-mirror.db"), mirrored(two / "ovi-mirror.db")
    assert len(first) == 1 and len(second) == 2 and second[:1] == first


def test_mirror_with_a_sqlite_store_is_refused(aws: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ovi.yaml", BUCKET)
    done = run("ovi", "plan", "--config", str(config), "--store", "ovi.db", "--mirror", "m.db",
               endpoint=aws, cwd=tmp_path)
    assert done.returncode == 1 and "--mirror: only for a shared log" in done.stderr.decode()
    assert not (tmp_path / "ovi.db").exists()
