"""``Catalog``: what checkpoints exist, from the index (fast) or the store (the truth).

Commit records are written once, so the catalog caches the ones it read, keyed by
store key and checked against the index's ``root``.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from bbp_dist_resume.api.models import CheckpointMetadata
from bbp_dist_resume.api.snapshot import attachment_names
from bbp_dist_resume.coordination import Coordination
from bbp_dist_resume.coordination.models import CheckpointSummary
from bbp_dist_resume.errors import (
    BBPError,
    IntegrityError,
    InvalidCheckpoint,
    InvalidIdentifier,
    ManifestError,
    ObjectNotFound,
    UnknownOperation,
)
from bbp_dist_resume.ids import parse_checkpoint_id
from bbp_dist_resume.logs import get_logger, in_context
from bbp_dist_resume.repository import Manifest, Repository
from bbp_dist_resume.repository.manifest import record_key

log = get_logger(__name__)
_CACHE_CAP = 4096

Histories = dict[str, list[CheckpointSummary]]


class Catalog:
    """Listings and commit records of one repository and coordination backend."""

    def __init__(self, repo: Repository, coord: Coordination) -> None:
        self._repo = repo
        self._coord = coord
        self._cache: dict[str, Manifest] = {}
        self._damaged: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="bbp-catalog")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def operations(self) -> list[str]:
        """Every operation the index or the store knows, sorted."""
        known = {o.operation_id for o in self._coord.list_operations()}
        return sorted(known | set(self._repo.slots()))

    def histories(self, operation_id: str) -> Histories:
        """Each worker's commit records, by seq: from the index, or from the store when
        the index has none (an operation the backend lost or never saw)."""
        try:
            found = self._coord.index_all(operation_id)
        except UnknownOperation:
            found = {}
        if any(found.values()):
            return found
        workers = self._repo.slots().get(operation_id, [])
        return found | {w: store_history(self._repo, operation_id, w) for w in workers}

    def manifest(self, checkpoint_id: str, indexed: CheckpointSummary | None = None) -> Manifest:
        """The manifest of a checkpoint id. Raises ``InvalidIdentifier``, ``ObjectNotFound``
        (no such checkpoint), ``InvalidCheckpoint`` (a takeover), or ``IntegrityError``
        (``ManifestError`` too for a record whose root is not the index's). ``indexed``: the
        index entry of the slot when the caller already holds it (saves a lookup)."""
        op, worker, seq = parse_checkpoint_id(checkpoint_id)
        key = record_key(op, worker, seq)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        record = self._repo.load_record(op, worker, seq)
        if not isinstance(record, Manifest):
            raise InvalidCheckpoint(f"{checkpoint_id} is a takeover record, not a checkpoint")
        self._check_indexed(record, indexed)
        with self._lock:
            if len(self._cache) >= _CACHE_CAP:
                self._cache.clear()
            self._cache[key] = record
        return record

    def _check_indexed(self, record: Manifest, entry: CheckpointSummary | None) -> None:
        """Refuse a record that is not the one the index holds for its slot: a well-formed
        record of the right slot copied from another store or history parses fine, and only
        the root the index kept at commit time tells it apart. With no index entry (a history
        the backend lost or never saw) the store is the only truth."""
        if entry is None:
            try:
                entry = self._coord.lookup(record.operation_id, record.worker_id, record.seq)
            except (UnknownOperation, InvalidIdentifier):
                return  # the backend does not know this operation or worker
        if entry is not None and entry.root != record.root:
            raise ManifestError(
                "commit record differs from the one the index holds for its slot",
                key=record.store_key,
            )

    def forget(self, checkpoint_id: str) -> None:
        op, worker, seq = parse_checkpoint_id(checkpoint_id)
        with self._lock:
            self._cache.pop(record_key(op, worker, seq), None)

    def set_damaged(self, checkpoint_id: str, damaged: bool) -> None:
        """What verification or a restore found: listed as unverified until it passes."""
        self.forget(checkpoint_id)
        with self._lock:
            if damaged:
                self._damaged.add(checkpoint_id)
            else:
                self._damaged.discard(checkpoint_id)

    def resume_points(self, operation_id: str) -> list[CheckpointMetadata]:
        """Every checkpoint of the operation, oldest first."""
        summaries = [
            (worker, s)
            for worker, entries in self.histories(operation_id).items()
            for s in entries
            if s.kind == "checkpoint"
        ]
        # The pool's threads log with the caller's log fields.
        point = in_context(lambda ws: self._point(operation_id, ws[0], ws[1]))
        points = list(self._pool.map(point, summaries))
        return sorted(points, key=lambda p: (p.timestamp, p.worker_id, p.seq))

    def _point(self, op: str, worker: str, summary: CheckpointSummary) -> CheckpointMetadata:
        cid = f"{op}/{worker}/{summary.seq}"
        try:
            manifest = self.manifest(cid, indexed=summary)
        except (ObjectNotFound, BBPError) as exc:
            log.warning("resume point %s cannot be read: %s", cid, exc)
            return _from_summary(cid, op, worker, summary)
        intact = manifest.root == summary.root
        with self._lock:
            intact = intact and cid not in self._damaged
        if manifest.root != summary.root:
            log.warning("resume point %s: %s", cid, ManifestError("root differs from the index"))
        return metadata_of(manifest, verified=intact)


def metadata_of(manifest: Manifest, *, verified: bool) -> CheckpointMetadata:
    """The resume point a manifest describes."""
    return CheckpointMetadata(
        checkpoint_id=manifest.checkpoint_id,
        timestamp=manifest.created_at,
        pipeline_id=manifest.operation_id,
        stage_name=manifest.stage,
        granularity=manifest.granularity,
        progress_percentage=manifest.progress,
        memory_footprint=manifest.memory_bytes,
        elapsed_time=timedelta(seconds=manifest.elapsed_seconds),
        custom_metadata=dict(manifest.custom_metadata),
        is_verified=verified,
        verification_hash=manifest.root,
        worker_id=manifest.worker_id,
        seq=manifest.seq,
        logical_size=manifest.logical_size,
        attachments=attachment_names(list(manifest.parts)),
        epoch=manifest.epoch,
        consumed=dict(manifest.consumed),
        produced=dict(manifest.produced),
    )


def _from_summary(cid: str, op: str, worker: str, s: CheckpointSummary) -> CheckpointMetadata:
    return CheckpointMetadata(
        checkpoint_id=cid,
        timestamp=datetime.fromisoformat(s.created_at),
        pipeline_id=op,
        stage_name=s.stage,
        granularity="",
        progress_percentage=s.progress,
        memory_footprint=0,
        elapsed_time=timedelta(0),
        custom_metadata={},
        is_verified=False,
        verification_hash=s.root,
        worker_id=worker,
        seq=s.seq,
        logical_size=s.size,
        epoch=s.epoch,
        consumed=dict(s.consumed),
        produced=dict(s.produced),
    )


def store_history(
    repo: Repository, op: str, worker: str, skip: frozenset[int] = frozenset()
) -> list[CheckpointSummary]:
    """A worker's commit records read from the store, by seq (unreadable ones are logged
    and left out: they can never be restored)."""
    out = []
    for seq in repo.record_seqs(op, worker):
        if seq in skip:
            continue
        try:
            out.append(CheckpointSummary.of(repo.load_record(op, worker, seq)))
        except ObjectNotFound:
            continue  # deleted since the listing
        except IntegrityError as exc:
            log.warning("commit record %s/%s/%s is unreadable: %s", op, worker, seq, exc)
    return out
