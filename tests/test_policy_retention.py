"""select_expired: which of one worker's checkpoints retention deletes (pure)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from bbp_dist_resume.policy.retention import RetentionEntry, RetentionRule, select_expired

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def cp(seq: int, age: timedelta = timedelta(0), kind: str = "checkpoint") -> RetentionEntry:
    return RetentionEntry(seq=seq, kind=kind, created_at=NOW - age)


def rule(keep: int = 3, age: timedelta = DAY) -> RetentionRule:
    return RetentionRule(max_checkpoints=keep, cleanup_age=age)


def test_nothing_to_delete_in_an_empty_history() -> None:
    assert select_expired([], rule(), now=NOW) == []


def test_keeps_the_newest_max_checkpoints_and_deletes_the_rest_ascending() -> None:
    entries = [cp(s) for s in (5, 1, 4, 2, 3)]
    assert select_expired(entries, rule(keep=2), now=NOW) == [1, 2, 3]


def test_newest_is_by_seq_not_by_input_order_or_timestamp() -> None:
    entries = [cp(3, age=timedelta(hours=1)), cp(1), cp(2, age=timedelta(hours=2))]
    assert select_expired(entries, rule(keep=1), now=NOW) == [1, 2]


def test_removes_checkpoints_older_than_cleanup_age_even_within_the_count() -> None:
    entries = [cp(1, age=3 * DAY), cp(2, age=2 * DAY), cp(3, age=timedelta(hours=1)), cp(4)]
    assert select_expired(entries, rule(keep=10), now=NOW) == [1, 2]


def test_a_checkpoint_exactly_cleanup_age_old_is_kept() -> None:
    entries = [cp(1, age=DAY), cp(2)]
    assert select_expired(entries, rule(keep=10), now=NOW) == []


def test_never_deletes_the_newest_checkpoint_however_old() -> None:
    entries = [cp(1, age=30 * DAY), cp(2, age=20 * DAY)]
    assert select_expired(entries, rule(keep=1), now=NOW) == [1]


def test_never_deletes_a_protected_seq() -> None:
    entries = [cp(s, age=10 * DAY) for s in range(1, 6)]
    assert select_expired(entries, rule(keep=1), now=NOW, protected={2, 4}) == [1, 3]


def test_never_returns_takeover_records() -> None:
    entries = [
        cp(1, age=9 * DAY),
        cp(2, age=9 * DAY, kind="takeover"),
        cp(3, age=9 * DAY),
        cp(4, kind="takeover"),
        cp(5),
    ]
    assert select_expired(entries, rule(keep=1), now=NOW) == [1, 3]


def test_takeover_records_do_not_count_towards_max_checkpoints() -> None:
    entries = [cp(1), cp(2, kind="takeover"), cp(3, kind="takeover"), cp(4)]
    assert select_expired(entries, rule(keep=2), now=NOW) == []


def test_a_newest_takeover_does_not_expose_the_newest_checkpoint() -> None:
    entries = [cp(1, age=9 * DAY), cp(2, age=9 * DAY), cp(3, kind="takeover")]
    assert select_expired(entries, rule(keep=1), now=NOW) == [1]


def test_protected_seqs_still_count_towards_max_checkpoints() -> None:
    # 3 is protected and among the newest 2: only 4 and 3 survive the count, 1 and 2 go.
    entries = [cp(s) for s in (1, 2, 3, 4)]
    assert select_expired(entries, rule(keep=2), now=NOW, protected={3}) == [1, 2]


# -- properties -------------------------------------------------------------------------------


@st.composite
def histories(draw: st.DrawFn) -> list[RetentionEntry]:
    seqs = draw(st.lists(st.integers(1, 200), unique=True, max_size=25))
    out = []
    for seq in seqs:
        kind = draw(st.sampled_from(["checkpoint", "checkpoint", "checkpoint", "takeover"]))
        age = timedelta(minutes=draw(st.integers(0, 5 * 24 * 60)))
        out.append(cp(seq, age=age, kind=kind))
    return out


rules = st.builds(
    RetentionRule,
    max_checkpoints=st.integers(1, 30),
    cleanup_age=st.integers(1, 4 * 24 * 60).map(lambda m: timedelta(minutes=m)),
)


@settings(max_examples=300, deadline=None)
@given(entries=histories(), r=rules, data=st.data())
def test_retention_invariants(
    entries: list[RetentionEntry], r: RetentionRule, data: st.DataObject
) -> None:
    seqs = [e.seq for e in entries]
    protected = set(data.draw(st.lists(st.sampled_from(seqs), max_size=5))) if seqs else set()
    out = select_expired(entries, r, now=NOW, protected=protected)

    checkpoints = sorted((e for e in entries if e.kind == "checkpoint"), key=lambda e: e.seq)
    by_seq = {e.seq: e for e in checkpoints}
    assert out == sorted(set(out))
    assert set(out) <= set(by_seq), "only checkpoints are deleted, never takeovers"
    assert not set(out) & protected
    if checkpoints:
        assert checkpoints[-1].seq not in out
    newest_n = {e.seq for e in checkpoints[-r.max_checkpoints :]}
    for e in checkpoints:
        exempt = e.seq in protected or e == checkpoints[-1]
        due = e.seq not in newest_n or NOW - e.created_at > r.cleanup_age
        assert (e.seq in out) == (due and not exempt), e


@settings(max_examples=200, deadline=None)
@given(entries=histories(), r=rules)
def test_retention_keeps_at_least_the_newest_and_at_most_max_young_ones(
    entries: list[RetentionEntry], r: RetentionRule
) -> None:
    out = set(select_expired(entries, r, now=NOW))
    kept = [e for e in entries if e.kind == "checkpoint" and e.seq not in out]
    if any(e.kind == "checkpoint" for e in entries):
        assert kept
    assert len(kept) <= max(1, r.max_checkpoints)
    newest = max((e.seq for e in kept), default=None)
    assert all(NOW - e.created_at <= r.cleanup_age for e in kept if e.seq != newest)


@settings(max_examples=100, deadline=None)
@given(entries=histories(), r=rules, rnd=st.randoms(use_true_random=False))
def test_retention_ignores_the_input_order(
    entries: list[RetentionEntry], r: RetentionRule, rnd: random.Random
) -> None:
    shuffled = list(entries)
    rnd.shuffle(shuffled)
    assert select_expired(shuffled, r, now=NOW) == select_expired(entries, r, now=NOW)
