"""Unit tests of ``SQLiteCoordination`` (the shared conformance suite covers all backends).

Several processes (the "spawn" context, each with its own client on one file) race for a
lease, take over an expired one, and re-claim a reclaim entry whose claimant died.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from assertions import raises_exactly

from bbp_dist_resume.coordination.models import (
    CheckpointSummary,
    Lease,
    OperationStatus,
    ReclaimClaim,
)
from bbp_dist_resume.coordination.sqlite_backend import SQLiteCoordination
from bbp_dist_resume.coordination.sqlite_db import SCHEMA_VERSION
from bbp_dist_resume.errors import (
    ConfigError,
    CoordinationError,
    CoordinationUnavailable,
    FencedError,
    InvalidCheckpoint,
    InvalidIdentifier,
    LeaseHeldError,
    LeaseLostError,
    UnknownOperation,
)

LONG = 60_000  # a ttl no test outlives
SHORT = 60  # a ttl a test waits out with _expire()
SPAWN = multiprocessing.get_context("spawn")


def summary(seq: int, *, fence: int = 1, stage: str = "", root: str = "a") -> CheckpointSummary:
    return CheckpointSummary(
        seq=seq,
        kind="checkpoint",
        owner_token="0" * 32,
        fence=fence,
        created_at="2025-01-01T00:00:00+00:00",
        root=root * 64,
        stage=stage,
    )


def _expire(ttl_ms: int = SHORT) -> None:
    """Wait out a lease of ``ttl_ms`` (the backend clock is the host's wall clock)."""
    time.sleep(ttl_ms / 1000 + 0.02)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "coord" / "coord.db"


@pytest.fixture
def coord(db_path: Path) -> Any:
    c = SQLiteCoordination(db_path, timeout_s=2.0)
    c.create_operation("op", workers=["w1", "w2"], stages=["load"], config_path="p.yaml")
    yield c
    c.close()


# -- processes (module level: the spawn context imports them by name) -------------------


def _race(path: str, barrier: Any, results: Any) -> None:
    barrier.wait(timeout=30)  # all open a new file at once: WAL switch and schema collide
    c = SQLiteCoordination(path)
    c.create_operation("op", workers=["w1", "w2"])
    barrier.wait(timeout=30)  # then all race for one lease
    try:
        lease = c.acquire("op", "w1", ttl_ms=LONG)
        results.put(("won", lease.fence))
    except LeaseHeldError:
        results.put(("held", 0))
    finally:
        c.close()


def _take_over(path: str, results: Any) -> None:
    c = SQLiteCoordination(path)
    lease = c.acquire("op", "w1", ttl_ms=LONG)
    c.record(lease, summary(2, fence=lease.fence, root="c"))
    results.put((lease.owner_token, lease.fence))
    c.close()


def _claim_and_die(path: str, results: Any) -> None:
    claim = SQLiteCoordination(path).reclaim_claim("dies", stale_after_ms=LONG)
    results.put(None if claim is None else claim.entry_id)
    results.close()
    results.join_thread()  # flushed: os._exit() skips the queue's feeder thread
    os._exit(0)  # no ack, no close: the claimant is gone


def _run(target: Any, *args: Any) -> None:
    proc = SPAWN.Process(target=target, args=args)
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0


# -- opening -------------------------------------------------------------------------------


def test_open_creates_private_folder_and_file_in_wal_mode(db_path: Path) -> None:
    c = SQLiteCoordination(db_path)
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    raw = sqlite3.connect(db_path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    raw.close()
    SQLiteCoordination(db_path).close()  # a second open is a no-op on the schema
    assert c.instance_ok()
    c.close()
    c.close()  # idempotent
    assert c.instance_ok()  # a closed client reconnects on its next call


def test_open_refuses_unknown_schema_version_and_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    SQLiteCoordination(path).close()
    raw = sqlite3.connect(path)
    raw.execute("UPDATE schema_version SET version = 99")
    raw.commit()
    raw.close()
    err = raises_exactly(CoordinationError, lambda: SQLiteCoordination(path))
    assert "schema version 99" in str(err)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database, " * 100)
    raises_exactly(CoordinationError, lambda: SQLiteCoordination(junk))
    raises_exactly(InvalidCheckpoint, lambda: SQLiteCoordination(path, timeout_s=-1))


def test_a_locked_database_is_unavailable_but_readable(coord: Any, db_path: Path) -> None:
    quick = SQLiteCoordination(db_path, timeout_s=0.05)
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        raises_exactly(CoordinationUnavailable, lambda: quick.acquire("op", "w1", ttl_ms=LONG))
        assert quick.get_operation("op").status is OperationStatus.RUNNING  # WAL: reads go on
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert quick.acquire("op", "w1", ttl_ms=LONG).fence == 1
    quick.close()


# -- operations ----------------------------------------------------------------------------


def test_create_operation_and_get(coord: Any) -> None:
    info = coord.get_operation("op")
    assert info.status is OperationStatus.RUNNING
    assert (info.workers, info.stages, info.config_path) == (("w1", "w2"), ("load",), "p.yaml")
    assert (info.generation, info.done_workers) == (0, frozenset())
    assert abs(info.created_at - time.time()) < 60
    again = coord.create_operation("op", workers=["other"])  # exists: returned unchanged
    assert again == info
    assert [coord.fence_of("op", w) for w in ("w1", "w2")] == [0, 0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"operation_id": "bad/op", "workers": ["w"]},
        {"operation_id": ".hidden", "workers": ["w"]},
        {"operation_id": "op2", "workers": []},
        {"operation_id": "op2", "workers": ["w", "w"]},
        {"operation_id": "op2", "workers": ["w{1}"]},
        {"operation_id": "op2", "workers": "w1"},
        {"operation_id": "op2", "workers": ["w"], "stages": ["a b"]},
    ],
)
def test_create_operation_rejects_bad_ids(coord: Any, kwargs: dict[str, Any]) -> None:
    raises_exactly(InvalidIdentifier, lambda: coord.create_operation(**kwargs))
    assert [i.operation_id for i in coord.list_operations()] == ["op"]


