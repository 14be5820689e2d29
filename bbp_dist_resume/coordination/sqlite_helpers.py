"""Helpers of the SQLite backend (``sqlite_backend`` and its mixin): id checks, the rows
of an operation and a slot, refusals as errors, and the JSON of summaries and plans."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from bbp_dist_resume.coordination.models import (
    CheckpointSummary,
    Lease,
    OperationInfo,
    OperationStatus,
    SlotState,
)
from bbp_dist_resume.coordination.sqlite_db import now_ms
from bbp_dist_resume.errors import (
    InvalidCheckpoint,
    InvalidIdentifier,
    LeaseLostError,
    UnknownOperation,
)
from bbp_dist_resume.ids import check_id

_SLOT = "SELECT owner_token, fence, deadline_ms, done FROM slots WHERE op = ? AND worker = ?"


def _op_worker(operation_id: str, worker_id: str) -> tuple[str, str]:
    return check_id(operation_id, "operation id"), check_id(worker_id, "worker id")


def _key(lease: Lease) -> tuple[str, str]:
    return _op_worker(lease.operation_id, lease.worker_id)


def _id_list(values: Sequence[str], kind: str) -> list[str]:
    if isinstance(values, str | bytes):  # a str is a Sequence[str] of its letters
        raise InvalidIdentifier(kind + "s", values, "must be a list of ids, not a string")
    return [check_id(v, kind) for v in values]


def _status(value: str) -> OperationStatus:
    try:
        return OperationStatus(value)
    except ValueError:
        raise InvalidIdentifier("operation status", value, "not an OperationStatus") from None


def _non_negative(value: float, kind: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise InvalidCheckpoint(f"{kind} must be a number >= 0, not {value!r}")
    return value


def _op_row(db: sqlite3.Connection, op: str, *, missing_ok: bool = False) -> Any:
    row = db.execute("SELECT * FROM operations WHERE op = ?", (op,)).fetchone()
    if row is None and not missing_ok:
        raise UnknownOperation(op)
    return row


def _slot(db: sqlite3.Connection, op: str, worker: str) -> Any:
    return db.execute(_SLOT, (op, worker)).fetchone()


def _member_slot(db: sqlite3.Connection, op: str, worker: str) -> Any:
    """The slot; UnknownOperation for an unknown op, InvalidIdentifier for a stranger."""
    slot = _slot(db, op, worker)
    if slot is None:
        _op_row(db, op)
        raise _not_a_worker(op, worker)
    return slot


def _not_a_worker(op: str, worker: str) -> InvalidIdentifier:
    return InvalidIdentifier("worker id", worker, f"not a worker of operation {op!r}")


def _live(slot: Any, now_ms: int) -> bool:
    return slot["owner_token"] is not None and (slot["deadline_ms"] or 0) > now_ms


def _slot_state(worker: str, row: Any, now: int) -> SlotState:
    if row is None:
        return SlotState(worker_id=worker, fence=0, lease_ms=None, done=False)
    live = _live(row, now) and not row["done"]
    return SlotState(
        worker_id=worker,
        fence=int(row["fence"]),
        lease_ms=int(row["deadline_ms"]) - now if live else None,
        done=bool(row["done"]),
    )


def _owned(db: sqlite3.Connection, lease: Lease, action: str) -> int:
    """Now (ms) if ``lease`` is the slot's live owner, else ``LeaseLostError``; a slot
    that is gone (data loss) is a lost lease too: its holder must stop."""
    op, worker = _key(lease)
    now = now_ms()
    slot = _slot(db, op, worker)
    if slot is None or slot["owner_token"] != lease.owner_token or not _live(slot, now):
        raise LeaseLostError(op, worker, f"cannot {action}: expired, released or taken over")
    return now


def _info(db: sqlite3.Connection, op: str) -> OperationInfo:
    row = _op_row(db, op)
    done = db.execute("SELECT worker FROM slots WHERE op = ? AND done = 1", (op,)).fetchall()
    shown = db.execute(
        "SELECT worker, progress FROM slots WHERE op = ? AND progress IS NOT NULL", (op,)
    ).fetchall()
    return OperationInfo(
        operation_id=op,
        status=OperationStatus(row["status"]),
        created_at=float(row["created_at"]),
        config_path=row["config_path"],
        workers=tuple(json.loads(row["workers"])),
        stages=tuple(json.loads(row["stages"])),
        generation=int(row["generation"]),
        done_workers=frozenset(w for (w,) in done),
        progress={w: float(p) for w, p in shown},
    )


def _summary_json(summary: CheckpointSummary) -> str:
    if not isinstance(summary, CheckpointSummary):
        raise InvalidCheckpoint(f"expected a CheckpointSummary, got {type(summary).__name__}")
    return summary.model_dump_json()


def _summary(text: str) -> CheckpointSummary:
    return CheckpointSummary.model_validate_json(text)  # parsed, never eval'd or unpickled


def _plan_json(body: Mapping[str, Any]) -> str:
    try:
        if not isinstance(body, Mapping):
            raise TypeError(f"expected a mapping, got {type(body).__name__}")
        return json.dumps(dict(body), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidCheckpoint(f"a resume plan must be plain JSON: {exc}") from None
