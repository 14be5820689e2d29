"""A zombie commit between a plan that relaunches a producer and its takeover, then a
consumer crash before the restored producer commits (``policy/restarts.py``), on both
backend pairs, in-process (a crash is a stopped heartbeat, as in tests/test_manager.py).

The scene: producer ``prod`` of channel ``ch`` commits produced 10 and 20 (seqs 2 and 3,
E = 3), consumer ``cons`` consumed 5 and 15. ``prod`` crashes; plan 1 relaunches it at E
(``restarts["prod"]``: the old incarnation's fence). Its old incarnation, paused past
its lease, then commits produced 30 at seq 4: the store takes the record (nobody took
the slot over yet) and so does the index (the slot's owner token and fence are still the
old incarnation's). The
replacement claims the slot (takeover at seq 5) and resumes from E, committing nothing
yet. ``cons`` crashes: plan 2 must keep ``prod`` at E and the watermark at 20, for the
replacement runs from E and will write records 20..30 again, differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from resume_helpers import MakeConfig, Systems, monitored, new_op, record_seqs
from test_manager import HEARTBEAT_S, Adopt, Managers, crash, fast, poll, wait_crashed

from bbp_dist_resume import ResumeSystem, ResumeSystemManager
from bbp_dist_resume.coordination import CheckpointSummary, Coordination
from bbp_dist_resume.policy.plan import RecoveryPlan

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from resume_helpers import probed_s3_prefix, systems_fixture  # noqa: F401
from test_manager import adopt_fixture, coord_fixture, managers_fixture  # noqa: F401

pytestmark = pytest.mark.timeout(60)
PAIR = ["prod", "cons"]
E_SEQ, E_OFFSET = 3, 20  # the producer's latest checkpoint when it crashes
ZOMBIE_SEQ, ZOMBIE_OFFSET = 4, 30  # the dead incarnation's commit after plan 1
TAKEOVER_SEQ = 5
SEEN_S = 2 * HEARTBEAT_S + 0.5  # a survivor's heartbeat has seen a new plan by then


@dataclass
class Scene:
    """The operation after the replacement producer took the slot over."""

    op: str
    mgr: ResumeSystemManager
    consumer: ResumeSystem
    producer: ResumeSystem  # the replacement, resumed from E, no commit yet
    plan1: RecoveryPlan
    rollbacks: list[tuple[int, str | None]] = field(default_factory=list)


def zombie_commit(monkeypatch: pytest.MonkeyPatch, rs: ResumeSystem, coord: Coordination) -> None:
    """``rs``, whose heartbeat stopped and whose lease has expired, commits produced 30
    as a paused process would once it runs again: its local lease checks are switched
    off (as in tests/_zombie_child.py ``bypass``), so only the store and the index could
    refuse it, and neither does (nobody has taken the slot over yet)."""
    session = rs._session
    assert session is not None
    op, fence = session.lease.operation_id, session.lease.fence
    monkeypatch.setattr(session, "check", lambda: session._heartbeat.lease)
    offset = ZOMBIE_OFFSET
    cid = rs.create_checkpoint("produce", {"n": offset}, produced={"ch": offset})
    assert cid == f"{op}/prod/{ZOMBIE_SEQ}"
    assert record_seqs(rs.get_config().store_url, op, "prod") == [1, 2, E_SEQ, ZOMBIE_SEQ]
    indexed = entries(coord, op, "prod")[ZOMBIE_SEQ]
    assert (indexed.kind, indexed.fence, indexed.base) == ("checkpoint", fence, None)
    assert indexed.produced == {"ch": offset}


def entries(coord: Coordination, op: str, worker: str) -> dict[int, CheckpointSummary]:
    return {s.seq: s for s in coord.index(op, worker)}


def published(mgr: ResumeSystemManager, op: str) -> RecoveryPlan:
    plan = mgr.current_plan(op)
    assert plan is not None
    return plan


def replaced_producer(
    make_config: MakeConfig,
    managers: Managers,
    systems: Systems,
    adopt: Adopt,
    monkeypatch: pytest.MonkeyPatch,
    coord: Coordination,
    **consumer: Any,
) -> Scene:
    """The scene of the module docstring, up to the replacement's takeover."""
    cfg, op = fast(make_config), new_op()
    mgr = managers(cfg)
    old = monitored(systems, cfg, op, worker_id="prod", workers=PAIR)
    cons = monitored(systems, fast(make_config, **consumer), op, worker_id="cons", workers=PAIR)
    rollbacks: list[tuple[int, str | None]] = []
    cons.set_rollback_callback(lambda g, cid: rollbacks.append((g, cid)))
    old.create_checkpoint("produce", {"n": 10}, produced={"ch": 10})  # prod/2
    e = old.create_checkpoint("produce", {"n": E_OFFSET}, produced={"ch": E_OFFSET})
    cons.create_checkpoint("consume", {"n": 5}, consumed={"ch": 5})  # cons/2
    cons.create_checkpoint("consume", {"n": 15}, consumed={"ch": 15})  # cons/3
    assert e == f"{op}/prod/{E_SEQ}"
    crash(old)
    wait_crashed(mgr, op)
    assert mgr.attempt_automatic_recovery(op)
    plan1 = published(mgr, op)
    old_fence = entries(coord, op, "prod")[E_SEQ].fence
    assert plan1.relaunched == ("prod",) and plan1.restarts == {"prod": old_fence}
    assert plan1.entries["prod"].checkpoint_id == e
    assert plan1.channels == {"ch": ("prod", E_OFFSET)}
    # After plan 1, before anyone takes the slot over: the dead incarnation commits.
    zombie_commit(monkeypatch, old, coord)
    slot = adopt(mgr.claim("pool"))
    assert slot.worker_id == "prod" and slot.context is not None
    assert slot.context.checkpoint_id == e and dict(slot.context.produced) == {"ch": E_OFFSET}
    takeover = entries(coord, op, "prod")[TAKEOVER_SEQ]
    assert takeover.kind == "takeover" and takeover.fence > old_fence
    return Scene(op, mgr, cons, slot.system, plan1, rollbacks)


