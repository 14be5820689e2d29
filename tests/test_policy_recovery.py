"""The recovery line (DESIGN.md, "Best global consistent checkpoint"): tables and properties."""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pytest
from assertions import raises_exactly
from hypothesis import given, settings
from hypothesis import strategies as st
from points import P

from bbp_dist_resume.errors import InvalidCheckpoint
from bbp_dist_resume.policy.recovery import (
    RecoveryLine,
    ResumeSelection,
    live_history,
    recovery_line,
)


def seqs(line: RecoveryLine) -> dict[str, int | None]:
    return {w: c.seq for w, c in line.cuts.items()}


# -- tables -----------------------------------------------------------------------------------


def test_workers_without_checkpoints_start_from_the_initial_state() -> None:
    line = recovery_line({"w0": [], "w1": [P(1, kind="takeover")], "w2": [P(4)]})
    assert seqs(line) == {"w0": None, "w1": None, "w2": 4}
    assert "no checkpoint" in line.cuts["w0"].reason
    assert line.replay_from["w0"] == {}


def test_a_worker_whose_checkpoints_are_all_excluded_starts_from_the_initial_state() -> None:
    line = recovery_line({"w0": [P(1), P(2)]}, excluded={"w0": {1, 2}})
    assert line.seq_of("w0") is None
    assert "no usable checkpoint" in line.cuts["w0"].reason


def test_a_consumer_ahead_of_its_producer_is_rolled_back() -> None:
    producer = [P(1, produced={"c": 5}), P(2, produced={"c": 10})]
    consumer = [P(1, consumed={"c": 3}), P(2, consumed={"c": 8}), P(3, consumed={"c": 12})]
    line = recovery_line({"w0": producer, "w1": consumer})
    assert seqs(line) == {"w0": 2, "w1": 2}
    assert "rolled back" in line.cuts["w1"].reason
    assert line.producers == {"c": "w0"}
    assert line.produced == {"c": 10}
    assert line.replay_from["w1"] == {"c": 8}


def test_a_consumer_is_rolled_back_to_the_initial_state_when_nothing_fits() -> None:
    line = recovery_line({"w0": [P(1, produced={"c": 2})], "w1": [P(1, consumed={"c": 3})]})
    assert seqs(line) == {"w0": 1, "w1": None}
    assert line.replay_from["w1"] == {}


def test_a_consumer_within_its_producer_is_left_alone() -> None:
    line = recovery_line({"w0": [P(1, produced={"c": 5})], "w1": [P(7, consumed={"c": 5})]})
    assert seqs(line) == {"w0": 1, "w1": 7}
    assert line.cuts["w1"].reason == "latest checkpoint"


CHAIN = {
    "w0": [P(1, produced={"a": 10})],
    "w1": [
        P(1, consumed={"a": 5}, produced={"b": 50}),
        P(2, consumed={"a": 9}, produced={"b": 90}),
        P(3, consumed={"a": 12}, produced={"b": 120}),
    ],
    "w2": [
        P(1, consumed={"b": 40}),
        P(2, consumed={"b": 80}),
        P(3, consumed={"b": 100}),
        P(4, consumed={"b": 130}),
    ],
}


def test_a_chain_rolls_back_only_as_far_as_consistency_forces() -> None:
    line = recovery_line(CHAIN)
    assert seqs(line) == {"w0": 1, "w1": 2, "w2": 2}
    assert line.produced == {"a": 10, "b": 90}


def test_a_chain_can_push_the_last_consumer_to_the_initial_state() -> None:
    histories = dict(CHAIN, w0=[P(1, produced={"a": 4})])
    assert seqs(recovery_line(histories)) == {"w0": 1, "w1": None, "w2": None}


def test_a_deterministic_producer_keeps_its_consumers_ahead() -> None:
    line = recovery_line(CHAIN, deterministic={"w0"})
    # w1 stays ahead of w0; w2 still has to fit within w1 (b: 120), which is not declared.
    assert seqs(line) == {"w0": 1, "w1": 3, "w2": 3}


def test_a_deterministic_middle_worker_is_still_rolled_back_by_its_own_producer() -> None:
    line = recovery_line(CHAIN, deterministic={"w1"})
    assert seqs(line) == {"w0": 1, "w1": 2, "w2": 4}


