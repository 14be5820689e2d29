"""``ResumeSystem`` on both backend pairs when things go wrong: failed checkpoints with and
without ``strict``, a lost store, a lost lease, and one system used from many threads."""

from __future__ import annotations

import logging
import shutil
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
from resume_helpers import (
    LOGGER,
    MakeConfig,
    Systems,
    cut_heartbeat,
    fail_store_writes,
    index_seqs,
    new_op,
    record_seqs,
    repo_store,
    take_over,
)

from bbp_dist_resume import (
    CheckpointFailed,
    LeaseLostError,
    ResumeState,
    ResumeStatistics,
    StoreUnavailable,
)

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from resume_helpers import probed_s3_prefix, systems_fixture  # noqa: F401

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


# A local store root deleted while open fails checkpoints; it is never re-created empty.
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


# A commit record that landed despite a store error is settled: the worker keeps its slot.
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
