"""The coordinator recovering an operation, on both backend pairs: surviving workers
rolled back by a new plan (``RollbackRequested``), poison checkpoints quarantined, the
backend's data lost and rebuilt from the store, and ``run()`` with a leader and a standby.

A crash is simulated in-process (tests/test_manager.py: ``crash``): the worker's heartbeat
thread is stopped without releasing its lease, and the system is never used again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from resume_helpers import MakeConfig, Systems, index_seqs, monitored, new_op, record_seqs
from test_manager import (
    EXPIRY_S,
    HEARTBEAT_S,
    MARGIN_S,
    SCAN_S,
    TTL_S,
    Adopt,
    Managers,
    crash,
    fast,
    poll,
    queued,
    wait_crashed,
)

from bbp_dist_resume import (
    CheckpointConfig,
    LeaseLostError,
    ResumeSystem,
    ResumeSystemManager,
    RollbackRequested,
    UnknownOperation,
    open_repository,
)
from bbp_dist_resume.coordination import Coordination, open_coordination

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from resume_helpers import probed_s3_prefix, systems_fixture  # noqa: F401
from test_manager import adopt_fixture, coord_fixture, managers_fixture  # noqa: F401


def lease_lost(rs: ResumeSystem) -> bool:
    try:
        rs.ensure_lease()
    except LeaseLostError:
        return True
    return False


# -- surviving workers rolled back -----------------------------------------------------------


def test_a_consumer_ahead_of_the_surviving_producer_checkpoint_is_rolled_back(
    make_config: MakeConfig, managers: Managers, systems: Systems, adopt: Adopt
) -> None:
    cfg, op = fast(make_config), new_op()
    mgr = managers(cfg)
    trio = ["w0", "w1", "w2"]
    a = monitored(systems, cfg, op, workers=trio)
    b = monitored(systems, cfg, op, worker_id="w1", workers=trio)
    c = monitored(systems, cfg, op, worker_id="w2", workers=trio)
    rollbacks: dict[str, list[tuple[int, str | None]]] = {"w1": [], "w2": []}
    b.set_rollback_callback(lambda g, cid: rollbacks["w1"].append((g, cid)))
    c.set_rollback_callback(lambda g, cid: rollbacks["w2"].append((g, cid)))
    a.create_checkpoint("produce", {"n": 10}, produced={"ch": 10})  # w0/2
    newest = a.create_checkpoint("produce", {"n": 20}, produced={"ch": 20})  # w0/3
    b.create_checkpoint("consume", {"n": 5}, consumed={"ch": 5})  # w1/2
    b.create_checkpoint("consume", {"n": 15}, consumed={"ch": 15})  # w1/3: beyond 10
    c.create_checkpoint("other", {"n": 1})  # w2/2: no channel
    # w0 loses its newest checkpoint, then dies: what survives of it produced only 10.
    assert a._rt is not None
    a._rt.repo.delete_record(op, "w0", 3)
    a._rt.coord.delete_entries(op, "w0", [3])
    assert newest == f"{op}/w0/3"
    crash(a)
    wait_crashed(mgr, op)
    assert mgr.attempt_automatic_recovery(op)
    plan = mgr.current_plan(op)
    assert plan is not None
    assert plan.entries["w0"].checkpoint_id == f"{op}/w0/2"
    assert plan.entries["w1"].checkpoint_id == f"{op}/w1/2"
    assert plan.entries["w2"].checkpoint_id == f"{op}/w2/2"
    within = 2 * HEARTBEAT_S + 0.3  # the next heartbeat sees the new generation
    poll(lambda: rollbacks["w1"], within, step=0.01)
    assert rollbacks["w1"] == [(plan.generation, f"{op}/w1/2")]
    with pytest.raises(RollbackRequested) as raised:
        b.create_checkpoint("consume", {"n": 16}, consumed={"ch": 16})
    assert (raised.value.generation, raised.value.checkpoint_id) == rollbacks["w1"][0]
    with pytest.raises(RollbackRequested):
        b.ensure_lease()
    assert b.list_checkpoints(op).count(f"{op}/w1/4") == 0  # nothing was committed
    # The recovery barrier: w1 goes on only once the relaunched producer restored.
    relaunched = adopt(mgr.claim("pool"))
    assert relaunched.worker_id == "w0" and relaunched.context is not None
    context = b.resume_automatically(op)
    assert context is not None and context.checkpoint_id == f"{op}/w1/2"
    assert dict(context.state) == {"n": 5} and dict(context.consumed) == {"ch": 5}
    b.ensure_lease()
    assert b.create_checkpoint("consume", {"n": 8}, consumed={"ch": 8}) == f"{op}/w1/4"
    # w2's plan entry is its latest checkpoint: it is not asked to roll back.
    time.sleep(within)
    c.ensure_lease()
    assert c.create_checkpoint("other", {"n": 2}) == f"{op}/w2/3"
    assert rollbacks["w2"] == []


# -- poison checkpoints ----------------------------------------------------------------------


def test_a_checkpoint_whose_restorers_die_before_committing_is_quarantined(
    make_config: MakeConfig, managers: Managers, systems: Systems, adopt: Adopt
) -> None:
    cfg, op = fast(make_config, quarantine_after=2), new_op()
    mgr = managers(cfg)
    rs = monitored(systems, cfg, op)
    rs.create_checkpoint("s", {"n": 1})  # w0/2
    poison = rs.create_checkpoint("s", {"n": 2})  # w0/3
    crash(rs)
    for generation in (1, 2):
        wait_crashed(mgr, op)
        assert mgr.attempt_automatic_recovery(op)
        plan = mgr.current_plan(op)
        assert plan is not None and plan.generation == generation
        assert plan.entries["w0"].checkpoint_id == poison
        assert plan.quarantined == {}
        slot = adopt(mgr.claim("pool"))  # takes the slot over, restores the entry...
        assert slot.context is not None and slot.context.checkpoint_id == poison
        crash(slot.system)  # ...and dies before its first commit
    wait_crashed(mgr, op)
    assert mgr.attempt_automatic_recovery(op)
    plan = mgr.current_plan(op)
    assert plan is not None and plan.generation == 3
    assert set(plan.quarantined) == {poison} and plan.attempts[poison] == 2
    assert "restore failed" in plan.quarantined[poison]
    assert plan.entries["w0"].checkpoint_id == f"{op}/w0/2"  # fell back past it
    assert mgr.plan_recovery(op).entries["w0"].seq == 2  # and stays quarantined


def test_a_restorer_that_committed_before_dying_does_not_count_against_its_checkpoint(
    make_config: MakeConfig, managers: Managers, systems: Systems, adopt: Adopt
) -> None:
    cfg, op = fast(make_config, quarantine_after=1), new_op()
    mgr = managers(cfg)
    rs = monitored(systems, cfg, op)
    restored = rs.create_checkpoint("s", {"n": 1})  # w0/2
    crash(rs)
    wait_crashed(mgr, op)
    assert mgr.attempt_automatic_recovery(op)
    slot = adopt(mgr.claim("pool"))
    assert slot.context is not None and slot.context.checkpoint_id == restored
    newer = slot.system.create_checkpoint("s", {"n": 2})  # w0/4, after the takeover at 3
    crash(slot.system)
    wait_crashed(mgr, op)
    assert mgr.attempt_automatic_recovery(op)
    plan = mgr.current_plan(op)
    assert plan is not None
    assert plan.quarantined == {} and restored not in plan.attempts
    assert plan.entries["w0"].checkpoint_id == newer


def test_a_failed_restore_is_counted_once_even_by_a_second_coordinator(
    make_config: MakeConfig, managers: Managers, systems: Systems, adopt: Adopt
) -> None:
    # Fixed: count_failed_restores (api/restores.py, then in manager.py) skipped a crash
    # counted only by this process's ``_handled`` fences; a second coordinator (a standby
    # that became leader, a restarted one) finds the same dead restorer (its takeover is
    # still the slot's last record) and counts it again, so with quarantine_after=2 one
    # failed restore quarantines a good checkpoint and the plan falls back past it.
    cfg, op = fast(make_config, quarantine_after=2), new_op()
    first, second = managers(cfg, "c1"), managers(cfg, "c2")
    rs = monitored(systems, cfg, op)
    good = rs.create_checkpoint("s", {"n": 1})  # w0/2
    crash(rs)
    wait_crashed(first, op)
    assert first.attempt_automatic_recovery(op)  # generation 1
    crash(adopt(first.claim("pool")).system)  # one restore of w0/2 failed
    wait_crashed(first, op)
    assert first.attempt_automatic_recovery(op)  # generation 2 counts it
    assert first.current_plan(op).attempts == {good: 1}  # type: ignore[union-attr]
    # The first coordinator is gone; the second handles the same crash.
    assert second.attempt_automatic_recovery(op)
    plan = second.current_plan(op)
    assert plan is not None and plan.generation == 3
    assert (plan.attempts, plan.quarantined) == ({good: 1}, {})
    assert plan.entries["w0"].checkpoint_id == good


# -- data loss -------------------------------------------------------------------------------


def lose_backend_data(request: pytest.FixtureRequest, coord_url: str) -> None:
    """Redis restarts empty, or the SQLite file is replaced by an empty one. The SQLite
    file goes while the workers' connections are open (their heartbeats hold them): the
    backend notices the file changed (device, inode) on the next call and goes on in the
    new file, as tests/test_coordination_conformance.py checks."""
    if coord_url.startswith("redis"):
        request.getfixturevalue("restart_redis")()
        return
    path = Path(coord_url.removeprefix("sqlite:"))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def store_fences(cfg: CheckpointConfig, op: str, worker: str) -> list[int]:
    repo = open_repository(None, cfg)
    try:
        return [r.fence for r in repo.records(op, worker)]
    finally:
        repo.close()


def test_recover_from_data_loss_rebuilds_the_index_and_fences_every_running_worker(
    make_config: MakeConfig,
    managers: Managers,
    systems: Systems,
    backend_urls: tuple[str, str],
    request: pytest.FixtureRequest,
    adopt: Adopt,
) -> None:
    store_url, coord_url = backend_urls
    cfg, op = fast(make_config), new_op()
    mgr = managers(cfg)
    pair = ["w0", "w1"]
    running = [monitored(systems, cfg, op, worker_id=w, workers=pair) for w in pair]
    for rs in running:
        rs.create_checkpoint("s", {"n": 1})
        rs.create_checkpoint("s", {"n": 2})
    expected = [f"{op}/{w}/{seq}" for w in pair for seq in (2, 3)]
    assert mgr.recover_from_data_loss() is False  # nothing lost yet
    lose_backend_data(request, coord_url)
    with pytest.raises(UnknownOperation):
        index_seqs(coord_url, op, "w0")
    assert mgr.recover_from_data_loss() is True
    assert mgr.recover_from_data_loss() is False  # once
    for w in pair:
        assert index_seqs(coord_url, op, w) == record_seqs(store_url, op, w) == [1, 2, 3]
    reader = systems(cfg, "reader")
    assert reader.list_checkpoints(op) == expected
    for rs in running:  # their leases went with the data: they must stop
        poll(lambda rs=rs: lease_lost(rs), TTL_S + MARGIN_S, step=0.02)
        with pytest.raises(LeaseLostError):
            rs.create_checkpoint("s", {"n": 3})
    coord = open_coordination(coord_url)
    try:
        floors = {w: max(store_fences(cfg, op, w)) for w in pair}
        assert all(coord.fence_of(op, w) >= floors[w] for w in pair)
    finally:
        coord.close()
    # Every slot is treated as crashed, and the queue works again: the slots are resumed.
    assert mgr.detect_crashed_operations() == [op]
    assert mgr.attempt_automatic_recovery(op)
    claimed = [adopt(mgr.claim("pool")) for _ in pair]
    assert sorted(slot.worker_id for slot in claimed) == pair
    for slot in claimed:
        assert slot.system.fencing_token > floors[slot.worker_id]
        assert slot.context is not None
        assert slot.context.checkpoint_id == f"{op}/{slot.worker_id}/3"


# -- the coordinator loop --------------------------------------------------------------------


class Loop:
    """A manager's ``run()`` in a thread, with its own stop event."""

    def __init__(self, mgr: ResumeSystemManager, *, own_event: bool) -> None:
        self.mgr = mgr
        self.stop = threading.Event() if own_event else None
        self.thread = threading.Thread(target=mgr.run, kwargs={"stop": self.stop}, daemon=True)
        self.thread.start()


