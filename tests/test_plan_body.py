"""``RecoveryPlan`` (policy/plan.py), pure: the published body round-trips, malformed
bodies are refused, quarantined checkpoints are never planned from, and the plan of any
history is a consistent cut that no single worker could move forward from."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from points import P

from bbp_dist_resume.errors import InvalidCheckpoint
from bbp_dist_resume.policy.plan import PlanEntry, RecoveryPlan, build_plan
from bbp_dist_resume.policy.recovery import ResumeSelection

OP = "op-1"


# -- the body --------------------------------------------------------------------------------

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,12}", fullmatch=True)
offsets = st.dictionaries(ids, st.integers(0, 2**53), max_size=3)


@st.composite
def entries(draw: st.DrawFn, worker: str) -> PlanEntry:
    seq = draw(st.none() | st.integers(1, 10**9))
    return PlanEntry(
        checkpoint_id=None if seq is None else f"{OP}/{worker}/{seq}",
        seq=seq,
        reason=draw(st.text(max_size=40)),
        replay_from=draw(offsets),
    )


@st.composite
def plans(draw: st.DrawFn) -> RecoveryPlan:
    workers = draw(st.lists(ids, unique=True, max_size=6))
    cids = st.builds(lambda w, s: f"{OP}/{w}/{s}", ids, st.integers(1, 10**6))
    return RecoveryPlan(
        operation_id=OP,
        mode=draw(st.sampled_from(["last", "best"])),
        entries={w: draw(entries(w)) for w in workers},
        channels=draw(st.dictionaries(ids, st.tuples(ids, st.integers(0, 2**53)), max_size=4)),
        quarantined=draw(st.dictionaries(cids, st.text(max_size=30), max_size=3)),
        attempts=draw(st.dictionaries(cids, st.integers(0, 1000), max_size=3)),
        restarts=draw(st.dictionaries(ids, st.integers(0, 10**9), max_size=3)),
        generation=draw(st.integers(0, 2**31)),
    )


@settings(max_examples=100, deadline=None)
@given(plan=plans())
def test_a_plan_survives_its_json_body(plan: RecoveryPlan) -> None:
    body = json.loads(json.dumps(plan.to_body()))
    assert body["version"] == 1
    again = RecoveryPlan.from_body(OP, plan.generation, body)
    assert again == plan
    assert again.to_body() == plan.to_body()


def test_the_body_leaves_the_generation_to_the_backend() -> None:
    plan = RecoveryPlan(operation_id=OP, mode="last", entries={}, generation=7)
    assert "generation" not in plan.to_body()
    assert RecoveryPlan.from_body(OP, 3, plan.to_body()).generation == 3


GOOD_ENTRY = {"checkpoint_id": f"{OP}/w0/2", "seq": 2, "reason": "latest", "replay_from": {}}


def body_with(**changes: Any) -> dict[str, Any]:
    return {"version": 1, "mode": "last", "entries": {"w0": dict(GOOD_ENTRY)}} | changes


def entry_with(**changes: Any) -> dict[str, Any]:
    return body_with(entries={"w0": GOOD_ENTRY | changes})


MALFORMED: dict[str, Any] = {
    "not-a-mapping": [],
    "none": None,
    "a-string": "entries",
    "no-entries": {"version": 1, "mode": "last"},
    "entries-a-list": body_with(entries=[GOOD_ENTRY]),
    "entry-a-string": body_with(entries={"w0": "w0/2"}),
    "entry-none": body_with(entries={"w0": None}),
    "entry-without-reason": body_with(entries={"w0": {"checkpoint_id": None, "seq": None}}),
    "entry-without-seq": body_with(entries={"w0": {"checkpoint_id": None, "reason": ""}}),
    "offset-not-a-number": entry_with(replay_from={"ch": "lots"}),
    "offset-none": entry_with(replay_from={"ch": None}),
    "replay-from-a-list": entry_with(replay_from=[["ch", 1]]),
    "channel-pair-too-short": body_with(channels={"ch": ["w0"]}),
    "channel-offset-not-a-number": body_with(channels={"ch": ["w0", "x"]}),
    "quarantined-a-list": body_with(quarantined=[f"{OP}/w0/2"]),
    "attempts-not-a-number": body_with(attempts={f"{OP}/w0/2": "twice"}),
    "restarts-a-list": body_with(restarts=["w0"]),
    "restarts-seq-a-string": body_with(restarts={"w0": "3"}),
    "restarts-seq-a-bool": body_with(restarts={"w0": True}),
    # Fixed: policy/plan.py RecoveryPlan.from_body (lines 73-74) copies ``seq`` and
    # ``checkpoint_id`` unchecked, so a string seq or a numeric checkpoint id is
    # accepted into a PlanEntry typed ``seq: int | None`` / ``checkpoint_id: str | None``
    # (readers such as PlanWatch._watch_plan in api/planwatch.py have to re-check the
    # types themselves).
    "seq-a-string": entry_with(seq="2"),
    "checkpoint-id-a-number": entry_with(checkpoint_id=2),
    # Fixed: policy/plan.py from_body (line 80) takes any sequence as a channel's
    # (producer, offset) pair: the string "w0" is read as producer "w", offset 0.
    "channel-pair-a-string": body_with(channels={"ch": "w0"}),
    # Fixed: policy/plan.py from_body never reads ``version`` (to_body writes PLAN_VERSION):
    # a body of a format this code does not know is parsed as if it were version 1.
    "unknown-version": body_with(version=2),
}


@pytest.mark.parametrize("body", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_body_is_refused_with_invalid_checkpoint(body: Any) -> None:
    with pytest.raises(InvalidCheckpoint, match=OP):
        RecoveryPlan.from_body(OP, 1, body)


def test_a_well_formed_body_parses() -> None:
    plan = RecoveryPlan.from_body(OP, 4, body_with(channels={"ch": ["w0", 9]}))
    assert plan.entries["w0"] == PlanEntry(checkpoint_id=f"{OP}/w0/2", seq=2, reason="latest")
    assert plan.channels == {"ch": ("w0", 9)}
    assert (plan.quarantined, plan.attempts, plan.generation) == ({}, {}, 4)
    assert plan.restarts == {}  # a body written before ``restarts`` existed


# -- quarantine ------------------------------------------------------------------------------


def test_build_plan_never_plans_from_a_quarantined_checkpoint() -> None:
    history = [P(1, kind="takeover"), P(2), P(3), P(4)]
    poison = {f"{OP}/w0/4": "restore failed 3 times"}
    plan = build_plan(OP, {"w0": history}, quarantined=poison, attempts={f"{OP}/w0/4": 3})
    # Behind the worker's latest live checkpoint (the quarantined one): a rollback.
    assert plan.entries["w0"] == PlanEntry(
        checkpoint_id=f"{OP}/w0/3", seq=3, reason="latest checkpoint", rollback=True
    )
    assert plan.quarantined == poison and plan.attempts == {f"{OP}/w0/4": 3}
    both = build_plan(OP, {"w0": history}, quarantined=poison | {f"{OP}/w0/3": "bad"})
    assert both.entries["w0"].seq == 2
    every = {f"{OP}/w0/{s}": "bad" for s in (2, 3, 4)}
    alone = build_plan(OP, {"w0": history}, quarantined=every)
    assert (alone.entries["w0"].checkpoint_id, alone.entries["w0"].seq) == (None, None)
    assert "no usable checkpoint" in alone.entries["w0"].reason


def test_a_quarantined_id_of_another_operation_changes_nothing() -> None:
    plan = build_plan(OP, {"w0": [P(2), P(3)]}, quarantined={"other-op/w0/3": "bad"})
    assert plan.entries["w0"].seq == 3
    assert plan.quarantined == {"other-op/w0/3": "bad"}  # kept in the body all the same


def test_a_quarantined_producer_checkpoint_rolls_its_consumer_back() -> None:
    producer = [P(2, produced={"ch": 5}), P(3, produced={"ch": 10})]
    consumer = [P(2, consumed={"ch": 4}), P(3, consumed={"ch": 9})]
    plan = build_plan(OP, {"w0": producer, "w1": consumer}, quarantined={f"{OP}/w0/3": "bad"})
    assert (plan.entries["w0"].seq, plan.entries["w1"].seq) == (2, 2)
    assert plan.channels == {"ch": ("w0", 5)}
    assert plan.entries["w1"].replay_from == {"ch": 4}


# -- any history: a consistent cut -----------------------------------------------------------


@dataclass(frozen=True)
class World:
    """``producer_of``: the channels some checkpoint says it produces, and by whom (a
    channel whose producer never committed is unknown to the planner, as to this test)."""

    histories: dict[str, list[P]]
    producer_of: dict[str, str]
    quarantined: dict[str, str]


@st.composite
def worlds(draw: st.DrawFn, max_workers: int = 16, max_points: int = 50) -> World:
    """Workers whose offsets only grow; each channel has one producer; takeovers are mixed
    in; a few checkpoints (and ids of another operation) are quarantined."""
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))  # the bulk: seeded, evenly spread
    full = draw(st.booleans())  # the largest worlds, every time it is drawn
    size = max_workers if full else draw(st.integers(1, max_workers))
    workers = [f"w{i:02d}" for i in range(size)]
    channels = [f"c{i}" for i in range(draw(st.integers(1 if full else 0, 8)))]
    producer_of = {c: rnd.choice(workers) for c in channels}
    histories: dict[str, list[P]] = {}
    for w in workers:
        reads = [c for c in channels if producer_of[c] != w and rnd.random() < 0.5]
        writes = [c for c in channels if producer_of[c] == w]
        got = dict.fromkeys(reads, 0)
        put = dict.fromkeys(writes, 0)
        points: list[P] = []
        for _ in range(max_points if full else rnd.randint(0, max_points)):
            seq = len(points) + 1
            if rnd.random() < 0.1:
                points.append(P(seq, kind="takeover"))
                continue
            got = {c: o + rnd.randint(0, 3) for c, o in got.items()}  # a bit slower
            put = {c: o + rnd.randint(0, 4) for c, o in put.items()}
            points.append(P(seq, progress=rnd.uniform(0, 100), consumed=got, produced=put))
        histories[w] = points
    ckpts = [f"{OP}/{w}/{p.seq}" for w, h in histories.items() for p in h if p.kind != "takeover"]
    quarantined = {c: "poison" for c in ckpts if rnd.random() < 0.05}
    known = {c: w for c, w in producer_of.items() if any(c in p.produced for p in histories[w])}
    return World(histories, known, quarantined | {"other-op/w00/1": "elsewhere"})


def at(world: World, worker: str, seq: int | None) -> P | None:
    return None if seq is None else next(p for p in world.histories[worker] if p.seq == seq)


def off(point: P | None, channel: str, *, produced: bool) -> int:
    if point is None:
        return 0
    return (point.produced if produced else point.consumed).get(channel, 0)


def consistent(world: World, cut: Mapping[str, P | None]) -> bool:
    return all(
        off(cut[w], c, produced=False) <= off(cut[p], c, produced=True)
        for c, p in world.producer_of.items()
        for w in cut
        if w != p
    )


@settings(max_examples=60, deadline=None)
@given(world=worlds(), selection=st.sampled_from(list(ResumeSelection)))
def test_the_plan_of_any_history_is_a_consistent_cut_of_usable_checkpoints(
    world: World, selection: ResumeSelection
) -> None:
    plan = build_plan(OP, world.histories, selection=selection, quarantined=world.quarantined)
    assert set(plan.entries) == set(world.histories)
    cut = {w: at(world, w, e.seq) for w, e in plan.entries.items()}
    for w, entry in plan.entries.items():
        point = cut[w]
        if point is None:
            assert entry.checkpoint_id is None
        else:
            assert entry.checkpoint_id == f"{OP}/{w}/{point.seq}"
            assert point.kind == "checkpoint"
            assert entry.checkpoint_id not in world.quarantined
        assert dict(entry.replay_from) == (dict(point.consumed) if point else {})
    assert consistent(world, cut)
    assert dict(plan.channels) == {
        c: (p, off(cut[p], c, produced=True)) for c, p in world.producer_of.items()
    }
    body = json.loads(json.dumps(plan.to_body()))
    assert RecoveryPlan.from_body(OP, 1, body) == dataclasses.replace(plan, generation=1)
    if selection is ResumeSelection.LAST:
        _no_worker_can_move_forward(world, cut)


def _no_worker_can_move_forward(world: World, cut: dict[str, P | None]) -> None:
    """Maximality, one worker at a time: moving any worker to a later usable checkpoint
    breaks consistency (consistent cuts are closed under the component-wise max)."""
    for w, history in world.histories.items():
        now = cut[w].seq if cut[w] is not None else 0  # type: ignore[union-attr]
        for point in history:
            cid = f"{OP}/{w}/{point.seq}"
            if point.kind != "checkpoint" or point.seq <= now or cid in world.quarantined:
                continue
            assert not consistent(world, cut | {w: point}), f"{cid} fits the cut too"
