"""``ChunkUploader``: the parallel, deduplicating upload of a part's chunks.

A write hands each part's chunks to ``upload`` as the chunker cuts them. A chunk with
evidence that its stored version is young, or that the slot's last commit names, is not
sent again; one that another write is uploading right now is waited for, not skipped;
any other is sealed and stored by a pool thread through ``Freshness`` (which makes it
safe against a concurrent garbage collection). At most concurrency + 2 chunks are in
flight at a time, so memory stays near concurrency x chunk size.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from bbp_dist_resume.repository.chunkid import ChunkId
from bbp_dist_resume.repository.evidence import (
    ChunkSource,
    Clock,
    EvidenceCache,
    Outcome,
    Verdict,
    WriteState,
)
from bbp_dist_resume.repository.freshness import Freshness
from bbp_dist_resume.repository.manifest import ChunkRef, PartRef
from bbp_dist_resume.repository.objects import ObjectCodec
from bbp_dist_resume.repository.stats import StatsCounter


class ChunkUploader:
    """Uploads the chunks of a repository's writes, each chunk id at most once at a time."""

    def __init__(
        self,
        codec: ObjectCodec,
        fresh: Freshness,
        *,
        evidence: EvidenceCache,
        clock: Clock,
        stats: StatsCounter,
        pool: ThreadPoolExecutor,
        concurrency: int,
    ) -> None:
        self._codec = codec
        self._fresh = fresh
        self._evidence = evidence
        self._clock = clock
        self._stats = stats
        self._pool = pool
        self._concurrency = concurrency
        self._inflight: dict[str, Future[Outcome]] = {}
        self._inflight_lock = threading.Lock()

    def upload(
        self, chunks: Iterator[memoryview], write: WriteState, part: bytes | Path
    ) -> PartRef:
        """Upload one part's chunks, as they are cut, and return the part's chunk list.

        Args:
            chunks: the part's chunks, in order (each view is valid until the next one).
            write: the write's dedup bookkeeping; chunks that must be settled go there.
            part: the part itself, from which a chunk is read again when it must be.

        Returns:
            The part's size and chunk references.

        Raises:
            StoreError: an upload failed (chunks already written stay, unreferenced).
        """
        # At most concurrency + 2 chunks in flight, so memory is bounded by the chunk size.
        window = threading.BoundedSemaphore(self._concurrency + 2)
        waits: list[tuple[Future[Outcome], str, ChunkSource]] = []
        refs: list[ChunkRef] = []
        offset = 0
        try:
            for view in chunks:
                if any(f.done() and f.exception() for f, _, _ in waits[-4:]):
                    break  # an upload failed: stop cutting, report it below
                cid = self._codec.chunk_id(view)
                refs.append(ChunkRef(id=cid.hex, size=len(view)))
                self._stats.add_chunk(len(view))
                fut = self._schedule(cid, view, window, write)
                if fut is not None:
                    waits.append((fut, cid.hex, ChunkSource(part, offset, len(view))))
                offset += len(view)
        finally:
            wait([f for f, _, _ in waits])
        for fut, cid_hex, source in waits:
            # The first upload failure, if any; else what the chunk still needs.
            write.must_settle(cid_hex, fut.result(), source)
        return PartRef(size=sum(r.size for r in refs), chunks=tuple(refs))

    def _schedule(
        self, cid: ChunkId, view: memoryview, window: threading.BoundedSemaphore, write: WriteState
    ) -> Future[Outcome] | None:
        """Start uploading ``cid`` unless there is evidence it is stored and young (or it
        is in the slot's last commit); return what to wait for.

        A chunk another write is uploading right now is waited for, not skipped: a
        manifest must never commit before every chunk it names is durable.
        """
        now = self._clock.now()
        write.decided(now)
        if cid.hex in write.reuse or self._evidence.is_fresh(cid.hex, now):
            self._stats.add_dedup()
            return None
        with self._inflight_lock:
            running = self._inflight.get(cid.hex)
            if running is not None:
                self._stats.add_dedup()
                return running
            done: Future[Outcome] = Future()
            self._inflight[cid.hex] = done
        window.acquire()
        # The view dies with the next chunk, so copy it now, exactly once: stored as is,
        # it becomes the blob; else the worker thread compresses or seals the copy.
        sealed = self._codec.plain
        box = [self._codec.seal_chunk(cid, view) if sealed else bytes(view)]
        probable = self._evidence.is_probable(cid.hex)
        task = self._pool.submit(self._put_chunk, cid, box, sealed, len(view), probable)
        task.add_done_callback(lambda t: self._finish(cid, t, done, window))
        return done

    def _put_chunk(
        self, cid: ChunkId, box: list[bytes], sealed: bool, size: int, probable: bool
    ) -> Outcome:
        # Taken out of its box so that the plaintext is freed once sealed, not held by
        # the executor's work item for as long as the upload takes.
        payload = box.pop()
        blob = payload if sealed else self._codec.seal_chunk(cid, payload)
        del payload
        outcome = self._fresh.store_chunk(cid.store_key, blob, probable=probable)
        # A refused create-only PUT sends no body (Expect: 100-continue): count what was.
        self._stats.add_upload(outcome.sent, outcome.created, size)
        return outcome

    def _finish(
        self,
        cid: ChunkId,
        task: Future[Outcome],
        done: Future[Outcome],
        window: threading.BoundedSemaphore,
    ) -> None:
        window.release()
        exc = task.exception()
        with self._inflight_lock:
            self._inflight.pop(cid.hex, None)
        if exc is not None:
            done.set_exception(exc)
            return
        outcome = task.result()
        if outcome.verdict is not Verdict.SETTLE:  # settled ones count once checked
            self._evidence.note_written(cid.hex, outcome.written, self._clock.now())
        done.set_result(outcome)
