"""Relaunched workers across plans: which of their commits the next plan may use.

A plan that relaunches worker W at entry ``e`` records ``since``: the highest seq of W's
records when the plan was built. The incarnation that restores the entry shows itself by
the first takeover record after ``since``. Commits between ``since`` and that takeover
are the dead incarnation's: a paused process may commit after its lease ran out and
before the slot is taken (its fence is still the slot's), and the restored incarnation
goes on from ``e``, not from them. So until the restored incarnation commits (a
checkpoint after its takeover), every later plan keeps W at ``e`` or below and carries
``since`` forward; a plan that relaunches W again records a fresh one.

Without this a consumer crash between the takeover and the restored incarnation's first
commit would plan the producer from a zombie's commit, while the producer actually runs
from ``e``: the consumer would keep records the producer writes again, differently.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from bbp_dist_resume.policy.recovery import History, Point


def restored_commits(history: History, since: int) -> list[Point] | None:
    """The checkpoints written after the first takeover after seq ``since`` (by seq): the
    restored incarnation's. None while nobody took the slot over after ``since``."""
    ordered = sorted(history, key=lambda p: p.seq)
    takeover = next((p.seq for p in ordered if p.seq > since and p.kind == "takeover"), None)
    if takeover is None:
        return None
    return [p for p in ordered if p.seq > takeover and p.kind == "checkpoint"]


def pending_restarts(
    restarts: Mapping[str, int],
    entries: Mapping[str, int | None],
    histories: Mapping[str, History],
) -> dict[str, tuple[int, int]]:
    """worker -> (since, entry seq) for each relaunched worker of an earlier plan whose
    restored incarnation has not committed yet (``entries``: that plan's entry seqs)."""
    out = {}
    for worker, since in restarts.items():
        if worker in entries and not restored_commits(histories.get(worker, ()), since):
            out[worker] = (since, entries[worker] or 0)
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
    histories: Mapping[str, History],
    pending: Mapping[str, tuple[int, int]],
    relaunched: Collection[str],
) -> dict[str, int]:
    """The ``since`` of each worker the new plan restarts: fresh for the ones it relaunches
    (their highest seq now), carried for the pending ones."""
    out = {w: since for w, (since, _) in pending.items()}
    for worker in relaunched:
        out[worker] = max((p.seq for p in histories.get(worker, ())), default=0)
    return out