def test_status_and_listing(coord: Any) -> None:
    coord.create_operation("op2", workers=["w"])
    coord.create_operation("op3", workers=["w"])
    coord.set_status("op2", OperationStatus.FAILED)
    assert [i.operation_id for i in coord.list_operations()] == ["op", "op2", "op3"]
    failed = coord.list_operations([OperationStatus.FAILED])
    assert [(i.operation_id, i.status) for i in failed] == [("op2", OperationStatus.FAILED)]
    assert coord.list_operations([]) == []
    raises_exactly(UnknownOperation, lambda: coord.get_operation("nope"))
    raises_exactly(UnknownOperation, lambda: coord.set_status("nope", OperationStatus.FAILED))
    raises_exactly(InvalidIdentifier, lambda: coord.set_status("op", "sleeping"))
    raises_exactly(InvalidIdentifier, lambda: coord.get_operation("a/b"))


# -- leases --------------------------------------------------------------------------------


def test_acquire_gives_token_fence_and_local_deadline(coord: Any) -> None:
    before = time.monotonic()
    lease = coord.acquire("op", "w1", ttl_ms=LONG)
    assert before <= lease.renewed_at <= time.monotonic()
    assert (lease.operation_id, lease.worker_id, lease.fence, lease.ttl_ms) == (
        "op",
        "w1",
        1,
        LONG,
    )
    assert len(lease.owner_token) == 32 and int(lease.owner_token, 16) >= 0
    assert coord.fence_of("op", "w1") == 1


def test_acquire_errors_change_nothing(coord: Any) -> None:
    coord.acquire("op", "w1", ttl_ms=LONG)
    raises_exactly(LeaseHeldError, lambda: coord.acquire("op", "w1", ttl_ms=LONG))
    assert coord.fence_of("op", "w1") == 1
    raises_exactly(UnknownOperation, lambda: coord.acquire("nope", "w1", ttl_ms=LONG))
    raises_exactly(InvalidIdentifier, lambda: coord.acquire("op", "w9", ttl_ms=LONG))
    raises_exactly(InvalidIdentifier, lambda: coord.acquire("op", "w/1", ttl_ms=LONG))
    for ttl in (0, -5, True, 1.5, 86_400_001):
        raises_exactly(ConfigError, partial(coord.acquire, "op", "w2", ttl_ms=ttl))
    assert coord.fence_of("op", "w2") == 0


