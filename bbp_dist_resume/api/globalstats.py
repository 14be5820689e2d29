"""Statistics over every operation in a store, read from the checkpoint index.

Counted from the commit records: checkpoints created, resumes (every takeover after a
worker's first one is a restart), successful ones (the restarted worker committed again),
checkpoints used for recovery (commits that name the checkpoint they restored from), and
the logical bytes of all checkpoints.
"""

from __future__ import annotations

from datetime import UTC, datetime

from bbp_dist_resume.api.catalog import Catalog
from bbp_dist_resume.api.models import ResumeStatistics
from bbp_dist_resume.coordination.models import CheckpointSummary


def global_statistics(catalog: Catalog) -> ResumeStatistics:
    checkpoints = resumes = successful = used = logical = 0
    stages: dict[str, int] = {}
    for op in catalog.operations():
        for entries in catalog.histories(op).values():
            counts = _worker_counts(entries, stages)
            checkpoints += counts[0]
            resumes += counts[1]
            successful += counts[2]
            used += counts[3]
            logical += counts[4]
    return ResumeStatistics(
        created_at=datetime.now(UTC),
        total_resumes=resumes,
        successful_resumes=successful,
        failed_resumes=resumes - successful,
        stage_resume_counts=stages,
        total_checkpoints_created=checkpoints,
        checkpoints_used_for_recovery=used,
        logical_bytes=logical,
    )


def _worker_counts(
    entries: list[CheckpointSummary], stages: dict[str, int]
) -> tuple[int, int, int, int, int]:
    kinds = [e.kind for e in entries]
    restarts = [i for i, k in enumerate(kinds) if k == "takeover"][1:]
    successful = sum(1 for i in restarts if "checkpoint" in kinds[i + 1 :])
    used = 0
    for e in entries:
        if e.kind == "checkpoint" and e.base:
            used += 1
            stages[e.stage] = stages.get(e.stage, 0) + 1
    checkpoints = kinds.count("checkpoint")
    size = sum(e.size for e in entries)
    return checkpoints, len(restarts), successful, used, size
