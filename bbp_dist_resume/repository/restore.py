"""Reading parts back: in parallel, in order, with a bounded read-ahead window."""

from __future__ import annotations

import base64
import os
import secrets
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from bbp_dist_resume.errors import InvalidIdentifier, StoreError
from bbp_dist_resume.repository.manifest import CheckpointRecord, ChunkRef, PartRef, inline_bytes
from bbp_dist_resume.repository.objects import ObjectCodec


def inline_part(data: bytes) -> PartRef:
    """A part small enough to live in the manifest itself."""
    return PartRef(size=len(data), inline=base64.b64encode(data).decode())


def select_parts(manifest: CheckpointRecord, names: list[str] | None) -> dict[str, PartRef]:
    """The named parts of a manifest (all when ``names`` is None)."""
    if names is None:
        return dict(manifest.parts)
    missing = [n for n in names if n not in manifest.parts]
    if missing:
        raise InvalidIdentifier("part name", missing[0], f"not in {manifest.checkpoint_id}")
    return {n: manifest.parts[n] for n in names}


def iter_part(
    pool: ThreadPoolExecutor, codec: ObjectCodec, part: PartRef, window: int
) -> Iterator[bytes | memoryview]:
    """Yield a part's chunks in order, fetching up to ``window`` ahead in parallel."""
    if part.inline is not None:
        yield inline_bytes(part)
        return
    pending: deque[Future[bytes | memoryview]] = deque()
    refs = iter(part.chunks)
    try:
        for ref in refs:
            pending.append(pool.submit(codec.get_chunk, ref))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()


def read_part(pool: ThreadPoolExecutor, codec: ObjectCodec, part: PartRef, window: int) -> bytes:
    """A whole part in memory."""
    return b"".join(iter_part(pool, codec, part, window))


def part_to_file(
    pool: ThreadPoolExecutor, codec: ObjectCodec, part: PartRef, path: Path, window: int
) -> None:
    """Restore a part to ``path``: a temporary file beside it, fsynced, then renamed.

    Each worker thread writes its chunk at its offset (``pwrite``), so fetching, checking
    and writing all run in parallel and the file is never held in memory.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _fill(pool, codec, part, fd, window)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        raise StoreError(f"cannot write restored part to {str(path)!r}: {exc.strerror}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def _fill(
    pool: ThreadPoolExecutor, codec: ObjectCodec, part: PartRef, fd: int, window: int
) -> None:
    if part.inline is not None:
        _pwrite_all(fd, inline_bytes(part), 0)
        return
    pending: deque[Future[None]] = deque()
    offset = 0
    try:
        for ref in part.chunks:
            pending.append(pool.submit(_fetch_at, codec, ref, fd, offset))
            offset += ref.size
            if len(pending) >= window:
                pending.popleft().result()
        while pending:
            pending.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()
        wait(pending)  # no write may land after the file is closed


def _fetch_at(codec: ObjectCodec, ref: ChunkRef, fd: int, offset: int) -> None:
    _pwrite_all(fd, codec.get_chunk(ref), offset)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
