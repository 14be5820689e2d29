"""The recovery line: the latest consistent cut over every worker's checkpoints.

A cut picks, per worker, one checkpoint or the initial state. It is *consistent* when on
every channel each consumer's ``consumed`` offset is at most the producer's ``produced``
offset in the cut (no record is consumed that the producer, restored, has not produced).

Selection (DESIGN.md): start each worker at its latest live checkpoint (or the best by a
score, or the latest epoch every epoch-tagged worker committed); while a channel is
violated, roll its consumer back to its latest earlier checkpoint that satisfies it (or
the initial state); repeat. Offsets only fall, so this ends, and from the latest start
it yields the unique maximal consistent cut.

A worker's *live* history drops what a resume abandoned: a checkpoint with ``base = b``
was the first commit after restoring seq ``b``, so its earlier checkpoints with seqs
above ``b`` belong to a dead incarnation (``b = 0``: every earlier one).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from bbp_dist_resume.errors import InvalidCheckpoint


class Point(Protocol):
    """What the recovery line needs of one commit record (``CheckpointSummary`` fits)."""

    @property
    def seq(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def progress(self) -> float: ...
    @property
    def epoch(self) -> int | None: ...
    @property
    def base(self) -> int | None: ...
    @property
    def consumed(self) -> Mapping[str, int]: ...
    @property
    def produced(self) -> Mapping[str, int]: ...
    @property
    def root(self) -> str: ...
    @property
    def fence(self) -> int: ...


History = Sequence[Point]
Score = Callable[[Point], float]


class ResumeSelection(StrEnum):
    """Which checkpoint each worker starts from before consistency is enforced."""

    LAST = "last"
    BEST = "best"


@dataclass(frozen=True, slots=True)
class Cut:
    """One worker's place in the line: a seq (None: initial state) and why."""

    seq: int | None
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryLine:
    """Per worker its cut; per channel its producer and the producer's offset at the cut.

    ``replay_from[worker][channel]`` is where a consumer reads the channel again from
    (its ``consumed`` offset in the cut).
    """

    cuts: dict[str, Cut]
    latest: dict[str, int | None] = field(default_factory=dict)  # latest live seq
    producers: dict[str, str] = field(default_factory=dict)
    produced: dict[str, int] = field(default_factory=dict)
    replay_from: dict[str, dict[str, int]] = field(default_factory=dict)

    def seq_of(self, worker: str) -> int | None:
        return self.cuts[worker].seq


def live_history(history: History) -> list[Point]:
    """The worker's checkpoints still on its live lineage, by seq (takeovers dropped)."""
    live: list[Point] = []
    for point in sorted(history, key=lambda p: p.seq):
        if point.kind != "checkpoint":
            continue
        if point.base is not None:
            live = [p for p in live if p.seq <= point.base]
        live.append(point)
    return live


def default_score(point: Point) -> float:
    """BEST mode's default: the most progress (ties go to the latest, by seq)."""
    return point.progress


def recovery_line(
    histories: Mapping[str, History],
    *,
    selection: ResumeSelection = ResumeSelection.LAST,
    score: Score | None = None,
    excluded: Mapping[str, Collection[int]] | None = None,
    deterministic: Collection[str] = (),
) -> RecoveryLine:
    """The maximal consistent cut.

    Args:
        histories: worker -> its commit records (any order; takeovers are ignored).
        selection: start from each worker's latest or best checkpoint.
        score: BEST mode's score (higher is better); default :func:`default_score`.
        excluded: worker -> seqs never to use (failed verification, quarantined).
        deterministic: producers that regenerate the same records when replayed, so
            their consumers may stay ahead of them.

    Raises:
        InvalidCheckpoint: two workers claim to produce the same channel.
    """
    excluded = excluded or {}
    live = {w: live_history(h) for w, h in histories.items()}
    candidates = {w: [p for p in ps if p.seq not in excluded.get(w, ())] for w, ps in live.items()}
    cuts = _start(candidates, selection, score or default_score, excluded)
    # Producers are known from every record, usable or not: a producer whose producing
    # checkpoints are all excluded still constrains its consumers (to its initial state).
    producers = _producers(
        {w: [p for p in h if p.kind == "checkpoint"] for w, h in histories.items()}
    )
    _enforce_channels(cuts, candidates, producers, set(deterministic))
    line = _line(cuts, producers)
    line.latest.update({w: ps[-1].seq if ps else None for w, ps in live.items()})
    return line