def test_a_cycle_of_channels_settles_on_a_consistent_cut() -> None:
    histories = {
        "w0": [P(s, produced={"a": 10 * s}, consumed={"b": 10 * s + 1}) for s in (1, 2, 3)],
        "w1": [P(s, produced={"b": 10 * s}, consumed={"a": 10 * s}) for s in (1, 2, 3)],
    }
    line = recovery_line(histories)
    assert seqs(line) == {"w0": None, "w1": None}


def test_excluded_seqs_are_skipped() -> None:
    producer = [P(1, produced={"c": 5}), P(2, produced={"c": 10})]
    consumer = [P(1, consumed={"c": 3}), P(2, consumed={"c": 8}), P(3, consumed={"c": 9})]
    line = recovery_line({"w0": producer, "w1": consumer}, excluded={"w0": {2}, "w1": {3}})
    assert seqs(line) == {"w0": 1, "w1": 1}


def test_a_consumer_rolls_back_when_its_producers_only_checkpoint_is_excluded() -> None:
    # Regression (policy/recovery.py, _producers(candidates)): producers are learned only
    # from the non-excluded checkpoints, so once w0's only checkpoint is excluded the
    # channel is unknown and w1 keeps consuming 3 records that w0 (restarting from its
    # initial state, produced 0) never produced again: an inconsistent cut.
    histories = {"w0": [P(1, produced={"c": 5})], "w1": [P(1, consumed={"c": 3})]}
    line = recovery_line(histories, excluded={"w0": {1}})
    assert seqs(line) == {"w0": None, "w1": None}


def test_best_selection_picks_the_most_progress_and_ties_go_to_the_later_seq() -> None:
    history = [P(1, progress=80.0), P(2, progress=80.0), P(3, progress=10.0)]
    line = recovery_line({"w0": history}, selection=ResumeSelection.BEST)
    assert line.seq_of("w0") == 2
    assert "best checkpoint (score 80)" in line.cuts["w0"].reason


def test_best_selection_with_a_custom_score() -> None:
    history = [P(1, progress=80.0, root="r1"), P(2, progress=90.0, root="r2"), P(3, root="r3")]
    scores = {"r1": 5.0, "r2": 1.0, "r3": 2.0}
    line = recovery_line(
        {"w0": history}, selection=ResumeSelection.BEST, score=lambda p: scores[p.root]
    )
    assert line.seq_of("w0") == 1


def test_best_selection_is_still_made_consistent() -> None:
    producer = [P(1, progress=90.0, produced={"c": 5}), P(2, progress=10.0, produced={"c": 20})]
    consumer = [P(1, progress=1.0, consumed={"c": 4}), P(2, progress=99.0, consumed={"c": 15})]
    line = recovery_line({"w0": producer, "w1": consumer}, selection=ResumeSelection.BEST)
    assert seqs(line) == {"w0": 1, "w1": 1}


def test_epochs_align_on_the_latest_epoch_every_tagged_worker_committed() -> None:
    histories = {
        "w0": [P(1, epoch=1), P(2, epoch=2), P(3, epoch=3)],
        "w1": [P(1, epoch=1), P(2, epoch=2), P(3, epoch=2)],
        "w2": [P(5), P(6)],  # not barrier-aligned: stays at its latest
    }
    line = recovery_line(histories)
    assert seqs(line) == {"w0": 2, "w1": 3, "w2": 6}
    assert "epoch" in line.cuts["w0"].reason


def test_no_common_epoch_sends_the_tagged_workers_to_the_initial_state() -> None:
    histories = {"w0": [P(1, epoch=1)], "w1": [P(1, epoch=2)]}
    assert seqs(recovery_line(histories)) == {"w0": None, "w1": None}


def test_live_history_drops_checkpoints_abandoned_by_a_resume() -> None:
    history = [P(4, base=2), P(1), P(3), P(2), P(5), P(6, kind="takeover")]
    assert [p.seq for p in live_history(history)] == [1, 2, 4, 5]


def test_a_base_of_zero_drops_every_earlier_checkpoint() -> None:
    history = [P(1), P(2), P(3, base=0), P(4)]
    assert [p.seq for p in live_history(history)] == [3, 4]


def test_a_dead_incarnation_is_never_a_fallback() -> None:
    history = [P(1), P(2), P(3), P(4, base=2)]
    assert recovery_line({"w0": history}, excluded={"w0": {4}}).seq_of("w0") == 2


