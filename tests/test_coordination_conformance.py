"""Every coordination backend keeps the contract written in ``coordination/base.py``.

One suite, run over three backends: Redis standalone (``redis``), a real 3-master Redis
Cluster (``cluster``) and SQLite (``sqlite``), each reached through
``open_coordination(url)`` as the library reaches it. Races are run by real processes
(spawned, so they share nothing with the test process but the backend); a pause is a
real SIGSTOP, a crash a real SIGKILL. TTLs are short (200-1000 ms) to keep it fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import queue as queue_module
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from bbp_dist_resume.coordination import (
    CheckpointSummary,
    Coordination,
    Lease,
    OperationInfo,
    OperationStatus,
    ReclaimClaim,
    open_coordination,
)
from bbp_dist_resume.errors import (
    CoordinationError,
    CoordinationUnavailable,
    FencedError,
    InvalidIdentifier,
    LeaseHeldError,
    LeaseLostError,
    UnknownOperation,
    WorkerFinished,
)

BACKENDS = ("redis", "cluster", "sqlite")
REDIS_BACKENDS = ("redis", "cluster")

SHORT_TTL_MS = 200  # leases that are meant to expire during a test
LONG_TTL_MS = 10_000  # leases that must not
EXPIRE_S = SHORT_TTL_MS / 1000 + 0.15  # sleep this long to see a short lease expire
PROC_TIMEOUT_S = 30.0

OP = "op-1"
WORKERS = ("w0", "w1", "w2")
BAD_IDS = ("a/b", "{x}", "", "x" * 129)

SPAWN = multiprocessing.get_context("spawn")


# --- fixtures -------------------------------------------------------------------------


def _cluster_seed(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("redis+cluster://").rstrip("/").rpartition(":")
    return host, int(port)


@pytest.fixture(scope="session")
def _cluster_admin(redis_cluster_url: str) -> Iterator[RedisCluster]:
    host, port = _cluster_seed(redis_cluster_url)
    client = RedisCluster(host=host, port=port)
    yield client
    client.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test; override with ``parametrize("backend", ..., indirect=True)``."""
    return str(request.param)


