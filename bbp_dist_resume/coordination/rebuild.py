"""``rebuild_from_store``: the index again, from the store, after the backend lost it.

The store's commit records are the truth (DESIGN.md): every operation and worker with
records gets its index entries back and its fencing counter raised above every fence
seen in its records, so no owner from before the loss can write again; slots with no
live owner are left expired, so the crash scan reclaims them.
"""

from __future__ import annotations

from dataclasses import dataclass

from bbp_dist_resume.coordination.base import Coordination
from bbp_dist_resume.coordination.models import CheckpointSummary
from bbp_dist_resume.errors import UnknownOperation
from bbp_dist_resume.repository import Repository


@dataclass(frozen=True, slots=True, kw_only=True)
class RebuildReport:
    """What a rebuild restored: operations, index entries added, and the fence floors."""

    operations: int
    entries_added: int
    fences: dict[str, int]


def rebuild_from_store(coord: Coordination, repository: Repository) -> RebuildReport:
    """Rebuild every operation's index and fences from the store's commit records."""
    added = 0
    fences: dict[str, int] = {}
    slots = repository.slots()
    for op, workers in slots.items():
        _ensure_operation(coord, op, workers)
        for worker in workers:
            records = repository.records(op, worker)
            floor = max((r.fence for r in records), default=0)
            coord.restart_fences(op, worker, floor)
            added += coord.repair(op, worker, [CheckpointSummary.of(r) for r in records])
            fences[f"{op}/{worker}"] = coord.fence_of(op, worker)
    coord.reset_instance()
    return RebuildReport(operations=len(slots), entries_added=added, fences=fences)


def _ensure_operation(coord: Coordination, op: str, workers: list[str]) -> None:
    try:
        coord.get_operation(op)
    except UnknownOperation:
        # Its metadata went with the data: what the store shows is all there is.
        coord.create_operation(op, workers=workers)
