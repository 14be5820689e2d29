"""``bbp-resume plan``, ``coordinator`` and ``worker`` on the embedded backend pair."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from bbp_dist_resume import CheckpointConfig, ResumeSystem
from bbp_dist_resume.cli.main import main
from bbp_dist_resume.coordination import open_coordination
from bbp_dist_resume.policy.plan import RecoveryPlan


@pytest.fixture
def embedded(tmp_path: Path) -> CheckpointConfig:
    return CheckpointConfig(
        store_url=f"file:{tmp_path / 'store'}",
        coord_url=f"sqlite:{tmp_path / 'coord.db'}",
        lease_ttl=2,
        heartbeat_interval=0.5,
    )


def _urls(config: CheckpointConfig) -> list[str]:
    return ["--store", config.store_url, "--coord", config.coord_url]


def test_plan_shows_each_worker_with_its_reason_and_the_quarantined_checkpoints(
    embedded: CheckpointConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    op = f"op-{uuid.uuid4().hex[:8]}"
    with ResumeSystem(embedded, "w0") as rs:
        rs.start_monitoring(op)
        first = rs.create_checkpoint("scan", {"n": 1})
        second = rs.create_checkpoint("scan", {"n": 2})
        rs.complete()
    coord = open_coordination(embedded.coord_url)
    body = RecoveryPlan(operation_id=op, mode="last", entries={}).to_body()
    body["quarantined"] = {second: "restore failed 3 times"}
    coord.publish_plan(op, body)
    coord.close()
    assert main([*_urls(embedded), "plan", op]) == 0
    out = capsys.readouterr().out
    assert f"quarantined {second}: restore failed 3 times" in out
    assert first in out and "w0" in out  # the plan falls back past the quarantined one
    assert main([*_urls(embedded), "plan", op, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["entries"]["w0"]["checkpoint_id"] == first
    assert data["published_generation"] == 1


def test_plan_of_an_unknown_operation_is_one_error_line_and_exit_code_1(
    embedded: CheckpointConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    with ResumeSystem(embedded, "w0"):  # a worker made the store and the database
        pass
    assert main([*_urls(embedded), "plan", "no-such-op"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "bbp-resume: error: unknown operation 'no-such-op'"


def test_worker_with_a_bad_run_target_is_a_config_error(
    embedded: CheckpointConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_urls(embedded), "worker", "--run", "no_such_module_xyz:run"]) == 1
    assert "cannot load" in capsys.readouterr().err


def test_worker_exits_after_idle_seconds_when_nothing_is_to_be_claimed(
    embedded: CheckpointConfig,
) -> None:
    assert main([*_urls(embedded), "worker", "--run", "json:dumps", "--idle-exit", "0.2"]) == 0


def test_usage_errors_exit_with_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan"]) == 2
    assert "Missing argument 'OPERATION'" in capsys.readouterr().err
