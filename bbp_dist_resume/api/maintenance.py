"""``Maintenance``: verification, deletion and retention of checkpoints, and the failure
rate seen in an operation's history (for the ADAPTIVE strategy).

Deletion order is DESIGN.md's: index entry first, then the commit record, so no listing
ever names a checkpoint whose record is gone. A worker's highest record is never deleted
(its seq would be taken again: a history is one record per seq, written once), nor an
entry of the current plan or recovery line, nor the first commit of the incarnation that
restored a plan entry (``watermark.restored_marker``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from bbp_dist_resume.api.catalog import Catalog, Histories
from bbp_dist_resume.api.watermark import restored_marker
from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.coordination import CheckpointSummary, Coordination
from bbp_dist_resume.errors import (
    BBPError,
    InvalidCheckpoint,
    InvalidIdentifier,
    UnknownOperation,
)
from bbp_dist_resume.ids import parse_checkpoint_id
from bbp_dist_resume.logs import get_logger
from bbp_dist_resume.policy import RetentionRule, recovery_line, select_expired
from bbp_dist_resume.policy.retention import RetentionEntry
from bbp_dist_resume.repository import Repository, VerifyReport

log = get_logger(__name__)


class Maintenance:
    """Operations on stored checkpoints that are not taking or restoring one."""

    def __init__(
        self,
        repo: Repository,
        coord: Coordination,
        catalog: Catalog,
        deterministic: tuple[str, ...] = (),
    ) -> None:
        self._deterministic = deterministic
        self._repo = repo
        self._coord = coord
        self._catalog = catalog

    def verify(self, checkpoint_id: str, *, deep: bool) -> VerifyReport:
        """Verify one checkpoint; a missing or unreadable record is a failed report."""
        try:
            manifest = self._catalog.manifest(checkpoint_id)
        except InvalidIdentifier:
            raise  # a malformed id: bad input, not a damaged checkpoint
        except BBPError as exc:  # missing, a takeover, unreadable
            self._catalog.set_damaged(checkpoint_id, True)
            return VerifyReport(
                checkpoint_id=checkpoint_id, deep=deep, chunks_checked=0, problems=(str(exc),)
            )
        report = self._repo.verify(manifest, deep=deep)
        self._catalog.set_damaged(checkpoint_id, not report.ok)
        return report

    def protected(self, operation_id: str, histories: Histories) -> dict[str, set[int]]:
        """Per worker, the seqs retention and deletion must keep: the current plan's and
        recovery line's entries."""
        out: dict[str, set[int]] = {w: set() for w in histories}
        for worker, cut in recovery_line(histories, deterministic=self._deterministic).cuts.items():
            if cut.seq is not None:
                out[worker].add(cut.seq)
        entries, restarts = self._plan_entries(operation_id)
        for worker, seq in entries.items():
            kept = out.setdefault(worker, set())
            if seq:
                kept.add(seq)
            # The first commit of the incarnation that restored the entry: without it,
            # committed_offset and the rollback check could not tell that incarnation's
            # later commits from those of the one the plan replaced.
            marker = restored_marker(histories.get(worker, ()), seq, restarts.get(worker))
            if marker is not None:
                kept.add(marker)
        return out

    def _plan_entries(self, operation_id: str) -> tuple[dict[str, int], dict[str, int]]:
        """Worker -> the seq its plan entry restores (0: the initial state), and the
        plan's ``restarts`` (worker -> the fence its relaunch replaced)."""
        try:
            plan = self._coord.read_plan(operation_id)
        except UnknownOperation:
            return {}, {}
        entries = plan.body.get("entries", {}) if plan else {}
        restarts = plan.body.get("restarts", {}) if plan else {}
        fences = {
            w: f
            for w, f in (restarts.items() if isinstance(restarts, dict) else ())
            if isinstance(w, str) and type(f) is int
        }
        out = {}
        for worker, entry in entries.items() if isinstance(entries, dict) else ():
            cid = entry.get("checkpoint_id") if isinstance(entry, dict) else None
            if isinstance(cid, str):
                out[worker] = parse_checkpoint_id(cid)[2]
            elif isinstance(entry, dict) and cid is None:
                out[worker] = 0
        return out, fences

    def delete(self, checkpoint_id: str) -> bool:
        """Delete one checkpoint; False when there was none."""
        op, worker, seq = parse_checkpoint_id(checkpoint_id)
        seqs = self._repo.record_seqs(op, worker)
        if seq not in seqs:
            return False
        if seq == seqs[-1]:
            raise InvalidCheckpoint(
                f"{checkpoint_id} is the worker's newest record: it fences earlier owners"
            )
        record = self._repo.load_record(op, worker, seq)
        if record.kind != "checkpoint":
            raise InvalidCheckpoint(f"{checkpoint_id} is a takeover record, not a checkpoint")
        histories = self._catalog.histories(op)
        if seq in self.protected(op, histories).get(worker, set()):
            raise InvalidCheckpoint(f"{checkpoint_id} is in the current resume plan or line")
        self._remove(op, worker, [seq])
        return True

    def cleanup(
        self, operation_id: str, workers: Sequence[str] | None, config: CheckpointConfig
    ) -> int:
        """Apply retention to some workers of an operation (all when None)."""
        expired = self.expired(operation_id, workers, config)
        for worker, seqs in expired.items():
            self._remove(operation_id, worker, seqs)
        return sum(len(seqs) for seqs in expired.values())

    def expired(
        self, operation_id: str, workers: Sequence[str] | None, config: CheckpointConfig
    ) -> dict[str, list[int]]:
        """Per worker, the seqs retention would remove now (workers with none left out)."""
        rule = RetentionRule(max_checkpoints=config.max_checkpoints, cleanup_age=config.cleanup_age)
        now = datetime.now(UTC)
        index = self._index(operation_id, workers)
        entries = {w: _retention_entries(s) for w, s in index.items()}
        if not any(select_expired(e, rule, now=now) for e in entries.values()):
            return {}  # the common case costs one index read, no plan
        # The whole operation's index is the catalog's history unless the index is empty.
        whole = index if workers is None else self._catalog.histories(operation_id)
        protected = self.protected(operation_id, whole)
        out = {}
        for worker, found in entries.items():
            seqs = select_expired(found, rule, now=now, protected=protected.get(worker, ()))
            if seqs:
                out[worker] = seqs
        return out

    def _index(self, operation_id: str, workers: Sequence[str] | None) -> Histories:
        """The index entries of some workers (all when None), in one read each."""
        try:
            if workers is None:
                return self._coord.index_all(operation_id)
            return {w: self._coord.index(operation_id, w) for w in workers}
        except UnknownOperation:
            return {}

    def _remove(self, operation_id: str, worker: str, seqs: list[int]) -> None:
        if not seqs:
            return
        self._coord.delete_entries(operation_id, worker, seqs)
        for seq in seqs:
            self._repo.delete_record(operation_id, worker, seq)
            self._catalog.forget(f"{operation_id}/{worker}/{seq}")
        log.info("retention removed %s/%s seqs %s", operation_id, worker, seqs)

    def observed_mtbf(self, operation_id: str) -> float | None:
        """Seconds of worker time per failure in the operation's history: every takeover
        after a worker's first one follows a crash or a restart. None: none seen."""
        failures, exposure = 0, 0.0
        for entries in self._catalog.histories(operation_id).values():
            if not entries:
                continue
            times = [datetime.fromisoformat(s.created_at) for s in entries]
            exposure += (max(times) - min(times)).total_seconds()
            failures += max(0, sum(1 for s in entries if s.kind == "takeover") - 1)
        return exposure / failures if failures and exposure > 0 else None


def _retention_entries(index: list[CheckpointSummary]) -> list[RetentionEntry]:
    return [
        RetentionEntry(seq=s.seq, kind=s.kind, created_at=datetime.fromisoformat(s.created_at))
        for s in index
    ]
