"""What resuming a ``ResumeSystem`` gives back, on both backend pairs: the ``ResumeContext``
(stages, state, offsets, attachments), the sessions that follow a resume, and resume
statistics."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from resume_helpers import MakeConfig, Systems, monitored, new_op, three_checkpoints

from bbp_dist_resume import InvalidIdentifier, ResumeMode, ResumeState

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from resume_helpers import probed_s3_prefix, systems_fixture  # noqa: F401

# -- sessions after a resume, resume statistics --------------------------------------------


def test_work_after_resuming_an_older_checkpoint_abandons_the_newer_ones(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = monitored(systems, make_config(), op)
    ids = three_checkpoints(rs, (10.0, 50.0, 90.0))
    old = rs.resume_from_checkpoint(ids[0])
    assert old is not None and old.state == {"at": "a"}
    redo = rs.create_checkpoint("b", {"redo": True}, progress=20.0)
    last = rs.resume_from_checkpoint(op, ResumeMode.LAST_CHECKPOINT)
    assert last is not None and last.checkpoint_id == redo
    best = rs.resume_from_checkpoint(op, ResumeMode.BEST_CHECKPOINT)
    assert best is not None
    assert best.checkpoint_id == redo  # not the abandoned one at 90 %
    auto = rs.resume_automatically(op)
    assert auto is not None and auto.checkpoint_id == redo


def test_a_resume_before_monitoring_carries_into_the_next_session(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    crashed = monitored(systems, make_config(), op)
    ids = three_checkpoints(crashed, (10.0, 50.0, 90.0))
    crashed.stop_monitoring()
    rs = systems(make_config())
    assert rs.can_resume(op)
    ctx = rs.resume_from_checkpoint(ids[0])
    assert ctx is not None and ctx.checkpoint_id == ids[0]
    assert rs.get_current_state() is ResumeState.IDLE
    rs.start_monitoring(op)
    assert rs.get_current_state() is ResumeState.RUNNING
    redo = rs.create_checkpoint("b", {"redo": True}, progress=20.0)
    assert redo == f"{op}/w0/6"  # after the new takeover at 5
    points = {p.checkpoint_id: p for p in rs.get_available_resume_points(op)}
    assert points[redo].elapsed_time >= points[ids[0]].elapsed_time
    best = rs.resume_from_checkpoint(op, ResumeMode.BEST_CHECKPOINT)
    assert best is not None and best.checkpoint_id == redo
    auto = rs.resume_automatically(op)
    assert auto is not None and auto.checkpoint_id == redo


def test_resume_statistics_count_successes_stages_and_recovery_time(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = monitored(systems, make_config(), op)
    ids = three_checkpoints(rs, (10.0, 20.0, 30.0))
    assert rs.resume_automatically(op) is not None
    assert rs.resume_from_checkpoint(ids[0]) is not None
    stats = rs.get_statistics()
    assert stats.total_resumes == 2
    assert stats.successful_resumes == 2
    assert stats.failed_resumes == 0
    assert stats.checkpoints_used_for_recovery == 2
    assert stats.stage_resume_counts == {"c": 1, "a": 1}
    assert stats.total_recovery_time > timedelta(0)
    half = stats.total_recovery_time / 2
    assert abs(stats.average_recovery_time - half) <= timedelta(microseconds=1)


# -- the resume context --------------------------------------------------------------------


def test_the_resume_context_carries_stages_state_offsets_and_attachments(
    make_config: MakeConfig, systems: Systems, tmp_path: Path
) -> None:
    op = new_op()
    rs = monitored(systems, make_config(), op, stages=["a", "b", "c"])
    csv = tmp_path / "rows.csv"
    csv.write_text("host,port\nexample.org,443\n")
    model = os.urandom(50_000)
    state = {
        "completed_stages": ["a"],
        "pending_stages": ["c", "b"],
        "stage_results": {"a": {"hosts": 3}},
        "cursor": 17,
    }
    cid = rs.create_checkpoint(
        "b",
        state,
        attachments={"model": model, "rows": csv},
        progress=40.0,
        consumed={"in": 3},
        produced={"out": 9},
    )
    ctx = rs.resume_from_checkpoint(cid)
    assert ctx is not None
    assert ctx.checkpoint_id == cid
    assert ctx.operation_id == op
    assert ctx.state == state
    assert ctx.completed_stages == ("a",)
    assert ctx.pending_stages == ("c", "b")  # as the state says, in its order
    assert ctx.stage_results == {"a": {"hosts": 3}}
    assert ctx.consumed == {"in": 3}
    assert ctx.produced == {"out": 9}
    assert ctx.stage_name == "b"
    assert ctx.progress_percentage == 40.0
    assert ctx.resume_mode is ResumeMode.LAST_CHECKPOINT
    assert ctx.resume_reason
    assert ctx.attachment_names == ("model", "rows")
    assert ctx.attachment("model") == model
    assert ctx.attachment("rows") == csv.read_bytes()
    restored = ctx.restore_attachment("rows", tmp_path / "restored.csv")
    assert restored == tmp_path / "restored.csv"
    assert restored.read_bytes() == csv.read_bytes()
    with pytest.raises(InvalidIdentifier):
        ctx.attachment("nope")
    with pytest.raises(InvalidIdentifier):
        ctx.restore_attachment("nope", tmp_path / "nope")
    assert ctx.start_time <= ctx.resume_time


def test_pending_stages_come_from_the_operation_when_the_state_has_none(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = monitored(systems, make_config(), op, stages=["a", "b", "c"])
    rs.create_checkpoint("b", {"completed_stages": ["a"]})
    ctx = rs.resume_automatically(op)
    assert ctx is not None
    assert ctx.completed_stages == ("a",)
    assert ctx.pending_stages == ("b", "c")
    rs.create_checkpoint("c", {"other": 1})
    bare = rs.resume_automatically(op)
    assert bare is not None
    assert bare.completed_stages == ()
    assert bare.pending_stages == ("a", "b", "c")
    assert bare.stage_results == {}


def test_a_file_attachment_is_saved_as_it_was_when_a_non_blocking_checkpoint_returned(
    make_config: MakeConfig, systems: Systems, tmp_path: Path
) -> None:
    op = new_op()
    rs = monitored(systems, make_config(), op)
    path = tmp_path / "part.bin"
    before = os.urandom(200_000)
    path.write_bytes(before)
    fut = rs.create_checkpoint("a", {"v": 1}, attachments={"part": path}, blocking=False)
    path.write_bytes(b"changed right after the call")
    cid = fut.result(timeout=30)
    ctx = rs.resume_from_checkpoint(cid)
    assert ctx is not None
    assert ctx.attachment("part") == before


def test_state_and_attachment_buffers_are_frozen_when_a_non_blocking_checkpoint_returns(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = monitored(systems, make_config(), op)
    state: dict[str, Any] = {"rows": [1, 2], "meta": {"k": "v"}}
    buffer = bytearray(b"before" * 2000)
    meta = {"tag": "before"}
    fut = rs.create_checkpoint("a", state, meta, attachments={"buf": buffer}, blocking=False)
    state["rows"].append(3)
    state["meta"]["k"] = "changed"
    buffer[:6] = b"AFTER!"
    meta["tag"] = "after"
    cid = fut.result(timeout=30)
    ctx = rs.resume_from_checkpoint(cid)
    assert ctx is not None
    assert ctx.state == {"rows": [1, 2], "meta": {"k": "v"}}
    assert ctx.attachment("buf") == b"before" * 2000
    assert rs.get_available_resume_points(op)[-1].custom_metadata == {"tag": "before"}


def test_a_deleted_checkpoint_cannot_be_resumed_and_is_no_resume_point(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = monitored(systems, make_config(), op)
    ids = three_checkpoints(rs, (10.0, 90.0, 30.0))
    assert rs.delete_checkpoint(ids[1])
    assert rs.resume_from_checkpoint(ids[1]) is None
    assert [p.checkpoint_id for p in rs.get_available_resume_points(op)] == [ids[0], ids[2]]
    best = rs.resume_from_checkpoint(op, ResumeMode.BEST_CHECKPOINT)
    assert best is not None and best.checkpoint_id == ids[2]


def test_a_multi_chunk_attachment_round_trips_and_dedups_when_unchanged(
    make_config: MakeConfig, systems: Systems, tmp_path: Path
) -> None:
    op = new_op()
    rs = monitored(systems, make_config(), op)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 << 20))
    first = rs.create_checkpoint("a", {"v": 1}, attachments={"big": big})
    stored = rs.get_statistics().stored_bytes
    second = rs.create_checkpoint("a", {"v": 2}, attachments={"big": big})
    stats = rs.get_statistics()
    assert stats.stored_bytes - stored < 1024  # the unchanged file cost nothing new
    assert stats.dedup_ratio > 1.8
    for cid in (first, second):
        ctx = rs.resume_from_checkpoint(cid)
        assert ctx is not None
        out = ctx.restore_attachment("big", tmp_path / f"{cid.rsplit('/', 1)[1]}.bin")
        assert out.read_bytes() == big.read_bytes()
        assert rs.verify_checkpoint(cid, deep=True)
