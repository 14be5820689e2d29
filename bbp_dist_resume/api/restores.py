"""Poison checkpoints: what resume plans carry forward about failed restores.

A slot that crashes again before its first commit after restoring its plan entry counts
one failed restore of that checkpoint; ``quarantine_after`` of them quarantine it (kept
in the plan body, with the reason) and the next plan falls back past it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bbp_dist_resume.api.catalog import Histories
from bbp_dist_resume.logs import get_logger
from bbp_dist_resume.policy.plan import RecoveryPlan

log = get_logger("bbp_dist_resume.api.manager")  # where these warnings always came from


@dataclass(slots=True)
class Restores:
    """What plans carry forward about failed restores (see the module docstring)."""

    quarantined: dict[str, str]
    attempts: dict[str, int]
    counted: dict[str, int]  # worker -> fence of its last crash already counted

    @classmethod
    def of(cls, plan: RecoveryPlan | None) -> Restores:
        if plan is None:
            return cls({}, {}, {})
        return cls(dict(plan.quarantined), dict(plan.attempts), dict(plan.counted))


def count_failed_restores(
    crashed: list[str],
    previous: RecoveryPlan | None,
    histories: Histories,
    quarantine_after: int,
) -> Restores:
    """What the new plan carries about failed restores: each crashed worker that died
    after restoring its entry of ``previous`` and before committing counts one failed
    restore of that checkpoint; ``quarantine_after`` of them quarantine it."""
    counts = Restores.of(previous)
    if previous is None:
        return counts
    quarantined, attempts = counts.quarantined, counts.attempts
    for worker in crashed:
        entry = previous.entries.get(worker)
        entries = histories.get(worker, [])
        restored_then_died = entries and entries[-1].kind == "takeover"
        if entry is None or entry.checkpoint_id is None or not restored_then_died:
            continue
        # The crash is named by its owner's fence, kept in the plan: a standby or a
        # restarted coordinator never counts the same dead restorer twice.
        fence = entries[-1].fence
        if counts.counted.get(worker) == fence:
            continue
        counts.counted[worker] = fence
        cid = entry.checkpoint_id
        attempts[cid] = attempts.get(cid, 0) + 1
        if attempts[cid] >= quarantine_after and cid not in quarantined:
            quarantined[cid] = (
                f"restore failed {attempts[cid]} times (worker died before committing)"
            )
            log.warning("quarantined %s: %s", cid, quarantined[cid])
    return counts
