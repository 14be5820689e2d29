"""``Checkpointer``: taking one worker's checkpoints — validate, snapshot, queue, commit,
report — and asking the strategy when it is time.

The caller is blocked for the validation and the snapshot, and, with ``blocking=True``,
until the commit; that blocked time is the checkpoint's cost (statistics, ADAPTIVE).
The commit itself runs on the committer thread, in call order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbp_dist_resume.api.callbacks import Callbacks
from bbp_dist_resume.api.catalog import metadata_of
from bbp_dist_resume.api.committer import Committer
from bbp_dist_resume.api.maintenance import Maintenance
from bbp_dist_resume.api.metrics import recorder, written_between
from bbp_dist_resume.api.session import CommitRequest, WorkerSession
from bbp_dist_resume.api.snapshot import Attachment, Snapshot, take_snapshot
from bbp_dist_resume.api.state import StateMachine
from bbp_dist_resume.api.stats import StatsRecorder
from bbp_dist_resume.api.sysinfo import SystemProbe
from bbp_dist_resume.config import CheckpointConfig, CheckpointStrategy
from bbp_dist_resume.errors import BBPError, CheckpointFailed, InvalidCheckpoint, LeaseLostError
from bbp_dist_resume.logs import get_logger, log_context
from bbp_dist_resume.policy import Boundary, CheckpointSchedule, SchedulePolicy
from bbp_dist_resume.repository import CheckpointMeta, RepositoryStats

log = get_logger("bbp_dist_resume")


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointArgs:
    """One ``create_checkpoint`` call's arguments."""

    stage: str
    state: Mapping[str, Any]
    custom_metadata: Mapping[str, str] | None = None
    attachments: Mapping[str, Attachment] | None = None
    progress: float | None = None
    consumed: Mapping[str, int] | None = None
    produced: Mapping[str, int] | None = None
    epoch: int | None = None
    blocking: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Plumbing:
    """What the checkpointer shares with its ``ResumeSystem``."""

    machine: StateMachine
    stats: StatsRecorder
    callbacks: Callbacks
    config: Callable[[], CheckpointConfig]
    maintenance: Callable[[], Maintenance]