@pytest.fixture(name="loops")
def loops_fixture() -> Iterator[Callable[..., Loop]]:
    """``loops(mgr, own_event=True)``: a running ``Loop``, stopped after the test."""
    made: list[Loop] = []

    def start(mgr: ResumeSystemManager, *, own_event: bool = True) -> Loop:
        made.append(Loop(mgr, own_event=own_event))
        return made[-1]

    yield start
    for loop in made:
        if loop.stop is not None:
            loop.stop.set()
        loop.mgr.stop()
        loop.thread.join(timeout=5)


@pytest.mark.parametrize("how", ["shutdown", "dies"])
def test_one_coordinator_leads_and_a_standby_takes_over_and_recovers(
    make_config: MakeConfig,
    managers: Managers,
    systems: Systems,
    loops: Callable[..., Loop],
    how: str,
) -> None:
    cfg, op = fast(make_config), new_op()
    calls: dict[str, list[tuple[str, str]]] = {"c1": [], "c2": []}
    running = []
    for name in ("c1", "c2"):
        mgr = managers(cfg, name)
        mgr.register_pipeline("*", lambda o, w, name=name: calls[name].append((o, w)))
        running.append(loops(mgr, own_event=how == "dies"))
    poll(lambda: any(loop.mgr.is_leader for loop in running), TTL_S + MARGIN_S)
    for _ in range(8):  # exactly one leads, and it keeps the lease
        assert [loop.mgr.is_leader for loop in running].count(True) == 1
        time.sleep(SCAN_S / 2)
    leader, standby = sorted(running, key=lambda loop: not loop.mgr.is_leader)
    rs = monitored(systems, cfg, op)
    rs.create_checkpoint("s", {"n": 1})
    crash(rs)
    poll(lambda: calls[leader.mgr.coordinator_id], EXPIRY_S)
    assert calls[leader.mgr.coordinator_id] == [(op, "w0")]
    assert calls[standby.mgr.coordinator_id] == []  # only the leader acts
    if how == "shutdown":
        leader.mgr.shutdown()  # stops its run() and releases the leader lease
    else:
        assert leader.stop is not None
        leader.stop.set()  # its loop ends without releasing anything: the lease lapses
    leader.thread.join(timeout=5)
    assert not leader.thread.is_alive()
    took = poll(lambda: standby.mgr.is_leader, TTL_S + SCAN_S + MARGIN_S, step=0.02)
    assert took <= TTL_S + SCAN_S + MARGIN_S
    # The old leader's record of the crash went with it: the standby recovers the slot.
    poll(lambda: calls[standby.mgr.coordinator_id], EXPIRY_S)
    assert calls[standby.mgr.coordinator_id] == [(op, "w0")]
    plan = standby.mgr.current_plan(op)
    assert plan is not None and plan.generation == 2
    assert calls[leader.mgr.coordinator_id] == [(op, "w0")]


