"""The installed ``bbp-resume`` script on both backend pairs, through pipes: listings as
JSON, a failed deep verification (exit 3), a restore, all without a progress bar or an
escape sequence; ``coordinator`` relaunching a crashed slot and stopping on SIGTERM, and
``worker`` claiming it and exiting when idle."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from cli_helpers import (
    SCRIPT,
    Cli,
    checkpoint_with_own_chunks,
    no_terminal_output,
    run_script,
    script_env,
    urls,
)
from resume_helpers import MakeConfig, Systems, new_op, wait_for

from bbp_dist_resume import CheckpointConfig, ResumeSystem
from bbp_dist_resume.blobstore import open_store
from bbp_dist_resume.coordination import open_coordination
from bbp_dist_resume.repository import ChunkId

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from cli_helpers import cli_fixture  # noqa: F401
from resume_helpers import probed_s3_prefix, systems_fixture  # noqa: F401


def test_the_script_lists_restores_and_verifies_through_pipes_without_a_bar(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    config, op = make_config(inline_threshold=0), new_op()
    with ResumeSystem(config, "w0") as rs:
        rs.start_monitoring(op)
        good, _ = checkpoint_with_own_chunks(rs, "a", {"v": "good"}, progress=30.0)
        bad, keys = checkpoint_with_own_chunks(rs, "b", {"v": "to break"}, progress=60.0)
        rs.complete()
    (view,) = run_script(*urls(config), "ops", "--json").json()
    assert (view["operation_id"], view["status"], view["checkpoints"]) == (op, "completed", 2)
    assert [(w["worker_id"], w["lease"], w["latest"]) for w in view["workers"]] == [
        ("w0", "done", bad)
    ]
    points = run_script(*urls(config), "checkpoints", op, "--json").json()
    assert [(p["checkpoint_id"], p["seq"], p["progress_percentage"]) for p in points] == [
        (good, 2, 30.0),
        (bad, 3, 60.0),
    ]
    dest = tmp_path / "restored"
    restored = run_script(*urls(config), "resume", op, "--worker", "w0", "--to", str(dest))
    assert (restored.code, restored.err) == (0, "")
    no_terminal_output(restored.out)
    assert f"wrote state -> {dest / 'state.json'}" in restored.out.splitlines()
    assert json.loads((dest / "state.json").read_text()) == {"v": "to break"}
    store = open_store(config.store_url)
    store.put(keys[0], b"not the chunk")
    store.close()
    verified = run_script(*urls(config), "verify", op, "--deep")
    assert verified.code == 3
    assert verified.err == "bbp-resume: error: 1 of 2 checkpoints damaged\n"
    no_terminal_output(verified.out)
    (row,) = [line for line in verified.out.splitlines() if line.startswith(f"│ {bad}")]
    named = row.split("first ", 1)[1].split(":", 1)[0]
    assert "DAMAGED" in row and ChunkId.parse(named).store_key == keys[0]


RUNNER = '''
import json, os

def run(system, context):
    """Record where the slot resumed from, take one checkpoint, finish."""
    with open(os.environ["RUNNER_LOG"], "a") as log:
        log.write(json.dumps(context.checkpoint_id if context else None) + "\\n")
    system.create_checkpoint("relaunched", {"after": "crash"}, progress=100.0)
    system.complete()
'''


def service_env(config: CheckpointConfig, **extra: str) -> dict[str, str]:
    return script_env(
        {
            "BBP_STORE_URL": config.store_url,
            "BBP_COORD_URL": config.coord_url,
            "BBP_LEASE_TTL": "2",
            "BBP_HEARTBEAT_INTERVAL": "0.5",
            "BBP_SCAN_INTERVAL": "0.2",
            **extra,
        }
    )


def crash(rs: ResumeSystem) -> None:
    """The worker dies: its heartbeat stops, its lease is never released."""
    session = rs._session
    assert session is not None
    session._heartbeat.stop()


def generation(config: CheckpointConfig, op: str) -> int:
    coord = open_coordination(config.coord_url)
    try:
        return coord.get_operation(op).generation
    finally:
        coord.close()


def test_coordinator_relaunches_a_crashed_slot_stops_on_sigterm_and_a_worker_runs_it(
    make_config: MakeConfig, systems: Systems, cli: Cli, tmp_path: Path
) -> None:
    config, op = make_config(), new_op()
    rs = systems(config)
    rs.start_monitoring(op)
    before = rs.create_checkpoint("work", {"done": 1}, progress=40.0)
    crash(rs)
    log_path = tmp_path / "coordinator.log"
    with log_path.open("w") as log:
        coordinator = subprocess.Popen(
            [str(SCRIPT), "coordinator", "--id", "c-test"],
            env=service_env(config),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            # The lease expires (2 s), the coordinator sees it and publishes a plan.
            wait_for(lambda: generation(config, op) >= 1, timeout=60)
        finally:
            coordinator.send_signal(signal.SIGTERM)
            code = coordinator.wait(timeout=30)
    said = log_path.read_text()
    assert code == 0, said
    assert f"plan 1 of {op} published for crashed ['w0']" in said
    assert "Traceback" not in said
    (view,) = cli(*urls(config), "ops", op, "--json").json()
    assert view["generation"] == 1 and view["workers"][0]["lease"] == "expired"
    # An idle worker claims the slot from the reclaim queue, resumes it from the plan,
    # runs the function once, then finds nothing more and exits.
    module = tmp_path / "runner_pkg"
    module.mkdir()
    (module / "slot_runner.py").write_text(RUNNER)
    ran_log = tmp_path / "runs.jsonl"
    worker = subprocess.run(
        [str(SCRIPT), "worker", "--run", "slot_runner:run", "--idle-exit", "1"],
        env=service_env(config, PYTHONPATH=str(module), RUNNER_LOG=str(ran_log)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert worker.returncode == 0, worker.stderr
    assert "Traceback" not in worker.stderr
    assert [json.loads(line) for line in ran_log.read_text().splitlines()] == [before]
    (view,) = cli(*urls(config), "ops", op, "--json").json()
    (w0,) = view["workers"]
    assert (view["status"], w0["lease"], w0["checkpoints"]) == ("completed", "done", 2)
    points = cli(*urls(config), "checkpoints", op, "--json").json()
    assert [p["stage_name"] for p in points] == ["work", "relaunched"]
