"""``ResumeSystemManager`` (the coordinator) on both backend pairs: life cycle, crash
detection, plans, relaunching crashed slots (queue, launchers), claims, statistics.

A crash is simulated in-process (``crash``): the worker's heartbeat thread is stopped
without releasing its lease, and the system is never used again. The helpers and
fixtures here are shared with tests/test_manager_recovery.py."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from resume_helpers import MakeConfig, Systems, monitored, new_op, take_over

from bbp_dist_resume import (
    CheckpointConfig,
    ClaimedSlot,
    ConfigError,
    InvalidIdentifier,
    LeaseHeldError,
    ResumeMode,
    ResumeState,
    ResumeSystem,
    ResumeSystemManager,
)
from bbp_dist_resume.coordination import Coordination, open_coordination

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from resume_helpers import probed_s3_prefix, systems_fixture  # noqa: F401

TTL_S, HEARTBEAT_S, SCAN_S = 1.0, 0.3, 0.2  # lease ttl, heartbeat and scan intervals
FAST = {"lease_ttl": 1, "heartbeat_interval": HEARTBEAT_S, "scan_interval": SCAN_S}
EXPIRY_S = TTL_S + 2.0  # a stopped heartbeat's lease has lapsed and a scan has seen it
MARGIN_S = 1.0
STALE_TTLS = 3  # api/claims.py: an unacknowledged claim is claimed again after 3 ttls
Managers = Callable[..., ResumeSystemManager]
Adopt = Callable[[ClaimedSlot | None], ClaimedSlot]


@pytest.fixture(name="managers")
def managers_fixture() -> Iterator[Managers]:
    """``managers(config, coordinator_id=None)``: an initialized manager (shut down after)."""
    made: list[ResumeSystemManager] = []

    def make(config: CheckpointConfig, coordinator_id: str | None = None) -> ResumeSystemManager:
        mgr = ResumeSystemManager(coordinator_id)
        mgr.initialize(config)
        made.append(mgr)
        return mgr

    yield make
    for mgr in reversed(made):
        mgr.shutdown()


@pytest.fixture(name="coord")
def coord_fixture(backend_urls: tuple[str, str]) -> Iterator[Coordination]:
    """A coordination client of its own, to look at the queue and the fences."""
    client = open_coordination(backend_urls[1])
    yield client
    client.close()


@pytest.fixture(name="adopt")
def adopt_fixture() -> Iterator[Callable[[ClaimedSlot | None], ClaimedSlot]]:
    """``adopt(slot)``: the claimed slot (it must be one), its system shut down after."""
    made: list[ResumeSystem] = []

    def adopt(slot: ClaimedSlot | None) -> ClaimedSlot:
        assert isinstance(slot, ClaimedSlot)
        made.append(slot.system)
        return slot

    yield adopt
    for rs in made:
        rs.shutdown()


def fast(make_config: MakeConfig, **overrides: Any) -> CheckpointConfig:
    return make_config(**(FAST | overrides))


def crash(rs: ResumeSystem) -> None:
    """The worker dies: its heartbeat stops, its lease is never released."""
    session = rs._session
    assert session is not None
    session._heartbeat.stop()


def poll(predicate: Callable[[], object], timeout: float, step: float = 0.05) -> float:
    """Seconds until ``predicate()`` was true; fails the test past ``timeout``."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        time.sleep(step)
    return time.monotonic() - start


def wait_crashed(mgr: ResumeSystemManager, op: str) -> None:
    poll(lambda: op in mgr.detect_crashed_operations(), EXPIRY_S)


def queued(coord: Coordination) -> list[tuple[str, str]]:
    """Drain the reclaim queue (claim and acknowledge everything in it)."""
    out = []
    while (claim := coord.reclaim_claim("probe", stale_after_ms=60_000)) is not None:
        out.append((claim.operation_id, claim.worker_id))
        coord.reclaim_ack(claim)
    return out


# -- life cycle ------------------------------------------------------------------------------


def test_a_manager_is_constructible_without_servers_and_validates_its_id(
    make_config: MakeConfig, managers: Managers
) -> None:
    mgr = ResumeSystemManager()
    assert mgr.coordinator_id.startswith("coord-")
    assert mgr.is_leader is False
    assert ResumeSystemManager("coord-a").coordinator_id == "coord-a"
    with pytest.raises(InvalidIdentifier):
        ResumeSystemManager("no/slashes")
    assert managers(fast(make_config)).detect_crashed_operations() == []


