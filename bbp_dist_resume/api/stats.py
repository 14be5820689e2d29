"""``StatsRecorder``: the measurements behind ``ResumeStatistics``, and the advice drawn
from them."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from bbp_dist_resume.api.models import ResumeStatistics
from bbp_dist_resume.policy import young_daly_interval
from bbp_dist_resume.repository import RepositoryStats

_RECENT = 20
_HIGH_OVERHEAD = 10.0  # percent of monitored time


class StatsRecorder:
    """Thread-safe counters of one ``ResumeSystem``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset(RepositoryStats())

    def reset(self, repo_now: RepositoryStats) -> None:
        """Start over; byte counts are measured from ``repo_now`` on."""
        with self._lock:
            self._created = datetime.now(UTC)
            self._repo_base = repo_now
            self._resumes = Counter[str]()
            self._recovery_s = 0.0
            self._stages = Counter[str]()
            self._failures: deque[str] = deque(maxlen=_RECENT)
            self._checkpoints = Counter[str]()
            self._blocked_s = 0.0
            self._checkpoint_s = 0.0
            self._monitored_s = 0.0
            self._monitor_since: float | None = None

    # -- events --------------------------------------------------------------------------

    def monitoring(self, on: bool) -> None:
        with self._lock:
            now = time.monotonic()
            if self._monitor_since is not None:
                self._monitored_s += now - self._monitor_since
            self._monitor_since = now if on else None

    def blocked(self, seconds: float) -> None:
        """The caller waited this long for checkpointing (snapshot, back-pressure, commit)."""
        with self._lock:
            self._blocked_s += seconds

    def checkpoint(self, ok: bool, seconds: float, failure: str = "") -> None:
        with self._lock:
            self._checkpoints["ok" if ok else "failed"] += 1
            if ok:
                self._checkpoint_s += seconds
            else:
                self._failures.append(f"checkpoint: {failure}")

    def resume(self, ok: bool, seconds: float, stage: str, failure: str = "") -> None:
        """A resume attempt; ``stage`` is the restored checkpoint's ("" for a clean start)."""
        with self._lock:
            self._resumes["ok" if ok else "failed"] += 1
            if ok and stage:
                self._resumes["from_checkpoint"] += 1
            self._recovery_s += seconds
            if ok and stage:
                self._stages[stage] += 1
            if not ok:
                self._failures.append(f"resume: {failure}")

    # -- reading -------------------------------------------------------------------------

    def snapshot(
        self, repo_now: RepositoryStats, *, interval_s: float, mtbf_s: float | None
    ) -> ResumeStatistics:
        with self._lock:
            monitored = self._monitored_s
            if self._monitor_since is not None:
                monitored += time.monotonic() - self._monitor_since
            ok, failed = self._checkpoints["ok"], self._checkpoints["failed"]
            resumes = self._resumes["ok"] + self._resumes["failed"]
            logical = repo_now.logical_bytes - self._repo_base.logical_bytes
            stored = repo_now.stored_bytes - self._repo_base.stored_bytes
            overhead = 100.0 * self._blocked_s / monitored if monitored > 0 else 0.0
            avg_cost = self._blocked_s / ok if ok else 0.0
            stats = ResumeStatistics(
                created_at=self._created,
                total_resumes=resumes,
                successful_resumes=self._resumes["ok"],
                failed_resumes=self._resumes["failed"],
                total_recovery_time=timedelta(seconds=self._recovery_s),
                average_recovery_time=timedelta(
                    seconds=self._recovery_s / resumes if resumes else 0
                ),
                stage_resume_counts=dict(self._stages),
                recent_failures=tuple(self._failures),
                total_checkpoints_created=ok,
                failed_checkpoints=failed,
                checkpoints_used_for_recovery=self._resumes["from_checkpoint"],
                checkpoint_overhead_percentage=overhead,
                average_checkpoint_time=timedelta(seconds=self._checkpoint_s / ok if ok else 0),
                monitored_time=timedelta(seconds=monitored),
                logical_bytes=logical,
                stored_bytes=stored,
                uploaded_bytes=repo_now.uploaded_bytes - self._repo_base.uploaded_bytes,
                dedup_ratio=logical / stored if stored else 1.0,
            )
        advice = recommendations(stats, avg_cost_s=avg_cost, interval_s=interval_s, mtbf_s=mtbf_s)
        return replace(stats, recommendations=advice)


def recommendations(
    stats: ResumeStatistics, *, avg_cost_s: float, interval_s: float, mtbf_s: float | None
) -> tuple[str, ...]:
    """Plain sentences drawn from the measurements."""
    out = []
    if stats.total_checkpoints_created and stats.checkpoint_overhead_percentage > _HIGH_OVERHEAD:
        out.append(
            f"Checkpoints cost {stats.checkpoint_overhead_percentage:.0f}% of the monitored "
            "time: raise time_interval or progress_threshold, or pass blocking=False."
        )
    if mtbf_s is not None and avg_cost_s > 0:
        best = young_daly_interval(avg_cost_s, mtbf_s)
        verb = "raise" if best > interval_s * 1.5 else "lower" if best < interval_s / 1.5 else ""
        text = (
            f"The Young/Daly interval for the failure rate seen (MTBF {_human(mtbf_s)}, "
            f"checkpoint cost {avg_cost_s:.2f} s) is {_human(best)}"
        )
        out.append(f"{text}: {verb} time_interval ({_human(interval_s)})." if verb else f"{text}.")
    if stats.total_checkpoints_created >= 3 and stats.logical_bytes and stats.dedup_ratio < 1.2:
        out.append(
            "Little data repeats between checkpoints (dedup "
            f"{stats.dedup_ratio:.2f}x): each checkpoint uploads most of its state."
        )
    if stats.failed_checkpoints:
        out.append(f"{stats.failed_checkpoints} checkpoints failed: see recent_failures.")
    return tuple(out)


def _human(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.1f} s"
