"""What the log says Ovi made is about that resource, not about a name: a
bucket Ovi deleted whose name another team reuses, a resource another
installation took over, and an instance whose Ovi tags were removed by hand,
each end to end with the ``ovi`` command against a moto server."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cli import client, live_instances, ovi, ovi_ids, ovi_json, tags_of, write_config
from tests.moto_server import reset_moto

LOGS = "{type: s3, name: logs}"
WEB = "{type: ec2, name: web, size: t3.micro}"
# Nothing but the rules under test stands between a decision and its execution.
EAGER = "grace_period: 0s\nrequire_approval: false"


@pytest.fixture
def aws(moto_endpoint: str) -> Iterator[str]:
    reset_moto(moto_endpoint)
    yield moto_endpoint


def _bucket_tags(endpoint: str, name: str) -> dict[str, str]:
    s3 = client("s3", endpoint)
    try:
        return tags_of({"Tags": s3.get_bucket_tagging(Bucket=name)["TagSet"]})
    except s3.exceptions.ClientError as exc:
        assert "NoSuchTagSet" in str(exc)
        return {}


def _apply(config: Path, endpoint: str, cwd: Path) -> dict[str, Any]:
    code, applied = ovi_json("apply", "--config", str(config), endpoint=endpoint, cwd=cwd)
    assert code == 0, applied
    return applied


def _only(plan: dict[str, Any], resource_id: str) -> dict[str, Any]:
    found = [dict(d) for d in plan["decisions"] if d["resource_id"] == resource_id]
    assert len(found) == 1, plan["decisions"]
    return found[0]


def test_a_bucket_ovi_deleted_is_not_ovis_once_another_team_reuses_its_name(
    aws: str, tmp_path: Path
) -> None:
    wanted = write_config(tmp_path / "ovi.yaml", LOGS, rules=EAGER)
    _apply(wanted, aws, tmp_path)
    assert _bucket_tags(aws, "logs-0")["ovi:id"] == "logs-0"
    dropped = _apply(write_config(tmp_path / "ovi.yaml", rules=EAGER), aws, tmp_path)
    assert [(e["action"], e["outcome"]) for e in dropped["executions"]] == [
        ("delete", "executed")]
    # The name is free; another team takes it for a bucket of its own.
    client("s3", aws).create_bucket(Bucket="logs-0")
    client("s3", aws).put_bucket_tagging(Bucket="logs-0", Tagging={"TagSet": [
        {"Key": "team", "Value": "b"}]})

    back = _apply(write_config(tmp_path / "ovi.yaml", LOGS, rules=EAGER), aws, tmp_path)
    conflict = _only(back, "logs-0")
    assert conflict["action"] == "notify", conflict
    assert "nothing is touched" in conflict["reason"]
    assert back["executions"] == []
    assert _bucket_tags(aws, "logs-0") == {"team": "b"}


def test_a_resource_another_installation_took_over_is_never_taken_back_unasked(
    aws: str, tmp_path: Path
) -> None:
    ours, theirs = tmp_path / "a", tmp_path / "b"
    ours.mkdir()
    theirs.mkdir()
    config_a = write_config(ours / "ovi.yaml", LOGS, rules=EAGER)
    config_b = write_config(theirs / "ovi.yaml", LOGS, rules=EAGER)
    config_b.write_text(config_b.read_text().replace("region: us-east-1",
                                                     "region: us-east-1\nowner: team-b"))
    _apply(config_a, aws, ours)
    # Team b's operator, told by its plan how to, takes the bucket over.
    code, plan_b = ovi_json("plan", "--config", str(config_b), endpoint=aws, cwd=theirs)
    assert code == 0 and _only(plan_b, "logs-0")["action"] == "notify", plan_b
    granted = ovi("adopt", "aws/us-east-1/s3/logs-0", "--as", "logs-0", endpoint=aws,
                  cwd=theirs)
    assert granted.returncode == 0, granted.stderr
    adopted = _apply(config_b, aws, theirs)
    assert [(e["action"], e["outcome"]) for e in adopted["executions"]] == [
        ("adopt", "executed")]
    assert _bucket_tags(aws, "logs-0")["ovi:owner"] == "team-b"

    # Installation a still desires logs-0, and its log shows it made it; the
    # bucket is now team b's all the same: reported, not tagged back.
    again = _apply(config_a, aws, ours)
    conflict = _only(again, "logs-0")
    assert conflict["action"] == "notify", conflict
    assert "belongs to Ovi owner 'team-b'" in conflict["reason"]
    assert again["executions"] == []
    assert _bucket_tags(aws, "logs-0")["ovi:owner"] == "team-b"


def test_an_instance_whose_ovi_tags_were_removed_is_not_made_again(
    aws: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "ovi.yaml", WEB, rules=EAGER)
    _apply(config, aws, tmp_path)
    (instance,) = live_instances(aws)
    made = instance["InstanceId"]
    ec2 = client("ec2", aws)
    # Someone strips Ovi's tags by hand (a tag clean-up script, say).
    ec2.delete_tags(Resources=[made], Tags=[{"Key": k} for k in tags_of(instance)
                                            if k.startswith("ovi:")])

    first = _apply(config, aws, tmp_path)
    decision = _only(first, "web-0")
    # The log shows Ovi made that very instance web-0: it is tagged again, not
    # launched a second time.
    assert decision["action"] == "adopt", decision
    assert "the log shows Ovi made it web-0" in decision["reason"]
    assert [i["InstanceId"] for i in live_instances(aws)] == [made]
    assert ovi_ids(aws) == Counter({"web-0": 1})
    code, plan = ovi_json("plan", "--config", str(config), endpoint=aws, cwd=tmp_path)
    assert code == 0 and plan["in_sync"], plan
