"""``WorkerSession``: one worker's hold on one operation's slot, and its commits.

Opening a session does DESIGN.md's takeover: acquire the lease (a fresh fence), add to
the index what the store has and the index lacks, write the takeover record at the next
seq, index it, and start the heartbeat. ``commit`` then runs steps 3-5 for a snapshot:
upload the missing chunks, write the create-only commit record, index it. A refused
commit record means a newer owner took over: the session is lost for good. Its
``PlanWatch`` (api/planwatch.py) turns a newer resume plan that puts the worker behind
its state into a ``RollbackRequested`` that ``check`` raises.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bbp_dist_resume.api.catalog import store_history
from bbp_dist_resume.api.faults import fault
from bbp_dist_resume.api.metrics import recorder
from bbp_dist_resume.api.planwatch import PlanWatch
from bbp_dist_resume.coordination import Coordination
from bbp_dist_resume.coordination.heartbeat import Heartbeat
from bbp_dist_resume.coordination.models import CheckpointSummary, Lease, OperationInfo
from bbp_dist_resume.errors import (
    CommitConflict,
    CoordinationUnavailable,
    FencedError,
    LeaseLostError,
    RollbackRequested,
    StoreError,
)
from bbp_dist_resume.logs import get_logger
from bbp_dist_resume.repository import CheckpointMeta, Manifest, Repository, RepositoryStats

log = get_logger(__name__)
_INDEX_BACKOFF_MAX_S = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitRequest:
    """What the caller says about one checkpoint; the session adds the slot and lease."""

    stage: str
    granularity: str
    progress: float
    memory_bytes: int
    custom_metadata: Mapping[str, str] = field(default_factory=dict)
    epoch: int | None = None
    consumed: Mapping[str, int] = field(default_factory=dict)
    produced: Mapping[str, int] = field(default_factory=dict)


class WorkerSession:
    """A held slot: lease, heartbeat, the next seq. Commits are serialised by the caller."""

    def __init__(
        self,
        repo: Repository,
        coord: Coordination,
        operation: OperationInfo,
        *,
        heartbeat: Heartbeat,
        next_seq: int,
        state_seq: int = 0,
    ) -> None:
        self._repo = repo
        self._coord = coord
        self.operation = operation
        self._heartbeat = heartbeat
        self._next_seq = next_seq
        self._base: int | None = None
        self._elapsed_before = 0.0
        self._started = time.monotonic()
        self._lost = threading.Event()
        self._lost_lock = threading.Lock()
        self._uncertain: Manifest | None = None
        # The state it is at, the plan generation it has seen, a pending rollback.
        self._plan = PlanWatch(coord, operation, heartbeat.lease.worker_id, state_seq=state_seq)

    @classmethod
    def open(
        cls,
        repo: Repository,
        coord: Coordination,
        operation: OperationInfo,
        *,
        worker_id: str,
        ttl_ms: int,
        interval_s: float,
    ) -> WorkerSession:
        """Acquire the slot and take it over in the store (LeaseHeldError if held)."""
        op = operation.operation_id
        lease = coord.acquire(op, worker_id, ttl_ms=ttl_ms)
        try:
            history = repair_index(repo, coord, op, worker_id)
            lease = _fence_above_store(coord, lease, ttl_ms, history)
            try:
                takeover = repo.takeover(
                    op, worker_id, owner_token=lease.owner_token, fence=lease.fence
                )
            except CommitConflict:  # an owner with this fence or a newer one took the slot
                raise LeaseLostError(op, worker_id, "taken over in the store") from None
            coord.record(lease, CheckpointSummary.of(takeover))
            done = [s for s in history if s.kind == "checkpoint"]
        except BaseException:
            _release_quietly(coord, lease)
            raise
        session: WorkerSession

        def beat() -> None:  # bound late: the session is built around the heartbeat
            session.watch_plan()

        heartbeat = Heartbeat(
            coord,
            lease,
            interval=interval_s,
            on_lost=lambda _l: session._lose(),
            on_beat=beat,
        )
        session = cls(
            repo,
            coord,
            operation,
            heartbeat=heartbeat,
            next_seq=takeover.seq + 1,
            state_seq=done[-1].seq if done else 0,
        )
        if done:
            session._plan.at(done[-1].seq, done[-1].consumed)
        heartbeat.start()
        return session

    @property
    def on_rollback(self) -> Callable[[RollbackRequested], None] | None:
        """Called (heartbeat thread) when a new plan rolls this worker back."""
        return self._plan.on_rollback

    @on_rollback.setter
    def on_rollback(self, callback: Callable[[RollbackRequested], None] | None) -> None:
        self._plan.on_rollback = callback

    @property
    def deterministic(self) -> frozenset[str]:
        """Producers whose records come out the same when produced again (config)."""
        return self._plan.deterministic

    @deterministic.setter
    def deterministic(self, producers: frozenset[str]) -> None:
        self._plan.deterministic = producers

    @property
    def read_committed(self) -> bool:
        """Whether this worker reads only committed records (config)."""
        return self._plan.read_committed

    @read_committed.setter
    def read_committed(self, value: bool) -> None:
        self._plan.read_committed = value

    @property
    def _rollback(self) -> RollbackRequested | None:
        """The pending rollback (``PlanWatch.rollback``)."""
        return self._plan.rollback

    @property
    def lease(self) -> Lease:
        return self._heartbeat.lease

    @property
    def worker_id(self) -> str:
        return self.lease.worker_id

    @property
    def lost(self) -> bool:
        return self._lost.is_set() or self._heartbeat.lost.is_set()

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def next_checkpoint_id(self) -> str:
        """The id the next commit takes (one more when a previous commit record whose
        outcome was unknown turns out to have landed first)."""
        return f"{self.operation.operation_id}/{self.worker_id}/{self._next_seq}"

    def repo_stats(self) -> RepositoryStats:
        """The repository's byte and chunk counters (for the metrics of one commit)."""
        return self._repo.stats()

    def _lose(self) -> None:
        """The slot is lost for good; counted once, whoever finds out first."""
        with self._lost_lock:
            if self._lost.is_set():
                return
            self._lost.set()
        recorder().lease_lost(self.operation.operation_id, self.worker_id)

    def elapsed(self) -> float:
        """Seconds of work behind the next checkpoint: restored ones plus this session's."""
        return self._elapsed_before + time.monotonic() - self._started

    def resumed_from(
        self,
        seq: int,
        elapsed_s: float,
        generation: int | None = None,
        consumed: Mapping[str, int] | None = None,
    ) -> None:
        """The state now comes from this worker's checkpoint ``seq`` (0: a clean start),
        following plan ``generation`` when given (which acknowledges its rollback)."""
        self._base = seq
        self._plan.resumed(seq, consumed or {}, generation)
        self._elapsed_before = elapsed_s
        self._started = time.monotonic()

    def check(self) -> Lease:
        """The lease, or ``LeaseLostError`` / ``RollbackRequested`` (local checks only,
        no round trip)."""
        if self._lost.is_set():
            lease = self._heartbeat.lease
            raise LeaseLostError(lease.operation_id, lease.worker_id, "slot taken over")
        lease = self._heartbeat.check()
        if self._plan.rollback is not None:
            raise self._plan.rollback
        return lease

    def watch_plan(self) -> None:
        """Heartbeat hook (and ``complete``): one read of the operation; the plan only
        when it is new. One caller at a time: each plan is judged once."""
        self._plan.watch_plan()

    def set_progress(self, percent: float) -> None:
        self._heartbeat.set_progress(percent)

    def commit(
        self, parts: Mapping[str, bytes | os.PathLike[str]], request: CommitRequest
    ) -> Manifest:
        """Upload, commit and index one checkpoint at the next seq.

        Raises:
            LeaseLostError: the lease was lost before, or the slot was taken meanwhile.
            StoreError: an upload or the commit record failed (nothing was committed).
        """
        lease = self.check()
        self._settle_uncertain(lease)
        meta = CheckpointMeta(
            operation_id=lease.operation_id,
            worker_id=lease.worker_id,
            seq=self._next_seq,
            owner_token=lease.owner_token,
            fence=lease.fence,
            stage=request.stage,
            granularity=request.granularity,
            progress=request.progress,
            memory_bytes=request.memory_bytes,
            elapsed_seconds=self.elapsed(),
            custom_metadata=request.custom_metadata,
            epoch=request.epoch,
            consumed=request.consumed,
            produced=request.produced,
            base=self._base,
        )
        manifest = self._repo.write(parts, meta)
        fault("after_chunks")
        self.check()  # a lease lost during the upload: do not even try the commit point
        fault("before_commit_record")
        try:
            self._repo.commit(manifest)
        except CommitConflict:
            self._lose()
            raise LeaseLostError(lease.operation_id, lease.worker_id, "slot taken over") from None
        except StoreError:
            # The record may have landed before the error: find out now, or before the
            # next commit, which would otherwise be refused by this very record.
            self._uncertain = manifest
            with contextlib.suppress(StoreError):
                self._settle_uncertain(lease)
            if self._next_seq <= manifest.seq:
                raise
            return manifest
        self._committed(lease, manifest)
        return manifest

    def _committed(self, lease: Lease, manifest: Manifest) -> None:
        fault("after_manifest")
        self._next_seq = manifest.seq + 1
        self._plan.at(manifest.seq, manifest.consumed)
        self._base = None
        self._index(lease, manifest)
        fault("after_commit")

    def _settle_uncertain(self, lease: Lease) -> None:
        manifest = self._uncertain
        if manifest is None:
            return
        outcome = self._repo.settle(manifest)  # StoreError: still unknown, stay uncertain
        self._uncertain = None
        if outcome == "ours":
            log.info("checkpoint %s landed despite the error", manifest.checkpoint_id)
            self._committed(lease, manifest)
        elif outcome == "theirs":
            self._lose()
            raise LeaseLostError(lease.operation_id, lease.worker_id, "slot taken over")

    def _index(self, lease: Lease, manifest: Manifest) -> None:
        """Index a commit, retrying an unreachable backend for as long as the lease lives
        (the heartbeat renews it once the backend is back), so an outage shorter than the
        lease costs no index entry. Past that the slot may be another's: its takeover
        indexes the commit from the store."""
        summary = CheckpointSummary.of(manifest)
        delay = 0.05
        while True:
            try:
                self._coord.record(lease, summary)
                return
            except FencedError:
                # Committed in the store (so it stays valid), but someone acquired the
                # slot since: the next owner's takeover indexes it from the store.
                self._lose()
                raise LeaseLostError(lease.operation_id, lease.worker_id, "fenced") from None
            except CoordinationUnavailable:
                if self.lost or time.monotonic() + delay >= self.lease.local_deadline:
                    break
                time.sleep(delay)
                delay = min(2 * delay, _INDEX_BACKOFF_MAX_S)
        log.warning(
            "checkpoint %s committed but not indexed: repaired at the next takeover",
            manifest.checkpoint_id,
        )

    def close(self, *, done: bool) -> OperationInfo | None:
        """Stop the heartbeat and release the slot, marking the worker done if ``done``."""
        self._heartbeat.stop()
        lease = self._heartbeat.lease
        if self.lost:
            return None
        if done:
            return self._coord.mark_worker_done(lease)
        _release_quietly(self._coord, lease)
        return None