@pytest.fixture
def raw_redis(backend: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A plain client on the backend's (emptied) Redis, for tests that look underneath:
    ``redis.Redis`` or ``RedisCluster``; None for SQLite."""
    if backend == "redis":
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        client.flushdb()
        yield client
        client.close()
    elif backend == "cluster":
        admin: RedisCluster = request.getfixturevalue("_cluster_admin")
        admin.flushall(target_nodes=RedisCluster.PRIMARIES)
        yield admin
    else:
        yield None


@pytest.fixture
def coord_url(backend: str, raw_redis: Any, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty backend (``raw_redis`` has flushed it)."""
    if backend == "redis":
        return str(request.getfixturevalue("redis_url"))
    if backend == "cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    return f"sqlite://{tmp_path.resolve() / 'coord.db'}"


@pytest.fixture
def open_coord(coord_url: str) -> Iterator[Callable[[], Coordination]]:
    """Opens more clients on the same backend (other processes' view); all closed after."""
    opened: list[Coordination] = []

    def opener() -> Coordination:
        client = open_coordination(coord_url)
        opened.append(client)
        return client

    yield opener
    for client in opened:
        client.close()


@pytest.fixture
def coord(open_coord: Callable[[], Coordination]) -> Coordination:
    """A client on an empty backend."""
    return open_coord()


@pytest.fixture
def op(coord: Coordination) -> OperationInfo:
    """Operation ``OP`` with workers ``WORKERS``, RUNNING."""
    return coord.create_operation(OP, workers=WORKERS, stages=("s",), config_path="/c.yaml")


def summary(lease: Lease, seq: int, **changes: Any) -> CheckpointSummary:
    fields: dict[str, Any] = {
        "seq": seq,
        "kind": "checkpoint",
        "owner_token": lease.owner_token,
        "fence": lease.fence,
        "created_at": "2026-12-04T00:00:00+00:00",
        "root": "ab" * 32,
        "stage": "s",
        "produced": {"c": 10 * seq},
    }
    fields.update(changes)
    return CheckpointSummary(**fields)


def expire(lease: Lease) -> None:
    """Sleep until the backend has certainly let ``lease`` expire."""
    time.sleep(max(0.0, lease.local_deadline - time.monotonic()) + 0.15)


def redis_only(*backends: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("backend", backends or REDIS_BACKENDS, indirect=True)


# --- operations -----------------------------------------------------------------------


def test_create_operation_returns_a_running_operation(coord: Coordination) -> None:
    before = time.time()
    info = coord.create_operation(OP, workers=WORKERS, stages=("a", "b"), config_path="/c")
    assert info.operation_id == OP
    assert info.status is OperationStatus.RUNNING
    assert info.workers == WORKERS
    assert info.stages == ("a", "b")
    assert info.config_path == "/c"
    assert info.generation == 0
    assert info.done_workers == frozenset()
    assert before - 5 <= info.created_at <= time.time() + 5  # the backend's clock
    assert coord.get_operation(OP) == info


def test_create_operation_again_returns_the_existing_one_unchanged(
    coord: Coordination, op: OperationInfo
) -> None:
    coord.set_status(OP, OperationStatus.RECOVERING)
    again = coord.create_operation(OP, workers=("other",), stages=(), config_path="/else")
    assert again == dataclasses.replace(op, status=OperationStatus.RECOVERING)
    assert coord.get_operation(OP) == again
    assert len(coord.list_operations()) == 1


def test_get_operation_of_unknown_id_raises_unknown_operation(coord: Coordination) -> None:
    with pytest.raises(UnknownOperation):
        coord.get_operation("nope")
    assert issubclass(UnknownOperation, LookupError)


def test_set_status_changes_the_status(coord: Coordination, op: OperationInfo) -> None:
    for status in OperationStatus:
        coord.set_status(OP, status)
        assert coord.get_operation(OP).status is status


def test_set_status_of_unknown_id_raises_and_creates_nothing(coord: Coordination) -> None:
    with pytest.raises(UnknownOperation):
        coord.set_status("nope", OperationStatus.FAILED)
    assert coord.list_operations() == []


def test_list_operations_is_oldest_first_and_filters_by_status(coord: Coordination) -> None:
    for name in ("c-op", "a-op", "b-op"):  # creation order differs from name order
        coord.create_operation(name, workers=("w",))
        time.sleep(0.01)
    coord.set_status("a-op", OperationStatus.COMPLETED)
    coord.set_status("b-op", OperationStatus.FAILED)

    def ids(statuses: Any = None) -> list[str]:
        return [info.operation_id for info in coord.list_operations(statuses)]

    assert ids() == ["c-op", "a-op", "b-op"]
    assert ids([OperationStatus.RUNNING]) == ["c-op"]
    assert ids({OperationStatus.FAILED, OperationStatus.COMPLETED}) == ["a-op", "b-op"]
    assert ids(iter([OperationStatus.FAILED])) == ["b-op"]  # any iterable
    assert ids([OperationStatus.CRASHED]) == []
    assert ids([]) == []


def test_calls_naming_a_worker_not_in_the_operation_raise_invalid_identifier(
    coord: Coordination, op: OperationInfo
) -> None:
    """Like acquire (the contract's own case): a stranger is no slot of the operation.
    Calls that change state must also change nothing (DESIGN.md invariant 5)."""
    lease = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    before = (coord.index_all(OP), [coord.fence_of(OP, w) for w in WORKERS])
    stranger = "stranger"
    changing: dict[str, Callable[[], object]] = {
        "repair": lambda: coord.repair(OP, stranger, [summary(lease, 1)]),
        "delete_entries": lambda: coord.delete_entries(OP, stranger, [1]),
        "restart_fences": lambda: coord.restart_fences(OP, stranger, 5),
        "reclaim_push": lambda: coord.reclaim_push(OP, stranger),
    }
    reading: dict[str, Callable[[], object]] = {
        "fence_of": lambda: coord.fence_of(OP, stranger),
        "index": lambda: coord.index(OP, stranger),
        "latest": lambda: coord.latest(OP, stranger),
        "lookup": lambda: coord.lookup(OP, stranger, 1),
    }
    accepted = []
    for name, call in {**changing, **reading}.items():
        try:
            call()
            accepted.append(name)
        except InvalidIdentifier:
            pass
    queued = coord.reclaim_claim("c", stale_after_ms=LONG_TTL_MS)
    assert accepted == [], f"accepted a worker not in the operation: {accepted}"
    assert queued is None, "a stranger was queued"
    assert (coord.index_all(OP), [coord.fence_of(OP, w) for w in WORKERS]) == before


def test_calls_on_an_unknown_operation_raise_unknown_operation(coord: Coordination) -> None:
    coord.create_operation("known", workers=("w0",))
    lease = coord.acquire("known", "w0", ttl_ms=LONG_TTL_MS)
    nope = "nope"
    calls: dict[str, Callable[[], object]] = {
        "get_operation": lambda: coord.get_operation(nope),
        "set_status": lambda: coord.set_status(nope, OperationStatus.FAILED),
        "acquire": lambda: coord.acquire(nope, "w0", ttl_ms=LONG_TTL_MS),
        "fence_of": lambda: coord.fence_of(nope, "w0"),
        "index": lambda: coord.index(nope, "w0"),
        "index_all": lambda: coord.index_all(nope),
        "latest": lambda: coord.latest(nope, "w0"),
        "lookup": lambda: coord.lookup(nope, "w0", 1),
        "delete_entries": lambda: coord.delete_entries(nope, "w0", [1]),
        "repair": lambda: coord.repair(nope, "w0", [summary(lease, 1)]),
        "publish_plan": lambda: coord.publish_plan(nope, {}),
        "read_plan": lambda: coord.read_plan(nope),
        "wait_plan": lambda: coord.wait_plan(nope, 0, 0.1),
        "reclaim_push": lambda: coord.reclaim_push(nope, "w0"),
        "restart_fences": lambda: coord.restart_fences(nope, "w0", 3),
    }
    wrong = {}
    for name, call in calls.items():
        try:
            got = call()
            wrong[name] = f"returned {got!r}"
        except UnknownOperation:
            pass
        except Exception as exc:
            wrong[name] = f"raised {exc!r}"
    assert [info.operation_id for info in coord.list_operations()] == ["known"]
    assert coord.reclaim_claim("c", stale_after_ms=LONG_TTL_MS) is None
    assert wrong == {}


@pytest.mark.parametrize("bad", BAD_IDS, ids=("slash", "braces", "empty", "129-chars"))
def test_invalid_ids_raise_invalid_identifier_and_create_nothing(
    coord: Coordination, bad: str
) -> None:
    with pytest.raises(InvalidIdentifier):
        coord.create_operation(bad, workers=("w",))
    with pytest.raises(InvalidIdentifier):
        coord.create_operation("good", workers=("w", bad))
    with pytest.raises(InvalidIdentifier):
        coord.create_operation("good", workers=("w",), stages=(bad,))
    assert coord.list_operations() == []
    with pytest.raises(InvalidIdentifier):
        coord.get_operation(bad)  # ids are checked before the lookup
    coord.create_operation("good", workers=("w",))
    calls: list[Callable[[], object]] = [
        lambda: coord.acquire(bad, "w", ttl_ms=LONG_TTL_MS),
        lambda: coord.acquire("good", bad, ttl_ms=LONG_TTL_MS),
        lambda: coord.fence_of("good", bad),
        lambda: coord.index(bad, "w"),
        lambda: coord.index("good", bad),
        lambda: coord.latest("good", bad),
        lambda: coord.lookup("good", bad, 1),
        lambda: coord.publish_plan(bad, {"x": 1}),
        lambda: coord.reclaim_push("good", bad),
        lambda: coord.restart_fences("good", bad, 5),
    ]
    for call in calls:
        with pytest.raises(InvalidIdentifier):
            call()
    assert [info.operation_id for info in coord.list_operations()] == ["good"]
    assert coord.fence_of("good", "w") == 0
    assert coord.reclaim_claim("c", stale_after_ms=LONG_TTL_MS) is None


def test_ids_of_128_characters_are_accepted(coord: Coordination) -> None:
    long_id = "x" * 128
    info = coord.create_operation(long_id, workers=(long_id,))
    lease = coord.acquire(long_id, long_id, ttl_ms=LONG_TTL_MS)
    assert info.operation_id == long_id
    assert lease.fence == 1


# --- leases ---------------------------------------------------------------------------


def test_first_acquire_has_fence_1_and_a_fresh_token(
    coord: Coordination, op: OperationInfo
) -> None:
    assert coord.fence_of(OP, "w0") == 0
    before = time.monotonic()
    lease = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    after = time.monotonic()
    assert (lease.operation_id, lease.worker_id, lease.fence) == (OP, "w0", 1)
    assert lease.ttl_ms == LONG_TTL_MS
    assert len(lease.owner_token) == 32 and int(lease.owner_token, 16) >= 0
    assert before <= lease.renewed_at <= after  # the local deadline never runs late
    assert coord.fence_of(OP, "w0") == 1
    assert coord.fence_of(OP, "w1") == 0  # fences are per slot


def test_acquire_after_release_gets_the_next_fence(coord: Coordination, op: OperationInfo) -> None:
    first = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    coord.release(first)
    second = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    assert second.fence == 2
    assert second.owner_token != first.owner_token
    assert coord.fence_of(OP, "w0") == 2


def test_acquire_after_expiry_gets_the_next_fence(coord: Coordination, op: OperationInfo) -> None:
    first = coord.acquire(OP, "w0", ttl_ms=SHORT_TTL_MS)
    expire(first)
    second = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    assert second.fence == 2
    assert second.owner_token != first.owner_token


def test_acquire_while_held_raises_lease_held_and_keeps_the_fence(
    open_coord: Callable[[], Coordination], op: OperationInfo
) -> None:
    holder, other = open_coord(), open_coord()
    lease = holder.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    for client in (other, holder):  # the holder itself gets no second lease either
        with pytest.raises(LeaseHeldError):
            client.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    assert other.fence_of(OP, "w0") == 1
    assert holder.renew(lease).fence == 1  # the holder is untouched


def test_acquire_in_unknown_operation_raises_unknown_operation(coord: Coordination) -> None:
    with pytest.raises(UnknownOperation):
        coord.acquire("nope", "w0", ttl_ms=LONG_TTL_MS)


def test_acquire_of_a_worker_not_in_the_operation_raises_invalid_identifier(
    coord: Coordination, op: OperationInfo
) -> None:
    with pytest.raises(InvalidIdentifier):
        coord.acquire(OP, "stranger", ttl_ms=LONG_TTL_MS)
    assert all(coord.fence_of(OP, w) == 0 for w in WORKERS)


def test_renew_by_the_owner_keeps_the_lease_past_its_first_ttl(
    open_coord: Callable[[], Coordination], op: OperationInfo
) -> None:
    holder, other = open_coord(), open_coord()
    lease = holder.acquire(OP, "w0", ttl_ms=400)
    first_deadline = lease.local_deadline
    for _ in range(5):  # 5 x 150 ms: nearly twice the ttl
        time.sleep(0.15)
        renewed = holder.renew(lease)
        assert (renewed.owner_token, renewed.fence, renewed.ttl_ms) == (
            lease.owner_token,
            1,
            400,
        )
        assert renewed.renewed_at > lease.renewed_at
        lease = renewed
    assert time.monotonic() > first_deadline
    with pytest.raises(LeaseHeldError):
        other.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)


def test_renew_after_expiry_raises_lease_lost_and_does_not_revive(
    open_coord: Callable[[], Coordination], op: OperationInfo
) -> None:
    holder, other = open_coord(), open_coord()
    lease = holder.acquire(OP, "w0", ttl_ms=SHORT_TTL_MS)
    expire(lease)
    with pytest.raises(LeaseLostError):
        holder.renew(lease)  # nobody took it: still lost
    with pytest.raises(LeaseLostError):
        holder.renew(lease)
    taken = other.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)  # not LeaseHeldError: not revived
    assert taken.fence == 2


