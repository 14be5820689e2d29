"""Typed values that cross the coordination protocol."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bbp_dist_resume.repository.manifest import CheckpointRecord, TakeoverRecord


class OperationStatus(StrEnum):
    """Life cycle of an operation (a pipeline run)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CRASHED = "crashed"
    RECOVERING = "recovering"


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationInfo:
    """What the backend knows of one operation.

    Attributes:
        created_at: seconds since the epoch, by the backend's clock.
        workers: the worker ids the operation was created with.
        done_workers: workers that called ``mark_worker_done``.
        generation: the generation of the current resume plan (0: none published).
        progress: worker -> percent done, as last reported with a heartbeat.
    """

    operation_id: str
    status: OperationStatus
    created_at: float
    config_path: str
    workers: tuple[str, ...]
    stages: tuple[str, ...]
    generation: int = 0
    done_workers: frozenset[str] = field(default_factory=frozenset)
    progress: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotState:
    """One worker slot as the backend sees it now (for operators: ``bbp-resume ops``).

    Attributes:
        fence: the slot's fencing counter (0: never acquired).
        lease_ms: the live lease's remaining time by the backend's clock; None when no
            owner holds a live lease (never started, released, expired or done).
        done: the worker called ``mark_worker_done``.
    """

    worker_id: str
    fence: int
    lease_ms: int | None
    done: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """A worker's lease: who owns the slot, and the fence its writes carry.

    Attributes:
        owner_token: random, unique to this acquisition.
        fence: the fencing token, strictly greater than every earlier acquisition's.
        ttl_ms: the lease time-to-live the backend enforces on its own clock.
        renewed_at: ``time.monotonic()`` when the backend last confirmed the lease;
            ``renewed_at + ttl_ms`` is a local deadline that is never later than the
            backend's (it starts before the request was sent).
    """

    operation_id: str
    worker_id: str
    owner_token: str
    fence: int
    ttl_ms: int
    renewed_at: float

    @property
    def local_deadline(self) -> float:
        """``time.monotonic()`` value after which the lease must be taken as lost."""
        return self.renewed_at + self.ttl_ms / 1000


class CheckpointSummary(BaseModel):
    """One entry of the checkpoint index: enough to plan a recovery without the store."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    seq: int = Field(ge=1)
    kind: str = Field(pattern="^(checkpoint|takeover)$")
    owner_token: str = Field(pattern="^[0-9a-f]{32}$")
    fence: int = Field(ge=0)
    created_at: str
    root: str = Field(pattern="^[0-9a-f]{64}$")
    stage: str = ""
    progress: float = 0.0
    epoch: int | None = None
    consumed: dict[str, int] = Field(default_factory=dict)
    produced: dict[str, int] = Field(default_factory=dict)
    base: int | None = None
    size: int = 0

    @classmethod
    def of(cls, record: CheckpointRecord | TakeoverRecord) -> CheckpointSummary:
        """The summary of a commit record read from (or written to) the store."""
        common: dict[str, Any] = {
            "seq": record.seq,
            "kind": record.kind,
            "owner_token": record.owner_token,
            "fence": record.fence,
            "created_at": record.created_at.isoformat(),
            "root": record.root,
        }
        if isinstance(record, TakeoverRecord):
            return cls(**common)
        return cls(
            **common,
            stage=record.stage,
            progress=record.progress,
            epoch=record.epoch,
            consumed=dict(record.consumed),
            produced=dict(record.produced),
            base=record.base,
            size=record.logical_size,
        )

    def to_json(self) -> str:
        return self.model_dump_json()


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumePlan:
    """A published resume plan: its generation and its body (plain JSON data)."""

    operation_id: str
    generation: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReclaimClaim:
    """A crashed slot claimed from the reclaim queue, to acknowledge when resumed."""

    entry_id: str
    operation_id: str
    worker_id: str
    consumer: str