def repair_index(
    repo: Repository, coord: Coordination, op: str, worker: str
) -> list[CheckpointSummary]:
    """Index the worker's commit records that the store has and the index lacks; return
    the worker's whole history (index and repaired entries), by seq."""
    index = coord.index(op, worker)
    summaries = store_history(repo, op, worker, skip=frozenset(s.seq for s in index))
    if summaries:
        coord.repair(op, worker, summaries)
    return sorted([*index, *summaries], key=lambda s: s.seq)


def _fence_above_store(
    coord: Coordination, lease: Lease, ttl_ms: int, history: list[CheckpointSummary]
) -> Lease:
    """A lease whose fence is above every fence in the slot's history. Only a backend that
    lost its data (its counter restarted) hands out a lower one: then the counter is
    raised past the store's fences and the lease taken again."""
    op, worker = lease.operation_id, lease.worker_id
    top = max((s.fence for s in history), default=0)
    if lease.fence > top:
        return lease
    log.warning(
        "%s/%s: fence %s not above the store's %s: fencing again", op, worker, lease.fence, top
    )
    coord.release(lease)
    coord.restart_fences(op, worker, top)
    return coord.acquire(op, worker, ttl_ms=ttl_ms)


def _release_quietly(coord: Coordination, lease: Lease) -> None:
    try:
        coord.release(lease)
    except (LeaseLostError, CoordinationUnavailable) as exc:
        log.info("releasing %s/%s: %s", lease.operation_id, lease.worker_id, exc)
