"""Redis failover to a replica that missed the last writes: no zombie commit lands.

Replication is asynchronous: a promoted replica may lack the last lease, fence and index
writes, so a fencing counter or a lease can go back in time and two owners can believe
they hold one slot. The store's create-only commit records are the fence (DESIGN.md): a
new owner claims the next seq with a takeover record, and the older owner's next commit
record is refused there, whatever Redis says. These tests run a real primary and replica
(``tests/failover_helpers.py``), make the replica miss chosen writes, kill -9 the primary,
promote the replica behind the address every client uses, and check the store:

- no record of a slot was written by an owner after a newer owner's takeover of it, and
  takeover fences strictly increase along seq (``assert_linear_and_fenced``);
- every listed checkpoint verifies;
- a stale owner stops with ``LeaseLostError`` (its heartbeat finds the lease gone, or the
  store refuses its commit record).

With ``redis_wait_replicas=1`` (WAIT after a lease acquisition) the replica cannot miss
an acquisition a worker goes on with: one it did not acknowledge raises
``CoordinationUnavailable`` and the worker never touches the store, and one it did is
still there after the failover, so the next owner's fence is above it straight from Redis.
The price: no acquisition while the primary has no replica that answers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from failover_helpers import ReplicatedRedis, replicated_redis
from resume_helpers import preprobe
from test_e2e_recovery import assert_linear_and_fenced

from bbp_dist_resume import CheckpointConfig, ResumeSystem, open_repository
from bbp_dist_resume.api import session as session_mod
from bbp_dist_resume.coordination import keys as K
from bbp_dist_resume.coordination import open_coordination
from bbp_dist_resume.errors import ConfigError, CoordinationUnavailable, LeaseLostError

OP = "failover"
WORKER = "w0"
STEP_S = 20.0
# The replica is on loopback and answers in well under a millisecond, but a loaded
# machine (make test runs two workers) can starve it for hundreds: room for that.
WAIT_MS = 2000


@pytest.fixture
def pair(dev_services: ModuleType, tmp_path: Path) -> Iterator[ReplicatedRedis]:
    """A primary, its synced replica, and the failover address in front (all stopped at
    the end, whatever happens)."""
    with replicated_redis(dev_services, tmp_path / "redis") as rr:
        yield rr


@pytest.fixture
def config(pair: ReplicatedRedis, s3_url: str) -> CheckpointConfig:
    """S3 under a fresh prefix and the failover address; strict checkpoints. Heartbeats
    are rare (10 s), so a stale owner meets the store before its heartbeat could tell it."""
    preprobe(s3_url)
    return CheckpointConfig(
        store_url=s3_url,
        coord_url=pair.url,
        lease_ttl=20,
        heartbeat_interval=10,
        strict=True,
        auto_cleanup=False,
    )


@pytest.fixture
def wait_config(config: CheckpointConfig) -> CheckpointConfig:
    """The same, with WAIT for one replica after every lease acquisition."""
    return config.with_changes(redis_wait_replicas=1, redis_wait_timeout_ms=WAIT_MS)


@contextlib.contextmanager
def system(config: CheckpointConfig) -> Iterator[ResumeSystem]:
    rs = ResumeSystem(config, WORKER)
    try:
        yield rs
    finally:
        rs.shutdown()


def start(rs: ResumeSystem) -> ResumeSystem:
    rs.start_monitoring(OP, workers=[WORKER])
    return rs


def store_records(config: CheckpointConfig) -> list[Any]:
    repo = open_repository(None, config)
    try:
        return repo.records(OP, WORKER)
    finally:
        repo.close()


def redis_fence(config: CheckpointConfig) -> int:
    coord = open_coordination(config.coord_url)
    try:
        return coord.fence_of(OP, WORKER)
    finally:
        coord.close()


def assert_store_fenced(config: CheckpointConfig) -> list[Any]:
    """The slot's history is linear and fenced, and every listed checkpoint verifies."""
    records = store_records(config)
    assert_linear_and_fenced(WORKER, records)
    with system(config) as reader:
        listed = reader.list_checkpoints(OP)
        assert listed, "nothing listed"
        assert all(reader.verify_checkpoint(c, deep=True) for c in listed)
    return records


def first_owner_synced(config: CheckpointConfig, pair: ReplicatedRedis) -> None:
    """One owner commits a checkpoint and stops cleanly; the replica has all of it."""
    with system(config) as first:
        start(first).create_checkpoint("s", {"n": 1})
        first.stop_monitoring()
    pair.synced()


