"""``Resumer``: one resume attempt of a ``ResumeSystem`` (modes, plan, fallback)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bbp_dist_resume.api import resume as rsm
from bbp_dist_resume.api.barrier import await_barrier
from bbp_dist_resume.api.metrics import recorder
from bbp_dist_resume.api.models import CheckpointMetadata, ResumeContext, ResumeMode
from bbp_dist_resume.api.snapshot import STATE_PART
from bbp_dist_resume.coordination import ResumePlan
from bbp_dist_resume.errors import (
    IntegrityError,
    InvalidCheckpoint,
    ObjectNotFound,
    UnknownOperation,
)
from bbp_dist_resume.ids import check_id, parse_checkpoint_id
from bbp_dist_resume.logs import get_logger, log_context
from bbp_dist_resume.policy import ResumeSelection
from bbp_dist_resume.policy.recovery import Point
from bbp_dist_resume.repository import Manifest

if TYPE_CHECKING:
    from bbp_dist_resume.api.resume_system import ResumeSystem

log = get_logger(__name__)
_MAX_FALLBACKS = 64
Restored = Callable[[ResumeContext | None], None]
# Failures that mean "this checkpoint cannot be restored": fall back past it.
_UNRESTORABLE = (IntegrityError, ObjectNotFound, InvalidCheckpoint)


class Resumer:
    """Runs one resume for ``rs`` and reports it (statistics, recovery callback)."""

    def __init__(self, rs: ResumeSystem) -> None:
        self._rs = rs
        self._started = time.monotonic()
        self._operation = ""
        self._checked: dict[str, bool] = {}  # other workers' line entries, checked once

    # -- entry points --------------------------------------------------------------------

    def automatically(
        self, operation_id: str, on_restored: Restored | None = None
    ) -> ResumeContext | None:
        self._operation = operation_id
        self._rs._machine.recovery_started()
        try:
            with log_context(operation=operation_id):
                return self._automatically(operation_id, on_restored)
        finally:
            self._rs._machine.recovery_finished()

    def from_target(
        self,
        target: str,
        mode: ResumeMode,
        best_fn: rsm.BestFn | None,
        chooser: rsm.Chooser | None,
    ) -> ResumeContext | None:
        operation_id, exact = _parse_target(target)
        self._operation = operation_id
        self._rs._machine.recovery_started()
        try:
            with log_context(operation=operation_id, checkpoint=exact):
                return self._from_target(operation_id, exact, mode, best_fn, chooser)
        finally:
            self._rs._machine.recovery_finished()

    def _from_target(
        self,
        operation_id: str,
        exact: str | None,
        mode: ResumeMode,
        best_fn: rsm.BestFn | None,
        chooser: rsm.Chooser | None,
    ) -> ResumeContext | None:
        if mode is ResumeMode.FULL_RESTART:
            return self._fresh(operation_id, "full restart asked", mode)
        choice = self._choose(operation_id, exact, mode, best_fn, chooser)
        if choice.checkpoint_id is None:
            return self._fresh(operation_id, choice.reason, mode)
        try:
            return self._restore(choice, mode)
        except _UNRESTORABLE as exc:
            self._rs._cat().set_damaged(choice.checkpoint_id, True)
            self._report(choice.checkpoint_id, None, ok=False, why=str(exc))
            return None

    # -- choosing ------------------------------------------------------------------------

    def _choose(
        self,
        operation_id: str,
        exact: str | None,
        mode: ResumeMode,
        best_fn: rsm.BestFn | None,
        chooser: rsm.Chooser | None,
    ) -> rsm.Choice:
        if mode is ResumeMode.INTERACTIVE:
            return rsm.interactive_choice(self._points(operation_id, exact), chooser)
        if exact is not None:
            return rsm.Choice(exact, f"{mode.value} checkpoint asked by id")
        if mode is ResumeMode.BEST_CHECKPOINT:
            return self._best_line(operation_id, best_fn)
        return self._line(operation_id, {})

    def _points(self, operation_id: str, exact: str | None) -> list[CheckpointMetadata]:
        """The resume points offered to a chooser: this worker's (or the named one's)."""
        worker = parse_checkpoint_id(exact)[1] if exact else self._rs.worker_id
        points = self._rs._cat().resume_points(operation_id)
        return [p for p in points if p.worker_id == worker]

    def _best_line(self, operation_id: str, best_fn: rsm.BestFn | None) -> rsm.Choice:
        score = None
        if best_fn is not None:
            # A user score needs the full metadata: score every point once, by its root.
            ranked = {
                p.verification_hash: best_fn(p) for p in self._rs._cat().resume_points(operation_id)
            }

            def score(point: Point) -> float:
                return ranked.get(point.root, float("-inf"))

        return self._line(operation_id, {}, selection=ResumeSelection.BEST, score=score)

    def _automatically(
        self, operation_id: str, on_restored: Restored | None
    ) -> ResumeContext | None:
        plan = self._read_plan(operation_id)
        planned = (
            None
            if plan is None
            else rsm.plan_choice(plan.body, plan.generation, self._rs.worker_id)
        )
        context = self._restore_or_fall_back(operation_id, planned)
        if on_restored is not None:
            on_restored(context)
        if plan is not None and planned is not None:
            # The recovery barrier: go on only once every rolled-back worker restored.
            coord, _ = self._rs._require_open()
            timeout = self._rs.get_config().recovery_timeout.total_seconds()
            with log_context(checkpoint=planned.checkpoint_id or ""):
                await_barrier(
                    coord,
                    operation_id,
                    self._rs.worker_id,
                    (plan.generation, plan.body),
                    timeout,
                )
        return context

    def _restore_or_fall_back(
        self, operation_id: str, planned: rsm.Choice | None
    ) -> ResumeContext | None:
        excluded: dict[str, set[int]] = {}
        choice = planned or self._line(operation_id, excluded)
        for _ in range(_MAX_FALLBACKS):
            if choice.checkpoint_id is None:
                self._rs._note_resumed(operation_id, None, choice.generation)
                log.info("resume %s as %s: %s", operation_id, self._rs.worker_id, choice.reason)
                return None
            try:
                return self._restore(choice, ResumeMode.LAST_CHECKPOINT)
            except _UNRESTORABLE as exc:
                self._rs._cat().set_damaged(choice.checkpoint_id, True)
                self._report(choice.checkpoint_id, None, ok=False, why=str(exc))
                _, worker, seq = parse_checkpoint_id(choice.checkpoint_id)
                excluded.setdefault(worker, set()).add(seq)
                choice = self._line(operation_id, excluded)
        raise IntegrityError(
            f"no restorable checkpoint of {operation_id} after {_MAX_FALLBACKS} tries"
        )

    def _read_plan(self, operation_id: str) -> ResumePlan | None:
        coord, _ = self._rs._require_open()
        try:
            return coord.read_plan(operation_id)
        except UnknownOperation:
            return None

    def _line(
        self,
        operation_id: str,
        excluded: dict[str, set[int]],
        *,
        selection: ResumeSelection = ResumeSelection.LAST,
        score: Callable[[Point], float] | None = None,
    ) -> rsm.Choice:
        return rsm.line_choice(
            self._rs._cat(),
            operation_id,
            self._rs.worker_id,
            selection=selection,
            score=score,
            excluded=excluded,
            deterministic=self._rs.get_config().deterministic_producers,
            restorable=self._restorable if self._rs.get_config().enable_verification else None,
        )

    def _restorable(self, checkpoint_id: str) -> bool:
        """Whether another worker's entry of the line would restore: its record reads back
        and matches the index, its chunks exist, its state re-hashes (what its own restore
        checks; attachments are checked as they are read). A failure marks it damaged."""
        if checkpoint_id in self._checked:
            return self._checked[checkpoint_id]
        _, repo = self._rs._require_open()
        try:
            manifest = self._rs._cat().manifest(checkpoint_id)
            rsm.check_restorable(repo, manifest, verify=True)
            repo.read(manifest, [STATE_PART])
            ok = True
        except _UNRESTORABLE as exc:
            log.warning("recovery line entry %s cannot be restored: %s", checkpoint_id, exc)
            self._rs._cat().set_damaged(checkpoint_id, True)
            ok = False
        self._checked[checkpoint_id] = ok
        return ok

    # -- restoring -----------------------------------------------------------------------

    def peek(self, checkpoint_id: str) -> ResumeContext:
        """A checkpoint's context, with no resume recorded anywhere."""
        rs = self._rs
        _, repo = rs._require_open()
        manifest = rs._cat().manifest(checkpoint_id)
        rsm.check_restorable(repo, manifest, verify=rs.get_config().enable_verification)
        return rsm.build_context(
            repo,
            manifest,
            mode=ResumeMode.LAST_CHECKPOINT,
            reason="read without resuming",
            operation=rs._operation_info(manifest.operation_id),
        )

    def _restore(self, choice: rsm.Choice, mode: ResumeMode) -> ResumeContext:
        assert choice.checkpoint_id is not None
        with log_context(checkpoint=choice.checkpoint_id):
            return self._restore_logged(choice, mode)

    def _restore_logged(self, choice: rsm.Choice, mode: ResumeMode) -> ResumeContext:
        assert choice.checkpoint_id is not None
        rs = self._rs
        _, repo = rs._require_open()
        manifest = rs._cat().manifest(choice.checkpoint_id)
        rsm.check_restorable(repo, manifest, verify=rs.get_config().enable_verification)
        context = rsm.build_context(
            repo,
            manifest,
            mode=mode,
            reason=choice.reason,
            operation=rs._operation_info(manifest.operation_id),
        )
        rs._note_resumed(manifest.operation_id, manifest, choice.generation)
        self._report(choice.checkpoint_id, manifest, ok=True)
        return context

    def _fresh(self, operation_id: str, reason: str, mode: ResumeMode) -> ResumeContext:
        self._rs._note_resumed(operation_id, None)
        self._report("", None, ok=True)
        return rsm.fresh_context(operation_id, self._rs._operation_info(operation_id), reason, mode)

    def _report(
        self, checkpoint_id: str, manifest: Manifest | None, *, ok: bool, why: str = ""
    ) -> None:
        rs = self._rs
        stage = manifest.stage if manifest is not None else ""
        seconds = time.monotonic() - self._started
        rs._stats.resume(ok, seconds, stage, f"{checkpoint_id}: {why}")
        recorder().resumed(self._operation, rs.worker_id, ok=ok, seconds=seconds)
        if ok:
            log.info("resumed %s from %s", rs.worker_id, checkpoint_id or "a clean start")
        else:
            log.warning("cannot resume from %s: %s", checkpoint_id, why)
        rs._call("recovery", checkpoint_id, ok)


def _parse_target(target: str) -> tuple[str, str | None]:
    """``op`` or ``op/worker/seq`` -> (operation id, exact checkpoint id or None)."""
    if isinstance(target, str) and "/" in target:
        op, _, _ = parse_checkpoint_id(target)
        return op, target
    return check_id(target, "operation id"), None
