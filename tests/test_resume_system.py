"""``ResumeSystem``, the worker API, on both backend pairs (S3 + Redis, directory + SQLite):
life cycle, checkpoints, listing, maintenance, state, statistics, config, callbacks,
failure behaviour and thread safety."""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from bbp_dist_resume import (
    CheckpointConfig,
    CheckpointFailed,
    CheckpointGranularity,
    CheckpointMetadata,
    CheckpointStrategy,
    InvalidCheckpoint,
    InvalidIdentifier,
    InvalidStateError,
    LeaseHeldError,
    LeaseLostError,
    ResumeMode,
    ResumeState,
    ResumeStatistics,
    ResumeSystem,
    StoreUnavailable,
)
from bbp_dist_resume.blobstore import BlobStore, open_store
from bbp_dist_resume.coordination import OperationStatus, open_coordination
from bbp_dist_resume.errors import CoordinationUnavailable
from bbp_dist_resume.repository import open_on_store
from bbp_dist_resume.repository.storeconfig import CONFIG_KEY

MakeConfig = Callable[..., CheckpointConfig]
Systems = Callable[..., ResumeSystem]
LOGGER = "bbp_dist_resume"


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


@pytest.fixture
def package_logger_level() -> Iterator[None]:
    """Puts the package logger's level back as it was."""
    logger = logging.getLogger(LOGGER)
    level = logger.level
    yield
    logger.setLevel(level)


def store_keys(store_url: str, prefix: str = "") -> set[str]:
    store = open_store(store_url)
    try:
        return {info.key for info in store.list(prefix)}
    finally:
        store.close()


def record_seqs(store_url: str, op: str, worker: str) -> list[int]:
    prefix = f"checkpoints/{op}/{worker}/"
    return sorted(int(k[len(prefix) :]) for k in store_keys(store_url, prefix))


def index_seqs(coord_url: str, op: str, worker: str) -> list[int]:
    coord = open_coordination(coord_url)
    try:
        return [s.seq for s in coord.index(op, worker)]
    finally:
        coord.close()


def operation_status(coord_url: str, op: str) -> OperationStatus:
    coord = open_coordination(coord_url)
    try:
        return coord.get_operation(op).status
    finally:
        coord.close()


def seq_of(checkpoint_id: str) -> int:
    return int(checkpoint_id.rsplit("/", 1)[1])


def repo_store(rs: ResumeSystem) -> BlobStore:
    """The blob store under an open system's repository (to inject store failures)."""
    repo = rs._repo
    assert repo is not None
    return repo.store


def fail_store_writes(monkeypatch: pytest.MonkeyPatch, rs: ResumeSystem) -> None:
    """Every create-only write of ``rs``'s store raises ``StoreUnavailable`` from now on."""

    def refuse(key: str, data: bytes) -> bool:
        raise StoreUnavailable("injected outage", key=key)

    monkeypatch.setattr(repo_store(rs), "put_if_absent", refuse)


def cut_heartbeat(monkeypatch: pytest.MonkeyPatch, rs: ResumeSystem) -> None:
    """``rs``'s renewals stop reaching the backend (as if it were partitioned away)."""
    coord = rs._coord
    assert coord is not None

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise CoordinationUnavailable("injected partition")

    monkeypatch.setattr(coord, "renew", unreachable)