def test_shutdown_stops_a_run_loop_that_was_given_its_own_stop_event(
    make_config: MakeConfig, managers: Managers, loops: Callable[..., Loop]
) -> None:
    # Fixed: api/manager.py run() (line 283, ``stop = stop or self._stop``) watches only the
    # event it was given, and shutdown() (line 93) sets only ``self._stop``: the loop goes
    # on, and its next scan's ``_coordination()`` (line 313) silently initialize()s the
    # manager again (store and backend reopened) and takes the leader lease back, although
    # shutdown() promises to "stop run, give up leadership".
    mgr = managers(fast(make_config), "c1")
    loop = loops(mgr, own_event=True)
    poll(lambda: mgr.is_leader, TTL_S + MARGIN_S)
    mgr.shutdown()
    loop.thread.join(timeout=2 * SCAN_S + MARGIN_S)
    assert not loop.thread.is_alive()
    assert mgr.is_leader is False


def test_a_manager_initialized_again_after_shutdown_can_run_again(
    make_config: MakeConfig, managers: Managers
) -> None:
    # Fixed: api/manager.py shutdown() sets ``self._stop`` (line 93) and nothing clears it
    # (initialize() does not): once shut down, a manager initialized again returns from
    # run() at once, without a single scan (line 287 sees the event set).
    cfg = fast(make_config)
    mgr = managers(cfg, "c1")
    mgr.run(max_scans=1)
    assert mgr.is_leader is True
    mgr.shutdown()
    assert mgr.initialize(cfg) is True
    mgr.run(max_scans=2)
    assert mgr.is_leader is True


