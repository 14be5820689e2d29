"""Resuming a ``ResumeSystem`` on both backend pairs: the four modes, the published plan,
the recovery line, falling back past corrupt checkpoints, the ``ResumeContext``, and the
``CheckpointGuard``."""

from __future__ import annotations

import io
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bbp_dist_resume import (
    AutoCheckpointGuard,
    CheckpointConfig,
    CheckpointGranularity,
    CheckpointGuard,
    CheckpointMetadata,
    CheckpointStrategy,
    InteractiveUnavailable,
    InvalidCheckpoint,
    InvalidIdentifier,
    InvalidStateError,
    ResumeContext,
    ResumeMode,
    ResumeState,
    ResumeSystem,
    StoreUnavailable,
)
from bbp_dist_resume.blobstore import BlobStore, open_store
from bbp_dist_resume.coordination import open_coordination
from bbp_dist_resume.repository import open_on_store
from bbp_dist_resume.repository.storeconfig import CONFIG_KEY

MakeConfig = Callable[..., CheckpointConfig]
Systems = Callable[..., ResumeSystem]
Damaging = Callable[[ResumeSystem], "Damage"]


# -- helpers ---------------------------------------------------------------------------


def new_op() -> str:
    return f"op-{uuid.uuid4().hex[:12]}"


_STORE_CONFIG: dict[str, bytes] = {}


@pytest.fixture(autouse=True)
def _probed_s3_prefix(backend_urls: tuple[str, str]) -> None:
    """Give each test's fresh S3 prefix the store ``config`` object of a prefix already
    probed, so that opening it skips the create-only probe (seconds on SeaweedFS, which
    serialises conditional writes to one key). The probe itself is tested elsewhere."""
    store_url, _ = backend_urls
    if not store_url.startswith("s3:"):
        return
    store = open_store(store_url)
    try:
        if CONFIG_KEY in _STORE_CONFIG:
            store.put(CONFIG_KEY, _STORE_CONFIG[CONFIG_KEY])
        else:
            open_on_store(store, CheckpointConfig(store_url=store_url))
            _STORE_CONFIG[CONFIG_KEY] = store.get(CONFIG_KEY)
    finally:
        store.close()


@pytest.fixture
def systems() -> Iterator[Systems]:
    """``systems(config, worker_id="w0")``: an initialized ``ResumeSystem``, shut down at
    the end of the test."""
    made: list[ResumeSystem] = []

    def make(config: CheckpointConfig, worker_id: str = "w0") -> ResumeSystem:
        rs = ResumeSystem(config, worker_id)
        rs.initialize()
        made.append(rs)
        return rs

    yield make
    for rs in reversed(made):
        rs.shutdown()


class Damage:
    """Checkpoints whose chunks can then be deleted or overwritten in the store."""

    def __init__(self, rs: ResumeSystem, store: BlobStore) -> None:
        self._rs = rs
        self._store = store
        self._chunks: dict[str, list[str]] = {}

    def _chunk_keys(self) -> set[str]:
        return {info.key for info in self._store.list("chunks/")}

    def checkpoint(self, stage: str, state: dict[str, Any], **kwargs: Any) -> str:
        """A checkpoint whose chunks are its own (its state must be unique)."""
        before = self._chunk_keys()
        cid = self._rs.create_checkpoint(stage, state, **kwargs)
        assert isinstance(cid, str) and cid
        self._chunks[cid] = sorted(self._chunk_keys() - before)
        assert self._chunks[cid], "the state was inlined: set inline_threshold=0"
        return cid

    def delete(self, cid: str) -> None:
        self._store.delete_many(self._chunks[cid][:1])

    def overwrite(self, cid: str) -> None:
        self._store.put(self._chunks[cid][0], b"garbage that is not the chunk")


@pytest.fixture
def damage(backend_urls: tuple[str, str]) -> Iterator[Damaging]:
    """``damage(rs)``: a ``Damage`` over the test's store."""
    store = open_store(backend_urls[0])
    yield lambda rs: Damage(rs, store)
    store.close()


def monitored(systems: Systems, config: CheckpointConfig, op: str, **kwargs: Any) -> ResumeSystem:
    rs = systems(config, kwargs.pop("worker_id", "w0"))
    rs.start_monitoring(op, **kwargs)
    return rs


def three_checkpoints(rs: ResumeSystem, progress: tuple[float, float, float]) -> list[str]:
    """Checkpoints of stages a, b, c with these progress values (seqs 2, 3, 4)."""
    return [
        rs.create_checkpoint(stage, {"at": stage}, {"stage": stage}, progress=p)
        for stage, p in zip("abc", progress, strict=True)
    ]


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


# -- resume_automatically: plan, recovery line, fallback -----------------------------------


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


# BUG: the catalog keeps serving the commit records it cached before the damage, so
# get_available_resume_points still says is_verified=True for records that
# verify_checkpoint has just found garbled (a fresh system reports them correctly).
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