def test_renew_and_release_of_a_lease_taken_over_raise_lease_lost(
    open_coord: Callable[[], Coordination], op: OperationInfo
) -> None:
    stale_client, new_client = open_coord(), open_coord()
    stale = stale_client.acquire(OP, "w0", ttl_ms=SHORT_TTL_MS)
    expire(stale)
    current = new_client.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    with pytest.raises(LeaseLostError):
        stale_client.renew(stale)
    with pytest.raises(LeaseLostError):
        stale_client.release(stale)
    with pytest.raises(LeaseLostError):
        stale_client.mark_worker_done(stale)
    # The new owner still holds it.
    assert new_client.renew(current).fence == 2
    with pytest.raises(LeaseHeldError):
        stale_client.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    assert new_client.get_operation(OP).done_workers == frozenset()


def test_release_twice_raises_lease_lost(coord: Coordination, op: OperationInfo) -> None:
    lease = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    coord.release(lease)
    with pytest.raises(LeaseLostError):
        coord.release(lease)
    with pytest.raises(LeaseLostError):
        coord.renew(lease)
    assert coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS).fence == 2


def test_release_after_expiry_raises_lease_lost(coord: Coordination, op: OperationInfo) -> None:
    lease = coord.acquire(OP, "w0", ttl_ms=SHORT_TTL_MS)
    expire(lease)
    with pytest.raises(LeaseLostError):
        coord.release(lease)


def test_mark_worker_done_releases_and_completes_when_all_are_done(
    coord: Coordination, op: OperationInfo
) -> None:
    leases = [coord.acquire(OP, w, ttl_ms=LONG_TTL_MS) for w in WORKERS]
    info = coord.mark_worker_done(leases[0])
    assert info.done_workers == frozenset({"w0"})
    assert info.status is OperationStatus.RUNNING
    with pytest.raises(LeaseLostError):
        coord.renew(leases[0])  # released
    info = coord.mark_worker_done(leases[1])
    assert info.done_workers == frozenset({"w0", "w1"})
    assert info.status is OperationStatus.RUNNING
    info = coord.mark_worker_done(leases[2])
    assert info.done_workers == frozenset(WORKERS)
    assert info.status is OperationStatus.COMPLETED
    assert coord.get_operation(OP) == info


def test_mark_worker_done_with_an_expired_lease_raises_lease_lost(
    coord: Coordination, op: OperationInfo
) -> None:
    lease = coord.acquire(OP, "w0", ttl_ms=SHORT_TTL_MS)
    expire(lease)
    with pytest.raises(LeaseLostError):
        coord.mark_worker_done(lease)
    assert coord.get_operation(OP).done_workers == frozenset()


def test_crashed_workers_lists_exactly_expired_unfinished_workers_of_running_operations(
    coord: Coordination,
) -> None:
    coord.create_operation("run", workers=("crashed", "live", "done", "never"))
    coord.create_operation("completed", workers=("w",))
    coord.create_operation("failed", workers=("w",))
    coord.create_operation("other-run", workers=("crashed", "live"))
    short = [
        coord.acquire("run", "crashed", ttl_ms=SHORT_TTL_MS),
        coord.acquire("run", "done", ttl_ms=SHORT_TTL_MS),
        coord.acquire("completed", "w", ttl_ms=SHORT_TTL_MS),
        coord.acquire("failed", "w", ttl_ms=SHORT_TTL_MS),
        coord.acquire("other-run", "crashed", ttl_ms=SHORT_TTL_MS),
    ]
    coord.acquire("run", "live", ttl_ms=LONG_TTL_MS)
    coord.acquire("other-run", "live", ttl_ms=LONG_TTL_MS)
    coord.mark_worker_done(short[1])
    coord.set_status("completed", OperationStatus.COMPLETED)
    coord.set_status("failed", OperationStatus.FAILED)
    assert coord.crashed_workers() == []  # nothing expired yet
    for lease in short:
        expire(lease)
    assert sorted(coord.crashed_workers()) == [("other-run", "crashed"), ("run", "crashed")]
    # Taken again by a live owner: no longer crashed.
    coord.acquire("run", "crashed", ttl_ms=LONG_TTL_MS)
    assert coord.crashed_workers() == [("other-run", "crashed")]


def test_slot_states_show_each_workers_fence_lease_and_done_flag(
    coord: Coordination, op: OperationInfo
) -> None:
    assert [(s.worker_id, s.fence, s.lease_ms, s.done) for s in coord.slot_states(OP)] == [
        (w, 0, None, False) for w in WORKERS
    ]
    live = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    short = coord.acquire(OP, "w1", ttl_ms=SHORT_TTL_MS)
    finished = coord.acquire(OP, "w2", ttl_ms=LONG_TTL_MS)
    coord.mark_worker_done(finished)
    expire(short)
    states = {s.worker_id: s for s in coord.slot_states(OP)}
    assert list(states) == list(WORKERS)
    assert states["w0"].fence == live.fence == 1
    assert states["w0"].lease_ms is not None
    assert LONG_TTL_MS - 5_000 < states["w0"].lease_ms <= LONG_TTL_MS
    assert not states["w0"].done
    assert (states["w1"].fence, states["w1"].lease_ms, states["w1"].done) == (1, None, False)
    assert (states["w2"].lease_ms, states["w2"].done) == (None, True)
    coord.release(live)
    assert coord.slot_states(OP)[0].lease_ms is None


