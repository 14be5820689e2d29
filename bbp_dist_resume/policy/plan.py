"""``RecoveryPlan``: the recovery line as a plan to publish — per worker the checkpoint to
restore (or the initial state) and why, per channel the producer and its offset, and the
quarantined checkpoints with their reasons. Pure: built from histories, read from and
written to plain JSON (the body the coordination backend stores).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from bbp_dist_resume.errors import InvalidCheckpoint
from bbp_dist_resume.ids import parse_checkpoint_id
from bbp_dist_resume.policy.recovery import (
    History,
    ResumeSelection,
    Score,
    recovery_line,
)
from bbp_dist_resume.policy.restarts import next_restarts, pending_restarts, planning_view

PLAN_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanEntry:
    """One worker's place: ``seq`` None means its initial state."""

    checkpoint_id: str | None
    seq: int | None
    reason: str
    replay_from: Mapping[str, int] = field(default_factory=dict)
    # True when consistency put the worker behind its latest live checkpoint: only then
    # must a running worker roll back (one merely restarting from its latest need not).
    rollback: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryPlan:
    """What every worker of an operation resumes from.

    Attributes:
        entries: worker -> its entry; channels: channel -> (producer, produced offset).
        quarantined: checkpoint id -> why it is never planned from again.
        attempts: checkpoint id -> failed restores counted so far (poison detection).
        counted: worker -> the fence of its last crash already counted in ``attempts``.
        relaunched: the crashed workers this plan restarts (their output since their
            entry is replayed, so a consumer that read past it must roll back).
        restarts: worker -> the fence of the incarnation the plan replaces, for the
            relaunched workers and for those an earlier plan relaunched whose restored
            incarnation has not committed yet (``policy.restarts``: their records at or
            below it are a dead incarnation's).
        generation: set once published (0 before).
    """

    operation_id: str
    mode: str
    entries: Mapping[str, PlanEntry]
    channels: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    quarantined: Mapping[str, str] = field(default_factory=dict)
    attempts: Mapping[str, int] = field(default_factory=dict)
    counted: Mapping[str, int] = field(default_factory=dict)
    relaunched: tuple[str, ...] = ()
    restarts: Mapping[str, int] = field(default_factory=dict)
    generation: int = 0

    def to_body(self) -> dict[str, Any]:
        """The JSON body to publish (``generation`` is the backend's)."""
        return {
            "version": PLAN_VERSION,
            "mode": self.mode,
            "entries": {
                w: {
                    "checkpoint_id": e.checkpoint_id,
                    "seq": e.seq,
                    "reason": e.reason,
                    "replay_from": dict(e.replay_from),
                    "rollback": e.rollback,
                }
                for w, e in sorted(self.entries.items())
            },
            "channels": {c: list(p) for c, p in sorted(self.channels.items())},
            "quarantined": dict(sorted(self.quarantined.items())),
            "attempts": dict(sorted(self.attempts.items())),
            "counted": dict(sorted(self.counted.items())),
            "relaunched": sorted(self.relaunched),
            "restarts": dict(sorted(self.restarts.items())),
        }

    @classmethod
    def from_body(cls, operation_id: str, generation: int, body: Mapping[str, Any]) -> RecoveryPlan:
        """Parse a published body, strictly. Raises ``InvalidCheckpoint`` for a malformed
        one (wrong version, missing or mistyped fields)."""
        try:
            if body.get("version") != PLAN_VERSION:
                raise ValueError(f"unsupported plan version {body.get('version')!r}")
            return cls(
                operation_id=operation_id,
                mode=_typed(body.get("mode", "last"), str),
                entries={w: _entry(e) for w, e in _mapping(body["entries"]).items()},
                channels={c: _pair(p) for c, p in _mapping(body.get("channels", {})).items()},
                quarantined=_ids(_str_map(body.get("quarantined", {}), str)),
                attempts=_ids(_str_map(body.get("attempts", {}), int)),
                counted=_str_map(body.get("counted", {}), int),
                relaunched=tuple(_typed(w, str) for w in _typed(body.get("relaunched", []), list)),
                restarts=_str_map(body.get("restarts", {}), int),
                generation=generation,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidCheckpoint(f"malformed resume plan of {operation_id}: {exc}") from None


def _typed(value: Any, kind: type[Any]) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _mapping(value: Any) -> Mapping[str, Any]:
    _typed(value, dict)
    for key in value:
        _typed(key, str)
    return value  # type: ignore[no-any-return]


def _str_map(value: Any, kind: type[Any]) -> dict[str, Any]:
    return {k: _typed(v, kind) for k, v in _mapping(value).items()}


def _ids(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` when every key is a checkpoint id (InvalidIdentifier, a ValueError)."""
    for key in value:
        parse_checkpoint_id(key)
    return value


def _entry(value: Any) -> PlanEntry:
    e = _mapping(value)
    cid, seq = e["checkpoint_id"], e["seq"]
    if (cid is None) != (seq is None):
        raise ValueError("checkpoint_id and seq must both be set or both be null")
    return PlanEntry(
        checkpoint_id=None if cid is None else _typed(cid, str),
        seq=None if seq is None else _typed(seq, int),
        reason=_typed(e["reason"], str),
        replay_from=_str_map(e.get("replay_from", {}), int),
        rollback=_typed(e.get("rollback", False), bool),
    )


def _pair(value: Any) -> tuple[str, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise TypeError("a channel is [producer, offset]")
    return _typed(value[0], str), _typed(value[1], int)


def build_plan(
    operation_id: str,
    histories: Mapping[str, History],
    *,
    selection: ResumeSelection = ResumeSelection.LAST,
    score: Score | None = None,
    quarantined: Mapping[str, str] | None = None,
    attempts: Mapping[str, int] | None = None,
    counted: Mapping[str, int] | None = None,
    relaunched: Collection[str] = (),
    deterministic: Collection[str] = (),
    previous: RecoveryPlan | None = None,
    replaced: Mapping[str, int] | None = None,
) -> RecoveryPlan:
    """The plan of the maximal consistent cut, quarantined checkpoints excluded.

    ``previous`` (the plan in force) keeps a worker it relaunched at its entry until the
    restored incarnation commits (``policy.restarts``). ``replaced``: per relaunched
    worker, the fence of the incarnation it replaces (read before the histories; by
    default the highest fence in its history)."""
    quarantined = dict(quarantined or {})
    excluded: dict[str, set[int]] = {}
    for quarantined_id in quarantined:
        op, worker, seq = _split(quarantined_id)
        if op == operation_id:
            excluded.setdefault(worker, set()).add(seq)
    pending = {}
    if previous is not None:
        seqs = {w: e.seq for w, e in previous.entries.items()}
        pending = pending_restarts(previous.restarts, seqs, histories)
    line = recovery_line(
        planning_view(histories, pending),
        selection=selection,
        score=score,
        excluded=excluded,
        deterministic=deterministic,
    )
    entries = {}
    for worker, cut in line.cuts.items():
        cid = None if cut.seq is None else f"{operation_id}/{worker}/{cut.seq}"
        latest = line.latest.get(worker) or 0
        entries[worker] = PlanEntry(
            checkpoint_id=cid,
            seq=cut.seq,
            reason=cut.reason,
            replay_from=line.replay_from.get(worker, {}),
            rollback=(cut.seq or 0) < latest,
        )
    return RecoveryPlan(
        operation_id=operation_id,
        mode=selection.value,
        entries=entries,
        channels={c: (p, line.produced[c]) for c, p in line.producers.items()},
        quarantined=quarantined,
        attempts=dict(attempts or {}),
        counted=dict(counted or {}),
        relaunched=tuple(sorted(relaunched)),
        restarts=next_restarts(pending, _replaced(histories, relaunched, replaced or {})),
    )


def _replaced(
    histories: Mapping[str, History], relaunched: Collection[str], given: Mapping[str, int]
) -> dict[str, int]:
    return {
        w: given[w] if w in given else max((p.fence for p in histories.get(w, ())), default=0)
        for w in relaunched
    }


def _split(checkpoint_id: str) -> tuple[str, str, int]:
    return parse_checkpoint_id(checkpoint_id)
