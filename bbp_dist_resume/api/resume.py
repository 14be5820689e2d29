"""Resuming: choosing a checkpoint (by mode, plan or recovery line) and restoring it.

Every restore checks the checkpoint first: its commit record must read back intact and,
with ``enable_verification``, every chunk must be present; the state's chunks are then
re-hashed as they are read. A checkpoint that fails is reported and, for automatic
resumes, excluded so the choice falls back past it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bbp_dist_resume.api.catalog import Catalog
from bbp_dist_resume.api.models import CheckpointMetadata, ResumeContext, ResumeMode
from bbp_dist_resume.api.snapshot import (
    ATTACHMENT_PREFIX,
    STATE_PART,
    attachment_names,
    decode_state,
)
from bbp_dist_resume.coordination.models import OperationInfo
from bbp_dist_resume.errors import IntegrityError, InteractiveUnavailable, InvalidCheckpoint
from bbp_dist_resume.logs import get_logger
from bbp_dist_resume.policy import ResumeSelection, recovery_line
from bbp_dist_resume.repository import Manifest, Repository

log = get_logger(__name__)

Chooser = Callable[[list[CheckpointMetadata]], "CheckpointMetadata | str | None"]
BestFn = Callable[[CheckpointMetadata], float]
_MAX_FALLBACKS = 50


@dataclass(frozen=True, slots=True)
class Choice:
    """A chosen checkpoint id (None: start clean) and why."""

    checkpoint_id: str | None
    reason: str
    generation: int | None = None  # the plan's, when it came from one


def check_restorable(repo: Repository, manifest: Manifest, *, verify: bool) -> None:
    """Raise ``IntegrityError`` unless the checkpoint can be restored."""
    if STATE_PART not in manifest.parts:
        raise InvalidCheckpoint(f"{manifest.checkpoint_id} has no pipeline state")
    if verify:
        report = repo.verify(manifest)
        if not report.ok:
            raise IntegrityError(
                f"{manifest.checkpoint_id} failed verification: {report.summary()}"
            )


def build_context(
    repo: Repository,
    manifest: Manifest,
    *,
    mode: ResumeMode,
    reason: str,
    operation: OperationInfo | None,
) -> ResumeContext:
    """Read the state (every chunk checked) and describe where to go on from."""
    state = decode_state(repo.read(manifest, [STATE_PART])[STATE_PART])
    completed = _names(state.get("completed_stages"))
    pending = _names(state.get("pending_stages"))
    if not pending and operation is not None:
        pending = tuple(s for s in operation.stages if s not in completed)
    results = state.get("stage_results")

    def reader(name: str, path: Any) -> bytes | None:
        part = ATTACHMENT_PREFIX + name
        if path is None:
            return repo.read(manifest, [part])[part]
        repo.restore_part(manifest, part, path)
        return None

    return ResumeContext(
        operation_id=manifest.operation_id,
        pipeline_config_path=operation.config_path if operation else "",
        completed_stages=completed,
        pending_stages=pending,
        stage_results=results if isinstance(results, dict) else {},
        start_time=_start_time(manifest, operation),
        resume_time=datetime.now(UTC),
        resume_mode=mode,
        resume_reason=reason,
        checkpoint_id=manifest.checkpoint_id,
        state=state,
        consumed=dict(manifest.consumed),
        produced=dict(manifest.produced),
        stage_name=manifest.stage,
        progress_percentage=manifest.progress,
        attachment_names=attachment_names(list(manifest.parts)),
        _reader=reader,
    )


def fresh_context(
    operation_id: str, operation: OperationInfo | None, reason: str, mode: ResumeMode
) -> ResumeContext:
    """A context for starting clean (FULL_RESTART, or nothing to resume from)."""
    now = datetime.now(UTC)
    return ResumeContext(
        operation_id=operation_id,
        pipeline_config_path=operation.config_path if operation else "",
        completed_stages=(),
        pending_stages=tuple(operation.stages) if operation else (),
        stage_results={},
        start_time=datetime.fromtimestamp(operation.created_at, UTC) if operation else now,
        resume_time=now,
        resume_mode=mode,
        resume_reason=reason,
        checkpoint_id=None,
        state={},
    )


def line_choice(
    catalog: Catalog,
    operation_id: str,
    worker_id: str,
    *,
    selection: ResumeSelection,
    score: Callable[[Any], float] | None,
    excluded: dict[str, set[int]],
    deterministic: tuple[str, ...] = (),
    restorable: Callable[[str], bool] | None = None,
) -> Choice:
    """This worker's place in the recovery line computed from the index.

    With ``restorable``, every other worker's entry of the line is checked with it and
    an entry that fails is added to ``excluded`` and the line computed again: a worker
    never resumes into a line whose other entries could not be restored themselves.
    """
    histories = catalog.histories(operation_id)
    histories.setdefault(worker_id, [])
    for _ in range(_MAX_FALLBACKS):
        line = recovery_line(
            histories,
            selection=selection,
            score=score,
            excluded=excluded,
            deterministic=deterministic,
        )
        bad = _first_unrestorable(line.cuts, operation_id, worker_id, restorable)
        if bad is None:
            break
        excluded.setdefault(bad[0], set()).add(bad[1])
    else:
        raise IntegrityError(f"no restorable recovery line of {operation_id}")
    cut = line.cuts[worker_id]
    if cut.seq is None:
        return Choice(None, cut.reason)
    return Choice(f"{operation_id}/{worker_id}/{cut.seq}", f"recovery line: {cut.reason}")


def _first_unrestorable(
    cuts: Mapping[str, Any],
    operation_id: str,
    worker_id: str,
    restorable: Callable[[str], bool] | None,
) -> tuple[str, int] | None:
    """The first other worker's entry of the line that ``restorable`` refuses."""
    if restorable is None:
        return None
    for worker, cut in sorted(cuts.items()):
        if worker == worker_id or cut.seq is None:
            continue
        if not restorable(f"{operation_id}/{worker}/{cut.seq}"):
            return worker, cut.seq
    return None


