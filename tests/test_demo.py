"""The multi-worker demo (``run_demo``) end to end, on both backend pairs.

``run_demo`` runs the demo pipeline (bbp_dist_resume/demo/pipeline.py) as a coordinator and
four worker processes, SIGKILLs a prober mid-run and reports. The tests check the report
against the store itself and against an uncrashed run's output computed here, and check
that every process of the run is gone whenever ``run_demo`` returns or raises. Its
settings and command line: tests/test_demo_plumbing.py.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from resume_helpers import probed_s3_prefix  # noqa: F401  (autouse: cheap fresh S3 prefixes)

from bbp_dist_resume import CheckpointConfig, ConfigError, ResumeSystem
from bbp_dist_resume.demo import (
    DemoEvent,
    DemoEventKind,
    DemoReport,
    plumbing,
    recon,
    run_demo,
    runner,
)
from bbp_dist_resume.demo.processes import alive
from bbp_dist_resume.errors import DemoFailed

HOSTS = 300  # about 8 s of work at the demo's pace, plus the crash's ~5 s
SEED = 20261204
DETECTION_BOUND_S = 3.0 + 2.0  # the demo's lease TTL, plus scans and a loaded machine


@pytest.fixture
def config(make_config: Callable[..., CheckpointConfig]) -> CheckpointConfig:
    """The backend pair's URLs; ``run_demo`` applies its own timing to it."""
    return make_config()


@pytest.fixture
def reader(config: CheckpointConfig) -> Iterator[ResumeSystem]:
    rs = ResumeSystem(config, "test-reader")
    yield rs
    rs.shutdown()


def run_pids(run_dir: str | Path) -> set[int]:
    """Every process the run's event logs name (the coordinator's replacements too)."""
    return {pid for _, pid, _ in plumbing.iter_events(run_dir)}


def first(events: list[DemoEvent], kind: DemoEventKind) -> int:
    """Index of the first event of ``kind``."""
    return next(i for i, e in enumerate(events) if e.kind is kind)


def killed_process_commits(report: DemoReport) -> list[str]:
    """The checkpoints the killed process logged it committed."""
    logs = plumbing.iter_events(report.work_dir)
    return [
        str(e["checkpoint"])
        for name, pid, e in logs
        if name == report.killed_worker and pid == report.killed_pid and e["event"] == "committed"
    ]


# -- the demo, end to end ------------------------------------------------------------------


def test_demo_kills_a_prober_and_the_resumed_run_writes_the_uncrashed_runs_csv(
    tmp_path: Path, config: CheckpointConfig, reader: ResumeSystem
) -> None:
    events: list[DemoEvent] = []
    report = run_demo(config, tmp_path / "demo", hosts=HOSTS, seed=SEED, on_event=events.append)
    op, victim = report.operation_id, report.killed_worker
    assert not any(alive(pid) for pid in run_pids(report.work_dir)), "a process outlived the run"

    # A crash was injected, detected within the lease TTL, and recovered from.
    assert report.crashes_injected == 1
    assert victim in ("probe-0", "probe-1")
    assert report.detection_time_s is not None and report.recovery_time_s is not None
    assert report.first_commit_time_s is not None
    assert 0 < report.detection_time_s <= DETECTION_BOUND_S
    assert report.detection_time_s <= report.recovery_time_s <= report.first_commit_time_s
    kinds = [e.kind for e in events]
    assert kinds.count(DemoEventKind.KILL) == 1
    order = [first(events, k) for k in (DemoEventKind.KILL, DemoEventKind.DETECT)]
    order += [first(events, k) for k in (DemoEventKind.RECOVER, DemoEventKind.CHECK)]
    assert order == sorted(order), kinds

    # The replacement resumed from a real checkpoint the killed process had committed.
    assert report.resumed_from is not None
    assert report.resumed_from.startswith(f"{op}/{victim}/")
    assert report.resumed_from in killed_process_commits(report)
    listed = reader.list_checkpoints(op)
    assert report.resumed_from in listed

    # The output: the uncrashed run's, computed here, read back from the store.
    expected = recon.reference_csv(recon.Params(seed=SEED, hosts=HOSTS))
    csv = reader.open_checkpoint(report.output_checkpoint).attachment(recon.CSV_NAME)
    assert report.output_matches is True
    assert csv == expected
    assert csv.count(b"\n") == HOSTS + 1
    assert report.output_sha256 == hashlib.sha256(expected).hexdigest()

    # Counts and bytes agree with the store.
    per_worker = Counter(cid.split("/")[1] for cid in listed)
    assert report.checkpoints_per_worker == dict(per_worker)
    assert report.checkpoints == len(listed)
    exact = recon.exact_checkpoints(
        recon.Params(seed=SEED, hosts=HOSTS, batch=runner.BATCH, probers=2)
    )
    survivor = "probe-1" if victim == "probe-0" else "probe-0"
    for worker in ("expand", survivor):  # upstream of the crash, or beside it
        assert report.checkpoints_per_worker[worker] == exact[worker], worker
    assert report.checkpoints_per_worker[victim] >= exact[victim]
    points = reader.get_available_resume_points(op)
    assert report.logical_bytes == sum(p.logical_size for p in points)
    assert report.logical_bytes >= report.stored_bytes > 0
    assert report.stored_object_bytes > 0 and report.uploaded_bytes > 0
    assert report.dedup_ratio >= 1.0
    assert report.dedup_ratio == pytest.approx(report.logical_bytes / report.stored_bytes)
    assert report.wall_time_s < 60

    data = report.to_dict()
    assert data["workers"] == ["expand", "probe-0", "probe-1", "rank"]
    assert data["output_matches"] is True and data["operation_id"] == op


