"""The public worker API.

Nouns:
    resume system: one worker's checkpointing and resuming (``ResumeSystem``).
    session: the worker's hold on one operation's slot (lease, heartbeat, next seq).
    snapshot: a checkpoint's state and attachments, frozen at the call.
    resume point: a committed checkpoint, as ``CheckpointMetadata``.
    resume context: where a resumed worker goes on from (``ResumeContext``).
    guard: a task's checkpoints as a context manager (``CheckpointGuard``).
"""

from bbp_dist_resume.api import utils
from bbp_dist_resume.api.claims import ClaimedSlot
from bbp_dist_resume.api.guard import AutoCheckpointGuard, CheckpointGuard
from bbp_dist_resume.api.manager import ResumeSystemManager
from bbp_dist_resume.api.models import (
    CheckpointMetadata,
    ResumeContext,
    ResumeMode,
    ResumeState,
    ResumeStatistics,
)
from bbp_dist_resume.api.resume_system import ResumeSystem

__all__ = [
    "AutoCheckpointGuard",
    "CheckpointGuard",
    "CheckpointMetadata",
    "ClaimedSlot",
    "ResumeContext",
    "ResumeMode",
    "ResumeState",
    "ResumeStatistics",
    "ResumeSystem",
    "ResumeSystemManager",
    "utils",
]