def test_an_expired_lease_is_taken_with_the_next_fence(coord: Any) -> None:
    old = coord.acquire("op", "w1", ttl_ms=SHORT)
    _expire()
    new = coord.acquire("op", "w1", ttl_ms=LONG)
    assert new.fence == old.fence + 1 and new.owner_token != old.owner_token
    raises_exactly(LeaseLostError, lambda: coord.renew(old))
    raises_exactly(LeaseLostError, lambda: coord.release(old))
    raises_exactly(LeaseLostError, lambda: coord.mark_worker_done(old))
    coord.renew(new)  # the new owner is untouched


def _deadline_ms(path: Path, worker: str) -> int:
    raw = sqlite3.connect(path)
    sql = "SELECT deadline_ms FROM slots WHERE op = 'op' AND worker = ?"
    (deadline,) = raw.execute(sql, (worker,)).fetchone()
    raw.close()
    return int(deadline)


def test_renew_extends_and_never_revives(coord: Any, db_path: Path) -> None:
    lease = coord.acquire("op", "w1", ttl_ms=LONG)
    first = _deadline_ms(db_path, "w1")
    time.sleep(0.01)
    renewed = coord.renew(lease)
    assert _deadline_ms(db_path, "w1") > first
    assert renewed.renewed_at > lease.renewed_at
    assert renewed == Lease(**{**_fields(lease), "renewed_at": renewed.renewed_at})
    short = coord.acquire("op", "w2", ttl_ms=SHORT)
    _expire()
    raises_exactly(LeaseLostError, lambda: coord.renew(short))  # nobody took it: still lost
    assert coord.fence_of("op", "w2") == 1
    assert coord.crashed_workers() == [("op", "w2")]


def test_release(coord: Any) -> None:
    lease = coord.acquire("op", "w1", ttl_ms=LONG)
    coord.release(lease)
    assert coord.crashed_workers() == [("op", "w1")]  # no live owner, not done: reclaim it
    raises_exactly(LeaseLostError, lambda: coord.release(lease))
    raises_exactly(LeaseLostError, lambda: coord.renew(lease))
    assert coord.acquire("op", "w1", ttl_ms=LONG).fence == 2
    short = coord.acquire("op", "w2", ttl_ms=SHORT)
    _expire()
    raises_exactly(LeaseLostError, lambda: coord.release(short))


def test_mark_worker_done_completes_the_operation(coord: Any) -> None:
    a = coord.acquire("op", "w1", ttl_ms=LONG)
    b = coord.acquire("op", "w2", ttl_ms=LONG)
    info = coord.mark_worker_done(a)
    assert (info.status, info.done_workers) == (OperationStatus.RUNNING, frozenset({"w1"}))
    assert coord.mark_worker_done(a) == info  # a retry whose first try landed
    raises_exactly(LeaseLostError, lambda: coord.renew(a))  # done released the lease
    assert coord.crashed_workers() == []
    info = coord.mark_worker_done(b)
    assert (info.status, info.done_workers) == (OperationStatus.COMPLETED, frozenset({"w1", "w2"}))
    assert coord.get_operation("op") == info


def test_crashed_workers(coord: Any) -> None:
    coord.create_operation("alpha", workers=["x", "y", "z"])
    assert coord.crashed_workers() == []  # nobody started: no lease has expired
    coord.mark_worker_done(coord.acquire("alpha", "x", ttl_ms=LONG))
    coord.acquire("alpha", "z", ttl_ms=LONG)
    coord.acquire("op", "w2", ttl_ms=SHORT)
    coord.acquire("alpha", "y", ttl_ms=SHORT)
    _expire()
    assert coord.crashed_workers() == [("alpha", "y"), ("op", "w2")]
    coord.set_status("alpha", OperationStatus.RECOVERING)
    assert coord.crashed_workers() == [("op", "w2")]


def test_threads_of_one_client_race_for_a_lease(coord: Any) -> None:
    barrier, outcomes = threading.Barrier(8), []

    def take() -> None:
        barrier.wait()
        try:
            outcomes.append(coord.acquire("op", "w1", ttl_ms=LONG).fence)
        except LeaseHeldError:
            outcomes.append(0)
        finally:
            coord.close()  # this thread's connection

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [0] * 7 + [1]


