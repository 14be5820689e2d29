"""Resuming a ``ResumeSystem`` on both backend pairs: the four modes, resuming by id, the
published plan and the recovery line."""

from __future__ import annotations

import io
import sys

import pytest
from resume_helpers import Damaging, MakeConfig, Systems, monitored, new_op, three_checkpoints

from bbp_dist_resume import (
    CheckpointMetadata,
    InteractiveUnavailable,
    InvalidCheckpoint,
    InvalidIdentifier,
    ResumeContext,
    ResumeMode,
    ResumeState,
)
from bbp_dist_resume.coordination import open_coordination

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from resume_helpers import damage_fixture, probed_s3_prefix, systems_fixture  # noqa: F401

# -- the four modes --------------------------------------------------------------------


def test_full_restart_starts_clean_with_the_operation_stages(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = systems(make_config(), "w0")
    rs.start_monitoring(op, "pipelines/recon.yaml", stages=["a", "b", "c"])
    ids = three_checkpoints(rs, (10.0, 20.0, 30.0))
    for target in (op, ids[1]):
        ctx = rs.resume_from_checkpoint(target, ResumeMode.FULL_RESTART)
        assert isinstance(ctx, ResumeContext)
        assert ctx.checkpoint_id is None
        assert ctx.state == {}
        assert ctx.operation_id == op
        assert ctx.resume_mode is ResumeMode.FULL_RESTART
        assert ctx.completed_stages == ()
        assert ctx.pending_stages == ("a", "b", "c")
        assert ctx.pipeline_config_path == "pipelines/recon.yaml"
        assert ctx.consumed == {}
        assert ctx.attachment_names == ()
        assert ctx.resume_time >= ctx.start_time
    # Work after a full restart abandons every earlier checkpoint.
    fresh = rs.create_checkpoint("a", {"again": True}, progress=1.0)
    again = rs.resume_from_checkpoint(op, ResumeMode.LAST_CHECKPOINT)
    assert again is not None and again.checkpoint_id == fresh
    best = rs.resume_from_checkpoint(op, ResumeMode.BEST_CHECKPOINT)
    assert best is not None and best.checkpoint_id == fresh


def test_last_checkpoint_by_operation_takes_the_latest_and_by_id_exactly_that_one(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = monitored(systems, make_config(), op)
    ids = three_checkpoints(rs, (90.0, 20.0, 30.0))
    ctx = rs.resume_from_checkpoint(op)  # LAST_CHECKPOINT is the default
    assert ctx is not None
    assert ctx.checkpoint_id == ids[2]
    assert ctx.resume_mode is ResumeMode.LAST_CHECKPOINT
    assert ctx.state == {"at": "c"}
    exact = rs.resume_from_checkpoint(ids[0], ResumeMode.LAST_CHECKPOINT)
    assert exact is not None and exact.checkpoint_id == ids[0]
    assert exact.state == {"at": "a"}
    assert exact.stage_name == "a"
    assert exact.progress_percentage == 90.0


def test_best_checkpoint_defaults_to_the_most_progress(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = monitored(systems, make_config(), op)
    ids = three_checkpoints(rs, (10.0, 80.0, 30.0))
    ctx = rs.resume_from_checkpoint(op, ResumeMode.BEST_CHECKPOINT)
    assert ctx is not None
    assert ctx.checkpoint_id == ids[1]
    assert ctx.resume_mode is ResumeMode.BEST_CHECKPOINT
    assert ctx.state == {"at": "b"}
    # An exact id is restored as asked, whatever its score.
    exact = rs.resume_from_checkpoint(ids[0], ResumeMode.BEST_CHECKPOINT)
    assert exact is not None and exact.checkpoint_id == ids[0]


def test_best_checkpoint_scores_with_best_fn_from_the_call_or_else_the_config(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    least_progress = make_config(best_fn=lambda p: -p.progress_percentage)
    rs = monitored(systems, least_progress, op)
    ids = three_checkpoints(rs, (40.0, 10.0, 30.0))
    by_config = rs.resume_from_checkpoint(op, ResumeMode.BEST_CHECKPOINT)
    assert by_config is not None and by_config.checkpoint_id == ids[1]
    scored: list[CheckpointMetadata] = []

    def stage_c_first(point: CheckpointMetadata) -> float:
        scored.append(point)
        return 1.0 if point.custom_metadata.get("stage") == "c" else 0.0

    by_call = rs.resume_from_checkpoint(op, ResumeMode.BEST_CHECKPOINT, best_fn=stage_c_first)
    assert by_call is not None and by_call.checkpoint_id == ids[2]
    assert {p.checkpoint_id for p in scored} == set(ids)
    assert all(isinstance(p, CheckpointMetadata) for p in scored)


def test_interactive_resume_asks_the_chooser_with_this_workers_points(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    workers = ["w0", "w1"]
    rs = monitored(systems, make_config(), op, workers=workers)
    other = monitored(systems, make_config(), op, workers=workers, worker_id="w1")
    other.create_checkpoint("a", {"w1": True})
    ids = three_checkpoints(rs, (10.0, 20.0, 30.0))
    offered: list[list[CheckpointMetadata]] = []
    states: list[ResumeState] = []

    def pick_first(points: list[CheckpointMetadata]) -> CheckpointMetadata:
        offered.append(points)
        states.append(rs.get_current_state())
        return points[0]

    ctx = rs.resume_from_checkpoint(op, ResumeMode.INTERACTIVE, chooser=pick_first)
    assert ctx is not None
    assert ctx.checkpoint_id == ids[0]
    assert ctx.resume_mode is ResumeMode.INTERACTIVE
    assert [p.checkpoint_id for p in offered[0]] == ids
    assert states == [ResumeState.RECOVERING]
    assert rs.get_current_state() is ResumeState.RUNNING
    by_id = rs.resume_from_checkpoint(op, ResumeMode.INTERACTIVE, chooser=lambda _p: ids[1])
    assert by_id is not None and by_id.checkpoint_id == ids[1]
    clean = rs.resume_from_checkpoint(op, ResumeMode.INTERACTIVE, chooser=lambda _p: None)
    assert clean is not None
    assert clean.checkpoint_id is None and clean.state == {}
    with pytest.raises(InvalidCheckpoint):
        rs.resume_from_checkpoint(op, ResumeMode.INTERACTIVE, chooser=lambda _p: f"{op}/w1/2")
    assert rs.get_current_state() is ResumeState.RUNNING


def test_interactive_resume_uses_the_configured_chooser(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = monitored(systems, make_config(chooser=lambda points: points[-1]), op)
    ids = three_checkpoints(rs, (10.0, 20.0, 30.0))
    ctx = rs.resume_from_checkpoint(op, ResumeMode.INTERACTIVE)
    assert ctx is not None and ctx.checkpoint_id == ids[-1]


def test_interactive_resume_without_a_chooser_or_a_terminal_raises_interactive_unavailable(
    make_config: MakeConfig, systems: Systems, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    op = new_op()
    rs = monitored(systems, make_config(), op)
    rs.create_checkpoint("a", {})
    with pytest.raises(InteractiveUnavailable):
        rs.resume_from_checkpoint(op, ResumeMode.INTERACTIVE)
    assert rs.get_current_state() is ResumeState.RUNNING
    idle = systems(make_config(), "w0")
    with pytest.raises(InteractiveUnavailable):
        idle.resume_from_checkpoint(op, ResumeMode.INTERACTIVE)
    assert idle.get_current_state() is ResumeState.IDLE


def test_resume_modes_accept_their_string_values(make_config: MakeConfig, systems: Systems) -> None:
    op = new_op()
    rs = monitored(systems, make_config(), op)
    ids = three_checkpoints(rs, (10.0, 90.0, 30.0))
    best = rs.resume_from_checkpoint(op, "best")  # type: ignore[arg-type]
    assert best is not None and best.checkpoint_id == ids[1]
    with pytest.raises(ValueError):
        rs.resume_from_checkpoint(op, "sideways")  # type: ignore[arg-type]


def test_resuming_from_a_missing_or_takeover_id_returns_none_and_reports_it(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = monitored(systems, make_config(), op)
    rs.create_checkpoint("a", {})
    seen: list[tuple[str, bool]] = []
    rs.set_recovery_callback(lambda cid, ok: seen.append((cid, ok)))
    assert rs.resume_from_checkpoint(f"{op}/w0/99") is None
    assert rs.resume_from_checkpoint(f"{op}/w0/1") is None  # the takeover record
    assert seen == [(f"{op}/w0/99", False), (f"{op}/w0/1", False)]
    stats = rs.get_statistics()
    assert stats.failed_resumes == 2
    assert stats.successful_resumes == 0
    assert len(stats.recent_failures) == 2
    assert rs.get_current_state() is ResumeState.RUNNING
    for bad in ("bad/op", "op/w0/0", "op/w0/x", ""):
        with pytest.raises(InvalidIdentifier):
            rs.resume_from_checkpoint(bad)


def test_resuming_a_corrupt_checkpoint_by_id_returns_none(
    make_config: MakeConfig, systems: Systems, damage: Damaging
) -> None:
    op = new_op()
    rs = monitored(systems, make_config(inline_threshold=0), op)
    wreck = damage(rs)
    deleted = wreck.checkpoint("a", {"v": "deleted"})
    overwritten = wreck.checkpoint("a", {"v": "overwritten"})
    wreck.checkpoint("a", {"v": "newest"})
    wreck.delete(deleted)
    wreck.overwrite(overwritten)
    seen: list[tuple[str, bool]] = []
    rs.set_recovery_callback(lambda cid, ok: seen.append((cid, ok)))
    assert rs.resume_from_checkpoint(deleted) is None
    assert rs.resume_from_checkpoint(overwritten) is None
    assert seen == [(deleted, False), (overwritten, False)]


# -- resume_automatically: the plan --------------------------------------------------------


def test_resume_automatically_restores_the_published_plan_entry_first(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    _, coord_url = backend_urls
    op = new_op()
    rs = monitored(systems, make_config(), op)
    ids = three_checkpoints(rs, (10.0, 20.0, 30.0))
    line = rs.resume_automatically(op)
    assert line is not None and line.checkpoint_id == ids[2]
    assert "recovery line" in line.resume_reason
    coord = open_coordination(coord_url)
    try:
        plan = coord.publish_plan(
            op, {"entries": {"w0": {"checkpoint_id": ids[1], "reason": "coordinator cut"}}}
        )
    finally:
        coord.close()
    ctx = rs.resume_automatically(op)
    assert ctx is not None
    assert ctx.checkpoint_id == ids[1]
    assert ctx.state == {"at": "b"}
    assert "plan" in ctx.resume_reason
    assert str(plan.generation) in ctx.resume_reason
    assert "coordinator cut" in ctx.resume_reason


def test_a_plan_that_does_not_name_this_worker_leaves_it_on_the_recovery_line(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    _, coord_url = backend_urls
    op = new_op()
    workers = ["w0", "w1"]
    rs = monitored(systems, make_config(), op, workers=workers)
    ids = three_checkpoints(rs, (10.0, 20.0, 30.0))
    coord = open_coordination(coord_url)
    try:
        coord.publish_plan(op, {"entries": {"w1": {"checkpoint_id": None, "reason": "clean"}}})
    finally:
        coord.close()
    ctx = rs.resume_automatically(op)
    assert ctx is not None and ctx.checkpoint_id == ids[2]


def test_a_plan_entry_without_a_checkpoint_means_start_clean(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    _, coord_url = backend_urls
    op = new_op()
    rs = monitored(systems, make_config(), op)
    three_checkpoints(rs, (10.0, 20.0, 30.0))
    coord = open_coordination(coord_url)
    try:
        coord.publish_plan(op, {"entries": {"w0": {"checkpoint_id": None, "reason": "redo"}}})
    finally:
        coord.close()
    assert rs.resume_automatically(op) is None


def test_resume_automatically_with_nothing_to_resume_returns_none(
    make_config: MakeConfig, systems: Systems
) -> None:
    rs = systems(make_config())
    assert rs.resume_automatically(new_op()) is None  # unknown operation
    op = new_op()
    rs.start_monitoring(op)
    assert rs.resume_automatically(op) is None  # only a takeover record
    assert rs.get_current_state() is ResumeState.RUNNING
    assert rs.create_checkpoint("a", {}) == f"{op}/w0/2"


# -- resume_automatically: the recovery line -----------------------------------------------


def test_the_recovery_line_rolls_a_consumer_back_to_what_its_producer_committed(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    workers = ["producer", "consumer"]
    producer = monitored(systems, make_config(), op, workers=workers, worker_id="producer")
    consumer = monitored(systems, make_config(), op, workers=workers, worker_id="consumer")
    p_ids = [producer.create_checkpoint("emit", {"sent": n}, produced={"ch": n}) for n in (10, 20)]
    c_ids = [
        consumer.create_checkpoint("read", {"got": n}, consumed={"ch": n}) for n in (5, 15, 25)
    ]
    at_producer = producer.resume_automatically(op)
    assert at_producer is not None
    assert at_producer.checkpoint_id == p_ids[1]
    assert at_producer.produced == {"ch": 20}
    at_consumer = consumer.resume_automatically(op)
    assert at_consumer is not None
    # 25 consumed but only 20 produced at the producer's cut: back to the one at 15.
    assert at_consumer.checkpoint_id == c_ids[1]
    assert at_consumer.consumed == {"ch": 15}
    assert at_consumer.state == {"got": 15}
    assert "rolled back" in at_consumer.resume_reason


def test_barrier_aligned_workers_resume_from_the_latest_epoch_all_committed(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    workers = ["w0", "w1"]
    w0 = monitored(systems, make_config(), op, workers=workers)
    w1 = monitored(systems, make_config(), op, workers=workers, worker_id="w1")
    w0_ids = [w0.create_checkpoint("s", {"epoch": e}, epoch=e) for e in (1, 2, 3)]
    w1_ids = [w1.create_checkpoint("s", {"epoch": e}, epoch=e) for e in (1, 2)]
    at_w0 = w0.resume_automatically(op)
    at_w1 = w1.resume_automatically(op)
    assert at_w0 is not None and at_w1 is not None
    assert at_w0.checkpoint_id == w0_ids[1]  # epoch 3 is not committed by w1 yet
    assert at_w0.state == {"epoch": 2}
    assert at_w1.checkpoint_id == w1_ids[1]
