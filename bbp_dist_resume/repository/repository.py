"""``Repository``: checkpoints over a blob store.

``write`` cuts parts into content-defined chunks and uploads, in parallel, only the chunks
the store lacks; ``commit`` then writes the manifest as the checkpoint's create-only commit
record, the commit point of DESIGN.md. ``takeover`` claims the next seq for a new owner so
no earlier owner can commit again. ``read``, ``restore_part`` and ``verify`` read back,
verifying every chunk.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from bbp_dist_resume.blobstore import BlobStore
from bbp_dist_resume.errors import CommitConflict, IntegrityError, InvalidCheckpoint, ObjectNotFound
from bbp_dist_resume.ids import check_id
from bbp_dist_resume.repository import restore
from bbp_dist_resume.repository.chunker import ChunkerParams, chunks_of_bytes, chunks_of_file
from bbp_dist_resume.repository.chunkid import ChunkId
from bbp_dist_resume.repository.manifest import (
    CheckpointRecord,
    ChunkRef,
    PartRef,
    TakeoverRecord,
    new_token,
    record_key,
    record_prefix,
    utcnow,
)
from bbp_dist_resume.repository.meta import CheckpointMeta
from bbp_dist_resume.repository.objects import ObjectCodec
from bbp_dist_resume.repository.stats import RepositoryStats, StatsCounter
from bbp_dist_resume.repository.verify import VerifyReport, verify_manifest

Part = bytes | os.PathLike[str]
_TAKEOVER_ATTEMPTS = 20
_KNOWN_CAP = 2_000_000  # chunk ids remembered as present (about 200 MB at the cap)


@dataclass(frozen=True, slots=True, kw_only=True)
class RepositoryOptions:
    """The parts of the config the repository acts on."""

    concurrency: int
    chunker: ChunkerParams
    inline_threshold: int


class Repository:
    """Content-addressed checkpoints of many operations and workers in one store."""

    def __init__(self, store: BlobStore, codec: ObjectCodec, options: RepositoryOptions) -> None:
        self._store = store
        self._codec = codec
        self._opt = options
        self._pool = ThreadPoolExecutor(options.concurrency, thread_name_prefix="bbp-repo")
        self._known: set[str] = set()
        self._inflight: dict[str, Future[None]] = {}
        self._known_lock = threading.Lock()
        self._stats = StatsCounter()

    @property
    def store(self) -> BlobStore:
        return self._store

    @property
    def encrypted(self) -> bool:
        return self._codec.encrypted

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
        """
        # Every part is checked before the first byte is uploaded.
        checked = {check_id(name, "part name"): _check_part(part) for name, part in parts.items()}
        refs = {name: self._write_part(part) for name, part in checked.items()}
        return meta.manifest(refs, write_id=new_token())

    def _write_part(self, part: bytes | Path) -> PartRef:
        if isinstance(part, Path):
            if part.stat().st_size > self._opt.inline_threshold:
                return self._upload(chunks_of_file(part, self._opt.chunker))
            part = part.read_bytes()
        if len(part) <= self._opt.inline_threshold:
            self._stats.add_inline(len(part))
            return restore.inline_part(part)
        return self._upload(chunks_of_bytes(part, self._opt.chunker))

    def _upload(self, chunks: Iterator[memoryview]) -> PartRef:
        # At most concurrency + 2 chunks in flight, so memory is bounded by the chunk size.
        window = threading.BoundedSemaphore(self._opt.concurrency + 2)
        waits: list[Future[None]] = []
        refs: list[ChunkRef] = []
        try:
            for view in chunks:
                if any(f.done() and f.exception() for f in waits[-4:]):
                    break  # an upload failed: stop cutting, report it below
                cid = self._codec.chunk_id(view)
                refs.append(ChunkRef(id=cid.hex, size=len(view)))
                self._stats.add_chunk(len(view))
                fut = self._schedule(cid, view, window)
                if fut is not None:
                    waits.append(fut)
        finally:
            wait(waits)
        for fut in waits:
            fut.result()  # the first upload failure, if any
        return PartRef(size=sum(r.size for r in refs), chunks=tuple(refs))

    def _schedule(
        self, cid: ChunkId, view: memoryview, window: threading.BoundedSemaphore
    ) -> Future[None] | None:
        """Start uploading ``cid`` unless it is known present; return what to wait for.

        A chunk another write is uploading right now is waited for, not skipped: a
        manifest must never commit before every chunk it names is durable.
        """
        with self._known_lock:
            if cid.hex in self._known:
                self._stats.add_dedup()
                return None
            running = self._inflight.get(cid.hex)
            if running is not None:
                self._stats.add_dedup()
                return running
            done: Future[None] = Future()
            self._inflight[cid.hex] = done
        window.acquire()
        # The view dies with the next chunk, so copy it now, exactly once: stored as is,
        # it becomes the blob; else the worker thread compresses or seals the copy.
        sealed = self._codec.plain
        box = [self._codec.seal_chunk(cid, view) if sealed else bytes(view)]
        task = self._pool.submit(self._put_chunk, cid, box, sealed, len(view))
        task.add_done_callback(lambda t: self._settle(cid, t, done, window))
        return done

    def _put_chunk(self, cid: ChunkId, box: list[bytes], sealed: bool, size: int) -> None:
        # Taken out of its box so that the plaintext is freed once sealed, not held by
        # the executor's work item for as long as the upload takes.
        payload = box.pop()
        blob = payload if sealed else self._codec.seal_chunk(cid, payload)
        del payload
        created = self._store.put_if_absent(cid.store_key, blob)
        # A refused create-only PUT sends no body (Expect: 100-continue): count only new.
        self._stats.add_upload(len(blob) if created else 0, created, size)

    def _settle(
        self,
        cid: ChunkId,
        task: Future[None],
        done: Future[None],
        window: threading.BoundedSemaphore,
    ) -> None:
        window.release()
        exc = task.exception()
        with self._known_lock:
            self._inflight.pop(cid.hex, None)
            if exc is None:
                if len(self._known) >= _KNOWN_CAP:
                    self._known.clear()
                self._known.add(cid.hex)
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)

    def remember_chunks(self, manifest: CheckpointRecord) -> None:
        """Mark a manifest's chunks as present (they were read back or verified)."""
        with self._known_lock:
            for part in manifest.parts.values():
                self._known.update(c.id for c in part.chunks)

    # -- commit records ------------------------------------------------------------------

    def commit(self, manifest: CheckpointRecord) -> CheckpointRecord:
        """Write the manifest as the create-only commit record of its seq: the commit point.

        Raises:
            CommitConflict: the slot is taken (a newer owner took over, or the seq is used).
        """
        if not self._create_record(manifest):
            raise CommitConflict(manifest.operation_id, manifest.worker_id, manifest.seq)
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
        return "ours" if existing.write_id == manifest.write_id else "theirs"

    def takeover(
        self, operation_id: str, worker_id: str, *, owner_token: str, fence: int
    ) -> TakeoverRecord:
        """Claim the seq after the worker's last record for a new owner.

        From then on no earlier owner can commit: its next seq is taken. A lost race
        (another owner claimed the same seq) lists again and claims the next.
        """
        record_prefix(operation_id, worker_id)  # ids first: InvalidIdentifier
        for _ in range(_TAKEOVER_ATTEMPTS):
            seq = self.latest_seq(operation_id, worker_id) + 1
            record = _takeover_record(operation_id, worker_id, seq, owner_token, fence)
            if self._create_record(record):
                return record
        raise CommitConflict(operation_id, worker_id, seq)

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


def _takeover_record(
    operation_id: str, worker_id: str, seq: int, owner_token: str, fence: int
) -> TakeoverRecord:
    try:
        record = TakeoverRecord(
            version=1,
            operation_id=operation_id,
            worker_id=worker_id,
            seq=seq,
            owner_token=owner_token,
            fence=fence,
            write_id=new_token(),
            created_at=utcnow(),
        )
    except ValidationError as exc:
        err = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise InvalidCheckpoint(f"invalid takeover: {where}: {err['msg']}") from None
    return record.sealed()
