"""Fault points of the commit protocol (``BBP_FAULT``, api/faults.py) in real worker
processes, on both backend pairs: a process killed at each step leaves the store and the
index as DESIGN.md's commit protocol says, and the next owner carries on from there.

The worker is a small script written to ``tmp_path``; it inherits the AWS_* variables the
``services`` fixture set and gets its ``CheckpointConfig`` as JSON on its argv.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from resume_helpers import (
    MakeConfig,
    Systems,
    index_seqs,
    new_op,
    record_seqs,
    store_keys,
    take_over,
)

from bbp_dist_resume import CheckpointConfig
from bbp_dist_resume.api.faults import EXIT_CODE, POINTS

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from resume_helpers import probed_s3_prefix, systems_fixture  # noqa: F401

IMPORT_FAILED = 3
CHILD_TIMEOUT_S = 60.0
WORKER = """\
import sys

try:
    import bbp_dist_resume.api.faults  # reads BBP_FAULT
except Exception as exc:
    print("IMPORT-FAILED", *[c.__name__ for c in type(exc).__mro__], flush=True)
    sys.exit(3)
from bbp_dist_resume import CheckpointConfig, ResumeSystem

config = CheckpointConfig.model_validate_json(sys.argv[1])
rs = ResumeSystem(config, "w0")
rs.start_monitoring(sys.argv[2])
for i in range(int(sys.argv[3])):
    print("COMMITTED", rs.create_checkpoint("work", {"i": i}), flush=True)
