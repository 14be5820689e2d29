"""Reading parts back: in parallel, in order, with a bounded read-ahead window."""

from __future__ import annotations

import base64
import os
import secrets
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from bbp_dist_resume.errors import InvalidIdentifier, StoreError
from bbp_dist_resume.repository.manifest import CheckpointRecord, PartRef, inline_bytes
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
    """Stream a part to ``path``: a temporary file beside it, fsynced, then renamed."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            for data in iter_part(pool, codec, part, window):
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise StoreError(f"cannot write restored part to {str(path)!r}: {exc.strerror}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
