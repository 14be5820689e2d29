"""``SystemCore``: the life cycle under ``ResumeSystem`` — opening the runtime, holding
the worker's session (lease, heartbeat) on one operation, and the internals the
checkpointer, the resumer and the guard share. ``ResumeSystem`` adds the public API.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from bbp_dist_resume.api.callbacks import Callbacks
from bbp_dist_resume.api.catalog import Catalog
from bbp_dist_resume.api.checkpointer import Checkpointer, Plumbing
from bbp_dist_resume.api.maintenance import Maintenance
from bbp_dist_resume.api.metrics import start_configured_exporter
from bbp_dist_resume.api.models import ResumeState
from bbp_dist_resume.api.runtime import Runtime
from bbp_dist_resume.api.session import WorkerSession
from bbp_dist_resume.api.state import StateMachine
from bbp_dist_resume.api.stats import StatsRecorder
from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.coordination import Coordination, OperationInfo
from bbp_dist_resume.errors import (
    InvalidStateError,
    LeaseLostError,
    RollbackRequested,
    UnknownOperation,
)
from bbp_dist_resume.ids import check_id
from bbp_dist_resume.logs import get_logger, log_context
from bbp_dist_resume.repository import Manifest, Repository

log = get_logger("bbp_dist_resume")
P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="SystemCore")
# What a resume restored: seq (0: none), elapsed seconds, plan generation, consumed offsets.
Resumed = tuple[int, float, int | None, dict[str, int] | None]


def scoped(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """``method`` run with the system's log fields: its worker, and the operation it
    monitors (when it monitors one). Every public entry point that may log, or start a
    thread that logs, is scoped."""

    @functools.wraps(method)
    def call(system: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with log_context(worker=system.worker_id, operation=system.operation_id):
            return method(system, *args, **kwargs)

    return call


class SystemCore:
    """Life cycle and shared internals of one worker's ``ResumeSystem``."""

    def __init__(self, config: CheckpointConfig | None = None, worker_id: str = "w0") -> None:
        self._config = config or CheckpointConfig()
        self.worker_id = check_id(worker_id, "worker id")
        self._lock = threading.RLock()
        self._machine = StateMachine()
        self._stats = StatsRecorder()
        self._callbacks = Callbacks()
        self._rt: Runtime | None = None
        self._session: WorkerSession | None = None
        self._pending_base: dict[str, Resumed] = {}
        self._saved_log_level: int | None = None
        if self._config.detailed_logging:
            self.set_detailed_logging(True)

    # -- life cycle ----------------------------------------------------------------------

    @scoped
    def initialize(self) -> bool:
        """Open the store and the coordination backend (idempotent); start the metrics
        exporter when ``metrics_port`` is set and none runs in the process yet.

        Raises:
            ConfigError: the metrics exporter cannot start (see ``metrics_port``).
        """
        with self._lock:
            if self._rt is None:
                start_configured_exporter(self._config)
                plumbing = Plumbing(
                    machine=self._machine,
                    stats=self._stats,
                    callbacks=self._callbacks,
                    config=self.get_config,
                    maintenance=self._maint,
                )
                self._rt = Runtime(self._config, plumbing)
                self._stats.reset(self._rt.repo.stats())
            return True

    @scoped
    def shutdown(self) -> None:
        """Finish pending checkpoints, release the lease (if held) and close everything."""
        with self._lock:
            if self._session is not None:
                self._end_session(done=False, target=ResumeState.IDLE)
            if self._rt is not None:
                self._rt.close()
                self._rt = None
            if self._machine.state is not ResumeState.IDLE:
                self._machine.move(ResumeState.IDLE)

    def __enter__(self) -> Self:
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
        # The heartbeat thread started here keeps these log fields for its lifetime.
        with log_context(worker=self.worker_id, operation=operation_id):
            return self._monitor(operation_id, pipeline_config_path, workers, stages)

    def _monitor(
        self,
        operation_id: str,
        pipeline_config_path: str,
        workers: list[str] | None,
        stages: list[str] | None,
    ) -> bool:
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
            self._session.on_rollback = self._rolled_back
            self._session.deterministic = frozenset(self._config.deterministic_producers)
            self._session.read_committed = self._config.read_committed
            if operation_id in self._pending_base:
                self._session.resumed_from(*self._pending_base.pop(operation_id))
            self._ckpt().reset_schedule(self._maint().observed_mtbf(operation_id))
            self._stats.monitoring(True)
            self._machine.move(ResumeState.RUNNING)
        log.info("monitoring %s as %s", operation_id, self.worker_id)
        return True

    @scoped
    def stop_monitoring(self) -> None:
        """Finish pending checkpoints and release the lease without finishing: the
        coordinator will see this worker as crashed unless ``complete()`` is called."""
        with self._lock:
            if self._session is not None:
                self._end_session(done=False, target=ResumeState.PAUSED)

    @scoped
    def complete(self) -> bool:
        """Mark this worker done; True when that completed the whole operation."""
        with self._lock:
            session = self._require_session()
            if self._rt is not None:
                self._rt.committer.flush()
            # Done is for good: a plan published since the last heartbeat that rolls
            # this worker back must be seen now, not at the next beat.
            session.watch_plan()
            session.check()
            info = self._end_session(done=True, target=ResumeState.COMPLETED, session=session)
        return info is not None and info.status.value == "completed"

    def _end_session(
        self, *, done: bool, target: ResumeState, session: WorkerSession | None = None
    ) -> OperationInfo | None:
        session = session or self._session
        assert session is not None
        try:
            if self._rt is not None:
                self._rt.committer.flush()
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

    def get_config(self) -> CheckpointConfig:
        return self._config

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

    def _call(self, which: str, *args: Any) -> None:
        self._callbacks.call(which, *args)

    # -- internals shared with the resumer and the guard ---------------------------------

    def _runtime(self) -> Runtime:
        # No lock when open: the committer thread calls this while a caller holding the
        # lock waits for it (shutdown flushing pending checkpoints).
        rt = self._rt
        if rt is None:
            self.initialize()
            rt = self._rt
        assert rt is not None
        return rt

    def _require_open(self) -> tuple[Coordination, Repository]:
        rt = self._rt
        if rt is None:
            raise InvalidStateError("the resume system is shut down")
        return rt.coord, rt.repo

    @property
    def _repo(self) -> Repository | None:
        return self._rt.repo if self._rt else None

    @property
    def _coord(self) -> Coordination | None:
        return self._rt.coord if self._rt else None

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
        return self._runtime().checkpointer

    def _cat(self) -> Catalog:
        return self._runtime().catalog

    def _maint(self) -> Maintenance:
        return self._runtime().maintenance

    def _operation_info(self, operation_id: str) -> OperationInfo | None:
        coord, _ = self._require_open()
        try:
            return coord.get_operation(operation_id)
        except UnknownOperation:
            return None

    def _rolled_back(self, request: RollbackRequested) -> None:
        self._callbacks.call("rollback", request.generation, request.checkpoint_id)

    def _note_resumed(
        self, operation_id: str, manifest: Manifest | None, generation: int | None = None
    ) -> None:
        """The worker's state now comes from ``manifest`` (None: a clean start), chosen
        by plan ``generation`` when given."""
        base: Resumed = (0, 0.0, generation, None)
        if manifest is not None:
            own = manifest.worker_id == self.worker_id
            seq = manifest.seq if own else 0
            base = (seq, manifest.elapsed_seconds, generation, dict(manifest.consumed))
        with self._lock:
            session = self._session
            if session is not None and session.operation.operation_id == operation_id:
                session.resumed_from(*base)
            else:
                # Kept for the session start_monitoring opens: its state, the plan it
                # follows (so that plan is not taken for a new rollback) and its offsets.
                self._pending_base[operation_id] = base
        if manifest is not None and self._rt is not None:
            self._rt.checkpointer.restored(manifest.progress, manifest.stage)