def test_replica_promoted_without_a_takeovers_fence_incr_still_fences_the_stale_owner(
    pair: ReplicatedRedis, config: CheckpointConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """The replica misses an owner's acquisition (its fence INCR) and commits; after the
    failover the counter is below the store's, so the next acquire hands out the very fence
    the stale owner holds. The new owner is raised above the store's fence before its
    takeover, and the stale owner's next commit record is refused by the store."""
    first_owner_synced(config, pair)
    pair.detach()
    with system(config) as stale, system(config) as heir:
        start(stale).create_checkpoint("s", {"n": 2})
        stale_fence = stale.fencing_token
        pair.failover()
        assert redis_fence(config) == stale_fence - 1, "the replica has the fence INCR"
        assert max(r.fence for r in store_records(config)) == stale_fence

        with caplog.at_level(logging.WARNING, logger="bbp_dist_resume"):
            start(heir)
        assert f"fence {stale_fence} not above the store's {stale_fence}" in caplog.text
        assert heir.fencing_token > stale_fence

        stale.ensure_lease()  # its local deadline has not passed: it still believes
        with pytest.raises(LeaseLostError, match="taken over"):
            stale.create_checkpoint("s", {"n": 3})
        heir.create_checkpoint("s", {"n": 3})
        heir.complete()
    records = assert_store_fenced(config)
    takeover = next(r for r in records if r.kind == "takeover" and r.fence > stale_fence)
    late = [r.seq for r in records if r.fence == stale_fence and r.seq > takeover.seq]
    assert not late, f"records of the stale owner after the new owner's takeover: {late}"


def test_owner_paused_mid_takeover_across_a_failover_cannot_take_the_slot_from_the_new_owner(
    pair: ReplicatedRedis, config: CheckpointConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The nastiest order: an owner acquires on the primary (fence INCR not replicated),
    checks the store, and pauses before its takeover record; the primary dies. The new
    owner gets the same fence from the promoted replica (nothing in the store shows the
    other one) and takes the slot over. When the paused one wakes, its takeover must not
    land after the new owner's: that would refuse the new owner's next commit and leave
    two takeovers with one fence."""
    first_owner_synced(config, pair)
    pair.detach()
    checked, wake = threading.Event(), threading.Event()
    real = session_mod._fence_above_store

    def pausing(*args: Any, **kwargs: Any) -> Any:
        lease = real(*args, **kwargs)
        if threading.current_thread().name == "paused-owner":
            checked.set()
            assert wake.wait(STEP_S)
        return lease

    monkeypatch.setattr(session_mod, "_fence_above_store", pausing)
    outcome: dict[str, Any] = {}

    def paused_owner(rs: ResumeSystem) -> None:
        try:
            start(rs)
            outcome["fence"] = rs.fencing_token
        except Exception as exc:
            outcome["error"] = exc

    with system(config) as paused, system(config) as heir:
        thread = threading.Thread(target=paused_owner, args=(paused,), name="paused-owner")
        thread.start()
        try:
            assert checked.wait(STEP_S), "the paused owner never reached its takeover"
            pair.failover()
            start(heir)
        finally:
            wake.set()
            thread.join(STEP_S)
        assert "fence" not in outcome, "the paused owner got a session after the failover"
        assert isinstance(outcome.get("error"), LeaseLostError), outcome
        heir.create_checkpoint("s", {"n": 2})
        heir.complete()
    records = assert_store_fenced(config)
    assert records[-1].kind == "checkpoint"


# -- WAIT ------------------------------------------------------------------------------


def test_with_wait_an_acquisition_no_replica_acknowledged_never_reaches_the_store(
    pair: ReplicatedRedis, wait_config: CheckpointConfig
) -> None:
    """The replica misses the acquisition: WAIT answers 0 of 1, the lease is given back
    and the worker stops with CoordinationUnavailable before its takeover record. After
    the failover, acquisitions are refused until the promoted primary has a replica
    again; then the next owner's fence comes straight from Redis, above every fence in
    the store, and its history is linear."""
    first_owner_synced(wait_config, pair)
    before = store_records(wait_config)
    pair.detach()
    with system(wait_config) as worker:
        with pytest.raises(CoordinationUnavailable, match="0 of 1 Redis replicas acknowledged"):
            start(worker)
    assert store_records(wait_config) == before, "the refused worker wrote to the store"
    with contextlib.closing(pair.client(pair.primary)) as primary:
        assert not primary.exists(K.lease(OP, WORKER)), "the refused lease was not given back"

    pair.failover()
    with system(wait_config) as heir:
        with pytest.raises(CoordinationUnavailable, match="0 of 1"):
            start(heir)  # nothing replicates the promoted primary yet
    pair.add_replica()
    with system(wait_config) as heir:
        start(heir)
        # The refused attempt on the promoted primary used fence 2 (and gave it back).
        assert heir.fencing_token == before[-1].fence + 2
        heir.create_checkpoint("s", {"n": 2})
        heir.complete()
    records = assert_store_fenced(wait_config)
    assert [r.fence for r in records if r.kind == "takeover"] == [1, 3]


def test_with_wait_a_failover_right_after_an_acquire_keeps_the_fence_the_worker_holds(
    pair: ReplicatedRedis, wait_config: CheckpointConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """kill -9 of the primary the moment the acquisition returns: the promoted replica
    already has the worker's fence and lease, so the worker goes on through the failover,
    and the next owner gets a fence above it from Redis, with no correction from the store
    (the case the tests above show happening without WAIT)."""
    first_owner_synced(wait_config, pair)
    with system(wait_config) as owner:
        start(owner)
        fence = owner.fencing_token
        with contextlib.closing(pair.client(pair.primary)) as primary:
            token = primary.get(K.lease(OP, WORKER))
        pair.failover()
        with contextlib.closing(pair.client(pair.primary)) as promoted:
            assert int(promoted.get(K.fence(OP, WORKER))) == fence
            assert promoted.get(K.lease(OP, WORKER)) == token
        owner.create_checkpoint("s", {"n": 2})  # its lease and fence are there: it goes on
        owner.stop_monitoring()
    pair.add_replica()
    with system(wait_config) as heir, caplog.at_level(logging.WARNING, logger="bbp_dist_resume"):
        start(heir)
        assert heir.fencing_token == fence + 1
        heir.create_checkpoint("s", {"n": 3})
        heir.complete()
    assert "not above the store's" not in caplog.text
    records = assert_store_fenced(wait_config)
    assert [r.fence for r in records if r.kind == "checkpoint"] == [1, fence, fence + 1]


def test_with_wait_plans_and_done_marks_warn_and_fence_restarts_raise_when_unacknowledged(
    pair: ReplicatedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """The other writes WAIT covers, on a primary whose replica is gone: a published plan
    and a done mark land and log a warning; a fence restart raises. Also after SCRIPT
    FLUSH (the pipelined EVALSHA loads the script again)."""
    coord = open_coordination(pair.url, wait_replicas=1, wait_timeout_ms=WAIT_MS)
    try:
        coord.create_operation(OP, workers=[WORKER])
        lease = coord.acquire(OP, WORKER, ttl_ms=20_000)
        with contextlib.closing(pair.client(pair.primary)) as primary:
            primary.script_flush()
        pair.detach()
        with caplog.at_level(logging.WARNING, logger="bbp_dist_resume"):
            assert coord.publish_plan(OP, {"entries": {}}).generation == 1
            coord.mark_worker_done(lease)
        assert "0 of 1 Redis replicas acknowledged plan 1 of failover" in caplog.text
        assert f"0 of 1 Redis replicas acknowledged {OP}/{WORKER} done" in caplog.text
        with pytest.raises(CoordinationUnavailable, match="the fence restart"):
            coord.restart_fences(OP, WORKER, 7)
    finally:
        coord.close()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (
            {"coord_url": "redis+cluster://127.0.0.1:7000", "redis_wait_replicas": 1},
            "redis_wait_replicas",
        ),
        ({"coord_url": "sqlite:coord.db", "redis_wait_replicas": 1}, "redis_wait_replicas"),
        ({"coord_url": "redis://127.0.0.1:1/0", "redis_wait_replicas": -1}, "redis_wait_replicas"),
        ({"coord_url": "redis://127.0.0.1:1/0", "redis_wait_replicas": 17}, "redis_wait_replicas"),
        ({"redis_wait_timeout_ms": 0}, "redis_wait_timeout_ms"),  # WAIT 0 blocks for ever
        ({"redis_wait_timeout_ms": 60_001}, "redis_wait_timeout_ms"),
    ],
    ids=["cluster", "sqlite", "negative", "too many", "no timeout", "long timeout"],
)
def test_a_wait_option_that_cannot_work_is_a_config_error(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as err:
        CheckpointConfig(**changes)
    assert any(f.startswith(field) for f, _ in err.value.problems), err.value.problems


@pytest.mark.parametrize("url", ["redis+cluster://127.0.0.1:7000", "sqlite:coord.db"])
def test_open_coordination_refuses_wait_on_a_cluster_or_sqlite_before_connecting(
    url: str,
) -> None:
    with pytest.raises(ConfigError, match="not a Cluster, not SQLite"):
        open_coordination(url, wait_replicas=1)


def test_the_wait_fields_come_from_the_environment() -> None:
    config = CheckpointConfig.load(
        env={
            "BBP_COORD_URL": "redis://127.0.0.1:1/0",
            "BBP_REDIS_WAIT_REPLICAS": "2",
            "BBP_REDIS_WAIT_TIMEOUT_MS": "250",
        }
    )
    assert (config.redis_wait_replicas, config.redis_wait_timeout_ms) == (2, 250)
