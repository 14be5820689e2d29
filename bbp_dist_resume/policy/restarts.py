"""Relaunched workers across plans: which of their commits the next plan may use.

A plan that relaunches worker W at entry ``e`` records ``restarts[W]``: the fencing token
of the incarnation it replaces (the slot's fence when the crash was handled). The
incarnation that restores the entry takes the slot over with a higher fence, and every
record it writes carries one. Records at or below the recorded fence are the dead
incarnation's: a paused process may commit after its lease ran out and before the slot
is taken over (its fence is still the slot's), and the restored incarnation goes on from
``e``, not from them. So until a checkpoint above the recorded fence exists, every later
plan keeps W at ``e`` or below and carries the fence forward; a plan that relaunches W
again records the fence it replaces then.

Fences, not seqs, tell the incarnations apart: a replacement that takes the slot over
while the coordinator is still reading the histories is above the fence all the same.

Without this a consumer crash between the takeover and the restored incarnation's first
commit would plan the producer from a zombie's commit, while the producer actually runs
from ``e``: the consumer would keep records the producer writes again, differently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bbp_dist_resume.policy.recovery import History, Point


def restored_commits(history: History, fence: int) -> list[Point] | None:
    """The checkpoints written above ``fence`` (by seq): those of the incarnations that
    took the slot over since. None while nobody took it over (no takeover above it)."""
    if not any(p.kind == "takeover" and p.fence > fence for p in history):
        return None
    return sorted((p for p in history if p.kind == "checkpoint" and p.fence > fence), key=_seq)


def _seq(point: Point) -> int:
    return point.seq


def pending_restarts(
    restarts: Mapping[str, int],
    entries: Mapping[str, int | None],
    histories: Mapping[str, History],
) -> dict[str, tuple[int, int]]:
    """worker -> (fence, entry seq) for each relaunched worker of an earlier plan whose
    restored incarnation has not committed yet (``entries``: that plan's entry seqs)."""
    out = {}
    for worker, fence in restarts.items():
        if worker in entries and not restored_commits(histories.get(worker, ()), fence):
            out[worker] = (fence, entries[worker] or 0)
    return out


def planning_view(
    histories: Mapping[str, History], pending: Mapping[str, tuple[int, int]]
) -> dict[str, Sequence[Point]]:
    """The histories to plan from: a pending worker's checkpoints above its entry are left
    out (takeovers stay)."""
    return {
        w: [p for p in h if p.kind != "checkpoint" or p.seq <= pending[w][1]] if w in pending else h
        for w, h in histories.items()
    }


def next_restarts(
    pending: Mapping[str, tuple[int, int]], replaced: Mapping[str, int]
) -> dict[str, int]:
    """The ``restarts`` of a new plan: the pending ones carried, and for each worker it
    relaunches the fence of the incarnation it replaces (``replaced``)."""
    return {w: fence for w, (fence, _) in pending.items()} | dict(replaced)
