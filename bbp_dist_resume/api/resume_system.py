"""``ResumeSystem``: checkpoint and resume for one worker of a distributed pipeline.

One instance is one worker (``worker_id``) of whatever operation it monitors. It may be
used from many threads. Checkpoints are taken in call order on one committer thread;
``blocking=False`` returns once the state is snapshotted. A lost lease raises
``LeaseLostError`` from every later call: a worker that lost its slot must stop.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal, overload

from bbp_dist_resume.api import resume as rsm
from bbp_dist_resume.api.callbacks import Callbacks
from bbp_dist_resume.api.catalog import Catalog
from bbp_dist_resume.api.checkpointer import (
    CheckpointArgs,
    Checkpointer,
    Plumbing,
    schedule_policy,
)
from bbp_dist_resume.api.committer import Committer
from bbp_dist_resume.api.maintenance import Maintenance
from bbp_dist_resume.api.models import (
    CheckpointMetadata,
    ResumeContext,
    ResumeMode,
    ResumeState,
    ResumeStatistics,
)
from bbp_dist_resume.api.resumer import Resumer
from bbp_dist_resume.api.session import WorkerSession
from bbp_dist_resume.api.snapshot import Attachment
from bbp_dist_resume.api.state import StateMachine
from bbp_dist_resume.api.stats import StatsRecorder
from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.coordination import Coordination, OperationInfo, open_coordination
from bbp_dist_resume.errors import InvalidStateError, LeaseLostError, UnknownOperation
from bbp_dist_resume.ids import check_id
from bbp_dist_resume.policy import Boundary
from bbp_dist_resume.repository import Manifest, Repository, RepositoryStats, open_repository

log = logging.getLogger("bbp_dist_resume")

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


class ResumeSystem:
    """Checkpoints and resumes of one worker (BB-Pipeline ``ResumeSystem``)."""

    def __init__(self, config: CheckpointConfig | None = None, worker_id: str = "w0") -> None:
        self._config = config or CheckpointConfig()
        self.worker_id = check_id(worker_id, "worker id")
        self._lock = threading.RLock()
        self._machine = StateMachine()
        self._stats = StatsRecorder()
        self._callbacks = Callbacks()
        self._repo: Repository | None = None
        self._coord: Coordination | None = None
        self._catalog: Catalog | None = None
        self._committer: Committer | None = None
        self._checkpointer: Checkpointer | None = None
        self._maintenance: Maintenance | None = None
        self._session: WorkerSession | None = None
        self._spool: Path | None = None
        self._pending_base: dict[str, tuple[int, float]] = {}
        self._saved_log_level: int | None = None
        if self._config.detailed_logging:
            self.set_detailed_logging(True)

    # -- life cycle ----------------------------------------------------------------------

    def initialize(self) -> bool:
        """Open the store and the coordination backend (idempotent)."""
        with self._lock:
            if self._repo is not None:
                return True
            repo = open_repository(None, self._config)
            try:
                coord = open_coordination(self._config.coord_url)
            except BaseException:
                repo.close()
                raise
            self._repo, self._coord = repo, coord
            self._catalog = Catalog(repo, coord)
            self._maintenance = Maintenance(repo, coord, self._catalog)
            self._committer = Committer(self._config.max_pending_checkpoints)
            self._spool = Path(tempfile.mkdtemp(prefix="bbp-spool-"))
            plumbing = Plumbing(
                machine=self._machine,
                stats=self._stats,
                callbacks=self._callbacks,
                config=self.get_config,
                maintenance=self._maint,
            )
            self._checkpointer = Checkpointer(plumbing, self._committer, self._spool)
            self._stats.reset(repo.stats())
            return True

    def shutdown(self) -> None:
        """Finish pending checkpoints, release the lease (if held) and close everything."""
        with self._lock:
            if self._session is not None:
                self._end_session(done=False, target=ResumeState.IDLE)
            for closer in (self._committer, self._catalog, self._repo, self._coord):
                if closer is not None:
                    closer.close()
            if self._spool is not None:
                shutil.rmtree(self._spool, ignore_errors=True)
            self._repo = self._coord = self._catalog = self._committer = None
            self._maintenance = self._checkpointer = None
            self._spool = None
            if self._machine.state is not ResumeState.IDLE:
                self._machine.move(ResumeState.IDLE)

    def __enter__(self) -> ResumeSystem:
        self.initialize()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def start_monitoring(
        self,
        operation_id: str,
        pipeline_config_path: str = "",
        workers: list[str] | None = None,
        stages: list[str] | None = None,
    ) -> bool:
        """Create or join the operation, take this worker's lease (``LeaseHeldError``
        while a live owner holds it), take the slot over in the store, start heartbeats."""
        check_id(operation_id, "operation id")
        self.initialize()
        with self._lock:
            if self._session is not None:
                if self._session.operation.operation_id == operation_id and not self._session.lost:
                    return True
                raise InvalidStateError("already monitoring: call stop_monitoring() first")
            coord, repo = self._require_open()
            info = coord.create_operation(
                operation_id,
                workers=workers or [self.worker_id],
                stages=stages or (),
                config_path=str(pipeline_config_path),
            )
            self._session = WorkerSession.open(
                repo,
                coord,
                info,
                worker_id=self.worker_id,
                ttl_ms=int(self._config.lease_ttl.total_seconds() * 1000),
                interval_s=self._config.heartbeat_interval.total_seconds(),
            )
            if operation_id in self._pending_base:
                self._session.resumed_from(*self._pending_base.pop(operation_id))
            self._ckpt().reset_schedule(self._maint().observed_mtbf(operation_id))
            self._stats.monitoring(True)
            self._machine.move(ResumeState.RUNNING)
        log.info("monitoring %s as %s", operation_id, self.worker_id)
        return True

    def stop_monitoring(self) -> None:
        """Finish pending checkpoints and release the lease without finishing: the
        coordinator will see this worker as crashed unless ``complete()`` is called."""
        with self._lock:
            if self._session is not None:
                self._end_session(done=False, target=ResumeState.PAUSED)

    def complete(self) -> bool:
        """Mark this worker done; True when that completed the whole operation."""
        with self._lock:
            session = self._require_session()
            info = self._end_session(done=True, target=ResumeState.COMPLETED, session=session)
        return info is not None and info.status.value == "completed"

    def _end_session(
        self, *, done: bool, target: ResumeState, session: WorkerSession | None = None
    ) -> OperationInfo | None:
        session = session or self._session
        assert session is not None
        try:
            if self._committer is not None:
                self._committer.flush()
            info = session.close(done=done and not session.lost)
        finally:
            self._session = None
            self._stats.monitoring(False)
        if session.lost:
            if done:
                raise LeaseLostError(session.lease.operation_id, self.worker_id, "before complete")
            target = ResumeState.IDLE if target is ResumeState.IDLE else ResumeState.FAILED
        if self._machine.state is not target:
            self._machine.move(target)
        return info

    # -- fencing -------------------------------------------------------------------------

    def ensure_lease(self) -> None:
        """Raise ``LeaseLostError`` unless the lease is still held (local checks only:
        the monotonic deadline and the heartbeat's verdict)."""
        self._require_session()

    @property
    def fencing_token(self) -> int:
        """The current lease's fencing token, for external systems that reject stale ones."""
        return self._require_session().lease.fence

    @property
    def operation_id(self) -> str | None:
        session = self._session
        return session.operation.operation_id if session else None

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
        committer = self._committer
        if committer is not None:
            committer.flush()

    # -- listing and resuming ------------------------------------------------------------

    def can_resume(self, operation_id: str) -> bool:
        """True when the operation has at least one checkpoint to resume from."""
        check_id(operation_id, "operation id")
        histories = self._cat().histories(operation_id)
        return any(s.kind == "checkpoint" for entries in histories.values() for s in entries)

    def get_available_resume_points(self, operation_id: str) -> list[CheckpointMetadata]:
        """Every checkpoint of the operation, oldest first."""
        check_id(operation_id, "operation id")
        return self._cat().resume_points(operation_id)

    def list_checkpoints(self, operation_id: str = "") -> list[str]:
        """Checkpoint ids of one operation (or of all, with ``""``), by operation, worker, seq."""
        ops = [check_id(operation_id, "operation id")] if operation_id else self._cat().operations()
        out = []
        for op in ops:
            for worker, entries in sorted(self._cat().histories(op).items()):
                out += [f"{op}/{worker}/{s.seq}" for s in entries if s.kind == "checkpoint"]
        return out

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

    def resume_automatically(self, operation_id: str) -> ResumeContext | None:
        """Resume this worker from the published plan, else the recovery line, falling
        back past checkpoints that fail verification. None: start clean."""
        check_id(operation_id, "operation id")
        return self._resumer().automatically(operation_id)

    def _resumer(self) -> Resumer:
        if self._repo is None:
            self.initialize()
        return Resumer(self)

    # -- maintenance ---------------------------------------------------------------------

    def verify_checkpoint(self, checkpoint_id: str, deep: bool = False) -> bool:
        """True when the checkpoint is intact (quick: every chunk present; deep: every
        chunk read and re-hashed). False when it is missing or damaged."""
        return self._maint().verify(checkpoint_id, deep=deep).ok

    def delete_checkpoint(self, checkpoint_id: str) -> bool:
        """Delete one checkpoint; False when there was none. Refuses (``InvalidCheckpoint``)
        the worker's highest record (it fences earlier owners) and plan entries."""
        deleted = self._maint().delete(checkpoint_id)
        self._cat().forget(checkpoint_id)
        return deleted

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
        repo, ckpt = self._repo, self._checkpointer
        mtbf = ckpt.schedule.mtbf() if ckpt else None
        return self._stats.snapshot(
            repo.stats() if repo else RepositoryStats(),
            interval_s=self._config.time_interval.total_seconds(),
            mtbf_s=mtbf,
        )

    def reset_statistics(self) -> None:
        repo = self._repo
        self._stats.reset(repo.stats() if repo else RepositoryStats())
        if self._session is not None:
            self._stats.monitoring(True)

    def get_config(self) -> CheckpointConfig:
        return self._config

    def update_config(self, config: CheckpointConfig) -> None:
        """Use ``config`` from now on. Raises ``InvalidStateError`` when it changes where
        data lives (store, backend, keys, chunking) while the system is open."""
        with self._lock:
            if self._repo is not None:
                changed = [
                    f for f in _FIXED_WHILE_OPEN if getattr(config, f) != getattr(self._config, f)
                ]
                if changed:
                    raise InvalidStateError(
                        f"cannot change {', '.join(changed)} while open: shut down first"
                    )
            old, self._config = self._config, config
            if self._checkpointer is not None:
                self._checkpointer.schedule.set_policy(schedule_policy(config))
            if self._repo is not None:
                level = config.compression_level if config.enable_compression else None
                self._repo.tune(compression_level=level, inline_threshold=config.inline_threshold)
            if config.detailed_logging != old.detailed_logging:
                self.set_detailed_logging(config.detailed_logging)

    def set_detailed_logging(self, enabled: bool) -> None:
        """DEBUG logs from logger ``bbp_dist_resume``; turning it off puts back the level
        the logger had before (the application's own setting is never lost)."""
        with self._lock:
            if enabled and self._saved_log_level is None:
                self._saved_log_level = log.level
                log.setLevel(logging.DEBUG)
            elif not enabled and self._saved_log_level is not None:
                if log.level == logging.DEBUG:
                    log.setLevel(self._saved_log_level)
                self._saved_log_level = None

    def set_progress_callback(self, callback: ProgressCallback | None) -> None:
        """``callback(operation_id, percent)`` at every progress report."""
        self._callbacks.set("progress", callback)

    def set_checkpoint_callback(self, callback: CheckpointCallback | None) -> None:
        """``callback(checkpoint_id, metadata)`` after every commit."""
        self._callbacks.set("checkpoint", callback)

    def set_recovery_callback(self, callback: RecoveryCallback | None) -> None:
        """``callback(checkpoint_id, success)`` after every resume attempt."""
        self._callbacks.set("recovery", callback)

    def set_error_callback(self, callback: ErrorCallback | None) -> None:
        """``callback(stage_name, exception)`` when a checkpoint fails."""
        self._callbacks.set("error", callback)

    def _call(self, which: str, *args: Any) -> None:
        self._callbacks.call(which, *args)

    # -- internals shared with the resumer and the guard ---------------------------------

    def _require_open(self) -> tuple[Coordination, Repository]:
        if self._coord is None or self._repo is None:
            raise InvalidStateError("the resume system is shut down")
        return self._coord, self._repo

    def _require_session(self) -> WorkerSession:
        session = self._session
        if session is None:
            raise InvalidStateError("not monitoring an operation: call start_monitoring() first")
        try:
            session.check()
        except LeaseLostError:
            self._machine.fail()
            raise
        return session

    def _ckpt(self) -> Checkpointer:
        if self._checkpointer is None:
            raise InvalidStateError("the resume system is shut down")
        return self._checkpointer

    def _cat(self) -> Catalog:
        # No lock when open: the committer thread calls this while a caller holding the
        # lock waits for it (shutdown flushing pending checkpoints).
        if self._catalog is None:
            self.initialize()
        assert self._catalog is not None
        return self._catalog

    def _maint(self) -> Maintenance:
        if self._maintenance is None:
            self.initialize()
        assert self._maintenance is not None
        return self._maintenance

    def _operation_info(self, operation_id: str) -> OperationInfo | None:
        coord, _ = self._require_open()
        try:
            return coord.get_operation(operation_id)
        except UnknownOperation:
            return None

    def _note_resumed(self, operation_id: str, manifest: Manifest | None) -> None:
        """The worker's state now comes from ``manifest`` (None: a clean start)."""
        base = (0, 0.0)
        if manifest is not None:
            own = manifest.worker_id == self.worker_id
            base = (manifest.seq if own else 0, manifest.elapsed_seconds)
        with self._lock:
            session = self._session
            if session is not None and session.operation.operation_id == operation_id:
                session.resumed_from(*base)
            else:
                self._pending_base[operation_id] = base
        if manifest is not None and self._checkpointer is not None:
            self._checkpointer.restored(manifest.progress, manifest.stage)