def test_get_instance_returns_one_process_wide_manager(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ResumeSystemManager, "_instance", None)
    with ThreadPoolExecutor(8) as pool:  # first calls racing each other
        seen = list(pool.map(lambda _: ResumeSystemManager.get_instance(), range(8)))
    first = ResumeSystemManager.get_instance()
    assert isinstance(first, ResumeSystemManager)
    assert len(seen) == 8 and all(m is first for m in seen)
    assert ResumeSystemManager() is not first


def test_initialize_and_shutdown_are_idempotent_and_shutdown_closes_its_systems(
    make_config: MakeConfig, managers: Managers, systems: Systems
) -> None:
    cfg, op = fast(make_config), new_op()
    mgr = managers(cfg)
    assert mgr.initialize(cfg) is True
    rs = mgr.get_resume_system("w0")
    rs.start_monitoring(op)
    mgr.shutdown()
    mgr.shutdown()
    assert rs.get_current_state() is ResumeState.IDLE
    # Its lease was released, not left to expire: the slot can be taken at once.
    systems(cfg, "w0").start_monitoring(op)
    assert mgr.initialize() is True  # open again, on the same config
    assert mgr.detect_crashed_operations() == []  # it answers: open again
    assert mgr.get_resume_system("w0") is not rs


def test_get_resume_system_is_cached_per_worker_on_the_managers_config(
    make_config: MakeConfig, managers: Managers
) -> None:
    cfg = fast(make_config)
    mgr = managers(cfg)
    w0 = mgr.get_resume_system("w0")
    assert mgr.get_resume_system("w0") is w0
    assert mgr.get_resume_system() is w0  # the default worker is w0
    w1 = mgr.get_resume_system("w1")
    assert w1 is not w0 and w1.worker_id == "w1"
    assert w0.get_config() == cfg
    with pytest.raises(InvalidIdentifier):
        mgr.get_resume_system("bad id")


@pytest.mark.parametrize(
    "launcher",
    [42, None, "", "   ", "run {nope}", "run {0}", "run {operation_id", "run }"],
    ids=["int", "none", "empty", "blank", "unknown-name", "positional", "unclosed", "lone-brace"],
)
def test_register_pipeline_refuses_a_bad_launcher_with_config_error(
    make_config: MakeConfig, managers: Managers, launcher: object
) -> None:
    mgr = managers(fast(make_config))
    with pytest.raises(ConfigError):
        mgr.register_pipeline("pipe", launcher)  # type: ignore[arg-type]
    with pytest.raises(InvalidIdentifier):
        mgr.register_pipeline("bad/id", lambda op, w: None)


# -- detection and planning ------------------------------------------------------------------


def test_detect_crashed_operations_lists_an_expired_lease_not_a_live_or_finished_one(
    make_config: MakeConfig, managers: Managers, systems: Systems
) -> None:
    cfg, op, finished = fast(make_config), new_op(), new_op()
    mgr = managers(cfg)
    pair = ["w0", "w1"]
    dying = monitored(systems, cfg, op, workers=pair)
    monitored(systems, cfg, op, worker_id="w1", workers=pair)
    done = monitored(systems, cfg, finished, workers=pair)
    monitored(systems, cfg, finished, worker_id="w1", workers=pair)
    assert done.complete() is False  # w1 still runs: the operation goes on
    assert mgr.detect_crashed_operations() == []
    crash(dying)
    assert mgr.detect_crashed_operations() == []  # the lease is still live
    wait_crashed(mgr, op)
    assert mgr.detect_crashed_operations() == [op]  # not the one whose w0 completed
    take_over(systems(cfg, "w0"), op)
    assert mgr.detect_crashed_operations() == []  # a live owner again


