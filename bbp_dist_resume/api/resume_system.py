"""``ResumeSystem``: checkpoint and resume for one worker of a distributed pipeline.

One instance is one worker (``worker_id``) of whatever operation it monitors. It may be
used from many threads. Checkpoints are taken in call order on one committer thread;
``blocking=False`` returns once the state is snapshotted. A lost lease raises
``LeaseLostError`` from every later call: a worker that lost its slot must stop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, Literal, overload

from bbp_dist_resume.api import resume as rsm
from bbp_dist_resume.api.checkpointer import (
    CheckpointArgs,
    schedule_policy,
)
from bbp_dist_resume.api.core import SystemCore, scoped
from bbp_dist_resume.api.models import (
    CheckpointMetadata,
    ResumeContext,
    ResumeMode,
    ResumeState,
    ResumeStatistics,
)
from bbp_dist_resume.api.resumer import Resumer
from bbp_dist_resume.api.snapshot import Attachment
from bbp_dist_resume.api.watermark import read_committed_offset
from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.errors import InvalidStateError
from bbp_dist_resume.ids import check_id
from bbp_dist_resume.logs import get_logger, log_context
from bbp_dist_resume.policy import Boundary
from bbp_dist_resume.repository import RepositoryStats

log = get_logger("bbp_dist_resume")

ProgressCallback = Callable[[str, float], None]
CheckpointCallback = Callable[[str, CheckpointMetadata], None]
RecoveryCallback = Callable[[str, bool], None]
ErrorCallback = Callable[[str, BaseException], None]
# Settings that choose where data lives: they cannot change under an open system.
_FIXED_WHILE_OPEN = (
    "store_url",
    "coord_url",
    "enable_encryption",
    "encryption_key",
    "decryption_keys",
    "chunk_min_size",
    "chunk_avg_size",
    "chunk_max_size",
    "upload_concurrency",
    "max_pending_checkpoints",
)


class ResumeSystem(SystemCore):
    """Checkpoints and resumes of one worker (BB-Pipeline ``ResumeSystem``)."""

    # -- checkpoints ---------------------------------------------------------------------

    @overload
    def create_checkpoint(
        self,
        stage_name: str,
        pipeline_state: Mapping[str, Any],
        custom_metadata: Mapping[str, str] | None = None,
        *,
        attachments: Mapping[str, Attachment] | None = None,
        progress: float | None = None,
        consumed: Mapping[str, int] | None = None,
        produced: Mapping[str, int] | None = None,
        epoch: int | None = None,
        blocking: Literal[True] = True,
    ) -> str: ...

    @overload
    def create_checkpoint(
        self,
        stage_name: str,
        pipeline_state: Mapping[str, Any],
        custom_metadata: Mapping[str, str] | None = None,
        *,
        attachments: Mapping[str, Attachment] | None = None,
        progress: float | None = None,
        consumed: Mapping[str, int] | None = None,
        produced: Mapping[str, int] | None = None,
        epoch: int | None = None,
        blocking: Literal[False],
    ) -> Future[str]: ...

    def create_checkpoint(
        self,
        stage_name: str,
        pipeline_state: Mapping[str, Any],
        custom_metadata: Mapping[str, str] | None = None,
        *,
        attachments: Mapping[str, Attachment] | None = None,
        progress: float | None = None,
        consumed: Mapping[str, int] | None = None,
        produced: Mapping[str, int] | None = None,
        epoch: int | None = None,
        blocking: bool = True,
    ) -> str | Future[str]:
        """Checkpoint ``pipeline_state`` (a JSON-serialisable dict) and ``attachments``.

        Returns the checkpoint id ("" when it failed and ``strict`` is off), or with
        ``blocking=False`` a future of it, once the state is snapshotted.

        Raises:
            InvalidCheckpoint, InvalidIdentifier: bad input (nothing is stored).
            InvalidStateError: not monitoring. LeaseLostError: the lease is lost.
            CheckpointFailed: the checkpoint failed and ``strict`` is on.
        """
        args = CheckpointArgs(
            stage=stage_name,
            state=pipeline_state,
            custom_metadata=custom_metadata,
            attachments=attachments,
            progress=progress,
            consumed=consumed,
            produced=produced,
            epoch=epoch,
            blocking=blocking,
        )
        return self._create(args)

    @scoped
    def _create(self, args: CheckpointArgs) -> str | Future[str]:
        return self._ckpt().create(self._require_session(), args)

    def create_automatic_checkpoint(
        self, stage_name: str, pipeline_state: Mapping[str, Any], progress_percentage: float = 0.0
    ) -> str | None:
        """Checkpoint if the strategy says it is time (a stage boundary when the stage
        changed since the last call, else a task boundary); None when it is not."""
        ckpt = self._ckpt()
        boundary = Boundary.STAGE if stage_name != ckpt.last_stage else Boundary.TASK
        ckpt.last_stage = stage_name
        return self.checkpoint_if_due(stage_name, pipeline_state, progress_percentage, boundary)

    @scoped
    def checkpoint_if_due(
        self,
        stage_name: str,
        pipeline_state: Mapping[str, Any],
        progress_percentage: float,
        boundary: Boundary,
        custom_metadata: Mapping[str, str] | None = None,
    ) -> str | None:
        """Ask the strategy about this boundary; checkpoint when it says so."""
        args = CheckpointArgs(
            stage=stage_name,
            state=pipeline_state,
            custom_metadata=custom_metadata,
            progress=progress_percentage,
        )
        return self._ckpt().if_due(self._require_session(), args, boundary)

    def wait_until_finished(self) -> None:
        """Wait for every checkpoint submitted so far."""
        rt = self._rt
        if rt is not None:
            rt.committer.flush()

    # -- listing and resuming ------------------------------------------------------------

    @scoped
    def can_resume(self, operation_id: str) -> bool:
        """True when the operation has at least one checkpoint to resume from."""
        check_id(operation_id, "operation id")
        histories = self._cat().histories(operation_id)
        return any(s.kind == "checkpoint" for entries in histories.values() for s in entries)

    @scoped
    def get_available_resume_points(self, operation_id: str) -> list[CheckpointMetadata]:
        """Every checkpoint of the operation, oldest first."""
        check_id(operation_id, "operation id")
        return self._cat().resume_points(operation_id)

    @scoped
    def list_checkpoints(self, operation_id: str = "") -> list[str]:
        """Checkpoint ids of one operation (or of all, with ``""``), by operation, worker, seq."""
        ops = [check_id(operation_id, "operation id")] if operation_id else self._cat().operations()
        out = []
        for op in ops:
            for worker, entries in sorted(self._cat().histories(op).items()):
                out += [f"{op}/{worker}/{s.seq}" for s in entries if s.kind == "checkpoint"]
        return out

    @scoped
    def resume_from_checkpoint(
        self,
        checkpoint_id: str,
        mode: ResumeMode = ResumeMode.LAST_CHECKPOINT,
        *,
        best_fn: rsm.BestFn | None = None,
        chooser: rsm.Chooser | None = None,
    ) -> ResumeContext | None:
        """Resume from a checkpoint id, or by ``mode`` from an operation id.

        With a checkpoint id, LAST and BEST restore exactly it; with an operation id,
        LAST takes this worker's place in the recovery line and BEST the best-scoring
        consistent cut. FULL_RESTART starts clean; INTERACTIVE asks ``chooser``.
        Returns None (and reports the failure) when the chosen checkpoint is missing or
        fails verification.
        """
        return self._resumer().from_target(
            checkpoint_id,
            ResumeMode(mode),
            best_fn or self._config.best_fn,
            chooser or self._config.chooser,
        )

    @scoped
    def resume_automatically(
        self,
        operation_id: str,
        *,
        on_restored: Callable[[ResumeContext | None], None] | None = None,
    ) -> ResumeContext | None:
        """Resume this worker from the published plan, else the recovery line, falling
        back past checkpoints that fail verification. None: start clean.

        Under a plan that rolls workers back, return only once every one of them has
        restored its entry (the recovery barrier). ``on_restored(context)`` runs after
        this worker's restore and before the others are told of it: put outputs back to
        the restored state there (truncate a channel to ``context.produced``).

        Raises:
            RecoveryTimeout: rolled-back workers did not restore within
                ``recovery_timeout``. RollbackRequested: a newer plan superseded the one
                followed (resume again). IntegrityError: nothing restorable.
        """
        check_id(operation_id, "operation id")
        return self._resumer().automatically(operation_id, on_restored)

    @scoped
    def open_checkpoint(self, checkpoint_id: str) -> ResumeContext:
        """Read any checkpoint (this worker's or another's) without resuming from it: its
        state, attachments and offsets, verified like a restore. Nothing about this
        worker changes (consumers use it to read what a producer committed).

        Raises:
            InvalidIdentifier; ObjectNotFound: no such checkpoint; IntegrityError.
        """
        self._runtime()
        with log_context(checkpoint=checkpoint_id):
            return Resumer(self).peek(checkpoint_id)

    @scoped
    def committed_offset(self, channel: str) -> int:
        """How far ``channel``'s producer has committed what no crash of it can take back:
        its ``produced`` offset in the resume plan in force (more once its restored
        incarnation commits), else at its latest checkpoint; 0 when nothing of the channel
        is committed (an unknown channel included). A consumer that reads only below it
        never reads a record a crash of the producer replaces (``api/watermark.py``).

        Raises:
            InvalidIdentifier: a malformed channel name.
            InvalidStateError: not monitoring an operation.
            LeaseLostError, RollbackRequested: as from every call while monitoring.
        """
        check_id(channel, "channel")
        session = self._require_session()
        coord, _ = self._require_open()
        return read_committed_offset(coord, session.operation.operation_id, channel)

    def _resumer(self) -> Resumer:
        self._runtime()
        return Resumer(self)

    # -- maintenance ---------------------------------------------------------------------

    @scoped
    def verify_checkpoint(self, checkpoint_id: str, deep: bool = False) -> bool:
        """True when the checkpoint is intact (quick: every chunk present; deep: every
        chunk read and re-hashed). False when it is missing or damaged: a warning then
        names the checkpoint and the first object of each kind found wrong."""
        with log_context(checkpoint=checkpoint_id):
            report = self._maint().verify(checkpoint_id, deep=deep)
            if not report.ok:
                level = "deep" if deep else "quick"
                log.warning("%s fails %s verification: %s", checkpoint_id, level, report.summary())
            return report.ok

    @scoped
    def delete_checkpoint(self, checkpoint_id: str) -> bool:
        """Delete one checkpoint; False when there was none. Refuses (``InvalidCheckpoint``)
        the worker's highest record (it fences earlier owners) and plan entries."""
        with log_context(checkpoint=checkpoint_id):
            deleted = self._maint().delete(checkpoint_id)
        self._cat().forget(checkpoint_id)
        return deleted

    @scoped
    def cleanup_old_checkpoints(self) -> int:
        """Apply retention (``max_checkpoints``, ``cleanup_age``) to the monitored
        operation, or to every operation when not monitoring; returns how many went."""
        op = self.operation_id
        ops = [op] if op else self._cat().operations()
        return sum(self._maint().cleanup(o, None, self._config) for o in ops)

    # -- state, statistics, config, callbacks --------------------------------------------

    def get_current_state(self) -> ResumeState:
        return self._machine.state

    def get_statistics(self) -> ResumeStatistics:
        rt = self._rt
        mtbf = rt.checkpointer.schedule.mtbf() if rt else None
        return self._stats.snapshot(
            rt.repo.stats() if rt else RepositoryStats(),
            interval_s=self._config.time_interval.total_seconds(),
            mtbf_s=mtbf,
        )

    def reset_statistics(self) -> None:
        rt = self._rt
        self._stats.reset(rt.repo.stats() if rt else RepositoryStats())
        if self._session is not None:
            self._stats.monitoring(True)

    def update_config(self, config: CheckpointConfig) -> None:
        """Use ``config`` from now on. Raises ``InvalidStateError`` when it changes where
        data lives (store, backend, keys, chunking) while the system is open."""
        with self._lock:
            rt = self._rt
            if rt is not None:
                changed = [
                    f for f in _FIXED_WHILE_OPEN if getattr(config, f) != getattr(self._config, f)
                ]
                if changed:
                    raise InvalidStateError(
                        f"cannot change {', '.join(changed)} while open: shut down first"
                    )
            old, self._config = self._config, config
            if rt is not None:
                rt.checkpointer.schedule.set_policy(schedule_policy(config))
                level = config.compression_level if config.enable_compression else None
                rt.repo.tune(compression_level=level, inline_threshold=config.inline_threshold)
            if config.detailed_logging != old.detailed_logging:
                self.set_detailed_logging(config.detailed_logging)

    def set_progress_callback(self, callback: ProgressCallback | None) -> None:
        """``callback(operation_id, percent)`` at every progress report."""
        self._callbacks.set("progress", callback)

    def set_checkpoint_callback(self, callback: CheckpointCallback | None) -> None:
        """``callback(checkpoint_id, metadata)`` after every commit."""
        self._callbacks.set("checkpoint", callback)

    def set_recovery_callback(self, callback: RecoveryCallback | None) -> None:
        """``callback(checkpoint_id, success)`` after every resume attempt."""
        self._callbacks.set("recovery", callback)

    def set_rollback_callback(self, callback: Callable[[int, str | None], None] | None) -> None:
        """``callback(plan_generation, checkpoint_id)`` from the heartbeat thread when a new
        resume plan rolls this worker back (its next call raises ``RollbackRequested``)."""
        self._callbacks.set("rollback", callback)

    def set_error_callback(self, callback: ErrorCallback | None) -> None:
        """``callback(stage_name, exception)`` when a checkpoint fails."""
        self._callbacks.set("error", callback)