def test_two_producers_of_one_channel_are_rejected() -> None:
    histories = {"w0": [P(1, produced={"c": 1})], "w1": [P(1, produced={"c": 2})]}
    exc = raises_exactly(InvalidCheckpoint, lambda: recovery_line(histories))
    assert "'c'" in str(exc)


# -- random histories -------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    histories: dict[str, list[P]]
    producer_of: dict[str, str]  # every channel's one producer (it has >= 1 checkpoint)


@st.composite
def worlds(
    draw: st.DrawFn, max_workers: int = 6, max_points: int = 8, extras: bool = False
) -> World:
    n = draw(st.integers(1, max_workers))
    workers = [f"w{i}" for i in range(n)]
    lengths = {w: draw(st.integers(0, max_points)) for w in workers}
    producer_of: dict[str, str] = {}
    for i, w in enumerate(w for w in workers if lengths[w]):
        for j in range(draw(st.integers(0, 2))):
            producer_of[f"c{i}.{j}"] = w
    consumes = {
        w: [c for c, p in producer_of.items() if p != w and draw(st.booleans())] for w in workers
    }
    histories: dict[str, list[P]] = {}
    for w in workers:
        seq, offsets, points = 0, dict.fromkeys(producer_of, 0), []
        epoch, tagged = 0, extras and draw(st.booleans())
        for _ in range(lengths[w]):
            seq += draw(st.integers(1, 3))
            for c in offsets:
                offsets[c] += draw(st.integers(0, 4))
            epoch += draw(st.integers(0, 1))
            points.append(
                P(
                    seq,
                    progress=float(draw(st.integers(0, 5))),
                    epoch=epoch if tagged else None,
                    base=draw(st.sampled_from([None, None, None, 0, seq // 2])) if extras else None,
                    consumed={c: offsets[c] for c in consumes[w]},
                    produced={c: offsets[c] for c, p in producer_of.items() if p == w},
                    root=f"{w}-{seq}",
                )
            )
        histories[w] = points
    return World(histories, producer_of)


def _off(point: P | None, channel: str, *, produced: bool) -> int:
    if point is None:
        return 0
    return (point.produced if produced else point.consumed).get(channel, 0)


def is_consistent(cut: Mapping[str, P | None], producer_of: Mapping[str, str]) -> bool:
    return all(
        _off(cut[w], c, produced=False) <= _off(cut[p], c, produced=True)
        for c, p in producer_of.items()
        for w in cut
        if w != p
    )


def chosen(world: World, line: RecoveryLine) -> dict[str, P | None]:
    by_seq = {w: {p.seq: p for p in h} for w, h in world.histories.items()}
    return {w: None if cut.seq is None else by_seq[w][cut.seq] for w, cut in line.cuts.items()}


def check_line(world: World, line: RecoveryLine) -> None:
    cut = chosen(world, line)
    assert is_consistent(cut, world.producer_of)
    for c, p in world.producer_of.items():
        assert line.produced.get(c, 0) == _off(cut[p], c, produced=True)
    for w, point in cut.items():
        assert line.replay_from[w] == (dict(point.consumed) if point else {})


def first_violation(
    options: Mapping[str, Sequence[P | None]], lowest: Mapping[str, int], world: World
) -> tuple[int, ...] | None:
    """A consistent cut with every index >= ``lowest`` and one index above it, if any
    (depth-first, pruning each partial cut as soon as one channel is violated)."""
    workers = sorted(options)
    target = tuple(lowest[w] for w in workers)

    def walk(prefix: tuple[int, ...]) -> tuple[int, ...] | None:
        if len(prefix) == len(workers):
            return prefix if prefix != target else None
        w = workers[len(prefix)]
        for i in range(lowest[w], len(options[w])):
            partial = {v: options[v][j] for v, j in zip(workers, (*prefix, i), strict=False)}
            known = {c: p for c, p in world.producer_of.items() if p in partial}
            if is_consistent(partial, known) and (found := walk((*prefix, i))):
                return found
        return None

    return walk(())


@settings(max_examples=300, deadline=None)
@given(world=worlds())
def test_the_line_is_consistent_and_no_consistent_cut_is_later(world: World) -> None:
    """Consistent cuts are closed under the component-wise max (offsets are monotone and
    each channel has one producer), so "every consistent cut <= R" is the same as "no
    consistent cut >= R other than R": that is what the exhaustive search looks for."""
    line = recovery_line(world.histories)
    check_line(world, line)
    options = {w: [None, *sorted(h, key=lambda p: p.seq)] for w, h in world.histories.items()}
    index = {w: [o.seq if o else None for o in options[w]].index(line.seq_of(w)) for w in options}
    assert first_violation(options, index, world) is None


@settings(max_examples=150, deadline=None)
@given(world=worlds(max_workers=4, max_points=4))
def test_every_consistent_cut_is_at_most_the_line_by_brute_force(world: World) -> None:
    line = recovery_line(world.histories)
    options = {w: [None, *sorted(h, key=lambda p: p.seq)] for w, h in world.histories.items()}
    rank = {w: {(o.seq if o else None): i for i, o in enumerate(options[w])} for w in options}
    best = {w: rank[w][line.seq_of(w)] for w in options}
    workers = sorted(options)
    for combo in itertools.product(*(range(len(options[w])) for w in workers)):
        cut = {w: options[w][i] for w, i in zip(workers, combo, strict=True)}
        if is_consistent(cut, world.producer_of):
            assert all(i <= best[w] for w, i in zip(workers, combo, strict=True)), combo


@settings(max_examples=200, deadline=None)
@given(
    world=worlds(extras=True),
    selection=st.sampled_from(list(ResumeSelection)),
    rnd=st.randoms(use_true_random=False),
    data=st.data(),
)
def test_the_line_ignores_the_order_of_histories_and_records(
    world: World, selection: ResumeSelection, rnd: random.Random, data: st.DataObject
) -> None:
    excluded = {
        w: set(data.draw(st.lists(st.sampled_from([p.seq for p in h]), max_size=2)))
        for w, h in world.histories.items()
        if h
    }
    line = recovery_line(world.histories, selection=selection, excluded=excluded)
    names = list(world.histories)
    rnd.shuffle(names)
    shuffled = {w: rnd.sample(world.histories[w], len(world.histories[w])) for w in names}
    assert recovery_line(shuffled, selection=selection, excluded=excluded) == line


@settings(max_examples=200, deadline=None)
@given(world=worlds(), data=st.data())
def test_the_line_is_consistent_with_exclusions(world: World, data: st.DataObject) -> None:
    excluded = {
        w: set(data.draw(st.lists(st.sampled_from([p.seq for p in h]), max_size=3)))
        for w, h in world.histories.items()
        if h
    }
    line = recovery_line(world.histories, excluded=excluded)
    check_line(world, line)
    assert all(line.seq_of(w) not in excluded.get(w, ()) for w in world.histories)


def large_world(seed: int) -> World:
    rnd = random.Random(seed)
    workers = [f"w{i:02d}" for i in range(16)]
    producer_of = {f"c{i}": rnd.choice(workers) for i in range(24)}
    histories: dict[str, list[P]] = {}
    for w in workers:
        mine = [c for c, p in producer_of.items() if p == w]
        reads = [c for c, p in producer_of.items() if p != w and rnd.random() < 0.2]
        produced, consumed, points = dict.fromkeys(mine, 0), dict.fromkeys(reads, 0), []
        for seq in range(1, 51):
            for c in produced:
                produced[c] += rnd.randint(0, 10)
            for c in consumed:
                consumed[c] += rnd.randint(0, 10)
            points.append(P(seq, consumed=dict(consumed), produced=dict(produced)))
        histories[w] = points
    return World(histories, producer_of)


@pytest.mark.parametrize("seed", range(5))
def test_a_large_history_gives_a_consistent_deterministic_line(seed: int) -> None:
    world = large_world(seed)
    line = recovery_line(world.histories)
    check_line(world, line)
    rnd = random.Random(seed + 100)
    names = list(world.histories)
    rnd.shuffle(names)
    shuffled = {w: rnd.sample(world.histories[w], 50) for w in names}
    assert recovery_line(shuffled) == line
    # No single worker can move one checkpoint later and stay consistent.
    cut = chosen(world, line)
    for w, point in cut.items():
        nxt = [p for p in world.histories[w] if point is None or p.seq > point.seq][:1]
        if nxt:
            assert not is_consistent({**cut, w: nxt[0]}, world.producer_of)
