"""``Repository``: checkpoints over a blob store.

``write`` cuts parts into content-defined chunks and uploads, in parallel (``upload``),
only the chunks the store lacks (or holds but too old to rely on: ``freshness``);
``commit`` then writes the manifest as the checkpoint's create-only commit record, the
commit point of DESIGN.md.
``takeover`` claims the next seq for a new owner so no earlier owner can commit again.
``read``, ``restore_part`` and ``verify`` read back, verifying every chunk.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bbp_dist_resume.blobstore import BlobStore
from bbp_dist_resume.errors import CommitConflict, IntegrityError, InvalidCheckpoint, ObjectNotFound
from bbp_dist_resume.ids import check_id
from bbp_dist_resume.repository import restore
from bbp_dist_resume.repository.chunker import ChunkerParams, chunks_of_bytes, chunks_of_file
from bbp_dist_resume.repository.evidence import (
    Clock,
    EvidenceCache,
    GcTiming,
    MonotonicClock,
    WriteState,
)
from bbp_dist_resume.repository.freshness import Freshness, chunk_ids
from bbp_dist_resume.repository.manifest import (
    CheckpointRecord,
    PartRef,
    TakeoverRecord,
    new_token,
    record_key,
    record_prefix,
    takeover_record,
)
from bbp_dist_resume.repository.meta import CheckpointMeta
from bbp_dist_resume.repository.objects import ObjectCodec
from bbp_dist_resume.repository.stats import RepositoryStats, StatsCounter
from bbp_dist_resume.repository.upload import ChunkUploader
from bbp_dist_resume.repository.verify import VerifyReport, verify_manifest

Part = bytes | os.PathLike[str]
_TAKEOVER_ATTEMPTS = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class RepositoryOptions:
    """The parts of the config the repository acts on."""

    concurrency: int
    chunker: ChunkerParams
    inline_threshold: int
    gc_safety_margin: float = 86400.0


class Repository:
    """Content-addressed checkpoints of many operations and workers in one store."""

    def __init__(
        self,
        store: BlobStore,
        codec: ObjectCodec,
        options: RepositoryOptions,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._codec = codec
        self._opt = options
        self._pool = ThreadPoolExecutor(options.concurrency, thread_name_prefix="bbp-repo")
        self._clock = clock or MonotonicClock()
        self._evidence = EvidenceCache(GcTiming.of(options.gc_safety_margin))
        self._fresh = Freshness(store, codec, self._evidence, self._clock, self._pool)
        self._stats = StatsCounter()
        self._uploader = ChunkUploader(
            codec,
            self._fresh,
            evidence=self._evidence,
            clock=self._clock,
            stats=self._stats,
            pool=self._pool,
            concurrency=options.concurrency,
        )

    @property
    def store(self) -> BlobStore:
        return self._store

    @property
    def encrypted(self) -> bool:
        return self._codec.encrypted

    @property
    def gc_timing(self) -> GcTiming:
        """The safety margin this repository's writes honour, and what follows from it."""
        return self._evidence.timing

    def tune(self, *, compression_level: int | None, inline_threshold: int) -> None:
        """Change how later checkpoints are written (objects already stored keep theirs)."""
        self._codec.set_level(compression_level)
        self._opt = dataclasses.replace(self._opt, inline_threshold=inline_threshold)

    def stats(self) -> RepositoryStats:
        """Cumulative byte and chunk counts since this repository was opened."""
        return self._stats.snapshot()

    # -- writing -------------------------------------------------------------------------

    def write(self, parts: Mapping[str, Part], meta: CheckpointMeta) -> CheckpointRecord:
        """Upload the parts' missing chunks and return the checkpoint's manifest.

        Parts given as paths are streamed: memory stays near concurrency x chunk size.
        Nothing is visible as a checkpoint until :meth:`commit` writes the manifest.

        Raises:
            InvalidIdentifier: a part name or an id in ``meta`` is invalid.
            StoreError: an upload failed (chunks already written stay, unreferenced).
            CommitTooLate: refreshed chunks kept vanishing (garbage collections racing).
        """
        # Every part is checked before the first byte is uploaded.
        checked = {check_id(name, "part name"): _check_part(part) for name, part in parts.items()}
        write = WriteState(self._evidence.reusable(meta.operation_id, meta.worker_id, meta.seq))
        write.gc_state = self._fresh.gc_state()  # before the first dedup decision
        refs = {name: self._write_part(part, write) for name, part in checked.items()}
        self._fresh.settle(write)
        manifest = meta.manifest(refs, write_id=new_token())
        self._evidence.note_write(manifest.write_id, write.started)
        return manifest

    def _write_part(self, part: bytes | Path, write: WriteState) -> PartRef:
        if isinstance(part, Path):
            if part.stat().st_size > self._opt.inline_threshold:
                return self._uploader.upload(chunks_of_file(part, self._opt.chunker), write, part)
            part = part.read_bytes()
        if len(part) <= self._opt.inline_threshold:
            self._stats.add_inline(len(part))
            return restore.inline_part(part)
        return self._uploader.upload(chunks_of_bytes(part, self._opt.chunker), write, part)

    def remember_chunks(self, manifest: CheckpointRecord) -> None:
        """Mark a manifest's chunks as probably stored (they were read back or verified);
        their age is unknown, so a write checks them with a HEAD before relying on them."""
        self._evidence.note_probable({c.id for p in manifest.parts.values() for c in p.chunks})

    # -- commit records ------------------------------------------------------------------

    def commit(self, manifest: CheckpointRecord) -> CheckpointRecord:
        """Write the manifest as the create-only commit record of its seq: the commit point.

        Raises:
            CommitConflict: the slot is taken (a newer owner took over, or the seq is used).
            CommitTooLate: the write's first dedup decision is more than a quarter of the
                GC safety margin old; nothing was written.
        """
        ids = chunk_ids(manifest)
        self._fresh.check_bound(manifest.write_id, bool(ids), manifest.checkpoint_id)
        if not self._create_record(manifest):
            raise CommitConflict(manifest.operation_id, manifest.worker_id, manifest.seq)
        self._evidence.note_committed(manifest.operation_id, manifest.worker_id, manifest.seq, ids)
        return manifest

    def settle(self, manifest: CheckpointRecord) -> str:
        """After a commit whose outcome is unknown (an error after the request was sent):
        ``"ours"`` if it landed, ``"absent"`` if its seq is still free, ``"theirs"`` if
        another writer holds the seq. Raises ``StoreError`` when the store cannot tell."""
        try:
            existing = self._codec.get_record(manifest.store_key)
        except ObjectNotFound:
            return "absent"
        except IntegrityError:
            return "theirs"
        if existing.write_id != manifest.write_id:
            return "theirs"
        m = manifest
        self._evidence.note_committed(m.operation_id, m.worker_id, m.seq, chunk_ids(m))
        return "ours"

    def takeover(
        self, operation_id: str, worker_id: str, *, owner_token: str, fence: int
    ) -> TakeoverRecord:
        """Claim the seq after the worker's last record for a new owner.

        From then on no earlier owner can commit: its next seq is taken. A lost race
        (another owner claimed the same seq) lists again and claims the next. Refused
        (``CommitConflict``) when the last record's fence is not below ``fence``: a Redis
        failover can hand one fence out twice, and only the first owner may take over.
        """
        record_prefix(operation_id, worker_id)  # ids first: InvalidIdentifier
        for _ in range(_TAKEOVER_ATTEMPTS):
            seq = self.latest_seq(operation_id, worker_id) + 1
            record = takeover_record(operation_id, worker_id, seq, owner_token, fence)
            if seq > 1 and self._fence_at(operation_id, worker_id, seq - 1) >= record.fence:
                raise CommitConflict(operation_id, worker_id, seq)
            if self._create_record(record):
                return record
        raise CommitConflict(operation_id, worker_id, seq)

    def _fence_at(self, operation_id: str, worker_id: str, seq: int) -> int:
        try:
            return self.load_record(operation_id, worker_id, seq).fence
        except (ObjectNotFound, IntegrityError):
            return 0  # unreadable: no fence to compare (verification names the record)

    def _create_record(self, record: CheckpointRecord | TakeoverRecord) -> bool:
        if self._store.put_if_absent(record.store_key, self._codec.record_blob(record)):
            return True
        # Refused: either another writer's record, or our own retried request that landed.
        try:
            existing = self._codec.get_record(record.store_key)
        except IntegrityError:
            return False  # the slot holds something that is not ours, readable or not
        return existing.write_id == record.write_id

    def record_seqs(self, operation_id: str, worker_id: str) -> list[int]:
        """The seqs of a worker's commit records, ascending (names only, no reads)."""
        prefix = record_prefix(
            check_id(operation_id, "operation id"), check_id(worker_id, "worker id")
        )
        seqs = []
        for info in self._store.list(prefix):
            name = info.key[len(prefix) :]
            if len(name) == 10 and name.isdigit() and int(name) > 0:
                seqs.append(int(name))
        return seqs

    def slots(self) -> dict[str, list[str]]:
        """Every operation with commit records, and its workers that have some."""
        out: dict[str, set[str]] = {}
        for info in self._store.list("checkpoints/"):
            parts = info.key.split("/")
            if len(parts) == 4 and len(parts[3]) == 10 and parts[3].isdigit():
                out.setdefault(parts[1], set()).add(parts[2])
        return {op: sorted(ws) for op, ws in sorted(out.items())}

    def latest_seq(self, operation_id: str, worker_id: str) -> int:
        """The highest seq with a commit record, 0 when there is none."""
        seqs = self.record_seqs(operation_id, worker_id)
        return seqs[-1] if seqs else 0

    def load_record(
        self, operation_id: str, worker_id: str, seq: int
    ) -> CheckpointRecord | TakeoverRecord:
        """Read one commit record. Raises ``ObjectNotFound`` or an ``IntegrityError``."""
        return self._codec.get_record(record_key(operation_id, worker_id, seq))

    def records(self, operation_id: str, worker_id: str) -> list[CheckpointRecord | TakeoverRecord]:
        """Every commit record of a worker, by seq; records deleted meanwhile are skipped."""
        out = []
        for seq in self.record_seqs(operation_id, worker_id):
            try:
                out.append(self.load_record(operation_id, worker_id, seq))
            except ObjectNotFound:
                continue
        return out

    def delete_record(self, operation_id: str, worker_id: str, seq: int) -> None:
        """Delete one commit record (retention). Chunks are left to garbage collection."""
        self._store.delete_many([record_key(operation_id, worker_id, seq)])

    # -- reading -------------------------------------------------------------------------

    def read(self, manifest: CheckpointRecord, names: list[str] | None = None) -> dict[str, bytes]:
        """Return the parts' bytes (all, or those named), every chunk verified."""
        chosen = restore.select_parts(manifest, names)
        out = {
            name: restore.read_part(self._pool, self._codec, part, self._window())
            for name, part in chosen.items()
        }
        self.remember_chunks(manifest)
        return out

    def restore_part(
        self, manifest: CheckpointRecord, name: str, path: str | os.PathLike[str]
    ) -> None:
        """Write one part straight to ``path`` (atomically: temporary file, then rename)."""
        part = restore.select_parts(manifest, [name])[name]
        restore.part_to_file(self._pool, self._codec, part, Path(path), self._window())
        self.remember_chunks(manifest)

    def _window(self) -> int:
        return 2 * self._opt.concurrency

    def verify(self, manifest: CheckpointRecord, deep: bool = False) -> VerifyReport:
        """Check a checkpoint: quick (record and chunk presence) or deep (every chunk read,
        decrypted, decompressed and re-hashed)."""
        report = verify_manifest(self._pool, self._store, self._codec, manifest, deep=deep)
        if report.ok:
            self.remember_chunks(manifest)
        return report

    def close(self) -> None:
        """Stop the worker threads and close the store. Idempotent."""
        self._pool.shutdown(wait=True)
        self._store.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_part(part: object) -> bytes | Path:
    """A part as bytes or as the path of a readable regular file, else InvalidCheckpoint."""
    if isinstance(part, bytes | bytearray | memoryview):
        return bytes(part)
    if not isinstance(part, os.PathLike):
        raise InvalidCheckpoint(
            f"a part must be bytes or an os.PathLike file path, not {type(part).__name__}"
        )
    path = Path(part)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise InvalidCheckpoint(f"part file {str(path)!r} is not a readable regular file")
    return path
