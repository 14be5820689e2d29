"""Garbage collection: mark-and-sweep of the chunks no commit record references.

Retention and ``delete`` remove commit records only; their chunks stay until a GC run
frees them. A run (:func:`collect_garbage`):

1. **lists** ``chunks/`` with each object's age by the store's clock; the *candidates* are
   the chunks written more than M before the run started (M = ``gc_safety_margin``);
2. **then marks**: lists every commit record under ``checkpoints/`` and collects every
   chunk id they name (a record it cannot read aborts the run, nothing deleted);
3. **sweeps** the unreferenced candidates in batches (``gc_sweep``): looks at each
   again (a listing of the batch's key range, or a HEAD each), keeps it unless it is
   still the version written more than M before the run started, and sends the batch's
   delete within G of the batch's first look (else looks again, in smaller batches).

Only keys of the form ``chunks/<id[0:2]>/<id>`` are ever deleted; ``config``, ``keys/``
and ``checkpoints/`` are only read.

Safety rule: a GC never deletes a chunk that a committed or in-flight checkpoint
references, given these bounds (``evidence`` has the writer's side; FRESH = M/2,
BOUND = M/4, G = min(1 s, M/40), SETTLE = 3G):

* a writer relies on a stored chunk only with evidence that the version it relies on was
  written less than FRESH before its dedup decision, or because the chunk is in the
  slot's last commit and the write takes the slot's next seq; otherwise it writes the
  chunk again (a *refresh*);
* a write commits within BOUND of its first dedup decision (``CommitTooLate`` else);
* a writer checks every chunk it refreshed (or saw younger than SETTLE) SETTLE after
  writing it, and writes again one that vanished;
* a GC delete takes effect within 2G of the batch's first look (it is sent within G;
  one answered later is reported as ``late_deletes`` and logged), monotonic clocks of
  GC and writers agree on durations within G, and store clocks run at wall-time rate.

Why. Say a run deletes chunk c, and record R names c and exists after the delete.
If R was committed before the mark's listing passed R's key, the mark read R and c was
not swept. Else R was committed after the run started, relying on some version v of c:
(a) *slot reuse*: the slot's previous record named c and was the slot's newest until R
landed (the newest record is never removed), and keys list in seq order, so the mark
saw one of the two; (b) *evidence or refresh*: v was written less than FRESH + BOUND =
3M/4 before R's commit, so after the run started minus M; the sweep deletes only a
version written before the run started minus M, so its look saw an older version,
before v was written, and its delete landed within 2G of that look: before v was
written (v survives), or less than 2G after it, which the writer's check (SETTLE = 3G
after v was written, or after it saw v) notices and repairs by writing c again.

Not covered: a writer paused between its commit-bound check and its create-only PUT for
longer than the bound (as with any lease; verification then finds the missing chunk and
resume falls back past the checkpoint); two GC runs at the very same moment when a
writer creates a chunk anew in the instant between one run's delete of it and the other
run's delete of it (created chunks are not settled, to keep commits fast: run one GC at
a time); a stale writer whose seq's record was deleted after it was taken over; a GC
and writers with different margins (use the same ``gc_safety_margin`` everywhere, or a
larger one for the GC); a local store whose host clock is stepped forward.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta

from bbp_dist_resume.blobstore import BlobStore, ObjectInfo
from bbp_dist_resume.errors import (
    GarbageCollectionAborted,
    IntegrityError,
    InvalidIdentifier,
    ObjectNotFound,
)
from bbp_dist_resume.repository.chunkid import ChunkId
from bbp_dist_resume.repository.evidence import Clock, GcTiming, MonotonicClock
from bbp_dist_resume.repository.freshness import chunk_ids
from bbp_dist_resume.repository.gc_sweep import Progress, SweepCounts, Sweeper
from bbp_dist_resume.repository.gclock import gc_lock
from bbp_dist_resume.repository.manifest import CheckpointRecord
from bbp_dist_resume.repository.repository import Repository

BATCH_SIZE = 1000  # the most keys one S3 DeleteObjects request takes
CONCURRENCY = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class GcReport:
    """What one garbage-collection run found and did.

    Attributes:
        margin: M in seconds; dry_run: True if nothing was deleted on purpose.
        chunks_seen: chunk objects listed; candidates: of those, older than M.
        chunks_referenced: distinct chunk ids the commit records name.
        records_seen: commit records listed; records_read: of those, read in this run
            (the others came from the cache).
        deleted: chunks deleted (with ``dry_run``: that would have been deleted).
        bytes_freed: their stored size.
        kept: unreferenced candidates kept because a second look found them rewritten
            (a writer refreshed them), gone, or too slow to check.
        late_deletes: chunks whose delete answered more than 2G after their look: the
            writers' check may have missed a race with them (logged as a warning).
        duration: seconds the run took.
    """

    margin: float
    dry_run: bool
    chunks_seen: int
    candidates: int
    chunks_referenced: int
    records_seen: int
    records_read: int
    deleted: int
    bytes_freed: int
    kept: int
    late_deletes: int
    duration: float


class MarkCache:
    """Chunk ids of commit records already read, by key and size (a record is written
    once), so that repeated runs read only new records. Thread-safe."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, int], frozenset[str]] = {}
        self._lock = threading.Lock()

    def get(self, info: ObjectInfo) -> frozenset[str] | None:
        with self._lock:
            return self._ids.get((info.key, info.size))

    def put(self, info: ObjectInfo, ids: frozenset[str]) -> None:
        with self._lock:
            self._ids[(info.key, info.size)] = ids

    def keep_only(self, infos: Iterable[ObjectInfo]) -> None:
        """Forget records no longer listed."""
        live = {(i.key, i.size) for i in infos}
        with self._lock:
            self._ids = {k: v for k, v in self._ids.items() if k in live}