def test_a_finished_workers_slot_can_never_be_acquired_again(
    coord: Coordination, op: OperationInfo
) -> None:
    lease = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    coord.mark_worker_done(lease)
    with pytest.raises(WorkerFinished) as exc:
        coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    assert isinstance(exc.value, LeaseHeldError)  # callers that handle "held" stop too
    assert "w0 already finished" in str(exc.value)
    assert coord.fence_of(OP, "w0") == lease.fence  # no new fence, nothing taken
    assert coord.slot_states(OP)[0].done


def test_slot_states_of_an_unknown_operation_is_an_error(coord: Coordination) -> None:
    with pytest.raises(UnknownOperation):
        coord.slot_states("no-such-op")
    with pytest.raises(InvalidIdentifier):
        coord.slot_states("a/b")


def test_fence_of_counts_every_acquisition(coord: Coordination, op: OperationInfo) -> None:
    for expected in range(1, 5):
        lease = coord.acquire(OP, "w1", ttl_ms=LONG_TTL_MS)
        assert lease.fence == expected == coord.fence_of(OP, "w1")
        coord.release(lease)


def test_restart_fences_raises_the_counter_and_never_lowers_it(
    coord: Coordination, op: OperationInfo
) -> None:
    coord.restart_fences(OP, "w0", 10)
    assert coord.fence_of(OP, "w0") >= 10
    assert coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS).fence > 10
    high = coord.fence_of(OP, "w0")
    coord.restart_fences(OP, "w0", 3)
    assert coord.fence_of(OP, "w0") == high


def test_one_client_is_safe_from_several_threads(coord: Coordination, op: OperationInfo) -> None:
    outcomes: list[object] = []
    barrier = threading.Barrier(8)

    def grab() -> None:
        barrier.wait()
        try:
            outcomes.append(coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS))
        except LeaseHeldError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PROC_TIMEOUT_S)
    leases = [o for o in outcomes if isinstance(o, Lease)]
    assert len(outcomes) == 8
    assert len(leases) == 1 and leases[0].fence == 1
    assert coord.fence_of(OP, "w0") == 1


# --- checkpoint index -----------------------------------------------------------------


def test_recorded_entries_read_back_by_seq(coord: Coordination, op: OperationInfo) -> None:
    lease = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    entries = [summary(lease, seq, progress=seq / 10, consumed={"in": seq}) for seq in (1, 2, 3)]
    for entry in (entries[1], entries[0], entries[2]):  # out of order
        coord.record(lease, entry)
    assert coord.index(OP, "w0") == entries
    assert coord.latest(OP, "w0") == entries[2]
    assert coord.lookup(OP, "w0", 2) == entries[1]
    assert coord.lookup(OP, "w0", 4) is None
    assert coord.latest(OP, "w1") is None
    assert coord.index(OP, "w1") == []
    assert coord.index_all(OP) == {"w0": entries, "w1": [], "w2": []}


def test_record_twice_is_idempotent(coord: Coordination, op: OperationInfo) -> None:
    lease = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    entry = summary(lease, 1)
    coord.record(lease, entry)
    coord.record(lease, entry)
    assert coord.index(OP, "w0") == [entry]


def test_index_holds_one_entry_per_seq(coord: Coordination, op: OperationInfo) -> None:
    lease = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    first = summary(lease, 1)
    coord.record(lease, first)
    with contextlib.suppress(CoordinationError):  # refusing is fine, a 2nd entry is not
        coord.record(lease, summary(lease, 1, root="cd" * 32))
    entries = coord.index(OP, "w0")
    assert [e.seq for e in entries] == [1]


def test_record_with_a_stale_owner_token_raises_fenced_and_changes_nothing(
    open_coord: Callable[[], Coordination], op: OperationInfo
) -> None:
    stale_client, new_client = open_coord(), open_coord()
    stale = stale_client.acquire(OP, "w0", ttl_ms=SHORT_TTL_MS)
    stale_client.record(stale, summary(stale, 1))
    expire(stale)
    current = new_client.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    new_client.record(current, summary(current, 2, kind="takeover"))
    before = new_client.index(OP, "w0")
    with pytest.raises(FencedError):
        stale_client.record(stale, summary(stale, 3))
    with pytest.raises(FencedError):
        stale_client.record(stale, summary(stale, 2, root="cd" * 32))
    assert new_client.index(OP, "w0") == before
    assert [e.seq for e in before] == [1, 2]


def test_record_with_a_stale_fence_raises_fenced_and_changes_nothing(
    coord: Coordination, op: OperationInfo
) -> None:
    lease = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    coord.record(lease, summary(lease, 1))
    coord.restart_fences(OP, "w0", lease.fence + 5)  # the counter moved on (data loss)
    with pytest.raises(FencedError):
        coord.record(lease, summary(lease, 2))
    older = dataclasses.replace(lease, fence=lease.fence - 1)
    with pytest.raises(FencedError):
        coord.record(older, summary(older, 2))
    assert [e.seq for e in coord.index(OP, "w0")] == [1]


def test_record_with_a_forged_token_raises_fenced(coord: Coordination, op: OperationInfo) -> None:
    lease = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    forged = dataclasses.replace(lease, owner_token="0" * 32)
    with pytest.raises(FencedError):
        coord.record(forged, summary(forged, 1))
    other_slot = dataclasses.replace(lease, worker_id="w1")
    with pytest.raises(FencedError):
        coord.record(other_slot, summary(other_slot, 1))
    assert coord.index_all(OP) == {w: [] for w in WORKERS}


def test_delete_entries_removes_some_and_ignores_missing(
    coord: Coordination, op: OperationInfo
) -> None:
    lease = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    for seq in (1, 2, 3, 4):
        coord.record(lease, summary(lease, seq))
    coord.delete_entries(OP, "w0", [1, 3, 99])
    assert [e.seq for e in coord.index(OP, "w0")] == [2, 4]
    coord.delete_entries(OP, "w0", iter([1, 3]))
    coord.delete_entries(OP, "w0", [])
    coord.delete_entries(OP, "w1", [1])
    assert [e.seq for e in coord.index(OP, "w0")] == [2, 4]
    assert coord.latest(OP, "w0") == summary(lease, 4)
    assert coord.lookup(OP, "w0", 3) is None