@dataclass(slots=True)
class _Place:
    point: Point | None
    reason: str


def _start(
    candidates: Mapping[str, list[Point]],
    selection: ResumeSelection,
    score: Score,
    excluded: Mapping[str, Collection[int]],
) -> dict[str, _Place]:
    cuts: dict[str, _Place] = {}
    for worker, points in candidates.items():
        if not points:
            why = "no usable checkpoint" if excluded.get(worker) else "no checkpoint"
            cuts[worker] = _Place(None, f"{why}: initial state")
        elif selection is ResumeSelection.BEST:
            best = max(points, key=lambda p: (score(p), p.seq))
            cuts[worker] = _Place(best, f"best checkpoint (score {score(best):g})")
        else:
            cuts[worker] = _Place(points[-1], "latest checkpoint")
    _align_epochs(cuts, candidates)
    return cuts


def _align_epochs(cuts: dict[str, _Place], candidates: Mapping[str, list[Point]]) -> None:
    """Barrier-aligned workers (checkpoints with epochs) go to the latest common epoch."""
    tagged = {w: ps for w, ps in candidates.items() if any(p.epoch is not None for p in ps)}
    if not tagged:
        return
    epochs = [{p.epoch for p in ps if p.epoch is not None} for ps in tagged.values()]
    common = set.intersection(*epochs)
    top = max(common) if common else None
    for worker, points in tagged.items():
        at = [p for p in points if p.epoch == top] if top is not None else []
        if not at:
            cuts[worker] = _Place(None, "no epoch common to every worker: initial state")
        elif cuts[worker].point is not at[-1]:
            cuts[worker] = _Place(at[-1], f"latest epoch every worker committed ({top})")


def _producers(candidates: Mapping[str, Sequence[Point]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for worker, points in sorted(candidates.items()):
        for channel in {c for p in points for c in p.produced}:
            if out.setdefault(channel, worker) != worker:
                raise InvalidCheckpoint(
                    f"channel {channel!r} is produced by both {out[channel]!r} and {worker!r}"
                )
    return out


def _enforce_channels(
    cuts: dict[str, _Place],
    candidates: Mapping[str, list[Point]],
    producers: Mapping[str, str],
    deterministic: set[str],
) -> None:
    changed = True
    while changed:
        changed = False
        for channel, producer in sorted(producers.items()):
            if producer in deterministic:
                continue
            limit = _offset(cuts[producer].point, channel, produced=True)
            for worker in sorted(cuts):
                if worker != producer and _roll_back(
                    cuts,
                    candidates[worker],
                    worker,
                    channel=channel,
                    producer=producer,
                    limit=limit,
                ):
                    changed = True


def _roll_back(
    cuts: dict[str, _Place],
    points: list[Point],
    worker: str,
    *,
    channel: str,
    producer: str,
    limit: int,
) -> bool:
    place = cuts[worker]
    consumed = _offset(place.point, channel, produced=False)
    if consumed <= limit:
        return False
    below = place.point.seq if place.point is not None else 0
    earlier = [p for p in points if p.seq < below and _offset(p, channel, produced=False) <= limit]
    why = (
        f"rolled back: had consumed {consumed} of {channel!r}, "
        f"but {producer!r} has produced {limit} at its cut"
    )
    cuts[worker] = _Place(earlier[-1] if earlier else None, why)
    return True


def _offset(point: Point | None, channel: str, *, produced: bool) -> int:
    if point is None:
        return 0
    return (point.produced if produced else point.consumed).get(channel, 0)


def _line(cuts: Mapping[str, _Place], producers: Mapping[str, str]) -> RecoveryLine:
    return RecoveryLine(
        cuts={w: Cut(p.point.seq if p.point else None, p.reason) for w, p in cuts.items()},
        producers=dict(producers),
        produced={c: _offset(cuts[w].point, c, produced=True) for c, w in producers.items()},
        replay_from={
            w: dict(p.point.consumed) if p.point is not None else {} for w, p in cuts.items()
        },
    )
