"""``ovi run`` publishes the log's head after every cycle: one fsynced line
in ``--anchor-file`` and the ``head_*`` fields of the cycle's log line (which
journald keeps outside the log's file); a keyed log gets its key from the
systemd credential."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cli import write_config
from tests.moto_server import reset_moto
from tests.replay.support import json_object, replay
from tests.service.support import service


@pytest.fixture
def aws(moto_endpoint: str) -> Iterator[str]:
    reset_moto(moto_endpoint)
    yield moto_endpoint


def test_ovi_run_appends_each_cycles_head_to_the_anchor_file_and_its_log_line(
    aws: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "ovi.yaml", "{type: s3, name: assets}")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "ovi-chain-key").write_bytes(os.urandom(32) + b"\n")
    (credentials / "ovi-chain-key").chmod(0o400)  # as systemd leaves a credential
    anchors = tmp_path / "anchors" / "ovi.anchors"
    anchors.parent.mkdir()
    with service(tmp_path, aws, "--config", str(config), "--interval", "1s",
                 "--anchor-file", str(anchors),
                 env={"CREDENTIALS_DIRECTORY": str(credentials)}) as ovi:
        cycles = ovi.wait_cycles(2)
        assert ovi.stop() == 0
    written = [json.loads(line) for line in anchors.read_text().splitlines()]
    assert len(written) >= 2
    logged = {(c["head_position"], c["head_hash"]) for c in cycles}
    assert {(a["position"], a["hash"]) for a in written[:2]} <= logged
    log = tmp_path / "ovi.db"
    assert all(a["log"] == str(log) for a in written)
    key = ["--chain-key-file", str(credentials / "ovi-chain-key")]
    verified = json_object(replay("verify", "--anchors", str(anchors), *key, "--json",
                                  store=log))
    assert verified["ok"] and verified["keyed"] and verified["hashes_checked"]
    assert verified["anchors_checked"] == len({a["position"] for a in written})