def test_repair_adds_only_missing_entries_and_counts_them(
    coord: Coordination, op: OperationInfo
) -> None:
    old = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    coord.record(old, summary(old, 1))
    coord.record(old, summary(old, 3))
    coord.release(old)
    current = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)  # another owner now: no check
    from_store = [summary(old, seq) for seq in (1, 2, 3, 4)]
    from_store[0] = summary(old, 1, root="cd" * 32)  # present already: left as it is
    assert coord.repair(OP, "w0", from_store) == 2
    assert coord.index(OP, "w0") == [summary(old, seq) for seq in (1, 2, 3, 4)]
    assert coord.repair(OP, "w0", iter(from_store)) == 0
    assert coord.repair(OP, "w0", []) == 0
    coord.record(current, summary(current, 5))
    assert [e.seq for e in coord.index(OP, "w0")] == [1, 2, 3, 4, 5]


# --- resume plans ---------------------------------------------------------------------


def test_publish_plan_bumps_the_generation(coord: Coordination, op: OperationInfo) -> None:
    assert coord.read_plan(OP) is None
    body1 = {"workers": {"w0": 3, "w1": None}, "offsets": {"c": [1, 2]}}
    first = coord.publish_plan(OP, body1)
    assert (first.operation_id, first.generation, first.body) == (OP, 1, body1)
    second = coord.publish_plan(OP, {"workers": {}})
    assert second.generation == 2
    assert coord.read_plan(OP) == second
    assert coord.get_operation(OP).generation == 2


def test_wait_plan_returns_at_once_when_a_newer_plan_exists(
    coord: Coordination, op: OperationInfo
) -> None:
    published = coord.publish_plan(OP, {"n": 1})
    began = time.monotonic()
    assert coord.wait_plan(OP, after=0, timeout=10) == published
    assert time.monotonic() - began < 2


def test_wait_plan_returns_the_plan_another_thread_publishes(
    open_coord: Callable[[], Coordination], op: OperationInfo
) -> None:
    waiter, publisher = open_coord(), open_coord()
    waiter.publish_plan(OP, {"n": 1})
    failures: list[BaseException] = []

    def publish_later() -> None:
        try:
            time.sleep(0.3)
            publisher.publish_plan(OP, {"n": 2})
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=publish_later)
    began = time.monotonic()
    thread.start()
    got = waiter.wait_plan(OP, after=1, timeout=10)
    took = time.monotonic() - began
    thread.join()
    assert failures == []
    assert got is not None and (got.generation, got.body) == (2, {"n": 2})
    assert 0.25 <= took < 5


def test_wait_plan_returns_none_on_timeout(coord: Coordination, op: OperationInfo) -> None:
    coord.publish_plan(OP, {"n": 1})
    began = time.monotonic()
    assert coord.wait_plan(OP, after=1, timeout=0.3) is None
    took = time.monotonic() - began
    assert 0.25 <= took < 3
    assert coord.wait_plan(OP, after=0, timeout=0.3) is not None


def test_plan_acks_keep_each_workers_newest_generation(
    open_coord: Callable[[], Coordination], op: OperationInfo
) -> None:
    coord, other = open_coord(), open_coord()
    assert coord.plan_acks(OP) == {}
    coord.ack_plan(OP, "w0", 2)
    other.ack_plan(OP, "w1", 1)
    coord.ack_plan(OP, "w0", 1)  # a late ack of an older plan changes nothing
    assert other.plan_acks(OP) == {"w0": 2, "w1": 1}
    coord.ack_plan(OP, "w0", 3)
    coord.ack_plan(OP, "w0", 3)  # twice, as a retried call would
    assert coord.plan_acks(OP) == {"w0": 3, "w1": 1}


@pytest.mark.parametrize("generation", [0, -1, True, 1.5, "2", None])
def test_ack_plan_refuses_a_generation_that_is_not_positive(
    coord: Coordination, op: OperationInfo, generation: Any
) -> None:
    with pytest.raises(InvalidIdentifier):
        coord.ack_plan(OP, "w0", generation)
    assert coord.plan_acks(OP) == {}


def test_plan_acks_of_an_unknown_operation(coord: Coordination) -> None:
    with pytest.raises(UnknownOperation):
        coord.ack_plan("no-such-op", "w0", 1)
    with pytest.raises(UnknownOperation):
        coord.plan_acks("no-such-op")


# --- reclaim queue --------------------------------------------------------------------


def test_reclaim_push_claim_ack(open_coord: Callable[[], Coordination], op: OperationInfo) -> None:
    coord, other = open_coord(), open_coord()
    coord.reclaim_push(OP, "w1")
    coord.reclaim_push(OP, "w2")
    first = other.reclaim_claim("c1", stale_after_ms=LONG_TTL_MS)
    second = coord.reclaim_claim("c2", stale_after_ms=LONG_TTL_MS)
    assert first is not None and second is not None
    assert (first.operation_id, first.worker_id, first.consumer) == (OP, "w1", "c1")
    assert (second.operation_id, second.worker_id, second.consumer) == (OP, "w2", "c2")
    assert first.entry_id != second.entry_id
    assert coord.reclaim_claim("c3", stale_after_ms=LONG_TTL_MS) is None
    other.reclaim_ack(first)
    coord.reclaim_ack(second)
    assert coord.reclaim_claim("c3", stale_after_ms=LONG_TTL_MS) is None


def test_reclaim_claim_with_nothing_queued_returns_none(coord: Coordination) -> None:
    assert coord.reclaim_claim("c1", stale_after_ms=SHORT_TTL_MS) is None


def test_reclaim_claim_not_acked_is_claimed_again_after_stale_after_ms(
    open_coord: Callable[[], Coordination], op: OperationInfo
) -> None:
    dead, alive = open_coord(), open_coord()
    dead.reclaim_push(OP, "w0")
    claim = dead.reclaim_claim("dead", stale_after_ms=SHORT_TTL_MS)
    assert claim is not None
    assert alive.reclaim_claim("alive", stale_after_ms=SHORT_TTL_MS) is None  # not stale yet
    time.sleep(EXPIRE_S)
    again = alive.reclaim_claim("alive", stale_after_ms=SHORT_TTL_MS)
    assert again is not None
    assert (again.entry_id, again.operation_id, again.worker_id) == (
        claim.entry_id,
        OP,
        "w0",
    )
    assert again.consumer == "alive"
    alive.reclaim_ack(again)
    time.sleep(EXPIRE_S)
    assert alive.reclaim_claim("third", stale_after_ms=SHORT_TTL_MS) is None


def test_reclaim_ack_by_a_claimant_that_went_stale_leaves_the_new_claim(
    open_coord: Callable[[], Coordination], op: OperationInfo
) -> None:
    slow, fast = open_coord(), open_coord()
    slow.reclaim_push(OP, "w0")
    old = slow.reclaim_claim("slow", stale_after_ms=SHORT_TTL_MS)
    assert old is not None
    time.sleep(EXPIRE_S)
    new = fast.reclaim_claim("fast", stale_after_ms=SHORT_TTL_MS)
    assert new is not None and new.entry_id == old.entry_id
    slow.reclaim_ack(old)  # too late: the slot is fast's now
    time.sleep(EXPIRE_S)
    again = fast.reclaim_claim("third", stale_after_ms=SHORT_TTL_MS)
    assert again is not None and again.entry_id == old.entry_id  # still queued
    fast.reclaim_ack(again)
    assert fast.reclaim_claim("fourth", stale_after_ms=0) is None


