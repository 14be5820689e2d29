"""``CheckpointGuard`` (alias ``AutoCheckpointGuard``): a task's checkpoints, as a context
manager.

Progress updates checkpoint at the strategy's milestones (progress boundaries: FINE
granularity). Leaving the block is a task boundary: MEDIUM and FINE take a final
checkpoint there, COARSE does not. Leaving it by an exception always takes one, with the
failure recorded in its metadata, and re-raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from bbp_dist_resume.config import CheckpointGranularity
from bbp_dist_resume.errors import BBPError, InvalidCheckpoint, InvalidStateError
from bbp_dist_resume.ids import check_id
from bbp_dist_resume.logs import get_logger, log_context
from bbp_dist_resume.policy import Boundary

if TYPE_CHECKING:
    from bbp_dist_resume.api.resume_system import ResumeSystem

log = get_logger(__name__)


class CheckpointGuard:
    """Checkpoints one stage's task of ``resume_system`` (BB-Pipeline ``AutoCheckpointGuard``).

    The resume system starts monitoring ``operation_id`` if it is not monitoring yet.
    """

    def __init__(self, operation_id: str, stage_name: str, resume_system: ResumeSystem) -> None:
        self._op = check_id(operation_id, "operation id")
        self._stage = check_id(stage_name, "stage name")
        self._rs = resume_system
        self._state: Mapping[str, Any] = {}
        self._metadata: dict[str, str] = {}
        # Where the worker stands now (restored or reported): a final checkpoint of a
        # guard that never saw update_progress must not record 0% after 99%.
        self._progress = resume_system._ckpt().progress
        self.last_checkpoint_id: str | None = None
        current = resume_system.operation_id
        if current is None:
            resume_system.start_monitoring(operation_id)
        elif current != operation_id:
            raise InvalidStateError(
                f"the resume system is monitoring {current}, not {operation_id}"
            )

    def __enter__(self) -> CheckpointGuard:
        return self

    def update_progress(self, percentage: float) -> str | None:
        """Report progress; checkpoints when the strategy reaches a milestone."""
        self._progress = float(percentage)
        cid = self._rs.checkpoint_if_due(
            self._stage, self._state, percentage, Boundary.PROGRESS, self._metadata
        )
        if cid:
            self.last_checkpoint_id = cid
        return cid

    def set_pipeline_state(self, state: Mapping[str, Any]) -> None:
        """The state the next checkpoint saves (serialised when it is taken)."""
        if not isinstance(state, Mapping):
            raise InvalidCheckpoint(f"pipeline_state must be a dict, not {type(state).__name__}")
        self._state = state

    def add_metadata(self, key: str, value: str) -> None:
        """A custom metadata pair for the checkpoints this guard takes."""
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidCheckpoint("custom metadata keys and values must be strings")
        self._metadata[key] = value

    def force_checkpoint(self) -> str:
        """Checkpoint now, whatever the strategy."""
        cid = self._rs.create_checkpoint(
            self._stage, self._state, self._metadata, progress=self._progress
        )
        if cid:
            self.last_checkpoint_id = cid
        return cid

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            if self._rs.get_config().granularity is not CheckpointGranularity.COARSE:
                self.force_checkpoint()
            return
        self._metadata["failed"] = "true"
        self._metadata["failure"] = f"{type(exc).__name__}: {exc}"[:1000]
        try:
            self.force_checkpoint()
        except BBPError as err:
            # The task's own exception is the one the caller must see.
            with log_context(operation=self._op, worker=self._rs.worker_id):
                log.warning("final checkpoint of failed stage %s not taken: %s", self._stage, err)


AutoCheckpointGuard = CheckpointGuard