def collect_garbage(
    repo: Repository,
    *,
    margin: float | timedelta | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    cache: MarkCache | None = None,
    clock: Clock | None = None,
    batch_size: int = BATCH_SIZE,
    concurrency: int = CONCURRENCY,
    break_lock: bool = False,
) -> GcReport:
    """Delete the chunks no commit record references and that are older than ``margin``.

    Args:
        repo: the repository; its key ring must open every commit record.
        margin: M (default: the repository's ``gc_safety_margin``). Never use a smaller
            one than the writers use.
        dry_run: list, mark and check, but delete nothing.
        progress: called with ``(done, total)`` as records are read and chunks swept;
            ``total`` may shrink once, when the mark is done.
        cache: records read by earlier runs (a long-lived caller passes the same one).
        clock: monotonic time (tests inject one).
        batch_size: chunks per delete request at most (one key folder per batch).
        concurrency: parallel record reads and HEADs (a quarter as many batches).
        break_lock: remove the GC lock a dead run left behind (``gclock``); only when
            no other GC runs.

    Returns:
        What the run saw and did.

    Raises:
        GarbageCollectionAborted: a commit record could not be read; nothing deleted.
        GarbageCollectionLocked: another run that deletes holds the lock (a dry run
            takes no lock).
        StoreError: the store failed; chunks of earlier batches may have been deleted.
    """
    lock = nullcontext() if dry_run else gc_lock(repo.store, break_lock=break_lock)
    with lock:
        return _collect(
            repo,
            margin=margin,
            dry_run=dry_run,
            progress=progress,
            cache=cache,
            clock=clock,
            batch_size=batch_size,
            concurrency=concurrency,
        )


