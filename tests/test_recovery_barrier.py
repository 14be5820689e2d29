"""The recovery barrier and the rollback of survivors (issue 8, part 1), on both backend
pairs, in-process (a crash is a stopped heartbeat, as in tests/test_manager.py).

Each test builds one producer ``w0`` and one consumer ``w1`` of channel ``ch``: the
producer commits ``produced=10``, the consumer ``consumed=5`` (its latest checkpoint is
within what the producer committed: the planner leaves it where it is), then the
producer crashes and the coordinator publishes a plan that relaunches it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from resume_helpers import MakeConfig, Systems, monitored, new_op
from test_manager import (
    HEARTBEAT_S,
    Adopt,
    Managers,
    crash,
    fast,
    poll,
    wait_crashed,
)

from bbp_dist_resume import (
    RecoveryTimeout,
    ResumeContext,
    ResumeSystem,
    ResumeSystemManager,
    RollbackRequested,
)
from bbp_dist_resume.coordination import Coordination
from bbp_dist_resume.errors import BBPError
from bbp_dist_resume.policy import Boundary

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from resume_helpers import probed_s3_prefix, systems_fixture  # noqa: F401
from test_manager import adopt_fixture, coord_fixture, managers_fixture  # noqa: F401

pytestmark = pytest.mark.timeout(120)
PAIR = ["w0", "w1"]
SEEN_S = 2 * HEARTBEAT_S + 0.5  # a survivor's heartbeat has seen a new plan by then
HELD_S = 0.8  # how long a waiting consumer is shown to stay blocked


@dataclass
class Scene:
    op: str
    mgr: ResumeSystemManager
    consumer: ResumeSystem
    generation: int
    rollbacks: list[tuple[int, str | None]] = field(default_factory=list)


def crashed_producer(
    make_config: MakeConfig, managers: Managers, systems: Systems, **consumer: Any
) -> Scene:
    """The scene of the module docstring, up to the published plan."""
    op = new_op()
    mgr = managers(fast(make_config))
    producer = monitored(systems, fast(make_config), op, worker_id="w0", workers=PAIR)
    cons = monitored(systems, fast(make_config, **consumer), op, worker_id="w1", workers=PAIR)
    scene = Scene(op, mgr, cons, 0)
    cons.set_rollback_callback(lambda g, cid: scene.rollbacks.append((g, cid)))
    producer.create_checkpoint("produce", {"n": 10}, produced={"ch": 10})  # w0/2
    cons.create_checkpoint("consume", {"n": 5}, consumed={"ch": 5})  # w1/2
    crash(producer)
    wait_crashed(mgr, op)
    assert mgr.attempt_automatic_recovery(op)
    plan = mgr.current_plan(op)
    assert plan is not None and plan.relaunched == ("w0",)
    assert plan.entries["w1"].checkpoint_id == f"{op}/w1/2"
    assert plan.entries["w1"].rollback is False  # the planner leaves the consumer be
    scene.generation = plan.generation
    return scene


class Waiter:
    """``resume_automatically`` of the consumer in a thread: its outcome and end time."""

    def __init__(self, rs: ResumeSystem, op: str) -> None:
        self.result: ResumeContext | None = None
        self.error: BaseException | None = None
        self.ended = 0.0
        self._thread = threading.Thread(target=self._run, args=(rs, op), daemon=True)
        self._thread.start()

    def _run(self, rs: ResumeSystem, op: str) -> None:
        try:
            self.result = rs.resume_automatically(op)
        except BaseException as exc:
            self.error = exc
        self.ended = time.monotonic()

    def held(self) -> bool:
        self._thread.join(HELD_S)
        return self._thread.is_alive()

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "resume_automatically did not return"


@pytest.fixture
def waiters() -> Callable[[ResumeSystem, str], Waiter]:
    """Start a ``Waiter`` (a daemon thread: one left waiting ends when the systems
    fixture shuts its system down)."""
    return Waiter


def test_a_surviving_consumer_is_rolled_back_within_a_heartbeat_and_every_call_says_so(
    make_config: MakeConfig, managers: Managers, systems: Systems
) -> None:
    scene = crashed_producer(make_config, managers, systems)
    # It is at its latest checkpoint, but read at once: what it read past the producer's
    # commit is gone with the producer's incarnation.
    poll(lambda: scene.rollbacks, SEEN_S, step=0.01)
    assert scene.rollbacks == [(scene.generation, f"{scene.op}/w1/2")]
    rs = scene.consumer
    calls: dict[str, Callable[[], object]] = {
        "ensure_lease": rs.ensure_lease,
        "fencing_token": lambda: rs.fencing_token,
        "create_checkpoint": lambda: rs.create_checkpoint("c", {"n": 6}, consumed={"ch": 6}),
        "checkpoint_if_due": lambda: rs.checkpoint_if_due("c", {"n": 6}, 50.0, Boundary.STAGE),
        "committed_offset": lambda: rs.committed_offset("ch"),
        "complete": rs.complete,
    }
    for name, call in calls.items():
        with pytest.raises(RollbackRequested) as raised:
            call()
        assert raised.value.generation == scene.generation, name
    assert rs.list_checkpoints(scene.op).count(f"{scene.op}/w1/3") == 0


def test_a_read_committed_consumer_is_not_rolled_back_by_its_producers_crash(
    make_config: MakeConfig, managers: Managers, systems: Systems
) -> None:
    scene = crashed_producer(make_config, managers, systems, read_committed=True)
    time.sleep(SEEN_S)  # its heartbeat has read the new plan by now
    assert scene.rollbacks == []
    scene.consumer.ensure_lease()
    cid = scene.consumer.create_checkpoint("c", {"n": 6}, consumed={"ch": 6})
    assert cid == f"{scene.op}/w1/3"


def test_a_rolled_back_consumer_returns_only_once_the_relaunched_producer_restored(
    make_config: MakeConfig,
    managers: Managers,
    systems: Systems,
    adopt: Adopt,
    coord: Coordination,
    waiters: Callable[[ResumeSystem, str], Waiter],
) -> None:
    scene = crashed_producer(make_config, managers, systems)
    poll(lambda: scene.rollbacks, SEEN_S, step=0.01)
    waiter = waiters(scene.consumer, scene.op)
    assert waiter.held(), (waiter.result, waiter.error)
    assert coord.plan_acks(scene.op) == {"w1": scene.generation}  # it acknowledged
    before = time.monotonic()
    slot = adopt(scene.mgr.claim("pool"))
    assert slot.worker_id == "w0" and slot.context is not None
    assert slot.context.checkpoint_id == f"{scene.op}/w0/2"
    waiter.join()
    assert waiter.error is None and waiter.result is not None
    assert waiter.result.checkpoint_id == f"{scene.op}/w1/2"
    assert dict(waiter.result.consumed) == {"ch": 5}
    assert waiter.ended >= before
    assert coord.plan_acks(scene.op) == {"w0": scene.generation, "w1": scene.generation}
    scene.consumer.ensure_lease()  # the rollback is over
    assert scene.consumer.create_checkpoint("c", {"n": 6}, consumed={"ch": 6})


def test_the_barrier_times_out_naming_the_producer_that_never_restored(
    make_config: MakeConfig, managers: Managers, systems: Systems, coord: Coordination
) -> None:
    scene = crashed_producer(make_config, managers, systems, recovery_timeout=1.0)
    began = time.monotonic()
    with pytest.raises(RecoveryTimeout) as raised:
        scene.consumer.resume_automatically(scene.op)
    assert 1.0 <= time.monotonic() - began < 5.0
    assert (raised.value.generation, raised.value.missing) == (scene.generation, ("w0",))
    assert isinstance(raised.value, BBPError) and "w0" in str(raised.value)
    assert coord.plan_acks(scene.op) == {"w1": scene.generation}


def test_a_newer_plan_releases_the_barrier_with_rollback_requested_for_it(
    make_config: MakeConfig,
    managers: Managers,
    systems: Systems,
    adopt: Adopt,
    coord: Coordination,
    waiters: Callable[[ResumeSystem, str], Waiter],
) -> None:
    scene = crashed_producer(make_config, managers, systems)
    waiter = waiters(scene.consumer, scene.op)
    assert waiter.held()
    current = coord.read_plan(scene.op)
    assert current is not None
    newer = coord.publish_plan(scene.op, current.body)  # as after another crash
    waiter.join()
    assert isinstance(waiter.error, RollbackRequested), waiter.error
    assert waiter.error.generation == newer.generation == scene.generation + 1
    assert waiter.error.checkpoint_id == f"{scene.op}/w1/2"
    # Resumed again under the newer plan, it waits for the producer's restore under it.
    again = waiters(scene.consumer, scene.op)
    assert again.held()
    slot = adopt(scene.mgr.claim("pool"))
    assert slot.worker_id == "w0"
    again.join()
    assert again.error is None and again.result is not None
    assert coord.plan_acks(scene.op)["w0"] == newer.generation


def test_on_restored_runs_after_the_restore_and_before_the_acknowledgement(
    make_config: MakeConfig, managers: Managers, systems: Systems, coord: Coordination
) -> None:
    scene = crashed_producer(make_config, managers, systems)
    seen: list[tuple[str | None, dict[str, int], dict[str, int]]] = []

    def on_restored(ctx: ResumeContext | None) -> None:
        assert ctx is not None
        seen.append((ctx.checkpoint_id, dict(ctx.produced), coord.plan_acks(scene.op)))

    relaunched = systems(fast(make_config), "w0")
    relaunched.start_monitoring(scene.op, workers=PAIR)
    ctx = relaunched.resume_automatically(scene.op, on_restored=on_restored)
    assert ctx is not None and ctx.checkpoint_id == f"{scene.op}/w0/2"
    assert seen == [(f"{scene.op}/w0/2", {"ch": 10}, {})]
    assert coord.plan_acks(scene.op) == {"w0": scene.generation}


def test_complete_sees_a_plan_its_heartbeat_has_not_seen_yet(
    make_config: MakeConfig, systems: Systems, coord: Coordination
) -> None:
    # Slow heartbeats: the plan below is published between two of them. Completing is
    # for good, so complete() reads the plan itself and refuses to finish past it.
    slow = {"lease_ttl": 60, "heartbeat_interval": 25}
    op = new_op()
    producer = monitored(systems, make_config(**slow), op, worker_id="w0", workers=PAIR)
    consumer = monitored(systems, make_config(**slow), op, worker_id="w1", workers=PAIR)
    producer.create_checkpoint("produce", {"n": 10}, produced={"ch": 10})  # w0/2
    consumer.create_checkpoint("consume", {"n": 5}, consumed={"ch": 5})  # w1/2
    entries = {
        w: {"checkpoint_id": f"{op}/{w}/2", "seq": 2, "reason": "latest", "rollback": False}
        for w in PAIR
    }
    body = {"entries": entries, "channels": {"ch": ["w0", 10]}, "relaunched": ["w0"]}
    plan = coord.publish_plan(op, body)
    with pytest.raises(RollbackRequested) as raised:
        consumer.complete()
    assert (raised.value.generation, raised.value.checkpoint_id) == (plan.generation, f"{op}/w1/2")
    assert "w1" not in coord.get_operation(op).done_workers
    producer.complete()  # its own entry is where it is: nothing to roll back
    assert coord.get_operation(op).done_workers == {"w0"}