def test_reclaim_ack_of_one_claim_leaves_the_others(coord: Coordination, op: OperationInfo) -> None:
    coord.reclaim_push(OP, "w0")
    coord.reclaim_push(OP, "w1")
    a = coord.reclaim_claim("a", stale_after_ms=SHORT_TTL_MS)
    b = coord.reclaim_claim("b", stale_after_ms=SHORT_TTL_MS)
    assert isinstance(a, ReclaimClaim) and isinstance(b, ReclaimClaim)
    coord.reclaim_ack(a)
    time.sleep(EXPIRE_S)
    again = coord.reclaim_claim("c", stale_after_ms=SHORT_TTL_MS)
    assert again is not None and again.entry_id == b.entry_id
    coord.reclaim_ack(again)
    assert coord.reclaim_claim("d", stale_after_ms=0) is None


# --- coordinator leader lease ---------------------------------------------------------


def test_leader_lease_is_held_by_one_coordinator(
    open_coord: Callable[[], Coordination],
) -> None:
    a, b = open_coord(), open_coord()
    assert a.acquire_leader("coord-a", ttl_ms=LONG_TTL_MS) is True
    assert b.acquire_leader("coord-b", ttl_ms=LONG_TTL_MS) is False
    assert a.acquire_leader("coord-a", ttl_ms=LONG_TTL_MS) is True  # renewal
    b.release_leader("coord-b")  # not the holder: no effect
    assert b.acquire_leader("coord-b", ttl_ms=LONG_TTL_MS) is False
    a.release_leader("coord-a")
    assert b.acquire_leader("coord-b", ttl_ms=LONG_TTL_MS) is True
    assert a.acquire_leader("coord-a", ttl_ms=LONG_TTL_MS) is False


def test_leader_lease_passes_on_when_it_expires(
    open_coord: Callable[[], Coordination],
) -> None:
    a, b = open_coord(), open_coord()
    assert a.acquire_leader("coord-a", ttl_ms=SHORT_TTL_MS) is True
    assert b.acquire_leader("coord-b", ttl_ms=SHORT_TTL_MS) is False
    time.sleep(EXPIRE_S)
    assert b.acquire_leader("coord-b", ttl_ms=LONG_TTL_MS) is True
    assert a.acquire_leader("coord-a", ttl_ms=LONG_TTL_MS) is False


def test_leader_renewal_extends_the_lease(open_coord: Callable[[], Coordination]) -> None:
    a, b = open_coord(), open_coord()
    assert a.acquire_leader("coord-a", ttl_ms=400) is True
    for _ in range(5):  # 750 ms in all: past the first ttl
        time.sleep(0.15)
        assert a.acquire_leader("coord-a", ttl_ms=400) is True
    assert b.acquire_leader("coord-b", ttl_ms=400) is False


# --- data loss, close -----------------------------------------------------------------


def test_instance_ok_is_true_normally(coord: Coordination, op: OperationInfo) -> None:
    assert coord.instance_ok() is True
    coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    assert coord.instance_ok() is True


@redis_only()
def test_instance_ok_is_false_after_flushall(
    coord: Coordination, op: OperationInfo, raw_redis: Any
) -> None:
    assert coord.instance_ok() is True
    if isinstance(raw_redis, RedisCluster):
        raw_redis.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        raw_redis.flushall()
    assert coord.instance_ok() is False
    assert coord.instance_ok() is False  # stays False for this client


