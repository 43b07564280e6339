"""Hostile review of issue 13 against moto: ``state`` right after a real
``ovi apply`` must tell what Ovi knew from its own actions. Each strict xfail
is a finding of the review; its reason says what is wrong."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.cli import live_instances, ovi_json, write_config
from tests.moto_server import reset_moto
from tests.replay.support import json_object, replay


def test_state_right_after_a_real_apply_names_the_resources_it_created(
    moto_endpoint: str, tmp_path: Path
) -> None:
    reset_moto(moto_endpoint)
    config = write_config(tmp_path / "ovi.yaml", "{type: ec2, name: web, count: 2}")
    code, applied = ovi_json("apply", "--config", str(config), endpoint=moto_endpoint,
                             cwd=tmp_path)
    assert code == 0, applied
    made = sorted(i["InstanceId"] for i in live_instances(moto_endpoint))
    state = json_object(replay("state", "--json", store=tmp_path / "ovi.db"))
    assert sorted((r["id"], r["known_from"]) for r in state["resources"]) == [
        ("web-0", "action"), ("web-1", "action")]
    assert sorted(r["cloud_id"] for r in state["resources"]) == made
