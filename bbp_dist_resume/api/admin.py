"""``Admin``: an operator's handle on one store and coordination backend.

It is what ``bbp-resume`` shows and does — operations and their workers' lease health,
resume points, a checkpoint's anatomy, verification, plans, restores to a folder,
retention, garbage collection and index rebuilds — over the same objects the workers and
the coordinator use. Nothing here takes a worker's lease: an operator reads and repairs,
the workers work.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from bbp_dist_resume.api import admin_views as views
from bbp_dist_resume.api import resume as rsm
from bbp_dist_resume.api.admin_models import (
    CheckpointDetails,
    OperationView,
)
from bbp_dist_resume.api.catalog import Catalog, metadata_of
from bbp_dist_resume.api.maintenance import Maintenance
from bbp_dist_resume.api.manager import ResumeSystemManager
from bbp_dist_resume.api.models import CheckpointMetadata, ResumeContext, ResumeMode
from bbp_dist_resume.api.resume_system import ResumeSystem
from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.coordination import Coordination
from bbp_dist_resume.coordination.rebuild import RebuildReport, rebuild_from_store
from bbp_dist_resume.errors import (
    IntegrityError,
    InvalidCheckpoint,
    InvalidIdentifier,
    ObjectNotFound,
    UnknownOperation,
)
from bbp_dist_resume.ids import check_id, parse_checkpoint_id
from bbp_dist_resume.policy.plan import RecoveryPlan
from bbp_dist_resume.repository import Manifest, Repository, VerifyReport
from bbp_dist_resume.repository.gc import GcReport, collect_garbage

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreResult:
    """What ``Admin.restore`` wrote: the context it resumed and the files, by part name."""

    context: ResumeContext
    files: dict[str, Path]


class Admin:
    """Operator actions over one configuration's store and backend (a context manager).

    It creates nothing to open them, so a mistyped path is an error, not a new empty
    store or database: the store must have been written to (else BucketNotFound or
    InvalidStateError, naming it) and a SQLite database must exist (else
    CoordinationNotFound) — unless ``create_backend``, for a rebuild of a lost one.
    """

    def __init__(self, config: CheckpointConfig, *, create_backend: bool = False) -> None:
        self.config = config
        self._manager = ResumeSystemManager(f"admin-{uuid.uuid4().hex[:12]}")
        self._manager.initialize(config, create_store=False, create_backend=create_backend)

    def close(self) -> None:
        self._manager.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def manager(self) -> ResumeSystemManager:
        return self._manager

    def _open(self) -> tuple[Repository, Coordination, Catalog]:
        m = self._manager
        coord, catalog = m._coordination(), m._cat()
        assert m._repo is not None
        return m._repo, coord, catalog

    def _maintenance(self) -> Maintenance:
        repo, coord, catalog = self._open()
        return Maintenance(repo, coord, catalog, self.config.deterministic_producers)

    # -- operations ----------------------------------------------------------------------

    def operations(self) -> list[OperationView]:
        """Every operation the backend or the store knows, oldest first."""
        _, _, catalog = self._open()
        views = [self.operation(op) for op in catalog.operations()]
        return sorted(views, key=lambda v: v.created_at or datetime.max.replace(tzinfo=UTC))

    def operation(self, operation_id: str) -> OperationView:
        """One operation's status, plan generation and workers.

        Raises:
            UnknownOperation: neither the backend nor the store knows it.
        """
        _, coord, catalog = self._open()
        check_id(operation_id, "operation id")
        histories = catalog.histories(operation_id)
        try:
            info = coord.get_operation(operation_id)
            slots = coord.slot_states(operation_id)
        except UnknownOperation:
            if not histories:
                raise
            return views.store_only(operation_id, histories)
        workers = tuple(
            views.worker_view(
                operation_id, s, info.progress.get(s.worker_id), histories.get(s.worker_id, [])
            )
            for s in slots
        )
        return OperationView(
            operation_id=operation_id,
            status=info.status.value,
            created_at=datetime.fromtimestamp(info.created_at, UTC),
            generation=info.generation,
            workers=workers,
            logical_bytes=views.logical(histories),
        )

    def resume_points(self, operation_id: str, worker_id: str | None = None) -> list[Any]:
        """Every checkpoint of the operation (or of one worker), oldest first.

        Raises:
            InvalidIdentifier (also a worker not of the operation), UnknownOperation.
        """
        _, _, catalog = self._open()
        self._check_worker(operation_id, worker_id)
        points = catalog.resume_points(operation_id)
        if worker_id is not None:
            points = [p for p in points if p.worker_id == worker_id]
        return points

    def workers_of(self, operation_id: str) -> set[str]:
        """The workers of an operation the backend knows, or else the store (lost index).

        Raises:
            InvalidIdentifier; UnknownOperation: neither the backend nor the store knows it.
        """
        repo, coord, _ = self._open()
        check_id(operation_id, "operation id")
        try:
            return set(coord.get_operation(operation_id).workers)
        except UnknownOperation:
            workers = set(repo.slots().get(operation_id, []))
            if not workers:
                raise
            return workers

    def _check_worker(self, operation_id: str, worker_id: str | None) -> None:
        """An operator's typo must be an error, not an empty listing or a clean start."""
        workers = self.workers_of(operation_id)
        if worker_id is not None and check_id(worker_id, "worker id") not in workers:
            raise InvalidIdentifier("worker id", worker_id, f"not a worker of {operation_id!r}")

    # -- one checkpoint ------------------------------------------------------------------

    def details(self, checkpoint_id: str, *, measure_stored: bool = True) -> CheckpointDetails:
        """A checkpoint's anatomy. ``measure_stored`` asks the store for the encoded size
        of each distinct chunk (one HEAD each).

        Raises:
            InvalidIdentifier, ObjectNotFound, InvalidCheckpoint (a takeover), IntegrityError.
        """
        repo, _, catalog = self._open()
        manifest = catalog.manifest(checkpoint_id)
        previous = self._previous(manifest)
        old = views.chunk_ids(previous) if previous is not None else set()
        sizes = views.chunk_sizes(manifest)
        return CheckpointDetails(
            metadata=metadata_of(manifest, verified=True),
            owner_token=manifest.owner_token,
            fence=manifest.fence,
            write_id=manifest.write_id,
            base=manifest.base,
            encrypted=repo.encrypted,
            parts=tuple(views.part_view(name, part, old) for name, part in manifest.parts.items()),
            unique_chunks=len(sizes),
            unique_bytes=sum(sizes.values()),
            previous=previous.checkpoint_id if previous is not None else None,
            new_bytes=sum(size for cid, size in sizes.items() if cid not in old),
            stored_bytes=views.stored_bytes(repo, list(sizes)) if measure_stored else None,
        )

    def _previous(self, manifest: Manifest) -> Manifest | None:
        """The worker's newest checkpoint before this one, if any is readable."""
        repo, _, catalog = self._open()
        op, worker = manifest.operation_id, manifest.worker_id
        for seq in reversed([s for s in repo.record_seqs(op, worker) if s < manifest.seq]):
            try:
                return catalog.manifest(f"{op}/{worker}/{seq}")
            except (InvalidCheckpoint, IntegrityError, ObjectNotFound):
                continue  # a takeover record, or one unreadable or gone: look further back
        return None

    def verify(
        self, target: str, *, deep: bool, progress: Progress | None = None
    ) -> list[VerifyReport]:
        """Verify one checkpoint (``op/worker/seq``) or every checkpoint of an operation."""
        maintenance = self._maintenance()
        if "/" in target:
            parse_checkpoint_id(target)
            ids = [target]
        else:
            ids = [p.checkpoint_id for p in self.resume_points(target)]
        reports = []
        for i, cid in enumerate(ids, 1):
            reports.append(maintenance.verify(cid, deep=deep))
            if progress is not None:
                progress(i, len(ids))
        return reports

    # -- plans and restores --------------------------------------------------------------

    def plan(
        self, operation_id: str, mode: ResumeMode = ResumeMode.LAST_CHECKPOINT
    ) -> tuple[RecoveryPlan, int]:
        """The recovery plan the operation would get now, and the published generation."""
        plan = self._manager.plan_recovery(operation_id, mode)
        current = self._manager.current_plan(operation_id)
        return plan, current.generation if current is not None else 0

    def restore(
        self,
        operation_id: str,
        worker_id: str,
        mode: ResumeMode,
        dest: Path | None = None,
        *,
        chooser: rsm.Chooser | None = None,
        on_file: Callable[[str, Path], None] | None = None,
    ) -> RestoreResult | None:
        """Resume ``worker_id`` by ``mode`` without taking its lease, and write the state
        (``state.json``) and every attachment into ``dest`` when given. None: the chosen
        checkpoint could not be restored (it fails verification).

        Raises:
            InvalidIdentifier, UnknownOperation: see :meth:`resume_points`.
            InvalidStateError: ``dest`` holds a file of the same name (nothing overwritten).
        """
        if "/" not in operation_id:  # a checkpoint id names one exact checkpoint
            self._check_worker(operation_id, worker_id)
        with ResumeSystem(self.config, worker_id) as rs:
            context = rs.resume_from_checkpoint(operation_id, mode, chooser=chooser)
            if context is None:
                return None
            files = views.write_out(context, dest, on_file) if dest is not None else {}
        return RestoreResult(context=context, files=files)

    # -- maintenance ---------------------------------------------------------------------

    def retention(
        self, operation_id: str | None = None, *, dry_run: bool = False
    ) -> dict[str, dict[str, list[int]]]:
        """Apply retention (``max_checkpoints``, ``cleanup_age``) to one operation or all;
        return, per operation and worker, the seqs removed (or that would be)."""
        maintenance = self._maintenance()
        _, _, catalog = self._open()
        if operation_id is not None:
            self.workers_of(operation_id)
        ops = [operation_id] if operation_id else catalog.operations()
        out: dict[str, dict[str, list[int]]] = {}
        for op in ops:
            expired = maintenance.expired(op, None, self.config)
            if expired and not dry_run:
                maintenance.cleanup(op, None, self.config)
            if expired:
                out[op] = expired
        return out

    def collect_garbage(
        self,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
        break_lock: bool = False,
    ) -> GcReport:
        """Delete chunks no commit record references, older than ``gc_safety_margin``
        (``repository/gc.py`` has the safety rule). Raises ``GarbageCollectionAborted``
        when a commit record cannot be read (nothing deleted), ``GarbageCollectionLocked``
        when another run holds the store's GC lock."""
        repo, _, _ = self._open()
        return collect_garbage(repo, dry_run=dry_run, progress=progress, break_lock=break_lock)

    def rebuild_index(self) -> RebuildReport:
        """Rebuild every index and fence from the store's commit records (open the
        ``Admin`` with ``create_backend=True`` when the SQLite file itself was lost)."""
        repo, coord, _ = self._open()
        return rebuild_from_store(coord, repo)

    def statistics(self) -> Any:
        return self._manager.get_global_statistics()


__all__ = ["Admin", "CheckpointMetadata", "RestoreResult"]
