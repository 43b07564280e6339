"""The log as evidence, end to end on logs written by the real ``ovi apply``
against moto: the anchors it writes catch a forger with write access, a
keyed log cannot be forged without its key, and every read subcommand runs
as a second, unprivileged OS user who may only read the log."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from eventstore import GENESIS_HASH, row_hash
from tests.e2e.cli import live_instances, ovi, ovi_json, write_config
from tests.moto_server import reset_moto
from tests.replay.support import ROOT, Story, copy_log, json_object, replay

WEB = "{type: ec2, name: web, count: 2, size: t3.micro}"
NOBODY = 65534


@pytest.fixture
def aws(moto_endpoint: str) -> Iterator[str]:
    reset_moto(moto_endpoint)
    yield moto_endpoint


def forge_cloud_id(log: Path, cloud_id: str) -> int:
    """What an attacker with write access to the file does: drop the
    append-only triggers, give the first ``ActionExecuted`` another cloud id,
    recompute every hash from there on and the head. Returns its position."""
    with closing(sqlite3.connect(log, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")
        db.execute("DROP TRIGGER events_append_only_update")
        position, data = db.execute("SELECT position, data FROM events WHERE type ="
                                    " 'ActionExecuted' ORDER BY position LIMIT 1").fetchone()
        event = json.loads(data)
        event["cloud_id"] = cloud_id
        db.execute("UPDATE events SET data = ? WHERE position = ?",
                   (json.dumps(event, separators=(",", ":")), position))
        prev = db.execute("SELECT prev_hash FROM events WHERE position = ?",
                          (position,)).fetchone()[0]
        rows = db.execute("SELECT position, stream, stream_version, type, recorded_at,"
                          " instance_id, data FROM events WHERE position >= ? ORDER BY position",
                          (position,)).fetchall()
        for row in rows:
            new = row_hash(prev, *row)
            db.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE position = ?",
                       (prev, new, row[0]))
            prev = new
        db.execute("UPDATE log_head SET hash = ? WHERE id = 1", (prev,))
        db.execute("COMMIT")
    return int(position)


def anchors_in(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_anchors_written_by_ovi_apply_catch_a_forged_history(aws: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ovi.yaml", WEB)
    anchors = tmp_path / "anchors" / "ovi.anchors"
    anchors.parent.mkdir()
    code, applied = ovi_json("apply", "--config", str(config), "--anchor-file", str(anchors),
                             endpoint=aws, cwd=tmp_path)
    assert code == 0, applied
    code, again = ovi_json("apply", "--config", str(config), "--anchor-file", str(anchors),
                           endpoint=aws, cwd=tmp_path)
    assert code == 0 and again["in_sync"]
    log = tmp_path / "ovi.db"
    first, second = anchors_in(anchors)
    assert (first["position"], first["hash"]) == (applied["head"]["position"],
                                                  applied["head"]["hash"])
    assert second["position"] == again["head"]["position"] > first["position"]
    assert first["recorded_at"] and first["anchored_at"] and first["log"] == str(log)
    head = json_object(replay("head", "--json", store=log))
    assert (head["position"], head["hash"], head["keyed"]) == (
        second["position"], second["hash"], False)
    intact = json_object(replay("verify", "--anchors", str(anchors), "--json", store=log))
    assert intact["ok"] and intact["anchors_checked"] == 2
    assert intact["head_hash"] == second["hash"]

    (real, _) = sorted(i["InstanceId"] for i in live_instances(aws))
    position = forge_cloud_id(log, "i-0forged000000000")
    assert position < first["position"]
    fooled = replay("verify", store=log)  # the chain alone: rewritten consistently
    assert fooled.returncode == 0, fooled.stdout
    assert "none given" in fooled.stdout
    caught = replay("verify", "--anchors", str(anchors), store=log)
    assert caught.returncode == 1
    assert f"REWRITTEN at position {first['position']}" in caught.stdout
    assert f"first bad position {first['position']}" in caught.stdout
    assert "no earlier anchor matches" in caught.stdout
    pinned = json_object(replay("verify", "--anchor", f"{second['position']}:{second['hash']}",
                                "--json", store=log))
    assert not pinned["ok"] and pinned["first_bad_position"] == second["position"]
    assert real  # the cloud still has the instance the log no longer names

    anchors.write_text(anchors.read_text() + '{"position": "x"}\n')
    bad = replay("verify", "--anchors", str(anchors), store=log)
    assert bad.returncode == 1 and f"{anchors}:3:" in bad.stderr
    assert "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1


def test_a_keyed_log_cannot_be_forged_without_its_key(aws: str, tmp_path: Path) -> None:
    key = tmp_path / "chain.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)  # a key others may read is refused
    config = write_config(tmp_path / "ovi.yaml", WEB)
    code, applied = ovi_json("apply", "--config", str(config), "--chain-key-file", str(key),
                             endpoint=aws, cwd=tmp_path)
    assert code == 0, applied
    log = tmp_path / "ovi.db"
    keyed = json_object(replay("verify", "--chain-key-file", str(key), "--json", store=log))
    assert keyed["ok"] and keyed["keyed"] and keyed["hashes_checked"]
    refused = ovi("plan", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert refused.returncode == 1 and "no chain key was given" in refused.stderr
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    wrong = replay("verify", "--chain-key-file", str(other), store=log)
    assert wrong.returncode == 1 and "wrong chain key" in wrong.stderr

    position = forge_cloud_id(log, "i-0forged000000000")
    caught = json_object(replay("verify", "--chain-key-file", str(key), "--json", store=log))
    assert not caught["ok"] and caught["first_bad_position"] == position
    assert "HMAC" in caught["why"]
    # without the key, the audit says how little it could check
    keyless = replay("verify", store=log)
    assert "checked only the unkeyed structure" in keyless.stdout
    # and a forger who declares the log unkeyed is refused by a keyed audit
    with closing(sqlite3.connect(log)) as db:
        db.execute("UPDATE log_header SET header = ?", ('{"format":1,"chain":"sha256"}',))
        db.commit()
    unkeyed = replay("verify", "--chain-key-file", str(key), store=log)
    assert unkeyed.returncode == 1 and "not keyed" in unkeyed.stderr


def test_every_read_subcommand_runs_as_a_user_who_can_only_read_the_log(
    aws: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "ovi.yaml", WEB)
    anchors = tmp_path / "ovi.anchors"
    code, applied = ovi_json("apply", "--config", str(config), "--anchor-file", str(anchors),
                             endpoint=aws, cwd=tmp_path)
    assert code == 0, applied
    paused = ovi("pause", "web-1", "--reason", "audit", "--by", "alice", endpoint=aws,
                 cwd=tmp_path)
    assert paused.returncode == 0, paused.stderr
    # Owned by root, readable by all, in a directory only root may write.
    audit = Path(tempfile.mkdtemp(prefix="ovi-audit-"))
    try:
        os.chmod(audit, 0o755)
        log = audit / "ovi.db"
        shutil.copyfile(tmp_path / "ovi.db", log)
        for source in (anchors, config):
            shutil.copyfile(source, audit / source.name)
        os.chmod(log, 0o444)
        before = hashlib.sha256(log.read_bytes()).hexdigest()
        (web0, _) = sorted(i["InstanceId"] for i in live_instances(aws))
        commands: list[tuple[str, ...]] = [
            ("log", "--limit", "5"), ("timeline", "web-0"), ("why", "web-0"),
            ("why", web0), ("state",), ("state", "--at", "3"), ("stats",),
            ("verify", "--anchors", str(audit / anchors.name)), ("head",),
            ("backtest", "--config", str(audit / config.name)),
            ("follow", "--since", "2000-01-01", "--limit", "3"),
        ]
        for args in commands:
            done = replay(*args, store=log, as_uid=NOBODY, timeout=60)
            assert done.returncode == 0, (args, done.stdout, done.stderr)
            assert "Traceback" not in done.stderr, (args, done.stderr)
        state = replay("state", "--all", "--json", store=log, as_uid=NOBODY)
        assert "temporary copy" in state.stderr  # the file's projection is behind
        # the same as the owner gets from a writable copy, folded in the file itself
        rebuilt = replay("rebuild", "--in-place", store=tmp_path / "ovi.db")
        assert rebuilt.returncode == 0, rebuilt.stderr
        owners = replay("state", "--all", "--json", store=tmp_path / "ovi.db")
        # current now, but state folds the log itself: the file's tables are covered by no hash
        assert "covered by no hash" in owners.stderr
        assert json.loads(state.stdout) == json.loads(owners.stdout)
        why = replay("why", "web-1", store=log, as_uid=NOBODY)
        assert "by alice (user root, uid 0 on" in why.stdout, why.stdout
        assert hashlib.sha256(log.read_bytes()).hexdigest() == before
        assert sorted(p.name for p in audit.iterdir()) == sorted(
            ["ovi.db", anchors.name, config.name])  # no -wal, no -shm, nothing else
        assert GENESIS_HASH  # an unkeyed log: its first row chains on the genesis
    finally:
        shutil.rmtree(audit)


def test_read_subcommands_work_on_a_log_on_a_read_only_mount(story: Story,
                                                             tmp_path: Path) -> None:
    log = copy_log(story, tmp_path / "mounted")
    before = hashlib.sha256(log.read_bytes()).hexdigest()
    # A mount namespace of its own, the log's directory bound read-only in it.
    where = shlex.quote(str(log.parent))
    script = "; ".join([
        f"mount --bind {where} {where}", f"mount -o remount,ro,bind {where}",
        *(shlex.join([sys.executable, "-m", "ovi.replay", *args, "--store", str(log)])
          + f" > {shlex.quote(str(tmp_path / name))} 2>&1; echo $? >> "
          + shlex.quote(str(tmp_path / "codes"))
          for name, args in (("verify", ("verify",)), ("state", ("state", "--json")),
                             ("head", ("head", "--json")), ("stats", ("stats",)))),
    ])
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "codes").read_text().split() == ["0"] * 4, [
        (tmp_path / n).read_text() for n in ("verify", "state", "head", "stats")]
    assert "hash chain   ok" in (tmp_path / "verify").read_text()
    assert "temporary copy" in (tmp_path / "state").read_text()
    assert hashlib.sha256(log.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in log.parent.iterdir()) == ["ovi.db"]


def test_a_log_with_rows_only_in_an_unreadable_wal_is_refused_saying_why(
    story: Story, tmp_path: Path
) -> None:
    audit = Path(tempfile.mkdtemp(prefix="ovi-audit-"))
    try:
        os.chmod(audit, 0o755)
        log = copy_log(story, audit)
        os.chmod(log, 0o644)
        # A writer (root) that keeps its newest rows in the -wal, not checkpointed.
        writer = subprocess.Popen([sys.executable, "-c", (
            "import sqlite3, sys, time\n"
            f"db = sqlite3.connect({str(log)!r}, isolation_level=None)\n"
            "db.execute('PRAGMA wal_autocheckpoint = 0')\n"
            "db.execute('CREATE TABLE scratch (x)')\n"
            "print('ready', flush=True)\n"
            "sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
            for side in ("-wal", "-shm"):  # the writer's own, as its umask makes them
                os.chmod(log.with_name(log.name + side), 0o600)
            done = replay("log", "--limit", "1", store=log, as_uid=NOBODY)
        finally:
            writer.communicate(timeout=30)  # its stdin closed: it ends
        assert done.returncode == 1, done.stdout
        assert "holds rows not yet in the main file" in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert done.stderr.startswith("python -m ovi.replay: error: ")
    finally:
        shutil.rmtree(audit)
