"""``ResumeSystem`` on both backend pairs (S3 + Redis, directory + SQLite): its life cycle
(initialize, monitoring, leases, complete, shutdown) and the states it goes through."""

from __future__ import annotations

import threading
import time

import pytest
from resume_helpers import (
    MakeConfig,
    Systems,
    index_seqs,
    new_op,
    operation_status,
    repo_store,
    seq_of,
)

from bbp_dist_resume import (
    InvalidIdentifier,
    InvalidStateError,
    LeaseHeldError,
    ResumeMode,
    ResumeState,
    ResumeStatistics,
    ResumeSystem,
)
from bbp_dist_resume.coordination import OperationStatus, open_coordination

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from resume_helpers import probed_s3_prefix, systems_fixture  # noqa: F401

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
