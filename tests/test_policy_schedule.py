"""CheckpointSchedule: every strategy and granularity, driven by a fake clock (never sleeps)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbp_dist_resume.config import CheckpointGranularity, CheckpointStrategy
from bbp_dist_resume.policy.schedule import (
    Boundary,
    CheckpointSchedule,
    SchedulePolicy,
    SystemSample,
    young_daly_interval,
)

S = CheckpointStrategy
G = CheckpointGranularity
B = Boundary


class FakeClock:
    """A list-backed clock: ``times[-1]`` is now; ``advance`` appends a later time."""

    def __init__(self, start: float = 1000.0) -> None:
        self.times = [start]

    def __call__(self) -> float:
        return self.times[-1]

    def advance(self, seconds: float) -> None:
        self.times.append(self.times[-1] + seconds)


def policy(
    strategy: CheckpointStrategy = S.HYBRID,
    granularity: CheckpointGranularity = G.FINE,
    *,
    interval_s: float = 60.0,
    progress_threshold: float = 10.0,
    memory_threshold_mb: float = 512.0,
    mtbf_s: float | None = None,
) -> SchedulePolicy:
    return SchedulePolicy(
        strategy=strategy,
        granularity=granularity,
        interval_s=interval_s,
        progress_threshold=progress_threshold,
        memory_threshold_mb=memory_threshold_mb,
        mtbf_s=mtbf_s,
    )


def schedule(**kw: object) -> tuple[CheckpointSchedule, FakeClock]:
    clock = FakeClock()
    return CheckpointSchedule(policy(**kw), clock=clock), clock  # type: ignore[arg-type]


ALLOWED = {
    G.COARSE: {B.STAGE},
    G.MEDIUM: {B.STAGE, B.TASK},
    G.FINE: {B.STAGE, B.TASK, B.PROGRESS},
}
SAVES_ON_TIME = {S.TIME_BASED: True, S.PROGRESS_BASED: False, S.HYBRID: True, S.MANUAL: False}
SAVES_ON_PROGRESS = {S.TIME_BASED: False, S.PROGRESS_BASED: True, S.HYBRID: True, S.MANUAL: False}
ALL_CASES = [(s, g, b) for s in S for g in G for b in B]


# -- granularity x strategy tables ------------------------------------------------------------


@pytest.mark.parametrize(("strategy", "granularity", "boundary"), ALL_CASES)
def test_a_due_save_happens_only_at_boundaries_the_granularity_allows(
    strategy: CheckpointStrategy, granularity: CheckpointGranularity, boundary: Boundary
) -> None:
    sched, clock = schedule(strategy=strategy, granularity=granularity, mtbf_s=None)
    clock.advance(3600.0)  # past every interval (ADAPTIVE falls back to interval_s)
    decision = sched.decide(boundary, 100.0)
    expected = boundary in ALLOWED[granularity] and strategy is not S.MANUAL
    assert decision.save is expected, decision.reason
    if boundary not in ALLOWED[granularity]:
        assert "skips" in decision.reason


@pytest.mark.parametrize("strategy", list(SAVES_ON_TIME))
@pytest.mark.parametrize("granularity", list(G))
def test_elapsed_time_alone_saves_for_time_based_and_hybrid(
    strategy: CheckpointStrategy, granularity: CheckpointGranularity
) -> None:
    sched, clock = schedule(strategy=strategy, granularity=granularity)
    clock.advance(59.9)
    assert not sched.decide(B.STAGE, 0.0).save
    clock.advance(0.1)
    assert sched.decide(B.STAGE, 0.0).save is SAVES_ON_TIME[strategy]


@pytest.mark.parametrize("strategy", list(SAVES_ON_PROGRESS))
@pytest.mark.parametrize("granularity", list(G))
def test_progress_alone_saves_for_progress_based_and_hybrid(
    strategy: CheckpointStrategy, granularity: CheckpointGranularity
) -> None:
    sched, _ = schedule(strategy=strategy, granularity=granularity)
    assert not sched.decide(B.STAGE, 9.9).save
    assert sched.decide(B.STAGE, 10.0).save is SAVES_ON_PROGRESS[strategy]


def test_coarse_granularity_skips_task_and_progress_boundaries() -> None:
    sched, clock = schedule(granularity=G.COARSE)
    clock.advance(1e6)
    assert not sched.decide(B.TASK, 100.0).save
    assert not sched.decide(B.PROGRESS, 100.0).save
    assert sched.decide(B.STAGE, 100.0).save


def test_medium_granularity_skips_progress_boundaries_only() -> None:
    sched, clock = schedule(granularity=G.MEDIUM)
    clock.advance(1e6)
    assert not sched.decide(B.PROGRESS, 100.0).save
    assert sched.decide(B.TASK, 100.0).save
    assert sched.decide(B.STAGE, 100.0).save


def test_manual_strategy_never_saves_whatever_the_time_and_progress() -> None:
    sched, clock = schedule(strategy=S.MANUAL)
    clock.advance(1e9)
    sample = SystemSample(rss_mb=1e9, load_per_core=0.1)
    assert all(not sched.decide(b, 100.0, sample).save for b in B)


def test_saved_resets_the_time_and_progress_reference() -> None:
    sched, clock = schedule(strategy=S.HYBRID)
    clock.advance(61.0)
    sched.saved(40.0, 0.5)
    assert not sched.decide(B.STAGE, 49.0).save  # 9 points since the save, 0 s
    assert sched.decide(B.STAGE, 50.0).save
    clock.advance(60.0)
    assert sched.decide(B.STAGE, 40.0).save


def test_the_interval_counts_from_construction_before_any_save() -> None:
    sched, clock = schedule(strategy=S.TIME_BASED)
    assert not sched.decide(B.STAGE, 0.0).save
    clock.advance(60.0)
    assert sched.decide(B.STAGE, 0.0).save


def test_set_policy_changes_the_rules_for_the_next_decision() -> None:
    sched, clock = schedule(strategy=S.TIME_BASED)
    clock.advance(30.0)
    assert not sched.decide(B.STAGE, 0.0).save
    sched.set_policy(policy(S.TIME_BASED, interval_s=30.0))
    assert sched.policy.interval_s == 30.0
    assert sched.decide(B.STAGE, 0.0).save


def test_non_adaptive_strategies_ignore_memory_and_load() -> None:
    sched, _ = schedule(strategy=S.HYBRID)
    assert not sched.decide(B.STAGE, 0.0, SystemSample(rss_mb=1e6, load_per_core=0.01)).save


# -- ADAPTIVE ---------------------------------------------------------------------------------


def test_average_cost_is_a_moving_average_of_saved_costs() -> None:
    sched, _ = schedule(strategy=S.ADAPTIVE)
    assert sched.average_cost is None
    sched.saved(1.0, 2.0)
    assert sched.average_cost == 2.0
    sched.saved(2.0, 4.0)
    assert sched.average_cost == pytest.approx(0.3 * 4.0 + 0.7 * 2.0)
    sched.saved(3.0, -5.0)  # a negative measurement counts as 0
    assert sched.average_cost == pytest.approx(0.7 * 2.6)


def test_adaptive_waits_the_young_daly_interval_from_cost_and_mtbf() -> None:
    sched, clock = schedule(strategy=S.ADAPTIVE, mtbf_s=100.0, interval_s=5.0)
    sched.saved(0.0, 2.0)
    assert sched.adaptive_interval() == pytest.approx(math.sqrt(2 * 2.0 * 100.0))
    clock.advance(19.5)
    assert not sched.decide(B.STAGE, 0.0).save
    clock.advance(0.5)
    decision = sched.decide(B.STAGE, 0.0)
    assert decision.save
    assert "adaptive interval 20.0" in decision.reason


def test_adaptive_interval_follows_the_moving_average_cost() -> None:
    sched, _ = schedule(strategy=S.ADAPTIVE, mtbf_s=1000.0)
    sched.saved(0.0, 2.0)
    sched.saved(0.0, 12.0)
    avg = 0.3 * 12.0 + 0.7 * 2.0
    assert sched.adaptive_interval() == pytest.approx(math.sqrt(2 * avg * 1000.0))


def test_configured_mtbf_wins_over_the_observed_one() -> None:
    sched, _ = schedule(strategy=S.ADAPTIVE, mtbf_s=100.0)
    sched.set_observed_mtbf(10_000.0)
    assert sched.mtbf() == 100.0
    sched.saved(0.0, 2.0)
    assert sched.adaptive_interval() == pytest.approx(20.0)


def test_observed_mtbf_is_used_without_a_configured_one() -> None:
    sched, _ = schedule(strategy=S.ADAPTIVE)
    sched.set_observed_mtbf(400.0)
    sched.saved(0.0, 0.5)
    assert sched.mtbf() == 400.0
    assert sched.adaptive_interval() == pytest.approx(20.0)


@pytest.mark.parametrize("bad", [0.0, -3.0, None])
def test_a_non_positive_observed_mtbf_means_unknown(bad: float | None) -> None:
    sched, _ = schedule(strategy=S.ADAPTIVE)
    sched.set_observed_mtbf(50.0)
    sched.set_observed_mtbf(bad)
    assert sched.mtbf() is None


def test_adaptive_falls_back_to_the_time_interval_without_an_mtbf() -> None:
    sched, clock = schedule(strategy=S.ADAPTIVE, interval_s=45.0)
    sched.saved(0.0, 3.0)
    assert sched.adaptive_interval() == 45.0
    clock.advance(44.0)
    assert not sched.decide(B.STAGE, 0.0).save
    clock.advance(1.0)
    assert sched.decide(B.STAGE, 0.0).save


def test_adaptive_falls_back_to_the_time_interval_before_any_cost_is_measured() -> None:
    sched, _ = schedule(strategy=S.ADAPTIVE, interval_s=45.0, mtbf_s=100.0)
    assert sched.adaptive_interval() == 45.0


def test_adaptive_ignores_progress() -> None:
    sched, _ = schedule(strategy=S.ADAPTIVE, interval_s=45.0)
    assert not sched.decide(B.STAGE, 100.0).save


def test_memory_pressure_saves_at_once_then_respects_the_cooldown() -> None:
    sched, clock = schedule(strategy=S.ADAPTIVE, interval_s=1000.0, memory_threshold_mb=512.0)
    sched.saved(0.0, 1.0)  # average cost 1 s: cooldown 10 s
    high = SystemSample(rss_mb=600.0)
    first = sched.decide(B.STAGE, 0.0, high)
    assert first.save
    assert "memory 600 MB" in first.reason
    sched.saved(0.0, 1.0, memory=True)
    clock.advance(9.9)
    assert not sched.memory_pressure(high)
    assert not sched.decide(B.STAGE, 0.0, high).save
    clock.advance(0.1)
    assert sched.memory_pressure(high)
    assert sched.decide(B.STAGE, 0.0, high).save


def test_memory_at_the_threshold_is_not_pressure() -> None:
    sched, _ = schedule(strategy=S.ADAPTIVE, interval_s=1000.0, memory_threshold_mb=512.0)
    assert not sched.memory_pressure(SystemSample(rss_mb=512.0))
    assert not sched.memory_pressure(SystemSample(rss_mb=None))
    assert not sched.memory_pressure(None)
    assert not sched.decide(B.STAGE, 0.0, SystemSample(rss_mb=512.0)).save


def test_memory_pressure_does_not_override_the_granularity() -> None:
    sched, _ = schedule(strategy=S.ADAPTIVE, granularity=G.COARSE, interval_s=1000.0)
    assert not sched.decide(B.TASK, 0.0, SystemSample(rss_mb=1e6)).save


@pytest.mark.parametrize(
    ("load", "factor"), [(None, 1.0), (0.5, 1.0), (1.0, 1.0), (2.0, 2.0), (3.5, 3.5), (10.0, 4.0)]
)
def test_a_saturated_host_stretches_the_adaptive_interval_at_most_four_times(
    load: float | None, factor: float
) -> None:
    sched, clock = schedule(strategy=S.ADAPTIVE, interval_s=10.0)
    sample = SystemSample(load_per_core=load)
    assert sched.adaptive_interval(sample) == pytest.approx(10.0 * factor)
    clock.advance(10.0 * factor - 0.01)
    assert not sched.decide(B.STAGE, 0.0, sample).save
    clock.advance(0.01)
    assert sched.decide(B.STAGE, 0.0, sample).save


def test_young_daly_interval_is_sqrt_two_cost_mtbf() -> None:
    assert young_daly_interval(2.0, 100.0) == pytest.approx(20.0)
    assert young_daly_interval(0.0, 100.0) == 0.0


@pytest.mark.parametrize(("cost", "mtbf"), [(-1.0, 100.0), (1.0, 0.0), (1.0, -5.0)])
def test_young_daly_interval_rejects_negative_cost_and_non_positive_mtbf(
    cost: float, mtbf: float
) -> None:
    with pytest.raises(ValueError, match="MTBF"):
        young_daly_interval(cost, mtbf)


@pytest.mark.parametrize(("cost", "mtbf"), [(math.nan, 100.0), (1.0, math.nan)])
def test_young_daly_interval_rejects_nan(cost: float, mtbf: float) -> None:
    # Regression (policy/schedule.py): `cost < 0` and `mtbf <= 0` are False for NaN.
    with pytest.raises(ValueError, match="MTBF"):
        young_daly_interval(cost, mtbf)


# -- property: HYBRID -------------------------------------------------------------------------

steps = st.lists(
    st.tuples(
        st.sampled_from(["wait", "decide", "save"]),
        st.floats(min_value=0.0, max_value=200.0, allow_nan=False),
        st.floats(min_value=0.0, max_value=100.0, allow_nan=False),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(
    interval=st.floats(min_value=0.001, max_value=300.0),
    threshold=st.floats(min_value=0.001, max_value=100.0),
    boundary=st.sampled_from(list(B)),
    script=steps,
)
def test_hybrid_saves_iff_the_interval_passed_or_progress_rose_enough(
    interval: float,
    threshold: float,
    boundary: Boundary,
    script: list[tuple[str, float, float]],
) -> None:
    clock = FakeClock(start=0.0)
    sched = CheckpointSchedule(
        policy(S.HYBRID, G.FINE, interval_s=interval, progress_threshold=threshold), clock=clock
    )
    last_time, last_progress = clock(), 0.0
    for action, seconds, progress in script:
        if action == "wait":
            clock.advance(seconds)
        elif action == "save":
            sched.saved(progress, seconds / 100)
            last_time, last_progress = clock(), progress
        else:
            expected = clock() - last_time >= interval or progress - last_progress >= threshold
            assert sched.decide(boundary, progress).save is expected