@redis_only("redis")
def test_instance_ok_is_false_after_a_redis_restart_mid_run(
    coord: Coordination, op: OperationInfo, restart_redis: Callable[[], Any]
) -> None:
    lease = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    coord.record(lease, summary(lease, 1))
    assert coord.instance_ok() is True
    restart_redis()
    assert coord.instance_ok() is False
    # The client goes on working against the new, empty instance.
    with pytest.raises(UnknownOperation):
        coord.get_operation(OP)
    with pytest.raises(LeaseLostError):
        coord.renew(lease)
    coord.create_operation(OP, workers=WORKERS)
    coord.restart_fences(OP, "w0", lease.fence)
    assert coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS).fence > lease.fence


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
def test_unreachable_redis_raises_coordination_unavailable(scheme: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens there once it is closed
    url = f"{scheme}://127.0.0.1:{port}" + ("/0" if scheme == "redis" else "")
    began = time.monotonic()
    with pytest.raises(CoordinationUnavailable):
        client = open_coordination(url, timeout_s=1.0)
        try:
            client.create_operation(OP, workers=WORKERS)
        finally:
            client.close()
    assert time.monotonic() - began < 30


@redis_only("cluster")
def test_instance_ok_is_false_after_one_cluster_master_loses_its_data(
    open_coord: Callable[[], Coordination], raw_redis: RedisCluster
) -> None:
    """A master that restarts empty loses only its own slots: the operation whose keys
    lived there is gone, so the data loss must be noticed whichever master it was."""
    undetected = []
    for node in raw_redis.get_primaries():
        raw_redis.flushall(target_nodes=RedisCluster.PRIMARIES)
        client = open_coord()
        operation_id = next(
            name
            for name in (f"op-{n}" for n in range(10_000))
            if raw_redis.nodes_manager.get_node_from_slot(key_slot(name.encode())).name == node.name
        )
        client.create_operation(operation_id, workers=("w0",))
        assert client.instance_ok() is True
        raw_redis.flushall(target_nodes=node)  # only this master
        with pytest.raises(UnknownOperation):
            client.get_operation(operation_id)  # its operation is lost...
        if client.instance_ok():  # ...and that must show
            undetected.append(node.name)
    assert undetected == [], f"data loss on master(s) {undetected} went unnoticed"


@redis_only("sqlite")
def test_instance_ok_is_false_after_the_sqlite_file_is_replaced(
    coord: Coordination, op: OperationInfo, coord_url: str
) -> None:
    assert coord.instance_ok() is True
    path = Path(coord_url.removeprefix("sqlite://"))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    assert coord.instance_ok() is False
    with pytest.raises(UnknownOperation):
        coord.get_operation(OP)


def test_close_is_idempotent(open_coord: Callable[[], Coordination]) -> None:
    client = open_coord()
    client.close()
    client.close()


# --- Redis: one slot per operation, scripts safe to run twice --------------------------


def _exercise(coord: Coordination, operation_id: str) -> None:
    """Touch every kind of key an operation has."""
    coord.create_operation(operation_id, workers=("w0", "w1"), stages=("s",))
    lease = coord.acquire(operation_id, "w0", ttl_ms=LONG_TTL_MS)
    coord.renew(lease)
    coord.record(lease, summary(lease, 1))
    coord.repair(operation_id, "w0", [summary(lease, 2)])
    done = coord.acquire(operation_id, "w1", ttl_ms=LONG_TTL_MS)
    coord.mark_worker_done(done)
    coord.publish_plan(operation_id, {"w0": 1})
    coord.restart_fences(operation_id, "w0", 5)
    coord.reclaim_push(operation_id, "w0")
    coord.crashed_workers()
    coord.index_all(operation_id)


def _all_keys(raw: Any) -> list[str]:
    if isinstance(raw, RedisCluster):
        keys = raw.scan_iter(target_nodes=RedisCluster.PRIMARIES)
    else:
        keys = raw.scan_iter()
    return sorted(k.decode() for k in keys)


@redis_only()
def test_keys_of_one_operation_hash_to_one_slot(coord: Coordination, raw_redis: Any) -> None:
    ops = [f"slot-op-{uuid.uuid4().hex[:8]}", f"slot-op-{uuid.uuid4().hex[:8]}"]
    for operation_id in ops:
        _exercise(coord, operation_id)
    keys = _all_keys(raw_redis)
    for operation_id in ops:
        mine = [k for k in keys if operation_id in k]
        assert len(mine) >= 5, keys  # meta, lease, fence, index, plan at least
        assert all(f"{{{operation_id}}}" in k for k in mine), mine
        assert {key_slot(k.encode()) for k in mine} == {key_slot(operation_id.encode())}, mine
    # Keys outside every operation's slot are global (single-key commands only) and few.
    global_keys = [k for k in keys if not any(o in k for o in ops)]
    # (Cluster instance markers carry a tag of their own: one on every master.)
    assert all(
        k.startswith("bbp:") and ("{" not in k or k.startswith("bbp:instance:{"))
        for k in global_keys
    ), global_keys
    assert len(global_keys) <= 8, global_keys


def _state(coord: Coordination, operation_id: str) -> tuple[object, ...]:
    return (
        coord.get_operation(operation_id),
        coord.index_all(operation_id),
        [coord.fence_of(operation_id, w) for w in ("w0", "w1")],
        coord.read_plan(operation_id),
        coord.crashed_workers(),
    )


@redis_only()
def test_state_changing_calls_retried_after_a_timeout_change_nothing(
    open_coord: Callable[[], Coordination],
) -> None:
    coord, other = open_coord(), open_coord()
    coord.create_operation(OP, workers=("w0", "w1"))
    lease = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    entry = summary(lease, 1)
    coord.record(lease, entry)
    before = _state(coord, OP)
    coord.record(lease, entry)  # the retry of a record whose reply was lost
    coord.create_operation(OP, workers=("w0", "w1"))
    assert coord.repair(OP, "w0", [entry]) == 0
    coord.restart_fences(OP, "w0", 1)
    coord.delete_entries(OP, "w0", [7])
    assert _state(coord, OP) == before
    coord.release(lease)
    released = _state(coord, OP)
    with pytest.raises(LeaseLostError):
        coord.release(lease)  # the retry of a release: refused, and no effect
    assert _state(coord, OP) == released
    assert other.acquire(OP, "w0", ttl_ms=LONG_TTL_MS).fence == 2
    with pytest.raises(FencedError):
        coord.record(lease, summary(lease, 2))  # a retried record after a takeover


class _ReplayScripts:
    """Runs every EVAL/EVALSHA twice and returns the second reply: what a client that
    retried a timed-out script call sees when its first try landed."""

    COMMANDS = frozenset({"EVAL", "EVALSHA"})

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.replayed = 0
        for cls in (redis.Redis, RedisCluster):
            original = cls.execute_command
            monkeypatch.setattr(cls, "execute_command", self._wrap(original))

    def _wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def execute_command(client: Any, *args: Any, **options: Any) -> Any:
            if args and str(args[0]).upper() in self.COMMANDS:
                original(client, *args, **options)  # landed; its reply was lost
                self.replayed += 1
            return original(client, *args, **options)

        return execute_command


@redis_only()
def test_lua_scripts_replayed_after_a_lost_reply_give_the_same_result(
    coord: Coordination, monkeypatch: pytest.MonkeyPatch
) -> None:
    replay = _ReplayScripts(monkeypatch)
    info = coord.create_operation(OP, workers=("w0", "w1"))
    assert info.status is OperationStatus.RUNNING
    lease = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)  # not LeaseHeldError
    assert lease.fence == 1 == coord.fence_of(OP, "w0")
    lease = coord.renew(lease)
    coord.record(lease, summary(lease, 1))
    assert coord.index(OP, "w0") == [summary(lease, 1)]
    assert coord.publish_plan(OP, {"n": 1}).generation == 1
    assert coord.read_plan(OP) is not None and coord.get_operation(OP).generation == 1
    assert coord.acquire_leader("coord-a", ttl_ms=LONG_TTL_MS) is True
    coord.restart_fences(OP, "w1", 4)
    assert coord.fence_of(OP, "w1") >= 4
    other = coord.acquire(OP, "w1", ttl_ms=LONG_TTL_MS)
    assert other.fence == coord.fence_of(OP, "w1")
    assert coord.mark_worker_done(other).done_workers == frozenset({"w1"})
    assert replay.replayed > 0, "the backend ran no Lua script"


