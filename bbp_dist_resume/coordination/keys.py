"""Every Redis key name, one function per key (DESIGN.md, "Redis keys").

All keys of one operation embed the hash tag ``{op}``, so every script touches a single
Cluster slot. Global keys (``bbp:ops``, ``bbp:deadlines``, ``bbp:reclaim``,
``bbp:coordinator``, ``bbp:instance``) are only used by single-key commands.
"""

from __future__ import annotations

from bbp_dist_resume.ids import check_id


def _op(operation_id: str) -> str:
    return f"bbp:{{{check_id(operation_id, 'operation id')}}}"


def meta(op: str) -> str:
    """Hash: status, created_at, config_path, workers, stages, generation."""
    return f"{_op(op)}:meta"


def lease(op: str, worker: str) -> str:
    """The owner token, with a PX ttl on Redis' clock."""
    return f"{_op(op)}:lease:{check_id(worker, 'worker id')}"


def owner(op: str, worker: str) -> str:
    """The owner token of the latest acquisition, without ttl (checked by index writes)."""
    return f"{_op(op)}:owner:{check_id(worker, 'worker id')}"


def fence(op: str, worker: str) -> str:
    """The fencing counter, INCR on every acquisition; never expires."""
    return f"{_op(op)}:fence:{check_id(worker, 'worker id')}"


def deadlines(op: str) -> str:
    """Zset worker -> lease deadline (ms, Redis clock)."""
    return f"{_op(op)}:deadlines"


def done(op: str) -> str:
    """Set of workers that finished."""
    return f"{_op(op)}:done"


def index(op: str, worker: str) -> str:
    """Zset seq -> checkpoint summary JSON."""
    return f"{_op(op)}:index:{check_id(worker, 'worker id')}"


def plan(op: str) -> str:
    """The published resume plan: JSON with its generation and plan id."""
    return f"{_op(op)}:plan"


def acks(op: str) -> str:
    """Hash worker -> the newest plan generation whose entry it restored (the barrier)."""
    return f"{_op(op)}:acks"


OPS = "bbp:ops"
"""Zset of known operations, scored by creation time."""

ALL_DEADLINES = "bbp:deadlines"
"""Zset ``op/worker`` -> lease deadline over all operations: crash scans in one command."""

RECLAIM = "bbp:reclaim"
"""Stream of crashed slots; consumer group ``RECLAIM_GROUP``."""

RECLAIM_GROUP = "bbp-workers"

COORDINATOR = "bbp:coordinator"
"""Leader lease of the active coordinator."""

INSTANCE = "bbp:instance"
"""Random marker written once; its absence reveals a Redis that lost its data."""


def instance_marker(n: int) -> str:
    """The n-th Cluster marker key: its own hash tag, to place one on every master."""
    return f"{INSTANCE}:{{{n}}}"


def slot_member(op: str, worker: str) -> str:
    """Member of ``ALL_DEADLINES`` for one slot (ids contain no ``/``)."""
    return f"{op}/{worker}"
