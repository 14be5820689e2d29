"""The worker API's values: resume modes and states, resume points, resume contexts and
statistics (the BB-Pipeline structs, in Python's idiom)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from bbp_dist_resume.errors import InvalidIdentifier


class ResumeMode(StrEnum):
    """How to resume (BB-Pipeline ``ResumeMode``)."""

    FULL_RESTART = "full"
    LAST_CHECKPOINT = "last"
    BEST_CHECKPOINT = "best"
    INTERACTIVE = "interactive"


class ResumeState(StrEnum):
    """Life cycle of one ``ResumeSystem`` (see ``api/state.py`` for the transitions)."""

    IDLE = "idle"
    RUNNING = "running"
    CHECKPOINTING = "checkpointing"
    PAUSED = "paused"
    RECOVERING = "recovering"
    FAILED = "failed"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointMetadata:
    """One resume point (BB-Pipeline ``CheckpointMetadata``, plus the distributed fields).

    Attributes:
        checkpoint_id: ``"{operation}/{worker}/{seq}"``; pipeline_id: the operation id.
        timestamp: commit time (UTC); elapsed_time: monitored time when it was taken.
        memory_footprint: the process's resident memory then, bytes.
        is_verified: the commit record read back intact (root hash matches the index),
            and, when verification ran, every chunk present (or re-hashed, deep).
        verification_hash: the manifest's BLAKE3 ``root``.
        logical_size: bytes of state and attachments; attachments: their names.
    """

    checkpoint_id: str
    timestamp: datetime
    pipeline_id: str
    stage_name: str
    granularity: str
    progress_percentage: float
    memory_footprint: int
    elapsed_time: timedelta
    custom_metadata: Mapping[str, str]
    is_verified: bool
    verification_hash: str
    worker_id: str
    seq: int
    logical_size: int
    attachments: tuple[str, ...] = ()
    epoch: int | None = None
    consumed: Mapping[str, int] = field(default_factory=dict)
    produced: Mapping[str, int] = field(default_factory=dict)


AttachmentReader = Callable[[str, "str | os.PathLike[str] | None"], "bytes | None"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeContext:
    """Where a resumed worker goes on from (BB-Pipeline ``ResumeContext``, plus the state).

    ``state`` is the restored ``pipeline_state`` (``{}`` for a full restart);
    ``consumed`` the channel offsets to continue reading from. Attachments are fetched
    only when asked for: :meth:`attachment` (bytes) or :meth:`restore_attachment` (a file).
    """

    operation_id: str
    pipeline_config_path: str
    completed_stages: tuple[str, ...]
    pending_stages: tuple[str, ...]
    stage_results: Mapping[str, Any]
    start_time: datetime
    resume_time: datetime
    resume_mode: ResumeMode
    resume_reason: str
    checkpoint_id: str | None
    state: Mapping[str, Any]
    consumed: Mapping[str, int] = field(default_factory=dict)
    produced: Mapping[str, int] = field(default_factory=dict)
    stage_name: str = ""
    progress_percentage: float = 0.0
    attachment_names: tuple[str, ...] = ()
    _reader: AttachmentReader | None = field(default=None, repr=False, compare=False)

    def attachment(self, name: str) -> bytes:
        """The bytes of one attachment, every chunk verified."""
        data = self._read(name, None)
        assert data is not None
        return data

    def restore_attachment(self, name: str, path: str | os.PathLike[str]) -> Path:
        """Write one attachment to ``path`` (atomically) and return the path."""
        self._read(name, path)
        return Path(path)

    def _read(self, name: str, path: str | os.PathLike[str] | None) -> bytes | None:
        if name not in self.attachment_names or self._reader is None:
            raise InvalidIdentifier("attachment name", name, f"not in {self.checkpoint_id}")
        return self._reader(name, path)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeStatistics:
    """BB-Pipeline ``ResumeStatistics`` plus bytes, dedup and recommendations.

    ``checkpoint_overhead_percentage`` is the time callers were blocked by checkpointing
    divided by the monitored wall time. Byte counts: ``logical_bytes`` written,
    ``stored_bytes`` of them new to the store (after dedup, before compression),
    ``uploaded_bytes`` sent (encoded); ``dedup_ratio`` = logical / stored.
    """

    created_at: datetime
    total_resumes: int = 0
    successful_resumes: int = 0
    failed_resumes: int = 0
    total_recovery_time: timedelta = timedelta(0)
    average_recovery_time: timedelta = timedelta(0)
    stage_resume_counts: Mapping[str, int] = field(default_factory=dict)
    recent_failures: tuple[str, ...] = ()
    total_checkpoints_created: int = 0
    failed_checkpoints: int = 0
    checkpoints_used_for_recovery: int = 0
    checkpoint_overhead_percentage: float = 0.0
    average_checkpoint_time: timedelta = timedelta(0)
    monitored_time: timedelta = timedelta(0)
    logical_bytes: int = 0
    stored_bytes: int = 0
    uploaded_bytes: int = 0
    dedup_ratio: float = 1.0
    recommendations: tuple[str, ...] = ()