def _collect(
    repo: Repository,
    *,
    margin: float | timedelta | None,
    dry_run: bool,
    progress: Progress | None,
    cache: MarkCache | None,
    clock: Clock | None,
    batch_size: int,
    concurrency: int,
) -> GcReport:
    timing = repo.gc_timing if margin is None else GcTiming.of(margin)
    run = _Run(repo, timing, clock or MonotonicClock(), progress or _no_progress, cache)
    with ThreadPoolExecutor(concurrency, thread_name_prefix="bbp-gc") as pool:
        sweeper = Sweeper(
            repo.store,
            timing,
            run.clock,
            pool,
            start=run.start,
            batch_size=max(1, batch_size),
            parallel=max(1, concurrency // 4),
        )
        return run.execute(pool, sweeper, dry_run=dry_run)


def _no_progress(done: int, total: int) -> None:
    return None


class _Run:
    """One GC run; ``start`` is when its candidate listing began (monotonic)."""

    def __init__(
        self,
        repo: Repository,
        timing: GcTiming,
        clock: Clock,
        progress: Progress,
        cache: MarkCache | None,
    ) -> None:
        self.repo = repo
        self.store: BlobStore = repo.store
        self.timing = timing
        self.clock = clock
        self.progress = progress
        self.cache = cache or MarkCache()
        self.start = clock.now()
        self.counts = SweepCounts()

    def execute(self, pool: ThreadPoolExecutor, sweeper: Sweeper, *, dry_run: bool) -> GcReport:
        seen, candidates = self._candidates()
        records = [i for i in self.store.list("checkpoints/") if _record_slot(i.key)]
        todo = [i for i in records if self.cache.get(i) is None]
        self.counts.total = len(todo) + len(candidates)
        referenced = self._mark(pool, records, todo)
        doomed = sorted((cid, at) for cid, (_, at) in candidates.items() if cid not in referenced)
        self.counts.total = self.counts.done + len(doomed)
        self.progress(self.counts.done, self.counts.total)
        sweeper.run(doomed, self.counts, self.progress, dry_run)
        c = self.counts
        return GcReport(
            margin=self.timing.margin,
            dry_run=dry_run,
            chunks_seen=seen,
            candidates=len(candidates),
            chunks_referenced=len(referenced),
            records_seen=len(records),
            records_read=len(todo),
            deleted=c.deleted,
            bytes_freed=c.freed,
            kept=c.kept,
            late_deletes=c.late,
            duration=self.clock.now() - self.start,
        )

    def _candidates(self) -> tuple[int, dict[str, tuple[int, int]]]:
        """Count the chunks, and return those written more than M before ``start``, with
        their size and position in the listing."""
        seen = 0
        out: dict[str, tuple[int, int]] = {}
        for at, info in enumerate(self.store.list("chunks/")):
            cid = _chunk_of(info.key)
            if cid is None:
                continue  # not a chunk this library wrote: never ours to delete
            seen += 1
            if self.timing.collectable(info.age, self.clock.now() - self.start):
                out[cid] = (info.size, at)
        return seen, out

    def _mark(
        self, pool: ThreadPoolExecutor, records: list[ObjectInfo], todo: list[ObjectInfo]
    ) -> set[str]:
        """Every chunk id the listed records name (reading those not cached)."""
        for info, ids in zip(todo, pool.map(self._read, todo), strict=True):
            self.cache.put(info, ids)
            self.counts.done += 1
            if self.counts.done % 64 == 0:
                self.progress(self.counts.done, self.counts.total)
        self.cache.keep_only(records)
        referenced: set[str] = set()
        for info in records:
            referenced.update(self.cache.get(info) or ())
        return referenced

    def _read(self, info: ObjectInfo) -> frozenset[str]:
        op, worker, seq = _record_slot(info.key) or ("", "", 0)
        try:
            record = self.repo.load_record(op, worker, seq)
        except ObjectNotFound:
            return frozenset()  # removed since the listing: it protects nothing now
        except InvalidIdentifier:
            return frozenset()  # ids this library never writes: not a commit record
        except IntegrityError as exc:
            raise GarbageCollectionAborted(
                f"cannot read commit record ({exc}); its chunks are unknown, so nothing "
                "was deleted (a config lacking one of the store's keys?)",
                key=info.key,
            ) from exc
        return frozenset(chunk_ids(record)) if isinstance(record, CheckpointRecord) else frozenset()


def _chunk_of(key: str) -> str | None:
    """The chunk id of a ``chunks/<id[0:2]>/<id>`` key, else None."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "chunks":
        return None
    try:
        cid = ChunkId.parse(parts[2])
    except InvalidIdentifier:
        return None
    return cid.hex if parts[1] == cid.hex[:2] else None


def _record_slot(key: str) -> tuple[str, str, int] | None:
    """``(operation, worker, seq)`` of a ``checkpoints/<op>/<worker>/<seq:010d>`` key."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "checkpoints":
        return None
    if len(parts[3]) != 10 or not parts[3].isdigit() or int(parts[3]) == 0:
        return None
    return parts[1], parts[2], int(parts[3])
