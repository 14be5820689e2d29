"""Coordination: leases, heartbeats, fencing, the checkpoint index, resume plans and the
reclaim queue, on Redis (standalone or Cluster) or SQLite. See ``base`` for the nouns."""

from bbp_dist_resume.coordination.base import Coordination
from bbp_dist_resume.coordination.models import (
    CheckpointSummary,
    Lease,
    OperationInfo,
    OperationStatus,
    ReclaimClaim,
    ResumePlan,
    SlotState,
)
from bbp_dist_resume.coordination.redis_client import longest_call_s
from bbp_dist_resume.coordination.url import open_coordination

__all__ = [
    "CheckpointSummary",
    "Coordination",
    "Lease",
    "OperationInfo",
    "OperationStatus",
    "ReclaimClaim",
    "ResumePlan",
    "SlotState",
    "longest_call_s",
    "open_coordination",
]
