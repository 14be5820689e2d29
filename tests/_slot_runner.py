"""A ``bbp-resume worker --run`` target for tests/test_cli_worker_slots.py: notes each
slot it was handed (worker and restored checkpoint) in the file ``BBP_TEST_SLOT_LOG``
names, then finishes the slot."""

from __future__ import annotations

import os

from bbp_dist_resume import ResumeContext, ResumeSystem


def record(system: ResumeSystem, context: ResumeContext | None) -> None:
    restored = context.checkpoint_id if context is not None else "-"
    with open(os.environ["BBP_TEST_SLOT_LOG"], "a", encoding="utf-8") as log:
        log.write(f"{system.worker_id} {restored}\n")
    system.complete()