def plan_choice(body: Mapping[str, Any], generation: int, worker_id: str) -> Choice | None:
    """This worker's entry in a published plan (None when the plan does not name it)."""
    entries = body.get("entries")
    entry = entries.get(worker_id) if isinstance(entries, dict) else None
    if not isinstance(entry, dict):
        return None
    cid, why = entry.get("checkpoint_id"), str(entry.get("reason", ""))
    if cid is not None and not isinstance(cid, str):
        return None
    return Choice(cid, f"resume plan generation {generation}: {why}".rstrip(": "), generation)


def interactive_choice(points: list[CheckpointMetadata], chooser: Chooser | None) -> Choice:
    """Ask ``chooser`` (default: a numbered prompt on the terminal)."""
    if not points:
        return Choice(None, "no resume point to choose from: start clean")
    picked = (chooser or terminal_chooser)(points)
    if picked is None:
        return Choice(None, "chosen interactively: start clean")
    cid = picked.checkpoint_id if isinstance(picked, CheckpointMetadata) else picked
    if cid not in {p.checkpoint_id for p in points}:
        raise InvalidCheckpoint(f"the chooser picked {cid!r}, which is not a resume point")
    return Choice(cid, "chosen interactively")


def terminal_chooser(points: list[CheckpointMetadata]) -> CheckpointMetadata | None:
    """Prompt for a resume point on the terminal; ``InteractiveUnavailable`` without one."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise InteractiveUnavailable("interactive resume needs a terminal or a chooser")
    for i, p in enumerate(points, 1):
        when = f"{p.timestamp:%Y-%m-%d %H:%M:%S}"
        print(f"{i:3}. {p.checkpoint_id}  {p.stage_name}  {p.progress_percentage:.1f}%  {when}")
    while True:
        answer = input(f"resume from [1-{len(points)}, 0 = start clean]: ").strip()
        if answer.isdigit() and 0 <= int(answer) <= len(points):
            return points[int(answer) - 1] if int(answer) else None
        print("please enter a number from the list")


def _names(value: object) -> tuple[str, ...]:
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return ()


def _start_time(manifest: Manifest, operation: OperationInfo | None) -> datetime:
    if operation is not None:
        return datetime.fromtimestamp(operation.created_at, UTC)
    return manifest.created_at - timedelta(seconds=manifest.elapsed_seconds)


__all__ = [
    "BestFn",
    "Choice",
    "Chooser",
    "build_context",
    "check_restorable",
    "fresh_context",
    "interactive_choice",
    "line_choice",
    "plan_choice",
]