rs.shutdown()
"""


def fast(make_config: MakeConfig) -> CheckpointConfig:
    # inline_threshold=0: the state is a chunk of its own, uploaded before the record.
    return make_config(lease_ttl=1, heartbeat_interval=0.3, inline_threshold=0)


def run_worker(
    tmp_path: Path, cfg: CheckpointConfig, op: str, fault: str, count: int = 1
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = os.environ | {"BBP_FAULT": fault}
    return subprocess.run(
        [sys.executable, str(script), cfg.model_dump_json(), op, str(count)],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )


def killed_at(proc: subprocess.CompletedProcess[str], point: str, hit: int = 1) -> None:
    assert proc.returncode == EXIT_CODE, proc.stderr[-3000:]
    assert f"bbp fault point {point} hit ({hit})" in proc.stderr


def committed(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("COMMITTED")]


def test_the_fault_points_are_the_four_steps_of_the_commit_protocol(
    make_config: MakeConfig,
) -> None:
    assert POINTS == ("after_chunks", "before_commit_record", "after_manifest", "after_commit")
    assert EXIT_CODE == 77


@pytest.mark.parametrize("point", ["after_chunks", "before_commit_record"])
def test_a_worker_killed_before_its_commit_record_leaves_no_checkpoint(
    make_config: MakeConfig,
    systems: Systems,
    backend_urls: tuple[str, str],
    tmp_path: Path,
    point: str,
) -> None:
    store_url, coord_url = backend_urls
    cfg, op = fast(make_config), new_op()
    proc = run_worker(tmp_path, cfg, op, f"{point}:1")
    killed_at(proc, point)
    assert committed(proc) == []
    assert record_seqs(store_url, op, "w0") == [1]  # the takeover only
    assert index_seqs(coord_url, op, "w0") == [1]
    assert store_keys(store_url, "chunks/")  # uploaded, referenced by nothing
    assert systems(cfg, "reader").list_checkpoints(op) == []
    successor = systems(cfg, "w0")
    take_over(successor, op)
    assert successor.list_checkpoints(op) == []
    assert successor.resume_automatically(op) is None  # a clean start
    assert record_seqs(store_url, op, "w0") == [1, 2]  # its takeover took seq 2
    assert successor.create_checkpoint("work", {"i": 0}) == f"{op}/w0/3"


def test_a_worker_killed_after_its_commit_record_is_indexed_by_the_next_owner(
    make_config: MakeConfig,
    systems: Systems,
    backend_urls: tuple[str, str],
    tmp_path: Path,
) -> None:
    store_url, coord_url = backend_urls
    cfg, op = fast(make_config), new_op()
    proc = run_worker(tmp_path, cfg, op, "after_manifest:1")
    killed_at(proc, "after_manifest")
    assert committed(proc) == []  # the caller never heard of it...
    assert record_seqs(store_url, op, "w0") == [1, 2]  # ...but it is committed
    assert index_seqs(coord_url, op, "w0") == [1]  # and not indexed
    successor = systems(cfg, "w0")
    take_over(successor, op)  # the takeover repairs the index from the store
    assert index_seqs(coord_url, op, "w0") == [1, 2, 3]
    assert successor.list_checkpoints(op) == [f"{op}/w0/2"]
    assert systems(cfg, "reader").list_checkpoints(op) == [f"{op}/w0/2"]
    context = successor.resume_automatically(op)
    assert context is not None and context.checkpoint_id == f"{op}/w0/2"
    assert dict(context.state) == {"i": 0}


def test_a_worker_killed_after_indexing_leaves_a_listed_checkpoint(
    make_config: MakeConfig,
    systems: Systems,
    backend_urls: tuple[str, str],
    tmp_path: Path,
) -> None:
    store_url, coord_url = backend_urls
    cfg, op = fast(make_config), new_op()
    proc = run_worker(tmp_path, cfg, op, "after_commit:1")
    killed_at(proc, "after_commit")
    assert committed(proc) == []
    assert record_seqs(store_url, op, "w0") == [1, 2]
    assert index_seqs(coord_url, op, "w0") == [1, 2]
    assert systems(cfg, "reader").list_checkpoints(op) == [f"{op}/w0/2"]
    successor = systems(cfg, "w0")
    take_over(successor, op)
    context = successor.resume_automatically(op)
    assert context is not None and context.checkpoint_id == f"{op}/w0/2"


def test_a_count_fires_the_nth_time_the_point_is_reached(
    make_config: MakeConfig,
    systems: Systems,
    backend_urls: tuple[str, str],
    tmp_path: Path,
) -> None:
    _, coord_url = backend_urls
    cfg, op = fast(make_config), new_op()
    proc = run_worker(tmp_path, cfg, op, "after_commit:3", count=5)
    killed_at(proc, "after_commit", hit=3)
    assert committed(proc) == [f"{op}/w0/2", f"{op}/w0/3"]
    assert index_seqs(coord_url, op, "w0") == [1, 2, 3, 4]
    assert systems(cfg, "reader").list_checkpoints(op) == [f"{op}/w0/{s}" for s in (2, 3, 4)]


def test_probability_and_count_zero_never_fire(
    make_config: MakeConfig, systems: Systems, tmp_path: Path
) -> None:
    cfg, op = fast(make_config), new_op()
    armed = "after_chunks:0, before_commit_record:0.0,after_manifest:0,after_commit:0.0"
    proc = run_worker(tmp_path, cfg, op, armed, count=3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fault point" not in proc.stderr
    expected = [f"{op}/w0/{s}" for s in (2, 3, 4)]
    assert committed(proc) == expected
    assert systems(cfg, "reader").list_checkpoints(op) == expected


@pytest.mark.parametrize(
    "fault",
    ["nowhere:1", "after_commit:1,after_commit:often"],
    ids=["unknown-point", "bad-value"],
)
def test_a_bad_fault_spec_fails_the_import_with_config_error_and_stores_nothing(
    make_config: MakeConfig, backend_urls: tuple[str, str], tmp_path: Path, fault: str
) -> None:
    store_url, _ = backend_urls
    cfg, op = fast(make_config), new_op()
    proc = run_worker(tmp_path, cfg, op, fault)
    assert proc.returncode == IMPORT_FAILED, proc.stderr[-3000:]
    words = proc.stdout.split()
    assert words[:2] == ["IMPORT-FAILED", "ConfigError"]
    assert "BBPError" in words
    assert record_seqs(store_url, op, "w0") == []
