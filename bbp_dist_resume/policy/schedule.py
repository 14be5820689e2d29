"""When to checkpoint: the five strategies and the three granularities, as pure logic.

``CheckpointSchedule`` answers ``decide(boundary, progress, sample)`` from what it saw of
earlier saves (``saved``) and an injected clock, so every rule is tested without sleeping.

Granularity says which boundaries may save at all: COARSE only stage boundaries, MEDIUM
also task boundaries (a guard's exit, an automatic checkpoint within a stage), FINE also
progress updates. The strategy then says whether it is time:

- TIME_BASED: ``time_interval`` passed since the last save.
- PROGRESS_BASED: progress rose ``progress_threshold`` points since the last save.
- HYBRID: either.
- MANUAL: never (only explicit ``create_checkpoint`` calls save).
- ADAPTIVE: the Young/Daly interval ``sqrt(2 x cost x MTBF)`` passed, with ``cost`` a
  moving average of the measured checkpoint cost and MTBF the failure rate seen (or
  configured); at once when the process memory passes its threshold; the interval is
  stretched while the host is saturated (load per core above 1).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from bbp_dist_resume.config import CheckpointGranularity, CheckpointStrategy

Clock = Callable[[], float]

_COST_WEIGHT = 0.3  # weight of the newest cost in the moving average
_MAX_STRETCH = 4.0  # a saturated host stretches the adaptive interval at most this much
_MEMORY_COOLDOWN_COSTS = 10.0  # memory-triggered saves at most once per 10 checkpoint costs


class Boundary(StrEnum):
    """Where a save is being considered."""

    STAGE = "stage"
    TASK = "task"
    PROGRESS = "progress"


_ALLOWED = {
    CheckpointGranularity.COARSE: frozenset({Boundary.STAGE}),
    CheckpointGranularity.MEDIUM: frozenset({Boundary.STAGE, Boundary.TASK}),
    CheckpointGranularity.FINE: frozenset(Boundary),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulePolicy:
    """The config values a schedule acts on (seconds and percentage points)."""

    strategy: CheckpointStrategy
    granularity: CheckpointGranularity
    interval_s: float
    progress_threshold: float
    memory_threshold_mb: float
    mtbf_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemSample:
    """What the host looks like now (``None``: not measured)."""

    rss_mb: float | None = None
    load_per_core: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SaveDecision:
    """The answer, with the reason (logged, and shown in statistics)."""

    save: bool
    reason: str


def young_daly_interval(cost_s: float, mtbf_s: float) -> float:
    """Young's first-order optimum checkpoint interval, ``sqrt(2 x cost x MTBF)``."""
    if not (cost_s >= 0 and mtbf_s > 0):  # NaN fails both
        raise ValueError("need cost >= 0 and MTBF > 0")
    return math.sqrt(2.0 * cost_s * mtbf_s)


class CheckpointSchedule:
    """One worker's save schedule. Not thread-safe: the caller holds its lock."""

    def __init__(self, policy: SchedulePolicy, clock: Clock = time.monotonic) -> None:
        self._policy = policy
        self._clock = clock
        self._last_time = clock()
        self._last_progress = 0.0
        self._cost: float | None = None
        self._observed_mtbf: float | None = None
        self._last_memory_save: float | None = None

    @property
    def policy(self) -> SchedulePolicy:
        return self._policy

    @property
    def average_cost(self) -> float | None:
        """Moving average of the measured checkpoint cost, seconds."""
        return self._cost

    def set_policy(self, policy: SchedulePolicy) -> None:
        self._policy = policy

    def set_observed_mtbf(self, mtbf_s: float | None) -> None:
        """The mean time between failures seen in the store (None: no failure seen)."""
        self._observed_mtbf = mtbf_s if mtbf_s is None or mtbf_s > 0 else None

    def mtbf(self) -> float | None:
        """The configured MTBF, else the observed one."""
        return self._policy.mtbf_s or self._observed_mtbf

    def saved(self, progress: float, cost_s: float, *, memory: bool = False) -> None:
        """A checkpoint was taken at ``progress``; the caller lost ``cost_s`` to it."""
        now = self._clock()
        self._last_time = now
        self._last_progress = progress
        cost = max(0.0, cost_s)
        self._cost = (
            cost if self._cost is None else (_COST_WEIGHT * cost + (1 - _COST_WEIGHT) * self._cost)
        )
        if memory:
            self._last_memory_save = now

    def adaptive_interval(self, sample: SystemSample | None = None) -> float:
        """The ADAPTIVE strategy's interval now, seconds (``time_interval`` until both a
        cost and an MTBF are known)."""
        mtbf = self.mtbf()
        base = self._policy.interval_s
        if self._cost is not None and mtbf is not None:
            base = young_daly_interval(self._cost, mtbf)
        load = sample.load_per_core if sample else None
        if load is not None and load > 1.0:
            base *= min(load, _MAX_STRETCH)
        return base

    def decide(
        self, boundary: Boundary, progress: float, sample: SystemSample | None = None
    ) -> SaveDecision:
        """Whether to save at this boundary now."""
        if boundary not in _ALLOWED[self._policy.granularity]:
            return SaveDecision(save=False, reason=f"{self._policy.granularity} skips {boundary}")
        strategy = self._policy.strategy
        if strategy is CheckpointStrategy.MANUAL:
            return SaveDecision(save=False, reason="manual strategy")
        if strategy is CheckpointStrategy.ADAPTIVE:
            return self._adaptive(sample)
        elapsed = self._clock() - self._last_time
        if strategy in (CheckpointStrategy.TIME_BASED, CheckpointStrategy.HYBRID) and (
            elapsed >= self._policy.interval_s
        ):
            return SaveDecision(save=True, reason=f"{elapsed:.1f} s since the last checkpoint")
        gained = progress - self._last_progress
        if strategy in (CheckpointStrategy.PROGRESS_BASED, CheckpointStrategy.HYBRID) and (
            gained >= self._policy.progress_threshold
        ):
            return SaveDecision(save=True, reason=f"progress rose {gained:.1f} points")
        return SaveDecision(save=False, reason="not due")

    def memory_pressure(self, sample: SystemSample | None) -> bool:
        """True when the process memory is past the threshold and the cooldown passed."""
        if sample is None or sample.rss_mb is None:
            return False
        if sample.rss_mb <= self._policy.memory_threshold_mb:
            return False
        if self._last_memory_save is None:
            return True
        cooldown = _MEMORY_COOLDOWN_COSTS * (self._cost or 0.0)
        return self._clock() - self._last_memory_save >= cooldown

    def _adaptive(self, sample: SystemSample | None) -> SaveDecision:
        if self.memory_pressure(sample):
            assert sample is not None and sample.rss_mb is not None
            return SaveDecision(save=True, reason=f"memory {sample.rss_mb:.0f} MB over threshold")
        interval = self.adaptive_interval(sample)
        elapsed = self._clock() - self._last_time
        if elapsed >= interval:
            return SaveDecision(
                save=True, reason=f"{elapsed:.1f} s passed the adaptive interval {interval:.1f} s"
            )
        return SaveDecision(save=False, reason="not due")