def test_processes_race_for_a_new_file_and_a_lease(db_path: Path) -> None:
    barrier, results = SPAWN.Barrier(8), SPAWN.Queue()
    procs = [SPAWN.Process(target=_race, args=(str(db_path), barrier, results)) for _ in range(8)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(got) == [("held", 0)] * 7 + [("won", 1)]
    coord = SQLiteCoordination(db_path)
    assert coord.fence_of("op", "w1") == 1
    assert [i.operation_id for i in coord.list_operations()] == ["op"]


def test_a_forked_child_opens_its_own_connection(coord: Any) -> None:
    coord.get_operation("op")  # the parent's connection exists before the fork
    pid = os.fork()
    if pid == 0:  # the child must not use the inherited connection
        code = 0 if coord.acquire("op", "w1", ttl_ms=LONG).fence == 1 else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert coord.fence_of("op", "w1") == 1
    raises_exactly(LeaseHeldError, lambda: coord.acquire("op", "w1", ttl_ms=LONG))


def test_a_process_takes_over_an_expired_lease(coord: Any, db_path: Path) -> None:
    first = coord.acquire("op", "w1", ttl_ms=300)
    coord.record(first, summary(1))
    time.sleep(0.32)
    results = SPAWN.Queue()
    _run(_take_over, str(db_path), results)
    token, fence = results.get(timeout=10)
    assert fence == 2 and token != first.owner_token
    before = coord.index("op", "w1")
    raises_exactly(LeaseLostError, lambda: coord.renew(first))
    raises_exactly(FencedError, lambda: coord.record(first, summary(3)))
    raises_exactly(FencedError, lambda: coord.record(first, summary(2, root="d")))
    assert coord.index("op", "w1") == before == [summary(1), summary(2, fence=2, root="c")]
    assert coord.fence_of("op", "w1") == 2
    raises_exactly(LeaseHeldError, lambda: coord.acquire("op", "w1", ttl_ms=LONG))


# -- checkpoint index ----------------------------------------------------------------------


def test_record_is_idempotent_and_the_first_entry_wins(coord: Any) -> None:
    lease = coord.acquire("op", "w1", ttl_ms=LONG)
    coord.record(lease, summary(1))
    coord.record(lease, summary(1))
    coord.record(lease, summary(1, stage="other"))
    assert coord.index("op", "w1") == [summary(1)]
    raises_exactly(InvalidCheckpoint, lambda: coord.record(lease, {"seq": 2}))


def test_record_checks_token_and_fence_not_liveness(coord: Any) -> None:
    lease = coord.acquire("op", "w1", ttl_ms=SHORT)
    _expire()
    coord.record(lease, summary(1))  # the store commit happened: it is indexed
    stranger = Lease(
        operation_id="op",
        worker_id="w1",
        owner_token="f" * 32,
        fence=1,
        ttl_ms=LONG,
        renewed_at=0.0,
    )
    for bad in (stranger, Lease(**{**_fields(lease), "fence": 7})):
        raises_exactly(FencedError, partial(coord.record, bad, summary(2)))
    ghost = Lease(**{**_fields(lease), "operation_id": "gone"})
    raises_exactly(FencedError, lambda: coord.record(ghost, summary(2)))
    raises_exactly(LeaseLostError, lambda: coord.renew(ghost))
    assert coord.index("op", "w1") == [summary(1)]


def _fields(lease: Lease) -> dict[str, Any]:
    return {f: getattr(lease, f) for f in Lease.__slots__}


def test_index_queries(coord: Any) -> None:
    lease = coord.acquire("op", "w1", ttl_ms=LONG)
    for seq in (3, 1, 2):
        coord.record(lease, summary(seq))
    assert [s.seq for s in coord.index("op", "w1")] == [1, 2, 3]
    assert coord.index("op", "w2") == []
    assert coord.index_all("op") == {"w1": [summary(1), summary(2), summary(3)], "w2": []}
    assert coord.latest("op", "w1") == summary(3)
    assert coord.latest("op", "w2") is None
    assert coord.lookup("op", "w1", 2) == summary(2)
    assert coord.lookup("op", "w1", 9) is None
    coord.delete_entries("op", "w1", [1, 3, 42])
    assert coord.index("op", "w1") == [summary(2)]
    raises_exactly(InvalidIdentifier, lambda: coord.lookup("op", "w1", 0))
    raises_exactly(InvalidIdentifier, lambda: coord.delete_entries("op", "w1", [2, -1]))
    assert coord.index("op", "w1") == [summary(2)]  # a bad seq deleted nothing


def test_repair_adds_what_is_missing(coord: Any) -> None:
    lease = coord.acquire("op", "w1", ttl_ms=LONG)
    coord.record(lease, summary(1))
    assert coord.repair("op", "w1", [summary(1, stage="x"), summary(2), summary(3)]) == 2
    assert coord.index("op", "w1") == [summary(1), summary(2), summary(3)]
    assert coord.repair("op", "w1", [summary(2)]) == 0
    assert coord.repair("op", "w2", []) == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.index("nope", "w1"),
        lambda c: c.index_all("nope"),
        lambda c: c.latest("nope", "w1"),
        lambda c: c.lookup("nope", "w1", 1),
        lambda c: c.delete_entries("nope", "w1", [1]),
        lambda c: c.repair("nope", "w1", [summary(1)]),
        lambda c: c.fence_of("nope", "w1"),
        lambda c: c.publish_plan("nope", {}),
        lambda c: c.read_plan("nope"),
        lambda c: c.wait_plan("nope", 0, 0.0),
        lambda c: c.reclaim_push("nope", "w1"),
        lambda c: c.restart_fences("nope", "w1", 3),
    ],
)
def test_unknown_operation(coord: Any, call: Any) -> None:
    raises_exactly(UnknownOperation, lambda: call(coord))


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.index("op", "w9"),
        lambda c: c.repair("op", "w9", [summary(1)]),
        lambda c: c.fence_of("op", "w9"),
        lambda c: c.reclaim_push("op", "w9"),
        lambda c: c.restart_fences("op", "w9", 3),
        lambda c: c.index("op", "../w1"),
        lambda c: c.reclaim_claim("a b", stale_after_ms=0),
        lambda c: c.acquire_leader("", ttl_ms=LONG),
        lambda c: c.reclaim_ack(
            ReclaimClaim(entry_id="1-0", operation_id="op", worker_id="w1", consumer="c")
        ),
    ],
)
def test_foreign_workers_and_bad_ids(coord: Any, call: Any) -> None:
    raises_exactly(InvalidIdentifier, lambda: call(coord))