def test_plan_recovery_rolls_back_a_consumer_ahead_of_its_producers_checkpoint_in_both_modes(
    make_config: MakeConfig, managers: Managers, systems: Systems
) -> None:
    cfg, op = fast(make_config), new_op()
    mgr = managers(cfg)
    trio = ["w0", "w1", "w2"]
    producer = monitored(systems, cfg, op, workers=trio)
    consumer = monitored(systems, cfg, op, worker_id="w1", workers=trio)
    for n, progress in ((10, 90.0), (20, 10.0)):
        producer.create_checkpoint("produce", {"n": n}, produced={"ch": n}, progress=progress)
    for n in (5, 15, 25):
        consumer.create_checkpoint("consume", {"n": n}, consumed={"ch": n})
    plan = mgr.plan_recovery(op)
    assert (plan.operation_id, plan.mode, plan.generation) == (op, "last", 0)
    assert set(plan.entries) == set(trio)
    w0, w1, w2 = (plan.entries[w] for w in trio)
    assert (w0.checkpoint_id, w0.seq, w0.reason) == (f"{op}/w0/3", 3, "latest checkpoint")
    assert (w1.checkpoint_id, w1.seq) == (f"{op}/w1/3", 3)  # consumed 15 <= 20; 25 > 20
    assert "rolled back" in w1.reason and dict(w1.replay_from) == {"ch": 15}
    assert (w2.checkpoint_id, w2.seq) == (None, None)  # never started
    assert "initial state" in w2.reason
    assert dict(plan.channels) == {"ch": ("w0", 20)}
    assert plan.quarantined == {}
    best = mgr.plan_recovery(op, ResumeMode.BEST_CHECKPOINT)  # w0/2 has the most progress
    assert (best.mode, best.entries["w0"].checkpoint_id) == ("best", f"{op}/w0/2")
    assert "90" in best.entries["w0"].reason
    assert best.entries["w1"].checkpoint_id == f"{op}/w1/2"  # consumed 5 <= 10
    assert dict(best.channels) == {"ch": ("w0", 10)}
    assert mgr.current_plan(op) is None  # planned, not published


# -- recovery --------------------------------------------------------------------------------


def test_attempt_automatic_recovery_publishes_and_relaunches_once_per_crash(
    make_config: MakeConfig, managers: Managers, systems: Systems, coord: Coordination
) -> None:
    cfg, op = fast(make_config), new_op()
    mgr = managers(cfg)
    calls: list[tuple[str, str]] = []
    mgr.register_pipeline(op, lambda o, w: calls.append((o, w)))
    with pytest.raises(ConfigError):
        mgr.register_pipeline(op, "bad {placeholder}")  # leaves the callable in place
    pair = ["w0", "w1"]
    first = monitored(systems, cfg, op, workers=pair)
    monitored(systems, cfg, op, worker_id="w1", workers=pair)
    first.create_checkpoint("s", {"n": 1})
    assert mgr.attempt_automatic_recovery(op) is False  # nothing crashed
    assert mgr.current_plan(op) is None
    crash(first)
    wait_crashed(mgr, op)
    assert mgr.attempt_automatic_recovery(op) is True
    plan = mgr.current_plan(op)
    assert plan is not None and plan.generation == 1
    assert plan.entries["w0"].checkpoint_id == f"{op}/w0/2"
    assert calls == [(op, "w0")]
    assert queued(coord) == [(op, "w0")]
    # The same crash again: nothing new to do.
    assert mgr.attempt_automatic_recovery(op) is False
    assert mgr.current_plan(op).generation == 1  # type: ignore[union-attr]
    assert calls == [(op, "w0")]
    assert queued(coord) == []
    # A new crash: the replacement took the slot over and died before committing.
    second = systems(cfg, "w0")
    take_over(second, op)
    crash(second)
    wait_crashed(mgr, op)
    assert mgr.attempt_automatic_recovery(op) is True
    assert mgr.current_plan(op).generation == 2  # type: ignore[union-attr]
    assert calls == [(op, "w0"), (op, "w0")]
    assert queued(coord) == [(op, "w0")]


def test_a_command_template_launcher_runs_for_the_crashed_slot(
    make_config: MakeConfig, managers: Managers, systems: Systems, tmp_path: Path
) -> None:
    cfg, op = fast(make_config), new_op()
    mgr = managers(cfg)
    out = tmp_path / "launched.txt"
    code = "import pathlib, sys; pathlib.Path(sys.argv[3]).write_text(' '.join(sys.argv[1:3]))"
    template = shlex.join([sys.executable, "-c", code]) + " {operation_id} {worker_id} " + str(out)
    calls: list[tuple[str, str]] = []
    assert mgr.register_pipeline("*", template) is True  # every operation's launcher...
    assert mgr.register_pipeline(op, lambda o, w: calls.append((o, w)))  # ...or its own
    mgr.unregister_pipeline(op)
    mgr.unregister_pipeline("never-registered")  # not an error
    crash(monitored(systems, cfg, op))
    wait_crashed(mgr, op)
    assert mgr.attempt_automatic_recovery(op) is True
    poll(lambda: out.is_file() and out.read_text() == f"{op} w0", timeout=15.0)
    assert calls == []
    # Reap the child, or its Popen warns (ResourceWarning) whenever it is collected.
    poll(lambda: all(c.poll() is not None for c in mgr._launches._children), timeout=15.0)