def crash_consumer(scene: Scene, coord: Coordination) -> RecoveryPlan:
    """``cons`` dies; the coordinator publishes plan 2, relaunching only it."""
    crash(scene.consumer)
    wait_crashed(scene.mgr, scene.op)
    assert max(entries(coord, scene.op, "prod")) == TAKEOVER_SEQ  # still no commit
    assert scene.mgr.attempt_automatic_recovery(scene.op)
    plan2 = published(scene.mgr, scene.op)
    assert plan2.generation == scene.plan1.generation + 1
    assert plan2.relaunched == ("cons",)
    # The replacement runs from E: plan 2 keeps it there, not at the zombie's commit.
    prod = plan2.entries["prod"]
    assert (prod.checkpoint_id, prod.seq) == (f"{scene.op}/prod/{E_SEQ}", E_SEQ)
    assert prod.rollback is False  # it is at E already: nothing to roll back
    assert plan2.restarts["prod"] == scene.plan1.restarts["prod"]
    assert plan2.channels == {"ch": ("prod", E_OFFSET)}
    return plan2


def first_commit_counts(scene: Scene, coord: Coordination, reader: ResumeSystem) -> None:
    """Liveness: the replacement's first commit (base E) moves the watermark and the
    next plan on, and ends the carried relaunch."""
    cid = scene.producer.create_checkpoint("produce", {"n": 26}, produced={"ch": 26})
    first = TAKEOVER_SEQ + 1
    assert cid == f"{scene.op}/prod/{first}"
    assert entries(coord, scene.op, "prod")[first].base == E_SEQ
    assert reader.committed_offset("ch") == scene.producer.committed_offset("ch") == 26
    plan = scene.mgr.plan_recovery(scene.op)
    assert plan.entries["prod"].seq == first and "prod" not in plan.restarts
    assert plan.channels["ch"] == ("prod", 26)


def test_a_consumer_crash_before_the_restored_producer_commits_keeps_it_at_its_entry(
    make_config: MakeConfig,
    managers: Managers,
    systems: Systems,
    adopt: Adopt,
    coord: Coordination,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A read-committed consumer: plan 1 leaves it running (it read only what E covers).
    scene = replaced_producer(
        make_config, managers, systems, adopt, monkeypatch, coord, read_committed=True
    )
    assert scene.consumer.committed_offset("ch") == E_OFFSET  # the zombie's 30 is not
    plan2 = crash_consumer(scene, coord)
    fences = {w: entries(coord, scene.op, w)[3].fence for w in ("prod", "cons")}
    assert plan2.restarts == fences  # the replaced incarnations' (carried for prod)
    cons = plan2.entries["cons"]
    assert (cons.checkpoint_id, dict(cons.replay_from)) == (f"{scene.op}/cons/3", {"ch": 15})
    assert scene.producer.committed_offset("ch") == E_OFFSET
    slot = adopt(scene.mgr.claim("pool"))
    assert slot.worker_id == "cons" and slot.context is not None
    assert slot.context.checkpoint_id == cons.checkpoint_id
    assert dict(slot.context.consumed) == {"ch": 15}
    assert slot.system.committed_offset("ch") == E_OFFSET
    first_commit_counts(scene, coord, slot.system)


def test_a_consumer_that_read_past_the_entry_is_planned_back_behind_it(
    make_config: MakeConfig,
    managers: Managers,
    systems: Systems,
    adopt: Adopt,
    coord: Coordination,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A consumer that reads at once: plan 1 rolls it back; once the replacement restored
    # E it resumes and reads the replacement's new records 20..25, which no commit of the
    # producer covers yet. Planned from the zombie's commit (30), it would keep them.
    scene = replaced_producer(make_config, managers, systems, adopt, monkeypatch, coord)
    # Its heartbeat saw plan 1 first, so resuming does not race that judgement.
    poll(lambda: scene.rollbacks, SEEN_S, step=0.01)
    assert scene.rollbacks == [(scene.plan1.generation, f"{scene.op}/cons/3")]
    context = scene.consumer.resume_automatically(scene.op)
    assert context is not None and context.checkpoint_id == f"{scene.op}/cons/3"
    read = scene.consumer.create_checkpoint("consume", {"n": 25}, consumed={"ch": 25})
    assert read == f"{scene.op}/cons/4"
    plan2 = crash_consumer(scene, coord)
    fences = {w: entries(coord, scene.op, w)[3].fence for w in ("prod", "cons")}
    assert plan2.restarts == fences  # the consumer resumed in place: the same fence
    cons = plan2.entries["cons"]
    assert (cons.checkpoint_id, dict(cons.replay_from)) == (f"{scene.op}/cons/3", {"ch": 15})
    assert cons.rollback is True and "had consumed 25" in cons.reason
    assert scene.producer.committed_offset("ch") == E_OFFSET
    slot = adopt(scene.mgr.claim("pool"))
    assert slot.worker_id == "cons" and slot.context is not None
    assert slot.context.checkpoint_id == cons.checkpoint_id
    assert dict(slot.context.consumed) == {"ch": 15}
    first_commit_counts(scene, coord, slot.system)
