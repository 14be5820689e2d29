"""``ResumeSystem.resume_automatically`` falling back past damaged checkpoints, and the
``CheckpointGuard``, on both backend pairs."""

from __future__ import annotations

import pytest
from resume_helpers import Damaging, MakeConfig, Systems, monitored, new_op

from bbp_dist_resume import (
    AutoCheckpointGuard,
    CheckpointGranularity,
    CheckpointGuard,
    CheckpointMetadata,
    CheckpointStrategy,
    InvalidCheckpoint,
    InvalidIdentifier,
    InvalidStateError,
    ResumeState,
    ResumeSystem,
    StoreUnavailable,
)
from bbp_dist_resume.blobstore import open_store
from bbp_dist_resume.coordination import open_coordination

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from resume_helpers import damage_fixture, probed_s3_prefix, systems_fixture  # noqa: F401

# -- resume_automatically: falling back past damage ----------------------------------------


def test_resume_automatically_falls_back_past_a_checkpoint_with_a_deleted_chunk(
    make_config: MakeConfig, systems: Systems, damage: Damaging
) -> None:
    op = new_op()
    rs = monitored(systems, make_config(inline_threshold=0), op)
    wreck = damage(rs)
    ids = [wreck.checkpoint("a", {"n": n}, progress=10.0 * n) for n in range(1, 4)]
    wreck.delete(ids[2])
    seen: list[tuple[str, bool]] = []
    rs.set_recovery_callback(lambda cid, ok: seen.append((cid, ok)))
    ctx = rs.resume_automatically(op)
    assert ctx is not None
    assert ctx.checkpoint_id == ids[1]
    assert ctx.state == {"n": 2}
    assert seen == [(ids[2], False), (ids[1], True)]
    stats = rs.get_statistics()
    assert stats.failed_resumes == 1
    assert stats.successful_resumes == 1


def test_resume_automatically_falls_back_past_a_checkpoint_with_an_overwritten_chunk(
    make_config: MakeConfig, systems: Systems, damage: Damaging
) -> None:
    op = new_op()
    rs = monitored(systems, make_config(inline_threshold=0), op)
    wreck = damage(rs)
    ids = [wreck.checkpoint("a", {"n": n}) for n in range(1, 4)]
    wreck.overwrite(ids[2])
    wreck.delete(ids[1])
    ctx = rs.resume_automatically(op)
    assert ctx is not None
    assert ctx.checkpoint_id == ids[0]
    assert ctx.state == {"n": 1}


def test_resume_automatically_falls_back_past_a_corrupt_plan_entry(
    make_config: MakeConfig,
    systems: Systems,
    damage: Damaging,
    backend_urls: tuple[str, str],
) -> None:
    _, coord_url = backend_urls
    op = new_op()
    rs = monitored(systems, make_config(inline_threshold=0), op)
    wreck = damage(rs)
    ids = [wreck.checkpoint("a", {"n": n}) for n in range(1, 4)]
    coord = open_coordination(coord_url)
    try:
        coord.publish_plan(op, {"entries": {"w0": {"checkpoint_id": ids[1], "reason": "x"}}})
    finally:
        coord.close()
    wreck.delete(ids[1])
    ctx = rs.resume_automatically(op)
    assert ctx is not None
    assert ctx.checkpoint_id in (ids[0], ids[2])
    assert ctx.checkpoint_id != ids[1]