def test_a_launcher_that_raises_neither_stops_the_loop_nor_the_other_slots(
    make_config: MakeConfig, managers: Managers, systems: Systems, coord: Coordination
) -> None:
    # Fixed: api/manager.py _relaunch (line 251) catches only OSError and BBPError from a
    # launcher, and run() (line 291) only BBPError: a callable launcher raising anything
    # else (RuntimeError here) aborts the recovery of the operation's other crashed
    # slots (never pushed) and escapes run(), ending the coordinator loop.
    cfg, op = fast(make_config), new_op()
    mgr = managers(cfg)
    launched: list[str] = []

    def broken(o: str, w: str) -> None:
        launched.append(w)
        raise RuntimeError("a bug in the launcher")

    mgr.register_pipeline(op, broken)
    pair = ["w0", "w1"]
    for w in pair:
        crash(monitored(systems, cfg, op, worker_id=w, workers=pair))
    poll(lambda: len([s for s in coord.crashed_workers() if s[0] == op]) == 2, EXPIRY_S)
    mgr.run(max_scans=3)
    assert sorted(launched) == pair
    assert sorted(queued(coord)) == [(op, w) for w in pair]


def test_a_slot_taken_over_after_the_crash_scan_is_not_recovered_again(
    make_config: MakeConfig, managers: Managers, systems: Systems, coord: Coordination
) -> None:
    # The coordinator's scan saw w0 crashed; before it recovered, a replacement took the
    # slot over (a launcher's second process, a supervisor). A plan made from the stale
    # scan would relaunch a live slot and, recording the replacement's fence as the one
    # it replaces, never count the replacement's commits (policy/restarts.py).
    cfg, op = fast(make_config), new_op()
    mgr = managers(cfg)
    rs = monitored(systems, cfg, op)
    rs.create_checkpoint("s", {"n": 1})
    crash(rs)
    wait_crashed(mgr, op)
    stale = [w for o, w in coord.crashed_workers() if o == op]
    assert stale == ["w0"]
    replacement = monitored(systems, cfg, op)
    assert not mgr._recover(op, stale)
    assert mgr.current_plan(op) is None and queued(coord) == []
    # Its commits count as they would have: the next crash is planned from them.
    latest = replacement.create_checkpoint("s", {"n": 2})
    crash(replacement)
    wait_crashed(mgr, op)
    assert mgr.attempt_automatic_recovery(op)
    plan = mgr.current_plan(op)
    assert plan is not None and plan.entries["w0"].checkpoint_id == latest
