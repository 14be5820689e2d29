"""The recovery barrier (DESIGN.md, "Best global consistent checkpoint").

A resume plan that rolls several workers back (the relaunched ones, and those the
planner moved behind their latest commit) must not let one of them go on while another
still runs, or has not yet restored, its old incarnation: a restored consumer would read
channel records that the producer's restore is about to replace. So every worker that
resumes under a plan acknowledges it through the coordination backend, then waits until
every rolled-back worker that produces a channel has acknowledged it too. Only
producers are waited for: only their restores change what others read, and a plan
without channels (independent workers) then has no barrier at all, so a pool that
resumes such slots one after another never waits on itself.

The wait ends three ways: all have restored (return); a newer plan was published
(``RollbackRequested`` for the newer one: a worker that died meanwhile was relaunched
under it, and everyone restores again); or ``recovery_timeout`` passed
(``RecoveryTimeout`` naming the workers still missing). Workers that finished are not
waited for: they can never restore again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from bbp_dist_resume.coordination import Coordination
from bbp_dist_resume.errors import RecoveryTimeout, RollbackRequested
from bbp_dist_resume.logs import get_logger

log = get_logger(__name__)
POLL_S = 0.05  # two small reads per poll: acknowledgements follow restores within 50 ms


def awaited(body: Mapping[str, Any]) -> set[str]:
    """The workers a barrier waits for: those a plan body rolls back (the relaunched
    ones, and every worker whose entry is behind its latest commit) or whose relaunch by
    an earlier plan it carries (``restarts``: they may not have restored yet), that
    produce one of its channels."""
    channels = body.get("channels")
    channels = channels if isinstance(channels, dict) else {}
    producers = {p[0] for p in channels.values() if isinstance(p, list) and p}
    restarts = body.get("restarts")
    carried = {w for w in restarts if isinstance(w, str)} if isinstance(restarts, dict) else set()
    return (rolled_back(body) | carried) & producers


def rolled_back(body: Mapping[str, Any]) -> set[str]:
    """The workers a plan body rolls back: the relaunched ones, and every worker whose
    entry is behind its latest commit (``rollback``)."""
    entries = body.get("entries")
    entries = entries if isinstance(entries, dict) else {}
    moved = {w for w, e in entries.items() if isinstance(e, dict) and e.get("rollback") is True}
    relaunched = body.get("relaunched")
    if isinstance(relaunched, list):
        moved |= {w for w in relaunched if isinstance(w, str)}
    return moved


def await_barrier(
    coord: Coordination,
    operation_id: str,
    worker_id: str,
    plan: tuple[int, Mapping[str, Any]],
    timeout_s: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Acknowledge plan ``(generation, body)`` for ``worker_id``, then wait for the others.

    Raises:
        RollbackRequested: a newer plan superseded this one (restore again under it).
        RecoveryTimeout: some rolled-back workers did not restore within ``timeout_s``.
    """
    generation, body = plan
    coord.ack_plan(operation_id, worker_id, generation)
    others = awaited(body) - {worker_id}
    deadline = clock() + timeout_s
    logged = False
    while others:
        missing = _missing(coord, (operation_id, worker_id), generation, others)
        if not missing:
            return
        if clock() >= deadline:
            raise RecoveryTimeout(operation_id, generation, missing)
        if not logged:
            log.info("plan %s: waiting for %s to restore", generation, ", ".join(missing))
            logged = True
        sleep(POLL_S)


def _missing(
    coord: Coordination, slot: tuple[str, str], generation: int, others: set[str]
) -> list[str]:
    """The workers of ``others`` that have neither restored plan ``generation`` nor
    finished; ``RollbackRequested`` when a newer plan exists."""
    op, worker = slot
    info = coord.get_operation(op)
    if info.generation > generation:
        newer = coord.read_plan(op)
        if newer is not None and newer.generation > generation:
            raise RollbackRequested(op, newer.generation, _entry(newer.body, worker))
    acks = coord.plan_acks(op)
    waiting = others - set(info.done_workers)
    return sorted(w for w in waiting if acks.get(w, 0) < generation)


def _entry(body: Mapping[str, Any], worker: str) -> str | None:
    entries = body.get("entries")
    entry = entries.get(worker) if isinstance(entries, dict) else None
    cid = entry.get("checkpoint_id") if isinstance(entry, dict) else None
    return cid if isinstance(cid, str) else None
