"""Policy: pure decisions, no I/O.

Nouns:
    boundary: where in the pipeline a save is being considered (a stage boundary, a task
        boundary, a progress update); the granularity says which boundaries may save.
    schedule: a strategy's memory of the last save (time, progress, cost) and its
        answer to "save now?", driven by an injected clock.
    retention: which checkpoints of a worker may be deleted.
    recovery line: the latest consistent cut over every worker's checkpoints.
"""

from bbp_dist_resume.policy.recovery import (
    Cut,
    History,
    RecoveryLine,
    ResumeSelection,
    live_history,
    recovery_line,
)
from bbp_dist_resume.policy.retention import RetentionRule, select_expired
from bbp_dist_resume.policy.schedule import (
    Boundary,
    CheckpointSchedule,
    SaveDecision,
    SchedulePolicy,
    SystemSample,
    young_daly_interval,
)

__all__ = [
    "Boundary",
    "CheckpointSchedule",
    "Cut",
    "History",
    "RecoveryLine",
    "ResumeSelection",
    "RetentionRule",
    "SaveDecision",
    "SchedulePolicy",
    "SystemSample",
    "live_history",
    "recovery_line",
    "select_expired",
    "young_daly_interval",
]
