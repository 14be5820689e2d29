"""``CheckpointMeta``: what the caller says about a checkpoint before its parts upload."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pydantic import ValidationError

from bbp_dist_resume.errors import InvalidCheckpoint
from bbp_dist_resume.ids import check_id, check_seq
from bbp_dist_resume.repository.manifest import CheckpointRecord, PartRef, utcnow


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointMeta:
    """Identity and description of one checkpoint.

    Attributes:
        operation_id, worker_id, seq: the commit slot (seq = the worker's next seq).
        owner_token, fence: the writer's lease, recorded so stale writers can be traced.
        stage: the pipeline stage; granularity: "coarse" | "medium" | "fine".
        progress: percent done; memory_bytes: the process footprint; elapsed_seconds.
        custom_metadata: string pairs; epoch: barrier epoch or None.
        consumed, produced: channel name -> offset (DESIGN.md, the recovery line).
        base: on the first commit after a resume, the seq restored from (0: clean).
    """

    operation_id: str
    worker_id: str
    seq: int
    owner_token: str
    fence: int
    stage: str
    granularity: str = "medium"
    progress: float = 0.0
    memory_bytes: int = 0
    elapsed_seconds: float = 0.0
    custom_metadata: Mapping[str, str] = field(default_factory=dict)
    epoch: int | None = None
    consumed: Mapping[str, int] = field(default_factory=dict)
    produced: Mapping[str, int] = field(default_factory=dict)
    base: int | None = None

    def __post_init__(self) -> None:
        # Own copies: a caller changing its dict later must not change this checkpoint.
        for name in ("custom_metadata", "consumed", "produced"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise InvalidCheckpoint(f"invalid checkpoint metadata: {name} must be a mapping")
            object.__setattr__(self, name, MappingProxyType(dict(value)))
        check_id(self.operation_id, "operation id")
        check_id(self.worker_id, "worker id")
        check_id(self.stage, "stage name")
        check_seq(self.seq)
        for name in (*self.consumed, *self.produced):
            check_id(name, "channel name")
        # Check every value now, so bad metadata is refused before any chunk uploads.
        self.manifest({}, write_id="0" * 32)

    def manifest(self, parts: dict[str, PartRef], *, write_id: str) -> CheckpointRecord:
        """Build the sealed manifest. Raises ``InvalidCheckpoint`` for a bad value."""
        try:
            record = CheckpointRecord(
                version=1,
                operation_id=self.operation_id,
                worker_id=self.worker_id,
                seq=self.seq,
                owner_token=self.owner_token,
                fence=self.fence,
                write_id=write_id,
                created_at=utcnow(),
                stage=self.stage,
                granularity=self.granularity,
                progress=float(self.progress),
                memory_bytes=self.memory_bytes,
                elapsed_seconds=float(self.elapsed_seconds),
                custom_metadata=dict(self.custom_metadata),
                epoch=self.epoch,
                consumed=dict(self.consumed),
                produced=dict(self.produced),
                base=self.base,
                parts=parts,
            )
        except (ValidationError, TypeError, ValueError) as exc:
            raise InvalidCheckpoint(f"invalid checkpoint metadata: {_first(exc)}") from None
        return record.sealed()


def _first(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors(include_input=False, include_url=False)[0]
        return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    return str(exc)