# -- resume plans --------------------------------------------------------------------------


def test_publish_and_read_plans(coord: Any) -> None:
    assert coord.read_plan("op") is None
    first = coord.publish_plan("op", {"w1": {"seq": 3}, "offsets": (1, 2)})
    assert (first.generation, first.body) == (1, {"w1": {"seq": 3}, "offsets": [1, 2]})
    second = coord.publish_plan("op", {"w1": None})
    assert second.generation == 2
    assert coord.read_plan("op") == second
    assert coord.get_operation("op").generation == 2
    for body in ({"x": float("nan")}, {"x": object()}, ["not", "a", "mapping"]):
        raises_exactly(InvalidCheckpoint, partial(coord.publish_plan, "op", body))
    assert coord.read_plan("op") == second


def test_wait_plan(coord: Any, db_path: Path) -> None:
    start = time.monotonic()
    assert coord.wait_plan("op", 0, 0.1) is None
    assert 0.1 <= time.monotonic() - start < 5.0
    other = SQLiteCoordination(db_path)
    timer = threading.Timer(0.1, lambda: other.publish_plan("op", {"g": 1}))
    timer.start()
    plan = coord.wait_plan("op", 0, 5.0)
    timer.join()
    assert plan is not None and (plan.generation, plan.body) == (1, {"g": 1})
    assert coord.wait_plan("op", 1, 0.0) is None
    assert coord.wait_plan("op", 0, 0.0) == plan


# -- reclaim queue -------------------------------------------------------------------------


def test_reclaim_push_claim_ack(coord: Any) -> None:
    assert coord.reclaim_claim("c1", stale_after_ms=LONG) is None
    coord.reclaim_push("op", "w2")
    coord.reclaim_push("op", "w1")
    first = coord.reclaim_claim("c1", stale_after_ms=LONG)
    second = coord.reclaim_claim("c2", stale_after_ms=LONG)
    assert first is not None and second is not None
    assert (first.operation_id, first.worker_id, first.consumer) == ("op", "w2", "c1")
    assert (second.worker_id, second.consumer) == ("w1", "c2")
    assert coord.reclaim_claim("c3", stale_after_ms=LONG) is None  # all claimed, none stale
    coord.reclaim_ack(first)
    coord.reclaim_ack(first)  # already gone: nothing happens
    coord.reclaim_ack(second)
    assert coord.reclaim_claim("c3", stale_after_ms=0) is None