# A system that cached commit records before they were damaged reports them unverified.
def test_resume_automatically_falls_back_past_garbled_or_swapped_commit_records(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    op = new_op()
    rs = monitored(systems, make_config(), op)
    ids = [rs.create_checkpoint("a", {"n": n}) for n in range(1, 5)]
    assert len(rs.get_available_resume_points(op)) == 4  # the records are read (and cached)
    key = f"checkpoints/{op}/w0/{{:010d}}"
    store = open_store(backend_urls[0])
    try:
        store.put(key.format(5), b"not a commit record")
        store.put(key.format(4), store.get(key.format(2)))  # a valid record, but of seq 2
    finally:
        store.close()
    fresh = systems(make_config(), "w1")
    points = {p.checkpoint_id: p for p in fresh.get_available_resume_points(op)}
    assert [points[c].is_verified for c in ids] == [True, True, False, False]
    for cid in ids[2:]:
        assert rs.verify_checkpoint(cid) is False
    # The system that cached the records before the damage sees it once it verified them.
    points = {p.checkpoint_id: p for p in rs.get_available_resume_points(op)}
    assert [points[c].is_verified for c in ids] == [True, True, False, False]
    ctx = rs.resume_automatically(op)
    assert ctx is not None
    assert ctx.checkpoint_id == ids[1]
    assert ctx.state == {"n": 2}
    assert rs.resume_from_checkpoint(ids[2]) is None


def test_resume_automatically_starts_clean_when_every_checkpoint_is_damaged(
    make_config: MakeConfig, systems: Systems, damage: Damaging
) -> None:
    op = new_op()
    rs = monitored(systems, make_config(inline_threshold=0), op)
    wreck = damage(rs)
    ids = [wreck.checkpoint("a", {"n": n}) for n in range(1, 3)]
    for cid in ids:
        wreck.delete(cid)
    assert rs.resume_automatically(op) is None
    assert rs.get_statistics().failed_resumes == 2


# -- the guard -----------------------------------------------------------------------------


def newest_point(rs: ResumeSystem, op: str) -> CheckpointMetadata:
    return rs.get_available_resume_points(op)[-1]


def test_guard_progress_checkpoints_only_with_fine_granularity_at_milestones(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = systems(make_config(granularity=CheckpointGranularity.FINE, progress_threshold=25.0))
    with CheckpointGuard(op, "scan", rs) as guard:
        guard.set_pipeline_state({"done": 0})
        assert guard.update_progress(10.0) is None
        first = guard.update_progress(30.0)
        assert first == f"{op}/w0/2"
        assert guard.last_checkpoint_id == first
        assert guard.update_progress(40.0) is None
        guard.set_pipeline_state({"done": 60})
        second = guard.update_progress(60.0)
        assert second == f"{op}/w0/3"
    ctx = rs.resume_from_checkpoint(second)
    assert ctx is not None and ctx.state == {"done": 60}
    assert ctx.progress_percentage == 60.0


@pytest.mark.parametrize(
    "granularity", [CheckpointGranularity.MEDIUM, CheckpointGranularity.COARSE]
)
def test_guard_progress_never_checkpoints_without_fine_granularity(
    make_config: MakeConfig, systems: Systems, granularity: CheckpointGranularity
) -> None:
    op = new_op()
    rs = systems(make_config(granularity=granularity, progress_threshold=5.0))
    guard = CheckpointGuard(op, "scan", rs)
    for p in (10.0, 50.0, 90.0):
        assert guard.update_progress(p) is None
    assert rs.list_checkpoints(op) == []


@pytest.mark.parametrize(
    ("granularity", "final"),
    [
        (CheckpointGranularity.FINE, True),
        (CheckpointGranularity.MEDIUM, True),
        (CheckpointGranularity.COARSE, False),
    ],
)
def test_guard_takes_a_final_checkpoint_on_exit_except_with_coarse_granularity(
    make_config: MakeConfig, systems: Systems, granularity: CheckpointGranularity, final: bool
) -> None:
    op = new_op()
    rs = systems(make_config(granularity=granularity, strategy=CheckpointStrategy.MANUAL))
    with AutoCheckpointGuard(op, "enrich", rs) as guard:
        guard.set_pipeline_state({"rows": 12})
        guard.add_metadata("task", "t-1")
        guard.update_progress(100.0)
    listed = rs.list_checkpoints(op)
    if not final:
        assert listed == []
        return
    assert listed == [f"{op}/w0/2"]
    assert guard.last_checkpoint_id == listed[0]
    point = newest_point(rs, op)
    assert point.stage_name == "enrich"
    assert point.custom_metadata == {"task": "t-1"}
    assert point.progress_percentage == 100.0
    assert point.granularity == granularity.value
    ctx = rs.resume_from_checkpoint(listed[0])
    assert ctx is not None and ctx.state == {"rows": 12}


def test_a_new_guard_starts_from_the_workers_progress_not_zero(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = systems(make_config(strategy=CheckpointStrategy.MANUAL))
    with CheckpointGuard(op, "scan", rs) as first:
        first.set_pipeline_state({"n": 1})
        first.update_progress(99.0)
    with CheckpointGuard(op, "report", rs) as second:
        second.set_pipeline_state({"n": 2})  # no update_progress in this task
    assert newest_point(rs, op).progress_percentage == 99.0
    rs.shutdown()  # a restart of the same worker: resumed at 99%
    resumed = systems(make_config(strategy=CheckpointStrategy.MANUAL))
    resumed.start_monitoring(op)
    assert resumed.resume_automatically(op) is not None
    with CheckpointGuard(op, "report", resumed) as third:
        third.set_pipeline_state({"n": 3})
    assert newest_point(resumed, op).progress_percentage == 99.0


def test_guard_force_checkpoint_checkpoints_now(make_config: MakeConfig, systems: Systems) -> None:
    op = new_op()
    rs = systems(make_config(strategy=CheckpointStrategy.MANUAL))
    guard = CheckpointGuard(op, "scan", rs)
    assert rs.operation_id == op  # the guard started monitoring
    guard.set_pipeline_state({"k": "v"})
    guard.add_metadata("why", "forced")
    cid = guard.force_checkpoint()
    assert cid == f"{op}/w0/2"
    assert guard.last_checkpoint_id == cid
    assert newest_point(rs, op).custom_metadata == {"why": "forced"}
    with pytest.raises(InvalidCheckpoint):
        guard.set_pipeline_state(["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(InvalidCheckpoint):
        guard.add_metadata("n", 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("granularity", list(CheckpointGranularity))
def test_guard_checkpoints_a_failure_and_reraises_the_exception(
    make_config: MakeConfig, systems: Systems, granularity: CheckpointGranularity
) -> None:
    op = new_op()
    rs = systems(make_config(granularity=granularity))
    with pytest.raises(ValueError, match="boom"):
        with CheckpointGuard(op, "scan", rs) as guard:
            guard.set_pipeline_state({"at": 7})
            guard.add_metadata("task", "t-9")
            raise ValueError("boom")
    (cid,) = rs.list_checkpoints(op)
    point = newest_point(rs, op)
    assert point.checkpoint_id == cid == guard.last_checkpoint_id
    assert point.custom_metadata["failed"] == "true"
    assert "ValueError" in point.custom_metadata["failure"]
    assert "boom" in point.custom_metadata["failure"]
    assert point.custom_metadata["task"] == "t-9"
    ctx = rs.resume_automatically(op)
    assert ctx is not None and ctx.state == {"at": 7}


def test_guard_reraises_the_task_exception_even_when_its_checkpoint_fails(
    make_config: MakeConfig, systems: Systems, monkeypatch: pytest.MonkeyPatch
) -> None:
    op = new_op()
    rs = systems(make_config(strict=True))
    guard = CheckpointGuard(op, "scan", rs)
    repo = rs._repo
    assert repo is not None

    def refuse(key: str, data: bytes) -> bool:
        raise StoreUnavailable("injected outage", key=key)

    monkeypatch.setattr(repo.store, "put_if_absent", refuse)
    with pytest.raises(KeyError):
        with guard:
            raise KeyError("task failed")
    assert rs.get_statistics().failed_checkpoints == 1


def test_guard_starts_monitoring_and_refuses_another_operation(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = systems(make_config())
    assert rs.operation_id is None
    CheckpointGuard(op, "scan", rs)
    assert rs.operation_id == op
    assert rs.get_current_state() is ResumeState.RUNNING
    CheckpointGuard(op, "enrich", rs)  # the same operation: fine
    with pytest.raises(InvalidStateError):
        CheckpointGuard(new_op(), "scan", rs)
    with pytest.raises(InvalidIdentifier):
        CheckpointGuard(op, "bad stage", rs)
    assert AutoCheckpointGuard is CheckpointGuard
