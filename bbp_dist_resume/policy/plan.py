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
from bbp_dist_resume.policy.recovery import History, ResumeSelection, Score, recovery_line

PLAN_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanEntry:
    """One worker's place: ``seq`` None means its initial state."""

    checkpoint_id: str | None
    seq: int | None
    reason: str
    replay_from: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryPlan:
    """What every worker of an operation resumes from.

    Attributes:
        entries: worker -> its entry; channels: channel -> (producer, produced offset).
        quarantined: checkpoint id -> why it is never planned from again.
        attempts: checkpoint id -> failed restores counted so far (poison detection).
        generation: set once published (0 before).
    """

    operation_id: str
    mode: str
    entries: Mapping[str, PlanEntry]
    channels: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    quarantined: Mapping[str, str] = field(default_factory=dict)
    attempts: Mapping[str, int] = field(default_factory=dict)
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
                }
                for w, e in sorted(self.entries.items())
            },
            "channels": {c: list(p) for c, p in sorted(self.channels.items())},
            "quarantined": dict(sorted(self.quarantined.items())),
            "attempts": dict(sorted(self.attempts.items())),
        }

    @classmethod
    def from_body(cls, operation_id: str, generation: int, body: Mapping[str, Any]) -> RecoveryPlan:
        """Parse a published body. Raises ``InvalidCheckpoint`` for a malformed one."""
        try:
            entries = {
                str(w): PlanEntry(
                    checkpoint_id=e["checkpoint_id"],
                    seq=e["seq"],
                    reason=str(e["reason"]),
                    replay_from={str(c): int(o) for c, o in e.get("replay_from", {}).items()},
                )
                for w, e in body["entries"].items()
            }
            channels = {str(c): (str(p[0]), int(p[1])) for c, p in body.get("channels", {}).items()}
            return cls(
                operation_id=operation_id,
                mode=str(body.get("mode", "last")),
                entries=entries,
                channels=channels,
                quarantined={str(k): str(v) for k, v in body.get("quarantined", {}).items()},
                attempts={str(k): int(v) for k, v in body.get("attempts", {}).items()},
                generation=generation,
            )
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise InvalidCheckpoint(f"malformed resume plan of {operation_id}: {exc!r}") from None


def build_plan(
    operation_id: str,
    histories: Mapping[str, History],
    *,
    selection: ResumeSelection = ResumeSelection.LAST,
    score: Score | None = None,
    quarantined: Mapping[str, str] | None = None,
    attempts: Mapping[str, int] | None = None,
    deterministic: Collection[str] = (),
) -> RecoveryPlan:
    """The plan of the maximal consistent cut, quarantined checkpoints excluded."""
    quarantined = dict(quarantined or {})
    excluded: dict[str, set[int]] = {}
    for quarantined_id in quarantined:
        op, worker, seq = _split(quarantined_id)
        if op == operation_id:
            excluded.setdefault(worker, set()).add(seq)
    line = recovery_line(
        histories, selection=selection, score=score, excluded=excluded, deterministic=deterministic
    )
    entries = {}
    for worker, cut in line.cuts.items():
        cid = None if cut.seq is None else f"{operation_id}/{worker}/{cut.seq}"
        entries[worker] = PlanEntry(
            checkpoint_id=cid,
            seq=cut.seq,
            reason=cut.reason,
            replay_from=line.replay_from.get(worker, {}),
        )
    return RecoveryPlan(
        operation_id=operation_id,
        mode=selection.value,
        entries=entries,
        channels={c: (p, line.produced[c]) for c, p in line.producers.items()},
        quarantined=quarantined,
        attempts=dict(attempts or {}),
    )


def _split(checkpoint_id: str) -> tuple[str, str, int]:
    op, worker, seq = checkpoint_id.split("/")
    return op, worker, int(seq)