def test_a_dead_claimants_entry_is_claimed_again(coord: Any, db_path: Path) -> None:
    coord.reclaim_push("op", "w1")
    results = SPAWN.Queue()
    _run(_claim_and_die, str(db_path), results)
    entry_id = results.get(timeout=10)
    assert entry_id is not None
    assert coord.reclaim_claim("live", stale_after_ms=LONG) is None  # not stale yet
    time.sleep(0.12)
    claim = coord.reclaim_claim("live", stale_after_ms=100)
    assert claim is not None and (claim.entry_id, claim.consumer) == (entry_id, "live")
    dead = ReclaimClaim(entry_id=entry_id, operation_id="op", worker_id="w1", consumer="dies")
    coord.reclaim_ack(dead)  # a late ack of the dead claimant does not drop the new claim
    time.sleep(0.02)
    assert coord.reclaim_claim("third", stale_after_ms=10) is not None  # still queued
    raises_exactly(InvalidCheckpoint, lambda: coord.reclaim_claim("x", stale_after_ms=-1))


# -- leader lease --------------------------------------------------------------------------


def test_leader_lease(coord: Any) -> None:
    assert coord.acquire_leader("c1", ttl_ms=LONG)
    assert not coord.acquire_leader("c2", ttl_ms=LONG)
    coord.release_leader("c2")  # not c2's: nothing happens
    assert not coord.acquire_leader("c2", ttl_ms=LONG)
    assert coord.acquire_leader("c1", ttl_ms=SHORT)  # renewed, with a short ttl
    _expire()
    assert coord.acquire_leader("c2", ttl_ms=LONG)
    assert not coord.acquire_leader("c1", ttl_ms=LONG)
    coord.release_leader("c2")
    assert coord.acquire_leader("c1", ttl_ms=LONG)
    raises_exactly(ConfigError, lambda: coord.acquire_leader("c1", ttl_ms=0))


# -- data loss -----------------------------------------------------------------------------


def test_instance_marker_detects_a_wiped_table(coord: Any, db_path: Path) -> None:
    other = SQLiteCoordination(db_path)
    raw = sqlite3.connect(db_path, isolation_level=None)
    raw.execute("DELETE FROM instance")
    raw.close()
    assert not coord.instance_ok() and not other.instance_ok()
    coord.reset_instance()
    assert coord.instance_ok() and not other.instance_ok()
    assert SQLiteCoordination(db_path).instance_ok()


def test_instance_marker_detects_a_replaced_file(coord: Any, db_path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    fresh = SQLiteCoordination(db_path)
    assert not coord.instance_ok()  # reconnected to the new file: its marker is not ours
    raises_exactly(UnknownOperation, lambda: coord.get_operation("op"))
    coord.create_operation("op", workers=["w1"])
    assert fresh.get_operation("op").workers == ("w1",)
    coord.reset_instance()
    assert coord.instance_ok()


def test_restart_fences(coord: Any) -> None:
    coord.restart_fences("op", "w1", 5)
    assert coord.fence_of("op", "w1") == 5
    assert coord.crashed_workers() == [("op", "w1")]  # no live owner: reclaim it
    coord.restart_fences("op", "w1", 2)
    assert coord.fence_of("op", "w1") == 5  # never lowered
    assert coord.acquire("op", "w1", ttl_ms=LONG).fence == 6
    live = coord.acquire("op", "w2", ttl_ms=LONG)
    coord.restart_fences("op", "w2", 9)
    assert coord.fence_of("op", "w2") == 9
    assert coord.crashed_workers() == []  # a live owner keeps its deadline
    coord.renew(live)
    raises_exactly(FencedError, lambda: coord.record(live, summary(1)))
    raises_exactly(InvalidCheckpoint, lambda: coord.restart_fences("op", "w1", -1))


def test_restart_fences_recreates_a_missing_slot(coord: Any, db_path: Path) -> None:
    raw = sqlite3.connect(db_path, isolation_level=None)
    raw.execute("DELETE FROM slots WHERE worker = 'w2'")
    raw.close()
    coord.restart_fences("op", "w2", 4)
    assert coord.fence_of("op", "w2") == 4
