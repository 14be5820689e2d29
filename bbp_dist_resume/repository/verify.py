"""Checkpoint verification: quick (the record and every chunk present) or deep (every
chunk downloaded, decrypted, decompressed and re-hashed)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bbp_dist_resume.blobstore import BlobStore
from bbp_dist_resume.errors import BBPError, ObjectNotFound
from bbp_dist_resume.repository.chunkid import ChunkId
from bbp_dist_resume.repository.manifest import CheckpointRecord, ChunkRef, compute_root
from bbp_dist_resume.repository.objects import ObjectCodec


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """What a verification found.

    Attributes:
        checkpoint_id: the checkpoint checked; deep: whether chunks were read.
        chunks_checked: distinct chunks looked at.
        missing: ids of chunks not in the store.
        corrupt: ``(chunk id, reason)`` for chunks that failed to read back intact.
        problems: anything wrong with the record itself.
    """

    checkpoint_id: str
    deep: bool
    chunks_checked: int
    missing: tuple[str, ...] = ()
    corrupt: tuple[tuple[str, str], ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.problems)

    def summary(self) -> str:
        """One line naming what is wrong (the first object of each kind)."""
        if self.ok:
            return "ok"
        out = list(self.problems[:1])
        if self.missing:
            out.append(f"{len(self.missing)} chunks missing (first {self.missing[0]})")
        if self.corrupt:
            cid, why = self.corrupt[0]
            out.append(f"{len(self.corrupt)} chunks corrupt (first {cid}: {why})")
        return "; ".join(out)


def verify_manifest(
    pool: ThreadPoolExecutor,
    store: BlobStore,
    codec: ObjectCodec,
    manifest: CheckpointRecord,
    *,
    deep: bool,
) -> VerifyReport:
    """Check one manifest against the store."""
    problems = _record_problems(codec, manifest)
    refs = {c.id: c for part in manifest.parts.values() for c in part.chunks}
    check = _deep_check(codec) if deep else _quick_check(store)
    results = list(pool.map(check, refs.values()))
    missing = tuple(cid for cid, r in zip(refs, results, strict=True) if r == "missing")
    corrupt = tuple(
        (cid, r) for cid, r in zip(refs, results, strict=True) if r not in ("", "missing")
    )
    return VerifyReport(
        checkpoint_id=manifest.checkpoint_id,
        deep=deep,
        chunks_checked=len(refs),
        missing=missing,
        corrupt=corrupt,
        problems=tuple(problems),
    )


def _record_problems(codec: ObjectCodec, manifest: CheckpointRecord) -> list[str]:
    if manifest.root != compute_root(manifest):
        return ["the manifest's root hash does not match its body"]
    try:
        stored = codec.get_record(manifest.store_key)
    except BBPError as exc:
        return [f"commit record unreadable: {exc}"]
    if stored.root != manifest.root:
        return ["the stored commit record differs from this manifest"]
    return []


def _quick_check(store: BlobStore) -> Callable[[ChunkRef], str]:
    def check(ref: ChunkRef) -> str:
        try:
            return "" if store.head(ChunkId.parse(ref.id).store_key) else "missing"
        except BBPError as exc:
            return f"cannot check: {exc}"

    return check


def _deep_check(codec: ObjectCodec) -> Callable[[ChunkRef], str]:
    def check(ref: ChunkRef) -> str:
        try:
            codec.get_chunk(ref)
        except ObjectNotFound:
            return "missing"
        except BBPError as exc:
            return str(exc)
        return ""

    return check
