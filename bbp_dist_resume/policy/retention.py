"""Retention: which of one worker's checkpoints may be deleted.

A checkpoint is deleted when it is not among the worker's newest ``max_checkpoints``,
or when it is older than ``cleanup_age``. Never delete a protected
seq (the current plan's or recovery line's entry), the worker's newest checkpoint, or a
takeover record.

Takeover records are kept although DESIGN.md would delete one with the checkpoint before
it: a takeover record is the fence against every earlier owner of the slot. Deleting it
frees its seq, and a writer paused since before the takeover (SIGSTOP, a long GC pause)
would then commit into the freed seq on resuming. They are a few hundred bytes each.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionEntry:
    """What retention needs of one commit record."""

    seq: int
    kind: str  # "checkpoint" | "takeover"
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionRule:
    """``max_checkpoints`` kept per worker; older than ``cleanup_age`` removed."""

    max_checkpoints: int
    cleanup_age: timedelta


def select_expired(
    entries: Sequence[RetentionEntry],
    rule: RetentionRule,
    *,
    now: datetime,
    protected: Collection[int] = (),
) -> list[int]:
    """The seqs of checkpoints to delete, ascending.

    A checkpoint goes when it is beyond the newest ``max_checkpoints`` or older than
    ``cleanup_age``, unless it is protected or the newest checkpoint.
    """
    checkpoints = sorted((e for e in entries if e.kind == "checkpoint"), key=lambda e: e.seq)
    if not checkpoints:
        return []
    newest = checkpoints[-1].seq
    keep_from = len(checkpoints) - rule.max_checkpoints
    out = []
    for i, entry in enumerate(checkpoints):
        if entry.seq == newest or entry.seq in protected:
            continue
        if i < keep_from or now - entry.created_at > rule.cleanup_age:
            out.append(entry.seq)
    return out
