"""The sweep of a garbage-collection run (``gc``): look at each doomed chunk again, then
delete it within G of that look.

A look is a fresh observation of the chunk's age by the store: a listing of the key range
the batch spans (one request per 1,000 keys, as strongly consistent as a HEAD on S3 and
on a directory), or a HEAD of each key where the range holds mostly other chunks. A
batch's delete is sent only if every look of the batch came back within G of the first
request; otherwise the batch is looked at again in halves (its looks are stale by then).
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bbp_dist_resume.blobstore import BlobStore, ObjectInfo
from bbp_dist_resume.logs import get_logger
from bbp_dist_resume.repository.chunkid import ChunkId
from bbp_dist_resume.repository.evidence import Clock, GcTiming

log = get_logger(__name__)
Progress = Callable[[int, int], None]
_SLOW_TRIES = 3
_PAGE = 1000  # keys per listing page (S3)
_DENSE = 4  # list a range with up to this many keys per doomed one (plus a page)


@dataclass(slots=True)
class SweepCounts:
    """What a run did so far; ``done`` of ``total`` steps for the progress callback."""

    deleted: int = 0
    freed: int = 0
    kept: int = 0
    late: int = 0
    done: int = 0
    total: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **deltas: int) -> None:
        with self.lock:
            for name, n in deltas.items():
                setattr(self, name, getattr(self, name) + n)


def _step(counts: SweepCounts, lock: threading.Lock, progress: Progress, n: int) -> None:
    with lock:  # one progress call at a time, in order
        counts.add(done=n)
        progress(counts.done, counts.total)


Doomed = tuple[str, int]  # a chunk id, and its position in the run's listing of chunks/


class Sweeper:
    """Deletes doomed chunks that are still the versions the run's listing saw."""

    def __init__(
        self,
        store: BlobStore,
        timing: GcTiming,
        clock: Clock,
        pool: ThreadPoolExecutor,
        *,
        start: float,
        batch_size: int,
        parallel: int,
    ) -> None:
        self.store, self.timing, self.clock, self.pool = store, timing, clock, pool
        self.start = start
        self.batch_size = batch_size
        self.parallel = parallel

    def run(self, doomed: list[Doomed], counts: SweepCounts, progress: Progress, dry: bool) -> None:
        """Sweep ``doomed`` (sorted by id) in batches of one key folder each, a few
        batches at a time (each keeps its own window)."""
        lock = threading.Lock()

        def one(batch: list[Doomed]) -> None:
            self._batch(batch, counts, lambda n: _step(counts, lock, progress, n), dry)

        with ThreadPoolExecutor(self.parallel, thread_name_prefix="bbp-gc-sweep") as batches:
            list(batches.map(one, self._batches(doomed)))

    def _batch(
        self, batch: list[Doomed], counts: SweepCounts, step: Callable[[int], None], dry: bool
    ) -> None:
        queue = deque([(batch, 0)])
        while queue:
            part, tries = queue.popleft()
            asked = self.clock.now()
            infos = self._look(part)
            if self.clock.now() - asked <= self.timing.window:
                self._delete(part, infos, asked, counts, dry)
            elif len(part) > 1:
                half = len(part) // 2
                queue.extendleft([(part[half:], 0), (part[:half], 0)])
                continue
            elif tries + 1 < _SLOW_TRIES:
                queue.appendleft((part, tries + 1))
                continue
            else:  # even one look outlasts G: keep that chunk
                counts.add(kept=1)
            step(len(part))

    def _batches(self, doomed: list[Doomed]) -> list[list[Doomed]]:
        out: list[list[Doomed]] = []
        for _, group in itertools.groupby(doomed, key=lambda d: d[0][:2]):
            items = list(group)
            out.extend(
                items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)
            )
        return out

    def _look(self, batch: list[Doomed]) -> list[ObjectInfo | None]:
        """Each chunk's info if it is still the version written more than M before the
        run started; None if it is gone or was written again since."""
        keys = [ChunkId(cid).store_key for cid, _ in batch]
        span = batch[-1][1] - batch[0][1] + 1
        if span > _DENSE * len(batch) + _PAGE:
            found = dict(zip(keys, self.pool.map(self.store.head, keys), strict=True))
        else:
            found = self._listed(keys[0], keys[-1])
        elapsed = self.clock.now() - self.start  # after every answer: the safe side
        infos = [found.get(k) for k in keys]
        return [i if i and self.timing.collectable(i.age, elapsed) else None for i in infos]

    def _listed(self, first: str, last: str) -> dict[str, ObjectInfo | None]:
        folder = first.rsplit("/", 1)[0] + "/"
        out: dict[str, ObjectInfo | None] = {}
        for info in self.store.list(folder, start_after=first[:-1]):
            if info.key > last:
                break
            out[info.key] = info
        return out

    def _delete(
        self,
        batch: list[Doomed],
        infos: list[ObjectInfo | None],
        asked: float,
        counts: SweepCounts,
        dry: bool,
    ) -> None:
        doomed = [
            (cid, info) for (cid, _), info in zip(batch, infos, strict=True) if info is not None
        ]
        if doomed and not dry:
            self.store.delete_many(ChunkId(cid).store_key for cid, _ in doomed)
            if self.clock.now() - asked > 2 * self.timing.window:
                counts.add(late=len(doomed))
                log.warning(
                    "a GC delete of %d chunks answered more than %.2f s after its first "
                    "look at them: a writer refreshing one of them then may not notice "
                    "(verify recent checkpoints)",
                    len(doomed),
                    2 * self.timing.window,
                )
        freed = sum(info.size for _, info in doomed)
        counts.add(deleted=len(doomed), freed=freed, kept=len(batch) - len(doomed))
