"""Claiming a crashed slot from the reclaim queue, for worker pools.

A claim that is never acknowledged (its claimant died) is claimed again by another
consumer after ``3 x lease_ttl``. Acknowledging happens once the new owner holds the
slot's lease and has restored its plan entry: from then on a crash of the new owner is
a new lease expiry, found by the coordinator's scan.
"""

from __future__ import annotations

from dataclasses import dataclass

from bbp_dist_resume.api.models import ResumeContext
from bbp_dist_resume.api.resume_system import ResumeSystem
from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.coordination import Coordination, ReclaimClaim
from bbp_dist_resume.errors import LeaseHeldError, UnknownOperation
from bbp_dist_resume.logs import get_logger, log_context

log = get_logger(__name__)
_STALE_TTLS = 3


@dataclass(frozen=True, slots=True)
class ClaimedSlot:
    """A slot this process now runs: its monitoring ``ResumeSystem`` and where to go on
    from (``context`` None: start clean)."""

    claim: ReclaimClaim
    system: ResumeSystem
    context: ResumeContext | None

    @property
    def operation_id(self) -> str:
        return self.claim.operation_id

    @property
    def worker_id(self) -> str:
        return self.claim.worker_id


def claim_slot(coord: Coordination, config: CheckpointConfig, consumer: str) -> ClaimedSlot | None:
    """Claim, take the lease, resume from the plan, acknowledge. None: nothing to run
    (the queue is empty, or the claimed slot already has a live owner or no operation)."""
    stale_ms = int(config.lease_ttl.total_seconds() * 1000 * _STALE_TTLS)
    claim = coord.reclaim_claim(consumer, stale_after_ms=stale_ms)
    if claim is None:
        return None
    with log_context(operation=claim.operation_id, worker=claim.worker_id):
        return _adopt(coord, config, claim)


def _adopt(
    coord: Coordination, config: CheckpointConfig, claim: ReclaimClaim
) -> ClaimedSlot | None:
    rs = ResumeSystem(config, claim.worker_id)
    try:
        rs.start_monitoring(claim.operation_id)
        context = rs.resume_automatically(claim.operation_id)
    except (LeaseHeldError, UnknownOperation) as exc:
        # Someone runs it already (a launcher, a duplicate push), or it is gone.
        log.info("claim %s/%s dropped: %s", claim.operation_id, claim.worker_id, exc)
        rs.shutdown()
        coord.reclaim_ack(claim)
        return None
    except BaseException:
        rs.shutdown()  # not acknowledged: claimed again once stale
        raise
    coord.reclaim_ack(claim)
    return ClaimedSlot(claim, rs, context)