class Checkpointer:
    """Checkpoints of one ``ResumeSystem``; safe from many threads."""

    def __init__(self, plumbing: Plumbing, committer: Committer, spool: Path) -> None:
        self._p = plumbing
        self._committer = committer
        self._spool = spool
        self._probe = SystemProbe()
        self._lock = threading.Lock()
        self.schedule = CheckpointSchedule(schedule_policy(plumbing.config()))
        self.progress = 0.0
        self.last_stage: str | None = None

    def reset_schedule(self, mtbf_s: float | None) -> None:
        with self._lock:
            self.schedule = CheckpointSchedule(schedule_policy(self._p.config()))
            self.schedule.set_observed_mtbf(mtbf_s)

    def restored(self, progress: float, stage: str) -> None:
        with self._lock:
            self.progress, self.last_stage = progress, stage

    def create(self, session: WorkerSession, args: CheckpointArgs) -> str | Future[str]:
        """Validate, snapshot and queue one checkpoint (see ``ResumeSystem``)."""
        started = time.monotonic()
        if args.progress is not None:
            check_progress(args.progress)
        request = self._request(session, args)
        spool = None if args.blocking else self._spool
        snap = take_snapshot(args.state, args.attachments, spool_dir=spool)
        # Reported only once the input is accepted: a refused call changes nothing.
        if args.progress is not None:
            self.report_progress(session, args.progress)
        with self._lock:
            self.last_stage = args.stage
        self._p.machine.checkpoint_started()
        try:
            fut = self._committer.submit(lambda: self._commit(session, snap, request))
        except BaseException:
            snap.discard()
            self._p.machine.checkpoint_finished()
            raise
        if not args.blocking:
            self._blocked(session, started, request.progress)
            return fut
        try:
            return fut.result()
        finally:
            self._blocked(session, started, request.progress)

    def if_due(
        self,
        session: WorkerSession,
        args: CheckpointArgs,
        boundary: Boundary,
    ) -> str | None:
        """Checkpoint when the strategy says it is time at ``boundary``."""
        progress = args.progress or 0.0
        self.report_progress(session, progress)
        adaptive = self._p.config().strategy is CheckpointStrategy.ADAPTIVE
        sample = self._probe.sample() if adaptive else None
        with self._lock:
            decision = self.schedule.decide(boundary, progress, sample)
            memory = decision.save and self.schedule.memory_pressure(sample)
        if not decision.save:
            return None
        log.debug("checkpointing %s: %s", args.stage, decision.reason)
        cid = self.create(session, args)
        assert isinstance(cid, str)
        if memory:
            with self._lock:
                self.schedule.saved(progress, 0.0, memory=True)
        return cid

    def report_progress(self, session: WorkerSession, percent: float) -> None:
        check_progress(percent)
        with self._lock:
            self.progress = float(percent)
        session.set_progress(float(percent))
        self._p.callbacks.call("progress", session.operation.operation_id, float(percent))

    def _blocked(self, session: WorkerSession, started: float, progress: float) -> None:
        seconds = time.monotonic() - started
        self._p.stats.blocked(seconds)
        recorder().blocked(session.operation.operation_id, session.worker_id, seconds)
        with self._lock:
            self.schedule.saved(progress, seconds)

    def _request(self, session: WorkerSession, args: CheckpointArgs) -> CommitRequest:
        for name in ("custom_metadata", "consumed", "produced"):
            value = getattr(args, name)
            if value is not None and not isinstance(value, Mapping):
                raise InvalidCheckpoint(f"{name} must be a mapping")
        with self._lock:
            progress = self.progress if args.progress is None else float(args.progress)
        request = CommitRequest(
            stage=args.stage,
            granularity=self._p.config().granularity.value,
            progress=progress,
            memory_bytes=self._probe.rss_bytes(),
            custom_metadata=dict(args.custom_metadata or {}),
            epoch=args.epoch,
            consumed=dict(args.consumed or {}),
            produced=dict(args.produced or {}),
        )
        _validate(session, request)
        return request

    def _commit(self, session: WorkerSession, snap: Snapshot, request: CommitRequest) -> str:
        with log_context(checkpoint=session.next_checkpoint_id):
            return self._commit_logged(session, snap, request)

    def _commit_logged(self, session: WorkerSession, snap: Snapshot, request: CommitRequest) -> str:
        started = time.monotonic()
        before = session.repo_stats() if recorder().enabled else None
        try:
            manifest = session.commit(snap.parts, request)
        except LeaseLostError as exc:
            self._failed(request.stage, exc, started)
            self._measured(session, request.stage, started, before, ok=False)
            self._p.machine.fail()
            raise
        except (BBPError, OSError) as exc:
            self._failed(request.stage, exc, started)
            self._measured(session, request.stage, started, before, ok=False)
            if self._p.config().strict:
                raise CheckpointFailed(request.stage, str(exc)) from exc
            return ""
        finally:
            snap.discard()
            self._p.machine.checkpoint_finished()
        self._p.stats.checkpoint(True, time.monotonic() - started)
        self._measured(session, request.stage, started, before, ok=True)
        log.debug("checkpoint %s committed", manifest.checkpoint_id)
        self._p.callbacks.call(
            "checkpoint", manifest.checkpoint_id, metadata_of(manifest, verified=True)
        )
        if self._p.config().auto_cleanup:
            self._auto_cleanup(session)
        return manifest.checkpoint_id

    def _measured(
        self,
        session: WorkerSession,
        stage: str,
        started: float,
        before: RepositoryStats | None,
        *,
        ok: bool,
    ) -> None:
        """Report one commit to the metrics (``before``: None while they are off)."""
        if before is None:
            return
        seconds = time.monotonic() - started
        written = written_between(before, session.repo_stats())
        op, worker = session.operation.operation_id, session.worker_id
        recorder().checkpoint(op, worker, stage, ok=ok, seconds=seconds, written=written)

    def _failed(self, stage: str, exc: BaseException, started: float) -> None:
        self._p.stats.checkpoint(False, time.monotonic() - started, f"{stage}: {exc}")
        log.warning("checkpoint of stage %s failed: %s", stage, exc)
        self._p.callbacks.call("error", stage, exc)

    def _auto_cleanup(self, session: WorkerSession) -> None:
        op, worker = session.operation.operation_id, session.worker_id
        try:
            self._p.maintenance().cleanup(op, [worker], self._p.config())
        except BBPError as exc:
            log.warning("automatic cleanup failed: %s", exc)


def schedule_policy(config: CheckpointConfig) -> SchedulePolicy:
    """The strategy's settings, in seconds."""
    return SchedulePolicy(
        strategy=config.strategy,
        granularity=config.granularity,
        interval_s=config.time_interval.total_seconds(),
        progress_threshold=config.progress_threshold,
        memory_threshold_mb=config.max_memory_threshold_mb,
        mtbf_s=config.mtbf.total_seconds() if config.mtbf else None,
    )


def check_progress(percent: object) -> None:
    """``InvalidCheckpoint`` unless ``percent`` is a number from 0 to 100."""
    if isinstance(percent, bool) or not isinstance(percent, int | float):
        raise InvalidCheckpoint(f"progress must be a number from 0 to 100, not {percent!r}")
    if not 0 <= percent <= 100:
        raise InvalidCheckpoint(f"progress must be a number from 0 to 100, not {percent!r}")


def _validate(session: WorkerSession, r: CommitRequest) -> None:
    # Every value is checked now, before the snapshot, so bad input stores nothing.
    lease = session.lease
    CheckpointMeta(
        operation_id=lease.operation_id,
        worker_id=lease.worker_id,
        seq=1,
        owner_token=lease.owner_token,
        fence=lease.fence,
        stage=r.stage,
        granularity=r.granularity,
        progress=r.progress,
        memory_bytes=r.memory_bytes,
        custom_metadata=r.custom_metadata,
        epoch=r.epoch,
        consumed=r.consumed,
        produced=r.produced,
    )
