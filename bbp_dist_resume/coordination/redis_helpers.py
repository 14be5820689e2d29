"""Pure helpers of the Redis backend (``redis_backend`` and its mixins): the keys of one
slot, refusal codes and missing members as errors, and the parsing of what Redis returns."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from bbp_dist_resume.coordination import keys as K
from bbp_dist_resume.coordination.models import CheckpointSummary, OperationInfo, OperationStatus
from bbp_dist_resume.errors import (
    InvalidIdentifier,
    LeaseHeldError,
    UnknownOperation,
    WorkerFinished,
)


def _check_member(operation_id: str, worker_id: str, workers: str | None) -> None:
    """UnknownOperation when the meta is gone; InvalidIdentifier for a stranger."""
    if workers is None:
        raise UnknownOperation(operation_id)
    if worker_id not in json.loads(workers):
        raise InvalidIdentifier("worker id", worker_id, f"not a worker of {operation_id}")


def _refused(code: int, operation_id: str, worker_id: str) -> None:
    """The error of an ACQUIRE refusal code (none for a fence)."""
    if code == -1:
        raise UnknownOperation(operation_id)
    if code == -2:
        raise InvalidIdentifier("worker id", worker_id, f"not a worker of {operation_id}")
    if code == -3:
        raise LeaseHeldError(operation_id, worker_id)
    if code == -4:
        raise WorkerFinished(operation_id, worker_id)


def _crashed(facts: list[Any]) -> bool:
    """status RUNNING, not done, no live lease, and acquired at least once (a fence)."""
    status, is_done, has_lease, has_fence = facts
    return bool(status == OperationStatus.RUNNING and not is_done and not has_lease and has_fence)


def _slot_keys(op: str, worker: str) -> dict[str, str]:
    return {
        "meta": K.meta(op),
        "lease": K.lease(op, worker),
        "fence": K.fence(op, worker),
        "deadlines": K.deadlines(op),
        "owner": K.owner(op, worker),
        "done": K.done(op),
        "index": K.index(op, worker),
    }


def _shown(progress: float | None) -> str:
    return "" if progress is None else repr(progress)


def _info(op: str, fields: dict[str, str], finished: set[str]) -> OperationInfo:
    return OperationInfo(
        operation_id=op,
        status=OperationStatus(fields["status"]),
        created_at=int(fields["created_at"]) / 1000,
        config_path=fields.get("config_path", ""),
        workers=tuple(json.loads(fields["workers"])),
        stages=tuple(json.loads(fields["stages"])),
        generation=int(fields.get("generation", 0)),
        done_workers=frozenset(finished),
        progress={
            k.removeprefix("progress:"): float(v)
            for k, v in fields.items()
            if k.startswith("progress:")
        },
    )


def _summaries(raw: Iterable[str]) -> list[CheckpointSummary]:
    return [CheckpointSummary.model_validate_json(item) for item in raw]
