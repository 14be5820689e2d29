"""What the operator's view (``Admin``, ``bbp-resume``) shows: operations with their
workers' lease health, one checkpoint's anatomy, retention and rebuild results.

Every value has ``to_dict()``: plain JSON data for ``--json`` output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from bbp_dist_resume.api.models import CheckpointMetadata


class LeaseHealth(StrEnum):
    """A worker slot's lease, as an operator reads it."""

    HELD = "held"  # a live owner renews it
    EXPIRED = "expired"  # was held, is not, the worker is not done: crashed or stopped
    DONE = "done"  # the worker finished
    NEVER = "never"  # never acquired


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerView:
    """One worker of an operation.

    Attributes:
        lease_ms: remaining lease time by the backend's clock (None unless held).
        progress: percent last reported with a heartbeat (None: never reported).
        checkpoints: committed checkpoints in the index; latest: the newest one's id.
    """

    worker_id: str
    lease: LeaseHealth
    lease_ms: int | None
    fence: int
    progress: float | None
    checkpoints: int
    latest: str | None
    latest_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationView:
    """One operation: its status (``unknown`` when only the store knows it), plan
    generation and workers."""

    operation_id: str
    status: str
    created_at: datetime | None
    generation: int
    workers: tuple[WorkerView, ...]
    logical_bytes: int

    @property
    def checkpoints(self) -> int:
        return sum(w.checkpoints for w in self.workers)

    @property
    def progress(self) -> float:
        """Mean reported progress over the workers (done workers count 100)."""
        if not self.workers:
            return 0.0
        values = [
            100.0 if w.lease is LeaseHealth.DONE else (w.progress or 0.0) for w in self.workers
        ]
        return sum(values) / len(values)

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self) | {"checkpoints": self.checkpoints, "progress": self.progress}


@dataclass(frozen=True, slots=True, kw_only=True)
class PartView:
    """One part of a checkpoint (the state or an attachment).

    Attributes:
        name: ``state`` or the attachment's name; inline: kept in the manifest itself.
        chunks: chunk references; new_bytes: bytes of chunks the worker's previous
            checkpoint did not have (what this checkpoint added to the store at most).
    """

    name: str
    size: int
    chunks: int
    inline: bool
    new_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointDetails:
    """A checkpoint's anatomy: metadata, ownership, parts, chunks and dedup.

    Attributes:
        unique_chunks / unique_bytes: distinct chunks the checkpoint references.
        dedup_ratio: logical size / unique bytes (repeats within the checkpoint).
        previous: the worker's previous checkpoint, the base of ``new_bytes``.
        stored_bytes: encoded bytes of its distinct chunks in the store (after
            compression and encryption); None when not measured.
    """

    metadata: CheckpointMetadata
    owner_token: str
    fence: int
    write_id: str
    base: int | None
    encrypted: bool
    parts: tuple[PartView, ...]
    unique_chunks: int
    unique_bytes: int
    previous: str | None
    new_bytes: int
    stored_bytes: int | None

    @property
    def dedup_ratio(self) -> float:
        return self.metadata.logical_size / self.unique_bytes if self.unique_bytes else 1.0

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self) | {"dedup_ratio": self.dedup_ratio}


def plain(value: Any) -> Any:
    """JSON-ready data of any value of the API (dataclasses, enums, datetimes, mappings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list | frozenset | set):
        return [plain(v) for v in value]
    return _scalar(value)


def _scalar(value: Any) -> Any:
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def as_dict(value: Any) -> dict[str, Any]:
    """``plain`` of a dataclass instance, typed as the dict it is."""
    data: dict[str, Any] = plain(value)
    return data
