"""``Freshness``: the writer's side of the garbage-collection safety rule (the I/O).

A chunk a write wants to reference is either uploaded or deduplicated. Deduplicating is
safe only with evidence that its stored version is young (``evidence``); otherwise the
chunk is written again (a *refresh*: content-addressed, so harmless). A version written
just now may still be hit by a GC delete issued on an older version just before, so
refreshed and very young chunks are *settled* before the write returns: after SETTLE,
each is HEADed, and one that vanished is written again — unless the store's GC state
marker shows that no GC deleted anything during the write (the common case: no wait).
At commit, a write whose first dedup decision is more than BOUND old is refused
(``CommitTooLate``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bbp_dist_resume.blobstore import BlobStore, ObjectInfo
from bbp_dist_resume.errors import CommitTooLate, InvalidCheckpoint, ObjectNotFound
from bbp_dist_resume.logs import get_logger
from bbp_dist_resume.repository.chunkid import ChunkId
from bbp_dist_resume.repository.evidence import (
    ChunkSource,
    Clock,
    EvidenceCache,
    Outcome,
    Verdict,
    WriteState,
)
from bbp_dist_resume.repository.gclock import GC_STATE_KEY, gc_idle
from bbp_dist_resume.repository.manifest import CheckpointRecord
from bbp_dist_resume.repository.objects import ObjectCodec

log = get_logger(__name__)
_SETTLE_ATTEMPTS = 4


class Freshness:
    """Writes chunks so that a concurrent garbage collection cannot free them."""

    def __init__(
        self,
        store: BlobStore,
        codec: ObjectCodec,
        evidence: EvidenceCache,
        clock: Clock,
        pool: ThreadPoolExecutor,
    ) -> None:
        self._store = store
        self._codec = codec
        self._evidence = evidence
        self._clock = clock
        self._pool = pool

    def store_chunk(self, key: str, blob: bytes, *, probable: bool) -> Outcome:
        """Make the chunk under ``key`` safe to reference: created, judged by its age, or
        refreshed. Called from the upload threads."""
        if probable:
            judged = self._judge(key, blob)
            if judged is not None:
                return judged
        asked = self._clock.now()
        if self._store.put_if_absent(key, blob):
            return Outcome(Verdict.FRESH, asked, sent=len(blob), created=True)
        # Refused: the chunk is there, but maybe old and about to be collected.
        judged = self._judge(key, blob)
        return judged if judged is not None else self._refresh(key, blob)

    def _judge(self, key: str, blob: bytes) -> Outcome | None:
        """HEAD the chunk: None if absent, else rely on it, settle it, or refresh it."""
        asked = self._clock.now()
        info = self._store.head(key)
        answered = self._clock.now()
        if info is None:
            return None
        timing = self._evidence.timing
        verdict = timing.head_verdict(info.age)
        if verdict is Verdict.REFRESH or info.age is None:
            return self._refresh(key, blob)
        written = timing.written_at(info.age, asked)
        if verdict is Verdict.SETTLE:
            return Outcome(Verdict.SETTLE, written, until=timing.settled_at(info.age, answered))
        return Outcome(Verdict.FRESH, written)

    def _refresh(self, key: str, blob: bytes) -> Outcome:
        asked = self._clock.now()
        self._store.put(key, blob)
        until = self._clock.now() + self._evidence.timing.settle
        return Outcome(Verdict.SETTLE, asked, until=until, sent=len(blob))

    def gc_state(self) -> bytes | None:
        """The store's GC state marker (``gclock``); None when no GC ever deleted."""
        try:
            return self._store.get(GC_STATE_KEY)
        except ObjectNotFound:
            return None

    def settle(self, state: WriteState) -> None:
        """Check the write's refreshed and young chunks once SETTLE has passed since they
        were written; write again (read anew from their parts) those a GC deleted.

        Skipped when no GC acted during the write: the GC state marker was idle when the
        write began and is unchanged now. A GC that deletes marks itself running before
        its first look and idle after its last delete landed, so a delete landing after
        one of this write's HEADs or refreshes belongs to a run that was active at some
        point of the write (the marker moved), or that started after it (its looks see
        the young versions and keep them).

        Raises:
            CommitTooLate: chunks kept vanishing (GCs racing this write again and again).
            StoreError: a HEAD or PUT failed.
        """
        if state.settle and gc_idle(state.gc_state) and self.gc_state() == state.gc_state:
            now = self._clock.now()
            for cid, (_, written, _) in state.settle.items():
                self._evidence.note_written(cid, written, now)
            return
        pending = dict(state.settle)
        for _ in range(_SETTLE_ATTEMPTS):
            if not pending:
                return
            self._clock.sleep(max(until for until, _, _ in pending.values()) - self._clock.now())
            keys = [ChunkId.parse(cid).store_key for cid in pending]
            infos = list(self._pool.map(self._store.head, keys))
            pending = self._after_check(pending, infos)
        raise CommitTooLate(
            f"{len(pending)} refreshed chunks kept vanishing (first {next(iter(pending))}): "
            "garbage collections raced this write; write it again"
        )

    def _after_check(
        self,
        pending: dict[str, tuple[float, float, ChunkSource]],
        infos: list[ObjectInfo | None],
    ) -> dict[str, tuple[float, float, ChunkSource]]:
        now = self._clock.now()
        vanished = []
        for (cid, (_, written, source)), info in zip(pending.items(), infos, strict=True):
            if info is None:
                vanished.append((cid, source))
            else:
                self._evidence.note_written(cid, written, now)
        if vanished:
            log.warning(
                "%d refreshed chunks were deleted by a GC: writing them again", len(vanished)
            )
        outcomes = self._pool.map(lambda item: self._rewrite(*item), vanished)
        return {
            cid: (o.until, o.written, source)
            for (cid, source), o in zip(vanished, outcomes, strict=True)
        }

    def _rewrite(self, cid_hex: str, source: ChunkSource) -> Outcome:
        cid = ChunkId.parse(cid_hex)
        return self._refresh(
            cid.store_key, self._codec.seal_chunk(cid, reread(self._codec, cid, source))
        )

    def check_bound(self, write_id: str, chunked: bool, checkpoint_id: str) -> None:
        """Refuse a commit too late after its write's first dedup decision.

        Raises:
            CommitTooLate: more than BOUND passed, or the write is not this repository's
                and references chunks (their age is unknown).
        """
        known, started = self._evidence.write_started(write_id)
        if not known:
            if chunked:
                raise CommitTooLate(
                    f"checkpoint {checkpoint_id} was not written by this repository, so "
                    "the age of its chunks is unknown: write it again"
                )
            return
        bound = self._evidence.timing.bound
        if started is not None and self._clock.now() - started > bound:
            raise CommitTooLate(
                f"checkpoint {checkpoint_id}: more than {bound:.1f} s (a quarter of "
                "gc_safety_margin) passed since its first chunk was deduplicated, so garbage "
                "collection may free chunks it relies on: write it again"
            )


def chunk_ids(manifest: CheckpointRecord) -> set[str]:
    """Every chunk id a manifest references."""
    return {c.id for part in manifest.parts.values() for c in part.chunks}


def reread(codec: ObjectCodec, cid: ChunkId, source: ChunkSource) -> bytes:
    """A chunk's plaintext from its part. Raises ``InvalidCheckpoint`` if it changed."""
    if isinstance(source.part, Path):
        with source.part.open("rb") as f:
            f.seek(source.offset)
            data = f.read(source.size)
    else:
        data = source.part[source.offset : source.offset + source.size]
    if codec.chunk_id(data) != cid:
        raise InvalidCheckpoint(f"part file changed while it was written (chunk {cid.short})")
    return data
