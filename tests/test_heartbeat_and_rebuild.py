"""The heartbeat thread, and the index rebuilt from the store after Redis lost its data."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bbp_dist_resume import CheckpointConfig, CheckpointMeta, open_repository
from bbp_dist_resume.coordination import CheckpointSummary, Coordination, open_coordination
from bbp_dist_resume.coordination.heartbeat import Heartbeat
from bbp_dist_resume.coordination.rebuild import rebuild_from_store
from bbp_dist_resume.errors import LeaseLostError
from bbp_dist_resume.repository import Repository


@pytest.fixture(params=["redis", "sqlite"])
def coord(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordination]:
    if request.param == "redis":
        url = str(request.getfixturevalue("redis_url"))
        redis.Redis.from_url(url).flushdb()
    else:
        url = f"sqlite:///{tmp_path}/coord.db"
    c = open_coordination(url)
    yield c
    c.close()


def test_a_heartbeat_keeps_a_short_lease_alive(coord: Coordination) -> None:
    coord.create_operation("op", workers=["w0"])
    lease = coord.acquire("op", "w0", ttl_ms=600)
    beat = Heartbeat(coord, lease).start()
    try:
        beat.set_progress(42.5)
        time.sleep(1.5)  # well past the ttl: only renewals keep it
        assert not beat.lost.is_set()
        assert beat.check().renewed_at > lease.renewed_at
        assert coord.crashed_workers() == []
        assert coord.get_operation("op").progress == {"w0": 42.5}
    finally:
        beat.stop()


def test_a_heartbeat_sees_its_lease_taken_and_says_lost(coord: Coordination) -> None:
    coord.create_operation("op", workers=["w0"])
    lease = coord.acquire("op", "w0", ttl_ms=300)
    seen: list[str] = []
    beat = Heartbeat(coord, lease, interval=10.0, on_lost=lambda lost: seen.append(lost.worker_id))
    beat.start()
    try:
        # No renewal in time: the thread itself says lost at the deadline, unasked.
        assert beat.lost.wait(1.0) and seen == ["w0"]
        with pytest.raises(LeaseLostError):
            beat.check()
        coord.acquire("op", "w0", ttl_ms=1000)  # someone else may now take the slot
    finally:
        beat.stop()


def test_a_refused_renewal_sets_lost_at_once(coord: Coordination) -> None:
    coord.create_operation("op", workers=["w0"])
    lease = coord.acquire("op", "w0", ttl_ms=2000)
    coord.release(lease)  # as if taken over: the owner token no longer matches
    beat = Heartbeat(coord, lease, interval=0.05).start()
    try:
        assert beat.lost.wait(2.0)
        with pytest.raises(LeaseLostError):
            beat.check()
    finally:
        beat.stop()


def commit(repo: Repository, coord: Coordination, worker: str, n: int) -> None:
    lease = coord.acquire("op", worker, ttl_ms=60_000)
    takeover = repo.takeover("op", worker, owner_token=lease.owner_token, fence=lease.fence)
    coord.record(lease, CheckpointSummary.of(takeover))
    for i in range(n):
        m = repo.write(
            {"s": f"{worker} {i}".encode() * 2000},
            CheckpointMeta(
                operation_id="op",
                worker_id=worker,
                seq=takeover.seq + 1 + i,
                owner_token=lease.owner_token,
                fence=lease.fence,
                stage="scan",
                produced={"c": i},
            ),
        )
        repo.commit(m)
        coord.record(lease, CheckpointSummary.of(m))


def test_redis_data_loss_is_detected_and_the_index_rebuilt_exactly(
    redis_url: str, tmp_path: Path, restart_redis: Callable[[], Any]
) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    coord = open_coordination(redis_url)
    repo = open_repository(None, CheckpointConfig(store_url=f"file://{tmp_path}/store"))
    try:
        coord.create_operation("op", workers=["w0", "w1"])
        commit(repo, coord, "w0", 3)
        commit(repo, coord, "w1", 2)
        before = coord.index_all("op")
        fences = {w: coord.fence_of("op", w) for w in ("w0", "w1")}
        restart_redis()  # SIGKILL, then a new empty server on the same port
        assert not coord.instance_ok()
        report = rebuild_from_store(coord, repo)
        assert coord.instance_ok()
        assert coord.index_all("op") == before
        assert report.entries_added == sum(len(v) for v in before.values())
        for w in ("w0", "w1"):
            assert coord.fence_of("op", w) >= fences[w]
            assert coord.acquire("op", w, ttl_ms=1000).fence > fences[w]
        assert rebuild_from_store(coord, repo).entries_added == 0  # run twice: no change
    finally:
        repo.close()
        coord.close()


def test_rebuilt_slots_without_owner_are_reported_crashed(redis_url: str, tmp_path: Path) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    coord = open_coordination(redis_url)
    repo = open_repository(None, CheckpointConfig(store_url=f"file://{tmp_path}/store"))
    try:
        coord.create_operation("op", workers=["w0"])
        commit(repo, coord, "w0", 1)
        redis.Redis.from_url(redis_url).flushall()
        rebuild_from_store(coord, repo)
        assert coord.crashed_workers() == [("op", "w0")]
    finally:
        repo.close()
        coord.close()
