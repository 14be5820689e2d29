"""The Prometheus recorder and exporter behind ``api/metrics.py`` (imported only when
metrics are turned on: ``prometheus_client`` is an optional dependency).

The metrics live in the default registry, so an application that serves that registry
itself gets them too, next to the process and platform collectors.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

from bbp_dist_resume.repository import RepositoryStats

# Checkpoints and restores run from milliseconds (a small state on a local disk) to
# minutes (gigabytes to S3): the default buckets stop at 10 s.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_W = ("operation", "worker")

CHECKPOINTS = Counter(
    "bbp_checkpoints", "Checkpoints, by outcome (committed, failed).", [*_W, "stage", "outcome"]
)
BLOCKING = Histogram(
    "bbp_checkpoint_blocking_seconds",
    "Time a checkpoint call blocked its caller (snapshot, back-pressure, and the commit "
    "when blocking).",
    _W,
    buckets=_BUCKETS,
)
COMMIT = Histogram(
    "bbp_checkpoint_commit_seconds",
    "Time from the start of a commit to its index entry (upload, commit record, index), "
    "committed checkpoints only.",
    _W,
    buckets=_BUCKETS,
)
LOGICAL = Counter("bbp_checkpoint_logical_bytes", "Bytes checkpointed, before dedup.", _W)
UPLOADED = Counter("bbp_checkpoint_uploaded_bytes", "Encoded bytes sent to the store.", _W)
STORED = Counter("bbp_checkpoint_stored_bytes", "Bytes of chunks new to the store.", _W)
DEDUP = Counter("bbp_checkpoint_dedup_chunks", "Chunks skipped: already in the store.", _W)
RESUMES = Counter(
    "bbp_resumes", "Resume attempts, by outcome (success, failure).", [*_W, "outcome"]
)
RESTORE = Histogram(
    "bbp_restore_seconds", "Time from a resume call to its restored state.", _W, buckets=_BUCKETS
)
LEASE_LOSSES = Counter("bbp_lease_losses", "Leases a worker lost.", _W)
ROLLBACKS = Counter("bbp_rollbacks", "Rollbacks a new resume plan asked of a worker.", _W)
CRASHES = Counter("bbp_coordinator_crashes_detected", "Crashed slots found.", ["operation"])
PLANS = Counter("bbp_coordinator_plans_published", "Resume plans published.", ["operation"])
RELAUNCHES = Counter(
    "bbp_coordinator_relaunches", "Crashed slots pushed to the reclaim queue.", ["operation"]
)
LEADER_CHANGES = Counter(
    "bbp_coordinator_leader_changes", "Leadership gained or lost.", ["coordinator"]
)
LEADER = Gauge("bbp_coordinator_is_leader", "1 while the coordinator leads.", ["coordinator"])
SCANS = Histogram(
    "bbp_coordinator_scan_seconds", "Duration of a coordinator scan.", ["coordinator"]
)
DATA_LOSS = Counter("bbp_coordinator_data_loss_repairs", "Backends rebuilt after data loss.")


@dataclass(frozen=True, slots=True)
class _WorkerSeries:
    """One worker's labelled children, looked up once (``labels()`` takes a lock)."""

    blocking: Histogram
    commit: Histogram
    logical: Counter
    uploaded: Counter
    stored: Counter
    dedup: Counter
    restore: Histogram
    lease_losses: Counter
    rollbacks: Counter

    @classmethod
    def of(cls, op: str, worker: str) -> _WorkerSeries:
        return cls(
            blocking=BLOCKING.labels(op, worker),
            commit=COMMIT.labels(op, worker),
            logical=LOGICAL.labels(op, worker),
            uploaded=UPLOADED.labels(op, worker),
            stored=STORED.labels(op, worker),
            dedup=DEDUP.labels(op, worker),
            restore=RESTORE.labels(op, worker),
            lease_losses=LEASE_LOSSES.labels(op, worker),
            rollbacks=ROLLBACKS.labels(op, worker),
        )


class PrometheusRecorder:
    """``Recorder`` into the default Prometheus registry."""

    enabled = True

    def __init__(self) -> None:
        self._workers: dict[tuple[str, str], _WorkerSeries] = {}

    def _of(self, op: str, worker: str) -> _WorkerSeries:
        series = self._workers.get((op, worker))
        if series is None:
            # Two threads may both build it: labels() hands both the same children.
            series = self._workers[(op, worker)] = _WorkerSeries.of(op, worker)
        return series

    def checkpoint(
        self,
        op: str,
        worker: str,
        stage: str,
        *,
        ok: bool,
        seconds: float,
        written: RepositoryStats,
    ) -> None:
        series = self._of(op, worker)
        CHECKPOINTS.labels(op, worker, stage, "committed" if ok else "failed").inc()
        if ok:
            series.commit.observe(seconds)
        # Each inc() takes a lock: skip the zeros (nothing new stored, nothing deduplicated).
        for counter, amount in (
            (series.logical, written.logical_bytes),
            (series.uploaded, written.uploaded_bytes),
            (series.stored, written.stored_bytes),
            (series.dedup, written.chunks_deduplicated),
        ):
            if amount:
                counter.inc(amount)

    def blocked(self, op: str, worker: str, seconds: float) -> None:
        self._of(op, worker).blocking.observe(seconds)

    def resumed(self, op: str, worker: str, *, ok: bool, seconds: float) -> None:
        RESUMES.labels(op, worker, "success" if ok else "failure").inc()
        if ok:
            self._of(op, worker).restore.observe(seconds)

    def lease_lost(self, op: str, worker: str) -> None:
        self._of(op, worker).lease_losses.inc()

    def rolled_back(self, op: str, worker: str) -> None:
        self._of(op, worker).rollbacks.inc()

    def crash_detected(self, op: str) -> None:
        CRASHES.labels(op).inc()

    def plan_published(self, op: str) -> None:
        PLANS.labels(op).inc()

    def relaunched(self, op: str) -> None:
        RELAUNCHES.labels(op).inc()

    def leadership(self, coordinator: str, leader: bool) -> None:
        LEADER_CHANGES.labels(coordinator).inc()
        LEADER.labels(coordinator).set(1 if leader else 0)

    def scanned(self, coordinator: str, seconds: float) -> None:
        SCANS.labels(coordinator).observe(seconds)

    def data_loss_repaired(self) -> None:
        DATA_LOSS.inc()


def serve(port: int, address: str) -> threading.Thread:
    """Serve the default registry at ``http://address:port/metrics`` (a daemon thread).

    Raises:
        OSError: the address cannot be bound (in use, not allowed).
    """
    _, thread = start_http_server(port, addr=address, registry=REGISTRY)
    return thread
