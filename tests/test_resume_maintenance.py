"""``ResumeSystem`` on both backend pairs: listing checkpoints and resume points, verifying,
deleting, retention and cleanup, and finding checkpoints the coordination backend lost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from resume_helpers import MakeConfig, Systems, index_seqs, new_op, record_seqs, store_keys

from bbp_dist_resume import InvalidCheckpoint, InvalidIdentifier, ResumeSystem
from bbp_dist_resume.blobstore import open_store
from bbp_dist_resume.coordination import open_coordination

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from resume_helpers import probed_s3_prefix, systems_fixture  # noqa: F401

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