class _DieAfterFirstScript:
    """Every Redis command after the first Lua script that answers raises
    ConnectionError: the client's process died (or its network went) right after the
    backend applied that script."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = False
        self.dead = False
        for cls in (redis.Redis, RedisCluster):
            monkeypatch.setattr(cls, "execute_command", self._wrap(cls.execute_command))

    def _wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def execute_command(client: Any, *args: Any, **options: Any) -> Any:
            if self.dead:
                raise redis.ConnectionError("simulated: the client is gone")
            reply = original(client, *args, **options)
            if self.armed and args and str(args[0]).upper() in ("EVAL", "EVALSHA"):
                self.dead = True
            return reply

        return execute_command


@redis_only()
def test_a_worker_that_dies_right_after_its_acquire_landed_is_listed_as_crashed(
    open_coord: Callable[[], Coordination], op: OperationInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    dying, scanner = open_coord(), open_coord()
    trap = _DieAfterFirstScript(monkeypatch)
    trap.armed = True
    # It may or may not learn that it holds the lease: it is dead either way.
    with contextlib.suppress(CoordinationError):
        dying.acquire(OP, "w0", ttl_ms=SHORT_TTL_MS)
    assert trap.dead, "acquire ran no Lua script"
    trap.armed = trap.dead = False
    assert scanner.fence_of(OP, "w0") == 1  # the acquisition landed
    time.sleep(EXPIRE_S)
    assert scanner.crashed_workers() == [(OP, "w0")]


# --- multi-process races --------------------------------------------------------------


def _child_acquire(url: str, barrier: Any, results: Any) -> None:
    """Process body: open a client, wait for all, acquire OP/w0 once, report."""
    client = open_coordination(url)
    try:
        barrier.wait(PROC_TIMEOUT_S)
        try:
            lease = client.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
            results.put(("won", lease.fence))
        except LeaseHeldError:
            results.put(("held", 0))
        except BaseException as exc:
            results.put(("error", repr(exc)))
    finally:
        client.close()


def _child_paused_holder(url: str, phase: Any, results: Any) -> None:
    """Process body: acquire OP/w0 (ttl 1000 ms), commit seq 1, then heartbeat every
    ttl/3 until the lease is lost; then try to commit seq 2 and to release, and report.

    ``phase`` is 1 while the process sleeps between heartbeats (outside any call), so
    the test stops it there and not inside a backend transaction.
    """
    client = open_coordination(url)
    try:
        lease = client.acquire(OP, "w0", ttl_ms=1000)
        client.record(lease, summary(lease, 1))
        results.put(("acquired", lease.fence, lease.owner_token))
        deadline = time.monotonic() + PROC_TIMEOUT_S
        while time.monotonic() < deadline:
            phase.value = 1
            time.sleep(lease.ttl_ms / 3000)
            phase.value = 0
            try:
                lease = client.renew(lease)
            except LeaseLostError:
                results.put(("renew", "LeaseLostError"))
                break
        steps: list[tuple[str, Callable[[], object]]] = [
            ("record", lambda: client.record(lease, summary(lease, 2, root="ee" * 32))),
            ("release", lambda: client.release(lease)),
        ]
        for name, call in steps:
            try:
                call()
                results.put((name, "ok"))
            except BaseException as exc:
                results.put((name, type(exc).__name__))
    except BaseException as exc:
        results.put(("error", repr(exc)))
    finally:
        client.close()
        results.put(("exit", 0))


def _child_holder_forever(url: str, ttl_ms: int, results: Any) -> None:
    """Process body: acquire OP/w1 and heartbeat until killed."""
    client = open_coordination(url)
    lease = client.acquire(OP, "w1", ttl_ms=ttl_ms)
    results.put(("acquired", lease.fence))
    while True:
        time.sleep(ttl_ms / 3000)
        lease = client.renew(lease)


def _get(results: Any, procs: list[BaseProcess]) -> tuple[Any, ...]:
    """The next report of one of procs; fails once they all died without sending one."""
    deadline = time.monotonic() + PROC_TIMEOUT_S
    while True:
        try:
            return tuple(results.get(timeout=0.2))
        except queue_module.Empty:
            if time.monotonic() > deadline or not any(p.is_alive() for p in procs):
                break
    try:  # a report sent just before the last one exited
        return tuple(results.get(timeout=1.0))
    except queue_module.Empty:
        codes = [p.exitcode for p in procs]
        raise AssertionError(f"no report from {[p.name for p in procs]} (exit {codes})") from None


def _stop(pid: int) -> None:
    """SIGSTOP pid and wait until the kernel has actually stopped it."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + PROC_TIMEOUT_S
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, f"{pid} did not stop"
        time.sleep(0.001)


def _reap(procs: list[BaseProcess]) -> None:
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.join(PROC_TIMEOUT_S)
        proc.close()


@pytest.fixture
def processes() -> Iterator[list[BaseProcess]]:
    """Processes a test starts; each is killed and reaped afterwards, whatever happens."""
    procs: list[BaseProcess] = []
    yield procs
    _reap(procs)


def test_eight_processes_racing_for_one_lease_have_exactly_one_winner(
    coord: Coordination, coord_url: str, op: OperationInfo, processes: list[BaseProcess]
) -> None:
    barrier = SPAWN.Barrier(8)
    results = SPAWN.Queue()
    for n in range(8):
        racer = SPAWN.Process(
            target=_child_acquire, args=(coord_url, barrier, results), name=f"racer-{n}"
        )
        processes.append(racer)
        racer.start()
    outcomes = [_get(results, processes) for _ in range(8)]
    for proc in processes:
        proc.join(PROC_TIMEOUT_S)
        assert proc.exitcode == 0
    results.close()
    results.join_thread()
    assert sorted(outcomes) == [("held", 0)] * 7 + [("won", 1)], outcomes
    assert coord.fence_of(OP, "w0") == 1


def test_a_holder_paused_past_its_ttl_is_fenced_out_after_a_takeover(
    coord: Coordination, coord_url: str, op: OperationInfo, processes: list[BaseProcess]
) -> None:
    phase = SPAWN.Value("i", 0, lock=False)
    results = SPAWN.Queue()
    proc = SPAWN.Process(target=_child_paused_holder, args=(coord_url, phase, results))
    processes.append(proc)
    proc.start()
    kind, fence, _token = _get(results, processes)
    assert (kind, fence) == ("acquired", 1)
    time.sleep(0.5)  # a few heartbeats: it still holds the slot
    with pytest.raises(LeaseHeldError):
        coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
    assert proc.pid is not None
    while True:  # stop it between two heartbeats, never inside a backend call
        while phase.value != 1:
            time.sleep(0.005)
        _stop(proc.pid)
        if phase.value == 1:
            break
        os.kill(proc.pid, signal.SIGCONT)
    try:
        time.sleep(1.0 + 0.3)  # past its ttl (1000 ms)
        takeover = coord.acquire(OP, "w0", ttl_ms=LONG_TTL_MS)
        assert takeover.fence == 2
        coord.record(takeover, summary(takeover, 2, kind="takeover"))
        before = coord.index(OP, "w0")
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    outcomes = [_get(results, processes) for _ in range(4)]
    proc.join(PROC_TIMEOUT_S)
    results.close()
    results.join_thread()
    assert outcomes == [
        ("renew", "LeaseLostError"),
        ("record", "FencedError"),
        ("release", "LeaseLostError"),
        ("exit", 0),
    ]
    assert proc.exitcode == 0
    assert coord.index(OP, "w0") == before  # nothing the paused process sent landed
    assert [(e.seq, e.kind, e.fence) for e in before] == [(1, "checkpoint", 1), (2, "takeover", 2)]
    assert coord.renew(takeover).fence == 2  # the new owner still holds the slot


def test_a_killed_holder_is_listed_as_crashed_after_its_ttl(
    coord: Coordination, coord_url: str, op: OperationInfo, processes: list[BaseProcess]
) -> None:
    ttl_ms = 500
    results = SPAWN.Queue()
    proc = SPAWN.Process(target=_child_holder_forever, args=(coord_url, ttl_ms, results))
    processes.append(proc)
    proc.start()
    assert _get(results, processes) == ("acquired", 1)
    time.sleep(ttl_ms / 1000 + 0.2)  # heartbeats keep it alive past its first ttl
    assert coord.crashed_workers() == []
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(PROC_TIMEOUT_S)
    killed_at = time.monotonic()
    results.close()
    results.join_thread()
    assert proc.exitcode == -signal.SIGKILL
    deadline = killed_at + ttl_ms / 1000 + 2.0
    while coord.crashed_workers() != [(OP, "w1")]:
        assert time.monotonic() < deadline, coord.crashed_workers()
        time.sleep(0.05)
    assert time.monotonic() - killed_at >= ttl_ms / 1000 / 3  # not before it could expire
    replacement = coord.acquire(OP, "w1", ttl_ms=LONG_TTL_MS)
    assert replacement.fence == 2
    assert coord.crashed_workers() == []