def take_over(rs: ResumeSystem, op: str, timeout: float = 5.0) -> None:
    """Start monitoring ``op`` with ``rs`` as soon as the slot's lease has expired."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            rs.start_monitoring(op)
            return
        except LeaseHeldError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# -- life cycle --------------------------------------------------------------------------


def test_context_manager_initializes_and_shutdown_releases_the_lease(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    with ResumeSystem(make_config(), "w0") as rs:
        assert rs.get_current_state() is ResumeState.IDLE
        assert rs.operation_id is None
        assert rs.start_monitoring(op) is True
        assert rs.operation_id == op
        assert rs.get_current_state() is ResumeState.RUNNING
        cid = rs.create_checkpoint("scan", {"n": 1})
    assert rs.get_current_state() is ResumeState.IDLE
    assert rs.operation_id is None
    # The lease was released, not left to expire: the slot is free at once.
    other = systems(make_config())
    assert other.start_monitoring(op) is True
    assert other.list_checkpoints(op) == [cid]


def test_initialize_is_idempotent_and_shutdown_twice_is_harmless(make_config: MakeConfig) -> None:
    rs = ResumeSystem(make_config(), "w0")
    assert rs.initialize() is True
    assert rs.initialize() is True
    rs.start_monitoring(new_op())
    rs.shutdown()
    rs.shutdown()
    assert rs.get_current_state() is ResumeState.IDLE
    with pytest.raises(InvalidStateError):
        rs.create_checkpoint("scan", {})


def test_start_monitoring_raises_lease_held_while_another_live_system_holds_the_slot(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    first = systems(make_config())
    second = systems(make_config())
    first.start_monitoring(op)
    with pytest.raises(LeaseHeldError):
        second.start_monitoring(op)
    assert second.get_current_state() is ResumeState.IDLE
    assert second.operation_id is None
    with pytest.raises(InvalidStateError):
        second.create_checkpoint("scan", {})
    # The holder is unaffected and keeps checkpointing.
    assert first.create_checkpoint("scan", {"a": 1}) == f"{op}/w0/2"
    first.stop_monitoring()
    assert first.get_current_state() is ResumeState.PAUSED
    second.start_monitoring(op)
    assert second.create_checkpoint("scan", {"a": 2}) == f"{op}/w0/4"


def test_a_different_worker_of_the_same_operation_is_not_blocked_by_the_lease(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    w0, w1 = systems(make_config(), "w0"), systems(make_config(), "w1")
    w0.start_monitoring(op, workers=["w0", "w1"])
    w1.start_monitoring(op, workers=["w0", "w1"])
    assert w0.create_checkpoint("a", {}) == f"{op}/w0/2"
    assert w1.create_checkpoint("a", {}) == f"{op}/w1/2"


def test_start_monitoring_again_is_a_no_op_and_another_operation_is_refused(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = systems(make_config())
    rs.start_monitoring(op)
    fence = rs.fencing_token
    assert rs.start_monitoring(op) is True
    assert rs.fencing_token == fence
    with pytest.raises(InvalidStateError):
        rs.start_monitoring(new_op())
    assert rs.operation_id == op


def test_every_acquisition_of_the_slot_gets_a_higher_fencing_token(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = systems(make_config())
    rs.start_monitoring(op)
    first = rs.fencing_token
    rs.ensure_lease()
    rs.stop_monitoring()
    with pytest.raises(InvalidStateError):
        rs.ensure_lease()
    rs.start_monitoring(op)
    assert rs.fencing_token > first


def test_heartbeats_keep_the_lease_alive_past_its_ttl_and_carry_the_progress(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    _, coord_url = backend_urls
    op = new_op()
    config = make_config(lease_ttl=1, heartbeat_interval=0.25)
    rs, rival = systems(config), systems(config)
    rs.start_monitoring(op)
    rs.create_checkpoint("scan", {}, progress=42.0)
    time.sleep(1.5)  # longer than the ttl: only renewals keep the lease
    rs.ensure_lease()
    with pytest.raises(LeaseHeldError):
        rival.start_monitoring(op)
    assert rs.create_checkpoint("scan", {}) == f"{op}/w0/3"
    coord = open_coordination(coord_url)
    try:
        assert coord.get_operation(op).progress == {"w0": 42.0}
    finally:
        coord.close()


def test_stop_monitoring_leaves_the_worker_unfinished_and_complete_finishes_it(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    _, coord_url = backend_urls
    op = new_op()
    rs = systems(make_config())
    rs.start_monitoring(op)
    rs.stop_monitoring()
    coord = open_coordination(coord_url)
    try:
        assert (op, "w0") in coord.crashed_workers()  # released without finishing
        rs.start_monitoring(op)
        assert rs.complete() is True
        assert (op, "w0") not in coord.crashed_workers()
        assert coord.get_operation(op).done_workers == frozenset({"w0"})
    finally:
        coord.close()


def test_leaving_the_context_by_an_exception_releases_the_lease_and_reraises(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    _, coord_url = backend_urls
    op = new_op()
    with pytest.raises(RuntimeError, match="task failed"):
        with ResumeSystem(make_config(), "w0") as rs:
            rs.start_monitoring(op)
            rs.create_checkpoint("scan", {"n": 1})
            raise RuntimeError("task failed")
    assert rs.get_current_state() is ResumeState.IDLE
    assert operation_status(coord_url, op) is OperationStatus.RUNNING  # not completed
    again = systems(make_config())
    again.start_monitoring(op)  # free at once
    assert again.can_resume(op)


def test_invalid_operation_ids_are_rejected(make_config: MakeConfig, systems: Systems) -> None:
    rs = systems(make_config())
    for bad in ("", "a/b", "{op}", " op", ".op", "x" * 129):
        with pytest.raises(InvalidIdentifier):
            rs.start_monitoring(bad)
    assert rs.get_current_state() is ResumeState.IDLE
    with pytest.raises(InvalidIdentifier):
        ResumeSystem(make_config(), "bad/worker")


def test_complete_marks_the_operation_completed_when_all_its_workers_are_done(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    _, coord_url = backend_urls
    op = new_op()
    workers = ["w0", "w1"]
    w0, w1 = systems(make_config(), "w0"), systems(make_config(), "w1")
    w0.start_monitoring(op, workers=workers)
    w1.start_monitoring(op, workers=workers)
    w0.create_checkpoint("a", {"done": True})
    assert w0.complete() is False
    assert w0.get_current_state() is ResumeState.COMPLETED
    assert w0.operation_id is None
    assert operation_status(coord_url, op) is OperationStatus.RUNNING
    assert w1.complete() is True
    assert w1.get_current_state() is ResumeState.COMPLETED
    assert operation_status(coord_url, op) is OperationStatus.COMPLETED


def test_calls_that_need_a_monitored_operation_raise_invalid_state_without_one(
    make_config: MakeConfig, systems: Systems
) -> None:
    rs = systems(make_config())
    with pytest.raises(InvalidStateError):
        rs.create_checkpoint("scan", {})
    with pytest.raises(InvalidStateError):
        rs.create_automatic_checkpoint("scan", {}, 50.0)
    with pytest.raises(InvalidStateError):
        rs.complete()
    with pytest.raises(InvalidStateError):
        rs.ensure_lease()
    with pytest.raises(InvalidStateError):
        _ = rs.fencing_token
    rs.stop_monitoring()  # nothing to stop: harmless
    assert rs.get_current_state() is ResumeState.IDLE


# -- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_ids_are_operation_worker_seq_and_follow_the_takeover(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    store_url, coord_url = backend_urls
    op = new_op()
    rs = systems(make_config())
    rs.start_monitoring(op)
    ids = [rs.create_checkpoint("scan", {"i": i}) for i in range(3)]
    assert ids == [f"{op}/w0/2", f"{op}/w0/3", f"{op}/w0/4"]
    assert record_seqs(store_url, op, "w0") == [1, 2, 3, 4]
    assert index_seqs(coord_url, op, "w0") == [1, 2, 3, 4]


def test_non_blocking_checkpoints_return_futures_and_commit_in_call_order(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    _, coord_url = backend_urls
    op = new_op()
    rs = systems(make_config(max_checkpoints=100))
    rs.start_monitoring(op)
    results: list[str] = []
    futures: list[Future[str]] = []
    for i in range(8):
        if i % 3 == 2:
            results.append(rs.create_checkpoint("scan", {"i": i}, {"i": str(i)}))
        else:
            fut = rs.create_checkpoint("scan", {"i": i}, {"i": str(i)}, blocking=False)
            assert isinstance(fut, Future)
            futures.append(fut)
    rs.wait_until_finished()
    ids = {fut.result(timeout=10) for fut in futures} | set(results)
    assert sorted(seq_of(c) for c in ids) == list(range(2, 10))
    # Commit order is call order: the i-th call got seq i + 2.
    points = {p.checkpoint_id: p for p in rs.get_available_resume_points(op)}
    for cid in ids:
        assert int(points[cid].custom_metadata["i"]) == seq_of(cid) - 2
    assert index_seqs(coord_url, op, "w0") == list(range(1, 10))


NOT_JSON: list[Any] = [
    {"x": object()},
    {"x": float("nan")},
    {"x": float("inf")},
    {"x": {1, 2}},
    {"x": b"bytes"},
    {(1, 2): "tuple key"},
    {"deep": [{"x": object()}]},
    ["not", "a", "dict"],
    "a string",
    None,
]


def test_non_json_state_is_rejected_and_nothing_is_stored(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    store_url, _ = backend_urls
    op = new_op()
    rs = systems(make_config())
    rs.start_monitoring(op)
    rs.create_checkpoint("scan", {"ok": 1})
    keys, listed = store_keys(store_url), rs.list_checkpoints()
    for state in NOT_JSON:
        for blocking in (True, False):
            with pytest.raises(InvalidCheckpoint):
                rs.create_checkpoint("scan", state, blocking=blocking)
    rs.wait_until_finished()
    assert store_keys(store_url) == keys
    assert rs.list_checkpoints() == listed
    assert rs.get_current_state() is ResumeState.RUNNING
    assert rs.get_statistics().failed_checkpoints == 0
    # Nothing was used up either: the next checkpoint takes the next seq.
    assert rs.create_checkpoint("scan", {"ok": 2}) == f"{op}/w0/3"


def test_bad_metadata_progress_and_attachments_are_rejected_before_anything_is_stored(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str], tmp_path: Path
) -> None:
    store_url, _ = backend_urls
    op = new_op()
    rs = systems(make_config(inline_threshold=0))
    rs.start_monitoring(op)
    keys = store_keys(store_url)
    big = b"x" * 10_000
    bad_calls: list[tuple[type[Exception], dict[str, Any]]] = [
        (InvalidCheckpoint, {"custom_metadata": {"k": 1}}),
        (InvalidCheckpoint, {"progress": 150.0}),
        (InvalidCheckpoint, {"progress": -1.0}),
        (InvalidCheckpoint, {"progress": float("nan")}),
        (InvalidIdentifier, {"stage_name": "bad stage"}),
        (InvalidCheckpoint, {"attachments": {"a": 123}}),
        (InvalidCheckpoint, {"attachments": {"ok": big, "a": str(tmp_path / "missing.csv")}}),
        (InvalidIdentifier, {"attachments": {"ok": big, "../escape": b"x"}}),
        (InvalidIdentifier, {"consumed": {"bad channel": 1}}),
        (InvalidCheckpoint, {"produced": {"c": -5}}),
        (InvalidCheckpoint, {"epoch": -1}),
    ]
    for kind, kwargs in bad_calls:
        args: dict[str, Any] = {"stage_name": "scan", "pipeline_state": {"big": "y" * 10_000}}
        args.update(kwargs)
        with pytest.raises(kind):
            rs.create_checkpoint(**args)
    assert store_keys(store_url) == keys
    assert rs.list_checkpoints(op) == []
    assert rs.get_current_state() is ResumeState.RUNNING


# BUG: create_checkpoint reports the progress (callback, heartbeat, the progress the next
# checkpoint records) before it validates the state, so a rejected call changes it.
def test_a_rejected_checkpoint_does_not_report_its_progress(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = systems(make_config())
    reported: list[float] = []
    rs.set_progress_callback(lambda _op, p: reported.append(p))
    rs.start_monitoring(op)
    rs.create_checkpoint("scan", {"n": 1}, progress=10.0)
    with pytest.raises(InvalidCheckpoint):
        rs.create_checkpoint("scan", {"x": object()}, progress=90.0)
    assert reported == [10.0]
    rs.create_checkpoint("scan", {"n": 2})
    assert rs.get_available_resume_points(op)[-1].progress_percentage == 10.0


def test_create_checkpoint_records_its_description_in_the_resume_point(
    make_config: MakeConfig, systems: Systems, tmp_path: Path
) -> None:
    op = new_op()
    csv = tmp_path / "rows.csv"
    csv.write_text("a,b\n1,2\n")
    blob = bytes(range(256)) * 40
    rs = systems(make_config())
    rs.start_monitoring(op)
    cid = rs.create_checkpoint(
        "enrich",
        {"rows": 12},
        {"host": "n1"},
        attachments={"model": blob, "rows": csv},
        progress=42.5,
        consumed={"in": 7},
        produced={"out": 12},
        epoch=3,
    )
    (point,) = rs.get_available_resume_points(op)
    assert isinstance(point, CheckpointMetadata)
    assert point.checkpoint_id == cid
    assert point.pipeline_id == op
    assert point.worker_id == "w0"
    assert point.seq == seq_of(cid)
    assert point.stage_name == "enrich"
    assert point.progress_percentage == 42.5
    assert point.custom_metadata == {"host": "n1"}
    assert point.attachments == ("model", "rows")
    assert point.consumed == {"in": 7}
    assert point.produced == {"out": 12}
    assert point.epoch == 3
    assert point.granularity == "medium"
    assert point.is_verified is True
    assert len(point.verification_hash) == 64
    int(point.verification_hash, 16)
    assert point.timestamp.tzinfo is not None
    assert point.timestamp.utcoffset() == timedelta(0)
    assert point.elapsed_time >= timedelta(0)
    assert point.memory_footprint > 0
    assert point.logical_size >= len(blob) + csv.stat().st_size


def test_automatic_checkpoint_returns_none_until_the_strategy_says_it_is_due(
    make_config: MakeConfig, systems: Systems
) -> None:
    rs = systems(make_config(progress_threshold=10.0))
    op = new_op()
    rs.start_monitoring(op)
    assert rs.create_automatic_checkpoint("scan", {"p": 1}, 1.0) is None
    assert rs.create_automatic_checkpoint("scan", {"p": 5}, 5.0) is None
    cid = rs.create_automatic_checkpoint("scan", {"p": 12}, 12.0)
    assert cid == f"{op}/w0/2"
    assert rs.create_automatic_checkpoint("scan", {"p": 15}, 15.0) is None
    assert rs.create_automatic_checkpoint("scan", {"p": 22}, 22.0) == f"{op}/w0/3"
    assert rs.list_checkpoints(op) == [f"{op}/w0/2", f"{op}/w0/3"]


def test_automatic_checkpoint_never_saves_with_the_manual_strategy(
    make_config: MakeConfig, systems: Systems
) -> None:
    rs = systems(make_config(strategy=CheckpointStrategy.MANUAL))
    op = new_op()
    rs.start_monitoring(op)
    for p in (10.0, 50.0, 100.0):
        assert rs.create_automatic_checkpoint("scan", {}, p) is None
    assert rs.create_automatic_checkpoint("next", {}, 100.0) is None
    assert rs.list_checkpoints(op) == []


def test_automatic_checkpoint_is_time_based_with_the_time_strategy(
    make_config: MakeConfig, systems: Systems
) -> None:
    rs = systems(make_config(strategy=CheckpointStrategy.TIME_BASED, time_interval=0.3))
    rs.start_monitoring(new_op())
    assert rs.create_automatic_checkpoint("scan", {}, 90.0) is None
    time.sleep(0.35)
    assert rs.create_automatic_checkpoint("scan", {}, 91.0)
    assert rs.create_automatic_checkpoint("scan", {}, 92.0) is None


def test_automatic_checkpoint_with_coarse_granularity_saves_only_at_stage_changes(
    make_config: MakeConfig, systems: Systems
) -> None:
    rs = systems(make_config(granularity=CheckpointGranularity.COARSE, progress_threshold=10.0))
    rs.start_monitoring(new_op())
    assert rs.create_automatic_checkpoint("a", {}, 50.0)  # a new stage, and due
    assert rs.create_automatic_checkpoint("a", {}, 70.0) is None  # a task boundary: skipped
    assert rs.create_automatic_checkpoint("b", {}, 75.0)  # a new stage, 25 points gained
    assert rs.create_automatic_checkpoint("c", {}, 76.0) is None  # a new stage, not due


# -- listing -------------------------------------------------------------------------------


def test_can_resume_is_true_only_once_the_operation_has_a_checkpoint(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = systems(make_config())
    assert rs.can_resume(op) is False  # unknown everywhere
    rs.start_monitoring(op)
    assert rs.can_resume(op) is False  # a takeover record is not a resume point
    rs.create_checkpoint("scan", {})
    assert rs.can_resume(op) is True
    other = systems(make_config(), "w9")
    assert other.can_resume(op) is True  # any worker of the operation sees it
    with pytest.raises(InvalidIdentifier):
        rs.can_resume("bad/op")


def test_resume_points_cover_every_worker_oldest_first(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    workers = ["w0", "w1"]
    w0, w1 = systems(make_config(), "w0"), systems(make_config(), "w1")
    w0.start_monitoring(op, workers=workers)
    w1.start_monitoring(op, workers=workers)
    order = [
        w0.create_checkpoint("a", {"n": 1}, progress=10.0),
        w1.create_checkpoint("a", {"n": 2}, progress=20.0),
        w0.create_checkpoint("b", {"n": 3}, progress=30.0),
    ]
    points = w1.get_available_resume_points(op)
    assert [p.checkpoint_id for p in points] == order
    assert [p.worker_id for p in points] == ["w0", "w1", "w0"]
    assert [p.progress_percentage for p in points] == [10.0, 20.0, 30.0]
    assert [p.timestamp for p in points] == sorted(p.timestamp for p in points)
    assert all(p.is_verified for p in points)
    assert w0.get_available_resume_points(new_op()) == []


def test_list_checkpoints_of_one_operation_or_of_all(
    make_config: MakeConfig, systems: Systems
) -> None:
    op1, op2 = new_op(), new_op()
    rs = systems(make_config())
    rs.start_monitoring(op1)
    a = [rs.create_checkpoint("s", {"i": i}) for i in range(2)]
    rs.stop_monitoring()
    rs.start_monitoring(op2)
    b = [rs.create_checkpoint("s", {"i": i}) for i in range(3)]
    assert rs.list_checkpoints(op1) == a
    assert rs.list_checkpoints(op2) == b
    everything = rs.list_checkpoints()
    assert set(everything) == set(a) | set(b)
    assert len(everything) == 5
    assert rs.list_checkpoints(new_op()) == []


# -- maintenance ---------------------------------------------------------------------------


def new_chunk_keys(store_url: str, before: set[str]) -> list[str]:
    return sorted(store_keys(store_url, "chunks/") - before)


def test_verify_checkpoint_quick_and_deep(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    store_url, _ = backend_urls
    op = new_op()
    rs = systems(make_config(inline_threshold=0))
    rs.start_monitoring(op)
    keep = rs.create_checkpoint("scan", {"v": "kept"})
    before = store_keys(store_url, "chunks/")
    damaged = rs.create_checkpoint("scan", {"v": "overwritten"})
    (overwritten,) = new_chunk_keys(store_url, before)
    before = store_keys(store_url, "chunks/")
    gone = rs.create_checkpoint("scan", {"v": "deleted"})
    (deleted,) = new_chunk_keys(store_url, before)
    for cid in (keep, damaged, gone):
        assert rs.verify_checkpoint(cid) is True
        assert rs.verify_checkpoint(cid, deep=True) is True
    store = open_store(store_url)
    try:
        store.put(overwritten, b"not the chunk that was written")
        store.delete_many([deleted])
    finally:
        store.close()
    assert rs.verify_checkpoint(damaged, deep=True) is False
    assert rs.verify_checkpoint(gone) is False
    assert rs.verify_checkpoint(gone, deep=True) is False
    assert rs.verify_checkpoint(keep, deep=True) is True
    assert rs.verify_checkpoint(f"{op}/w0/99") is False  # no such checkpoint
    assert rs.verify_checkpoint(f"{op}/w0/1") is False  # a takeover record
    with pytest.raises(InvalidIdentifier):
        rs.verify_checkpoint("not-a-checkpoint-id")


def test_delete_checkpoint_removes_one_refuses_the_newest_and_is_false_when_absent(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    store_url, coord_url = backend_urls
    op = new_op()
    rs = systems(make_config())
    rs.start_monitoring(op)
    ids = [rs.create_checkpoint("scan", {"i": i}) for i in range(3)]
    assert rs.delete_checkpoint(ids[1]) is True
    assert rs.list_checkpoints(op) == [ids[0], ids[2]]
    assert record_seqs(store_url, op, "w0") == [1, 2, 4]
    assert index_seqs(coord_url, op, "w0") == [1, 2, 4]
    assert rs.verify_checkpoint(ids[1]) is False
    assert rs.delete_checkpoint(ids[1]) is False
    assert rs.delete_checkpoint(f"{op}/w0/99") is False
    assert rs.delete_checkpoint(f"{new_op()}/w0/2") is False
    with pytest.raises(InvalidCheckpoint):
        rs.delete_checkpoint(ids[2])  # the worker's newest record
    assert rs.list_checkpoints(op) == [ids[0], ids[2]]
    # Seqs are never reused: the next checkpoint goes after the newest record.
    assert rs.create_checkpoint("scan", {"i": 3}) == f"{op}/w0/5"


def test_delete_checkpoint_refuses_a_takeover_record(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = systems(make_config())
    rs.start_monitoring(op)
    rs.create_checkpoint("scan", {})
    with pytest.raises(InvalidCheckpoint):
        rs.delete_checkpoint(f"{op}/w0/1")


def test_cleanup_keeps_the_newest_max_checkpoints_per_worker(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = systems(make_config(max_checkpoints=2, auto_cleanup=False))
    rs.start_monitoring(op)
    ids = [rs.create_checkpoint("scan", {"i": i}) for i in range(5)]
    assert rs.list_checkpoints(op) == ids
    assert rs.cleanup_old_checkpoints() == 3
    assert rs.list_checkpoints(op) == ids[-2:]
    assert rs.cleanup_old_checkpoints() == 0
    for cid in ids[-2:]:
        assert rs.verify_checkpoint(cid) is True


def test_cleanup_applies_to_the_monitored_operation_or_else_to_every_operation(
    make_config: MakeConfig, systems: Systems
) -> None:
    rs = systems(make_config(max_checkpoints=1, auto_cleanup=False))
    ops = [new_op() for _ in range(3)]
    made: dict[str, list[str]] = {}
    for op in ops:
        rs.start_monitoring(op)
        made[op] = [rs.create_checkpoint("scan", {"i": i}) for i in range(3)]
        rs.stop_monitoring()
    rs.start_monitoring(ops[0])
    assert rs.cleanup_old_checkpoints() == 2  # the monitored operation only
    assert rs.list_checkpoints(ops[0]) == made[ops[0]][-1:]
    assert rs.list_checkpoints(ops[1]) == made[ops[1]]
    rs.stop_monitoring()
    assert rs.cleanup_old_checkpoints() == 4
    assert sorted(rs.list_checkpoints()) == sorted(made[op][-1] for op in ops)


def test_auto_cleanup_applies_retention_after_every_commit(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = systems(make_config(max_checkpoints=2, auto_cleanup=True))
    rs.start_monitoring(op)
    ids = []
    for i in range(5):
        ids.append(rs.create_checkpoint("scan", {"i": i}))
        assert rs.list_checkpoints(op) == ids[-2:]
    futures = [rs.create_checkpoint("scan", {"i": i}, blocking=False) for i in range(3)]
    rs.wait_until_finished()
    assert rs.list_checkpoints(op) == [f.result() for f in futures][-2:]


def test_cleanup_age_removes_old_checkpoints_but_never_the_newest(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = systems(make_config(cleanup_age=0.5, max_checkpoints=100, auto_cleanup=False))
    rs.start_monitoring(op)
    for i in range(3):
        rs.create_checkpoint("scan", {"i": i})
    time.sleep(0.6)
    young = rs.create_checkpoint("scan", {"i": 3})
    assert rs.cleanup_old_checkpoints() == 3
    assert rs.list_checkpoints(op) == [young]
    time.sleep(0.6)
    assert rs.cleanup_old_checkpoints() == 0  # the newest stays, however old
    assert rs.list_checkpoints(op) == [young]


def test_retention_and_deletion_never_remove_a_plan_entry_or_the_recovery_line(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    _, coord_url = backend_urls
    op = new_op()
    workers = ["producer", "consumer"]
    config = make_config(max_checkpoints=1, auto_cleanup=False)
    producer = systems(config, "producer")
    consumer = systems(config, "consumer")
    producer.start_monitoring(op, workers=workers)
    consumer.start_monitoring(op, workers=workers)
    planned = producer.create_checkpoint("emit", {"n": 1}, produced={"ch": 10})
    producer.create_checkpoint("emit", {"n": 2}, produced={"ch": 15})
    produced_last = producer.create_checkpoint("emit", {"n": 3}, produced={"ch": 20})
    consumer.create_checkpoint("read", {"n": 1}, consumed={"ch": 5})
    cut = consumer.create_checkpoint("read", {"n": 2}, consumed={"ch": 15})
    consumer_last = consumer.create_checkpoint("read", {"n": 3}, consumed={"ch": 25})
    coord = open_coordination(coord_url)
    try:
        coord.publish_plan(op, {"entries": {"producer": {"checkpoint_id": planned}}})
    finally:
        coord.close()
    with pytest.raises(InvalidCheckpoint):
        producer.delete_checkpoint(planned)  # in the plan
    with pytest.raises(InvalidCheckpoint):
        consumer.delete_checkpoint(cut)  # the consumer's place in the recovery line
    assert producer.cleanup_old_checkpoints() == 2
    assert set(producer.list_checkpoints(op)) == {planned, produced_last, cut, consumer_last}


def test_checkpoints_are_found_in_the_store_when_the_coordination_backend_lost_them(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    _, coord_url = backend_urls
    op = new_op()
    with ResumeSystem(make_config(), "w0") as first:
        first.start_monitoring(op, stages=["a", "b"])
        ids = [first.create_checkpoint("a", {"n": n}) for n in range(3)]
    lose_coordination_data(coord_url)
    rs = systems(make_config())
    assert rs.can_resume(op)
    assert rs.list_checkpoints(op) == ids
    assert [p.checkpoint_id for p in rs.get_available_resume_points(op)] == ids
    ctx = rs.resume_automatically(op)
    assert ctx is not None and ctx.checkpoint_id == ids[-1]
    rs.start_monitoring(op)
    assert rs.create_checkpoint("b", {"n": 3}) == f"{op}/w0/6"  # after a takeover at 5
    assert rs.list_checkpoints(op) == [*ids, f"{op}/w0/6"]


def lose_coordination_data(coord_url: str) -> None:
    """Every lease, index and operation of the backend is gone (a restart without
    persistence, or a lost SQLite file)."""
    if coord_url.startswith("redis"):
        client = redis.Redis.from_url(coord_url)
        client.flushdb()
        client.close()
        return
    path = Path(coord_url.removeprefix("sqlite:"))
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)


# -- state ---------------------------------------------------------------------------------


def test_state_goes_idle_running_checkpointing_running_paused_running_completed_idle(
    make_config: MakeConfig, systems: Systems, monkeypatch: pytest.MonkeyPatch
) -> None:
    op = new_op()
    rs = systems(make_config())
    seen = [rs.get_current_state()]
    rs.start_monitoring(op)
    seen.append(rs.get_current_state())

    store = repo_store(rs)
    original = store.put_if_absent
    release = threading.Event()

    def slow(key: str, data: bytes) -> bool:
        if key.startswith("checkpoints/"):
            assert release.wait(10)
        return original(key, data)

    monkeypatch.setattr(store, "put_if_absent", slow)
    fut = rs.create_checkpoint("scan", {"x": 1}, blocking=False)
    seen.append(rs.get_current_state())
    # Listing and statistics do not wait for the checkpoint in flight.
    assert rs.list_checkpoints(op) == []
    assert isinstance(rs.get_statistics(), ResumeStatistics)
    assert rs.get_current_state() is ResumeState.CHECKPOINTING
    release.set()
    assert fut.result(timeout=10) == f"{op}/w0/2"
    seen.append(rs.get_current_state())
    rs.stop_monitoring()
    seen.append(rs.get_current_state())
    rs.start_monitoring(op)
    seen.append(rs.get_current_state())
    rs.complete()
    seen.append(rs.get_current_state())
    rs.shutdown()
    seen.append(rs.get_current_state())
    S = ResumeState
    assert seen == [
        S.IDLE,
        S.RUNNING,
        S.CHECKPOINTING,
        S.RUNNING,
        S.PAUSED,
        S.RUNNING,
        S.COMPLETED,
        S.IDLE,
    ]


def test_state_is_recovering_during_a_resume_and_returns_afterwards(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = systems(make_config())
    during: list[ResumeState] = []
    rs.set_recovery_callback(lambda _cid, _ok: during.append(rs.get_current_state()))
    rs.resume_from_checkpoint(op, ResumeMode.FULL_RESTART)  # before monitoring: IDLE -> ... -> IDLE
    assert rs.get_current_state() is ResumeState.IDLE
    rs.start_monitoring(op)
    rs.create_checkpoint("scan", {"n": 1})
    assert rs.resume_automatically(op) is not None
    assert rs.get_current_state() is ResumeState.RUNNING
    assert during == [ResumeState.RECOVERING, ResumeState.RECOVERING]


def test_shutdown_finishes_pending_checkpoints_first(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    _, coord_url = backend_urls
    op = new_op()
    rs = ResumeSystem(make_config(max_checkpoints=100), "w0")
    rs.start_monitoring(op)  # initializes on its own
    futures = [rs.create_checkpoint("scan", {"i": i}, blocking=False) for i in range(5)]
    rs.shutdown()
    assert all(f.done() for f in futures)
    assert [seq_of(f.result()) for f in futures] == [2, 3, 4, 5, 6]
    assert index_seqs(coord_url, op, "w0") == [1, 2, 3, 4, 5, 6]


# -- statistics ----------------------------------------------------------------------------


def test_statistics_count_checkpoints_bytes_dedup_and_overhead(
    make_config: MakeConfig, systems: Systems
) -> None:
    rs = systems(make_config())
    rs.start_monitoring(new_op())
    state = {"data": "abcdefgh" * 4000}
    size = len(b'{"data":"') + 32_000 + len(b'"}')
    for _ in range(2):
        assert rs.create_checkpoint("scan", state)
    stats = rs.get_statistics()
    assert stats.total_checkpoints_created == 2
    assert stats.failed_checkpoints == 0
    assert stats.logical_bytes == 2 * size
    assert stats.stored_bytes == size  # the second checkpoint's only chunk was known
    assert stats.dedup_ratio == pytest.approx(2.0)
    assert 0 < stats.uploaded_bytes < size  # compressed
    assert stats.checkpoint_overhead_percentage > 0
    assert stats.average_checkpoint_time > timedelta(0)
    assert stats.monitored_time > timedelta(0)
    assert isinstance(stats.recommendations, tuple)
    assert all(isinstance(r, str) for r in stats.recommendations)
    assert stats.created_at.tzinfo is UTC
    created = stats.created_at

    rs.reset_statistics()
    reset = rs.get_statistics()
    assert reset.total_checkpoints_created == 0
    assert reset.logical_bytes == reset.stored_bytes == reset.uploaded_bytes == 0
    assert reset.dedup_ratio == 1.0
    assert reset.created_at >= created
    rs.create_checkpoint("scan", {"small": 1})
    after = rs.get_statistics()
    assert after.total_checkpoints_created == 1
    assert after.monitored_time > timedelta(0)  # still monitoring after the reset


def test_statistics_before_initialize_are_zero(make_config: MakeConfig) -> None:
    rs = ResumeSystem(make_config(), "w0")
    stats = rs.get_statistics()
    assert stats.total_checkpoints_created == 0
    assert stats.checkpoint_overhead_percentage == 0.0
    assert stats.recommendations == ()


# -- config and logging --------------------------------------------------------------------


def test_update_config_refuses_to_move_the_store_while_open(
    make_config: MakeConfig, systems: Systems, tmp_path: Path
) -> None:
    config = make_config()
    rs = systems(config)
    rs.start_monitoring(new_op())
    elsewhere = f"file:{tmp_path / 'elsewhere'}"
    with pytest.raises(InvalidStateError):
        rs.update_config(config.with_changes(store_url=elsewhere))
    with pytest.raises(InvalidStateError):
        rs.update_config(config.with_changes(coord_url=f"sqlite:{tmp_path / 'other.db'}"))
    assert rs.get_config() is config
    changed = config.with_changes(max_checkpoints=3, progress_threshold=5.0)
    rs.update_config(changed)
    assert rs.get_config() is changed
    rs.shutdown()
    moved = config.with_changes(store_url=elsewhere)
    rs.update_config(moved)  # closed: allowed
    assert rs.get_config().store_url == elsewhere


def test_an_updated_config_is_used_from_then_on(make_config: MakeConfig, systems: Systems) -> None:
    op = new_op()
    config = make_config(max_checkpoints=100)
    rs = systems(config)
    rs.start_monitoring(op)
    for i in range(4):
        rs.create_checkpoint("scan", {"i": i})
    assert len(rs.list_checkpoints(op)) == 4
    rs.update_config(config.with_changes(max_checkpoints=2))
    last = rs.create_checkpoint("scan", {"i": 4})
    assert rs.list_checkpoints(op) == [f"{op}/w0/5", last]
    assert rs.create_automatic_checkpoint("scan", {}, 4.0) is None
    rs.update_config(config.with_changes(max_checkpoints=2, progress_threshold=1.0))
    assert rs.create_automatic_checkpoint("scan", {}, 4.0) is not None


# BUG: update_config accepts compression changes while open, but the repository's codec
# keeps the level it was opened with, so the new settings are silently ignored.
def test_compression_settings_changed_by_update_config_apply_from_then_on(
    make_config: MakeConfig, systems: Systems
) -> None:
    config = make_config(enable_compression=True)
    rs = systems(config)
    rs.start_monitoring(new_op())
    rs.create_checkpoint("scan", {"data": "a" * 100_000})
    compressed = rs.get_statistics().uploaded_bytes
    assert compressed < 10_000
    rs.update_config(config.with_changes(enable_compression=False))
    rs.reset_statistics()
    rs.create_checkpoint("scan", {"data": "b" * 100_000})
    assert rs.get_statistics().uploaded_bytes >= 100_000


# BUG: every ResumeSystem() (and every update_config) sets the package logger's level,
# to NOTSET when detailed logging is off, overriding the level the application chose.
def test_a_system_without_detailed_logging_leaves_the_application_logger_level_alone(
    make_config: MakeConfig, systems: Systems, package_logger_level: None
) -> None:
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.ERROR)  # the application silenced the library's warnings
    rs = systems(make_config(detailed_logging=False))
    assert logger.level == logging.ERROR
    rs.update_config(rs.get_config().with_changes(max_checkpoints=5))
    assert logger.level == logging.ERROR


def test_set_detailed_logging_puts_the_package_logger_at_debug(
    make_config: MakeConfig,
    systems: Systems,
    caplog: pytest.LogCaptureFixture,
    package_logger_level: None,
) -> None:
    logger = logging.getLogger(LOGGER)
    rs = systems(make_config())
    rs.set_detailed_logging(True)
    assert logger.level == logging.DEBUG
    assert logger.isEnabledFor(logging.DEBUG)
    rs.start_monitoring(new_op())
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        cid = rs.create_checkpoint("scan", {})
    assert any(r.levelno == logging.DEBUG and cid in r.getMessage() for r in caplog.records)
    rs.set_detailed_logging(False)
    assert logger.level == logging.NOTSET
    systems(make_config(detailed_logging=True), "w1")
    assert logger.level == logging.DEBUG


# -- callbacks -----------------------------------------------------------------------------


def test_callbacks_are_called_with_their_arguments(
    make_config: MakeConfig, systems: Systems, monkeypatch: pytest.MonkeyPatch
) -> None:
    op = new_op()
    rs = systems(make_config())
    progress: list[tuple[str, float]] = []
    checkpoints: list[tuple[str, CheckpointMetadata]] = []
    recoveries: list[tuple[str, bool]] = []
    errors: list[tuple[str, BaseException]] = []
    rs.set_progress_callback(lambda o, p: progress.append((o, p)))
    rs.set_checkpoint_callback(lambda c, m: checkpoints.append((c, m)))
    rs.set_recovery_callback(lambda c, ok: recoveries.append((c, ok)))
    rs.set_error_callback(lambda s, e: errors.append((s, e)))
    rs.start_monitoring(op)
    cid = rs.create_checkpoint("scan", {"n": 1}, {"k": "v"}, progress=25.0)
    assert progress == [(op, 25.0)]
    assert rs.create_automatic_checkpoint("scan", {}, 30.0) is None
    assert progress[-1] == (op, 30.0)
    ((seen_id, meta),) = checkpoints
    assert seen_id == cid
    assert meta.checkpoint_id == cid
    assert meta.stage_name == "scan"
    assert meta.custom_metadata == {"k": "v"}
    assert meta.progress_percentage == 25.0
    assert rs.resume_automatically(op) is not None
    assert rs.resume_from_checkpoint(f"{op}/w0/99") is None
    assert recoveries == [(cid, True), (f"{op}/w0/99", False)]
    fail_store_writes(monkeypatch, rs)
    assert rs.create_checkpoint("enrich", {"n": 2}) == ""
    ((stage, exc),) = errors
    assert stage == "enrich"
    assert isinstance(exc, StoreUnavailable)
    assert len(checkpoints) == 1
    rs.set_checkpoint_callback(None)  # callbacks can be removed
    monkeypatch.undo()
    assert rs.create_checkpoint("scan", {"n": 3})
    assert len(checkpoints) == 1


def test_a_callback_that_raises_is_logged_and_never_breaks_the_system(
    make_config: MakeConfig,
    systems: Systems,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    op = new_op()
    rs = systems(make_config())

    def explode(*args: Any) -> None:
        raise RuntimeError("callback bug")

    rs.set_progress_callback(explode)
    rs.set_checkpoint_callback(explode)
    rs.set_recovery_callback(explode)
    rs.set_error_callback(explode)
    rs.start_monitoring(op)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cid = rs.create_checkpoint("scan", {"n": 1}, progress=10.0)
        assert cid == f"{op}/w0/2"
        fut = rs.create_checkpoint("scan", {"n": 2}, blocking=False)
        assert fut.result(timeout=10) == f"{op}/w0/3"
        ctx = rs.resume_automatically(op)
        assert ctx is not None and ctx.state == {"n": 2}
        fail_store_writes(monkeypatch, rs)
        assert rs.create_checkpoint("scan", {"n": 3}) == ""
        monkeypatch.undo()
        assert rs.create_checkpoint("scan", {"n": 4}) == f"{op}/w0/4"
    failed = [r for r in caplog.records if "callback failed" in r.getMessage()]
    assert {r.getMessage().split()[0] for r in failed} >= {
        "progress",
        "checkpoint",
        "recovery",
        "error",
    }
    assert all(r.exc_info is not None for r in failed)
    assert rs.get_current_state() is ResumeState.RUNNING
    assert rs.get_statistics().total_checkpoints_created == 3


# -- failure behaviour ---------------------------------------------------------------------


def test_a_failed_checkpoint_without_strict_returns_empty_and_is_reported(
    make_config: MakeConfig,
    systems: Systems,
    backend_urls: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, coord_url = backend_urls
    op = new_op()
    rs = systems(make_config(strict=False))
    errors: list[tuple[str, BaseException]] = []
    rs.set_error_callback(lambda s, e: errors.append((s, e)))
    rs.start_monitoring(op)
    fail_store_writes(monkeypatch, rs)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert rs.create_checkpoint("scan", {"n": 1}) == ""
        fut = rs.create_checkpoint("enrich", {"n": 2}, blocking=False)
        assert fut.result(timeout=10) == ""
    assert [s for s, _ in errors] == ["scan", "enrich"]
    assert all(isinstance(e, StoreUnavailable) for _, e in errors)
    assert (
        sum("scan" in r.getMessage() and r.levelno >= logging.WARNING for r in caplog.records) >= 1
    )
    stats = rs.get_statistics()
    assert stats.failed_checkpoints == 2
    assert stats.total_checkpoints_created == 0
    assert any("scan" in f for f in stats.recent_failures)
    assert rs.get_current_state() is ResumeState.RUNNING
    assert rs.list_checkpoints(op) == []
    monkeypatch.undo()
    # The store is back: the worker goes on, and no seq was skipped.
    assert rs.create_checkpoint("scan", {"n": 3}) == f"{op}/w0/2"
    assert index_seqs(coord_url, op, "w0") == [1, 2]


def test_a_failed_checkpoint_with_strict_raises_checkpoint_failed(
    make_config: MakeConfig, systems: Systems, monkeypatch: pytest.MonkeyPatch
) -> None:
    op = new_op()
    rs = systems(make_config(strict=True))
    errors: list[str] = []
    rs.set_error_callback(lambda s, _e: errors.append(s))
    rs.start_monitoring(op)
    fail_store_writes(monkeypatch, rs)
    with pytest.raises(CheckpointFailed) as info:
        rs.create_checkpoint("scan", {"n": 1})
    assert info.value.stage_name == "scan"
    assert isinstance(info.value.__cause__, StoreUnavailable)
    fut = rs.create_checkpoint("scan", {"n": 2}, blocking=False)
    with pytest.raises(CheckpointFailed):
        fut.result(timeout=10)
    assert errors == ["scan", "scan"]
    assert rs.get_statistics().failed_checkpoints == 2
    monkeypatch.undo()
    assert rs.create_checkpoint("scan", {"n": 3}) == f"{op}/w0/2"


# BUG: LocalBlobStore silently re-creates a deleted store root on the next write
# (_write_temp -> _makedirs), so the checkpoint "succeeds" into an empty directory with no
# store config and no earlier records, instead of failing with BucketNotFound.
def test_a_store_lost_after_initialize_fails_checkpoints_without_breaking_the_worker(
    make_config: MakeConfig, systems: Systems, tmp_path: Path, backend_urls: tuple[str, str]
) -> None:
    _, coord_url = backend_urls
    store_dir = tmp_path / "doomed-store"
    rs = systems(make_config(store_url=f"file:{store_dir}", inline_threshold=0))
    op = new_op()
    rs.start_monitoring(op)
    assert rs.create_checkpoint("scan", {"n": 1}) == f"{op}/w0/2"
    shutil.rmtree(store_dir)
    assert rs.create_checkpoint("scan", {"n": 2}) == ""
    stats = rs.get_statistics()
    assert stats.failed_checkpoints == 1
    assert stats.total_checkpoints_created == 1
    assert rs.get_current_state() is ResumeState.RUNNING
    assert coord_url  # the coordination backend is the pair's, untouched


def test_a_lost_lease_raises_lease_lost_from_the_next_call_and_fails_the_worker(
    make_config: MakeConfig, systems: Systems, monkeypatch: pytest.MonkeyPatch
) -> None:
    op = new_op()
    config = make_config(lease_ttl=1, heartbeat_interval=0.25)
    first, second = systems(config), systems(config)
    first.start_monitoring(op)
    kept = first.create_checkpoint("scan", {"n": 1})
    cut_heartbeat(monkeypatch, first)
    take_over(second, op)  # possible only once the first one's lease expired
    with pytest.raises(LeaseLostError):
        first.create_checkpoint("scan", {"n": 2})
    assert first.get_current_state() is ResumeState.FAILED
    for call in (
        lambda: first.create_checkpoint("scan", {"n": 3}, blocking=False),
        lambda: first.create_automatic_checkpoint("other", {}, 99.0),
        first.ensure_lease,
        first.complete,
    ):
        with pytest.raises(LeaseLostError):
            call()
    assert first.get_current_state() is ResumeState.FAILED
    assert second.list_checkpoints(op) == [kept]
    assert second.create_checkpoint("scan", {"n": 4}) == f"{op}/w0/4"
    # The failed worker can leave, and come back once the slot is free again.
    first.stop_monitoring()
    assert first.get_current_state() is ResumeState.FAILED
    second.stop_monitoring()
    monkeypatch.undo()
    first.start_monitoring(op)
    assert first.get_current_state() is ResumeState.RUNNING
    assert first.create_checkpoint("scan", {"n": 5}) == f"{op}/w0/6"


def test_a_writer_that_missed_losing_its_lease_is_refused_by_the_store(
    make_config: MakeConfig,
    systems: Systems,
    backend_urls: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store_url, _ = backend_urls
    op = new_op()
    config = make_config(lease_ttl=1, heartbeat_interval=0.25, inline_threshold=0)
    stale, fresh = systems(config), systems(config)
    stale.start_monitoring(op)
    kept = stale.create_checkpoint("scan", {"n": 1})
    # A long pause: no renewals, and the local lease checks do not notice either.
    session = stale._session
    assert session is not None
    lease = session.lease
    cut_heartbeat(monkeypatch, stale)
    monkeypatch.setattr(session, "check", lambda: lease)
    take_over(fresh, op)
    with pytest.raises(LeaseLostError):
        stale.create_checkpoint("scan", {"n": "stale"})
    assert stale.get_current_state() is ResumeState.FAILED
    assert record_seqs(store_url, op, "w0") == [1, 2, 3]  # 3: the new owner's takeover
    assert fresh.list_checkpoints(op) == [kept]
    assert fresh.create_checkpoint("scan", {"n": 2}) == f"{op}/w0/4"


# BUG: a commit record that landed although the store then reported an error leaves the
# session believing its seq is free; the next checkpoint's create-only write is refused by
# its own record, and the worker is declared lost although it still holds its lease.
def test_a_commit_record_that_landed_despite_a_store_error_does_not_cost_the_slot(
    make_config: MakeConfig,
    systems: Systems,
    backend_urls: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store_url, _ = backend_urls
    op = new_op()
    rs = systems(make_config())
    rs.start_monitoring(op)
    store = repo_store(rs)
    original = store.put_if_absent

    def lands_then_fails(key: str, data: bytes) -> bool:
        created = original(key, data)
        if key.startswith("checkpoints/"):
            raise StoreUnavailable("timed out after the write landed", key=key)
        return created

    monkeypatch.setattr(store, "put_if_absent", lands_then_fails)
    rs.create_checkpoint("scan", {"n": 1})  # "" or its id: either is honest
    monkeypatch.undo()
    cid = rs.create_checkpoint("scan", {"n": 2})
    assert cid, "the worker still holds its lease and the store is back"
    assert rs.get_current_state() is ResumeState.RUNNING
    seqs = record_seqs(store_url, op, "w0")
    assert seqs == list(range(1, len(seqs) + 1))
    assert cid in rs.list_checkpoints(op)


# -- thread safety -------------------------------------------------------------------------


def test_one_system_used_from_16_threads_keeps_seqs_gap_free(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    store_url, coord_url = backend_urls
    op = new_op()
    rs = systems(make_config(max_checkpoints=1000, auto_cleanup=False, max_pending_checkpoints=4))
    rs.start_monitoring(op)
    threads_n, per_thread = 16, 4
    start = threading.Barrier(threads_n)
    lock = threading.Lock()
    returned: dict[str, tuple[int, int]] = {}
    problems: list[BaseException] = []

    def work(t: int) -> None:
        try:
            start.wait(10)
            pending: list[tuple[Future[str], int]] = []
            for i in range(per_thread):
                meta = {"t": str(t), "i": str(i)}
                if (t + i) % 2:
                    cid = rs.create_checkpoint("scan", {"t": t, "i": i}, meta)
                    with lock:
                        returned[cid] = (t, i)
                else:
                    fut = rs.create_checkpoint("scan", {"t": t, "i": i}, meta, blocking=False)
                    pending.append((fut, i))
                assert isinstance(rs.get_statistics(), ResumeStatistics)
                assert isinstance(rs.list_checkpoints(op), list)
            for fut, i in pending:
                cid = fut.result(timeout=30)
                with lock:
                    returned[cid] = (t, i)
        except BaseException as exc:
            with lock:
                problems.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not problems, problems
    total = threads_n * per_thread
    assert len(returned) == total
    assert all(returned)
    expected = list(range(1, total + 2))  # the takeover at 1, then 2 ... total + 1
    assert index_seqs(coord_url, op, "w0") == expected
    assert record_seqs(store_url, op, "w0") == expected
    listed = rs.list_checkpoints(op)
    assert set(returned) == set(listed)
    for point in rs.get_available_resume_points(op):
        t, i = returned[point.checkpoint_id]
        assert point.custom_metadata == {"t": str(t), "i": str(i)}
    stats = rs.get_statistics()
    assert stats.total_checkpoints_created == total
    assert stats.failed_checkpoints == 0
    assert rs.get_current_state() is ResumeState.RUNNING