@pytest.mark.parametrize("backend_urls", ["file-sqlite"], indirect=True)
def test_demo_without_a_kill_reports_no_crash_and_the_same_output(
    tmp_path: Path, config: CheckpointConfig
) -> None:
    report = run_demo(config, tmp_path / "demo", hosts=100, seed=SEED + 1, kill=False)
    assert report.crashes_injected == 0 and report.killed_worker is None
    assert report.detection_time_s is None and report.resumed_from is None
    assert report.output_matches
    exact = recon.exact_checkpoints(recon.Params(seed=SEED + 1, hosts=100, batch=runner.BATCH))
    assert report.checkpoints_per_worker == exact
    assert not any(alive(pid) for pid in run_pids(report.work_dir))


@pytest.mark.parametrize("backend_urls", ["file-sqlite"], indirect=True)
def test_demo_interrupted_after_the_relaunch_kills_every_process_it_started(
    tmp_path: Path, config: CheckpointConfig
) -> None:
    seen: list[DemoEvent] = []

    def interrupt_once_relaunched(e: DemoEvent) -> None:
        seen.append(e)
        if e.kind is DemoEventKind.RESUME and "relaunched" in e.message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_demo(
            config, tmp_path / "demo", hosts=HOSTS, seed=SEED, on_event=interrupt_once_relaunched
        )
    (run_dir,) = (tmp_path / "demo" / "runs").iterdir()
    pids = run_pids(run_dir)
    names = {name for name, _, _ in plumbing.iter_events(run_dir)}
    assert {"coordinator-c0", "expand", "rank"} <= names
    assert len(pids) == 6, "a coordinator, four workers and the replacement"
    assert not [pid for pid in pids if alive(pid)]


@pytest.mark.parametrize("backend_urls", ["file-sqlite"], indirect=True)
def test_demo_that_runs_out_of_time_raises_demo_failed_and_leaves_no_process(
    tmp_path: Path, config: CheckpointConfig
) -> None:
    with pytest.raises(DemoFailed, match="did not complete in 2 s") as failed:
        run_demo(config, tmp_path / "demo", hosts=HOSTS, seed=SEED, timeout_s=2.0)
    assert failed.value.run_dir is not None
    assert not any(alive(pid) for pid in run_pids(failed.value.run_dir))


@pytest.mark.parametrize("backend_urls", ["file-sqlite"], indirect=True)
def test_demo_refuses_an_input_too_small_to_crash_a_prober_mid_run(
    tmp_path: Path, config: CheckpointConfig
) -> None:
    with pytest.raises(ConfigError, match="hosts"):
        run_demo(config, tmp_path / "demo", hosts=10, seed=SEED)
    assert not (tmp_path / "demo" / "runs").exists()