def test_claim_resumes_the_crashed_slot_from_its_plan_entry(
    make_config: MakeConfig,
    managers: Managers,
    systems: Systems,
    coord: Coordination,
    adopt: Adopt,
) -> None:
    cfg, op = fast(make_config), new_op()
    mgr = managers(cfg)
    assert mgr.claim("pool-1") is None  # nothing queued
    rs = monitored(systems, cfg, op)
    rs.create_checkpoint("s", {"n": 1})
    rs.create_checkpoint("s", {"n": 2})
    crash(rs)
    wait_crashed(mgr, op)
    assert mgr.attempt_automatic_recovery(op)
    slot = adopt(mgr.claim("pool-1"))
    assert (slot.operation_id, slot.worker_id, slot.claim.consumer) == (op, "w0", "pool-1")
    plan = mgr.current_plan(op)
    assert plan is not None and slot.context is not None
    assert slot.context.checkpoint_id == plan.entries["w0"].checkpoint_id == f"{op}/w0/3"
    assert dict(slot.context.state) == {"n": 2}
    slot.system.ensure_lease()
    assert slot.system.fencing_token == coord.fence_of(op, "w0")
    with pytest.raises(LeaseHeldError):
        systems(cfg, "w0").start_monitoring(op)
    assert mgr.claim("pool-2") is None  # acknowledged: gone from the queue
    assert slot.system.create_checkpoint("s", {"n": 3}) == f"{op}/w0/5"
    assert mgr.detect_crashed_operations() == []


def test_a_claim_whose_claimant_died_is_claimed_again_after_three_ttls(
    make_config: MakeConfig,
    managers: Managers,
    systems: Systems,
    coord: Coordination,
    adopt: Adopt,
) -> None:
    cfg, op = fast(make_config), new_op()
    mgr = managers(cfg)
    rs = monitored(systems, cfg, op)
    rs.create_checkpoint("s", {"n": 1})
    crash(rs)
    wait_crashed(mgr, op)
    assert mgr.attempt_automatic_recovery(op)
    dead = coord.reclaim_claim("dead-claimant", stale_after_ms=int(STALE_TTLS * TTL_S * 1000))
    claimed_at = time.monotonic()
    assert dead is not None and (dead.operation_id, dead.worker_id) == (op, "w0")
    assert mgr.claim("alive") is None  # not stale yet
    slots: list[ClaimedSlot | None] = []
    poll(lambda: slots.append(mgr.claim("alive")) or slots[-1], STALE_TTLS * TTL_S + 3, 0.1)
    waited = time.monotonic() - claimed_at
    slot = adopt(slots[-1])
    assert waited >= STALE_TTLS * TTL_S - 0.25
    assert (slot.operation_id, slot.worker_id, slot.claim.consumer) == (op, "w0", "alive")
    assert slot.context is not None and slot.context.checkpoint_id == f"{op}/w0/2"
    slot.system.ensure_lease()


# -- statistics ------------------------------------------------------------------------------


def test_global_statistics_count_checkpoints_resumes_and_recoveries_of_every_operation(
    make_config: MakeConfig, managers: Managers, systems: Systems
) -> None:
    cfg, one, two = fast(make_config), new_op(), new_op()
    mgr = managers(cfg)
    a = monitored(systems, cfg, one)
    a.create_checkpoint("scan", {"n": 1})
    a.create_checkpoint("scan", {"n": 2})
    a.stop_monitoring()
    a.start_monitoring(one)  # a resume of w0...
    context = a.resume_automatically(one)
    assert context is not None and context.checkpoint_id == f"{one}/w0/3"
    a.create_checkpoint("enrich", {"n": 3})  # ...that succeeded, from a restored checkpoint
    a.create_checkpoint("enrich", {"n": 4})
    pair = ["w0", "w1"]
    b = monitored(systems, cfg, two, worker_id="w1", workers=pair)
    b.create_checkpoint("scan", {"n": 1})
    b.stop_monitoring()
    b.start_monitoring(two)  # a resume that has not committed (yet): not successful
    monitored(systems, cfg, two, workers=pair).create_checkpoint("scan", {"n": 1})
    stats = mgr.get_global_statistics()
    assert (stats.total_checkpoints_created, stats.checkpoints_used_for_recovery) == (6, 1)
    assert (stats.total_resumes, stats.successful_resumes, stats.failed_resumes) == (2, 1, 1)
    assert dict(stats.stage_resume_counts) == {"enrich": 1}
    assert stats.logical_bytes > 0
