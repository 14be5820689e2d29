"""Content-defined chunking (FastCDC 2020): equal content gives equal chunks wherever it
sits in a part, so an edit costs only the chunks around it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pyfastcdc


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkerParams:
    """Chunk size bounds and the gear seed; fixed per store so that workers dedup."""

    min_size: int
    avg_size: int
    max_size: int
    seed: int = 0


def chunks_of_bytes(data: bytes, params: ChunkerParams) -> Iterator[bytes]:
    """Yield the chunks of ``data`` (a single empty chunk is never yielded)."""
    if not data:
        return
    view = memoryview(data)
    for ch in _cdc(params).cut_buf(view):
        yield bytes(ch.data)


def chunks_of_file(path: str | os.PathLike[str], params: ChunkerParams) -> Iterator[bytes]:
    """Yield the chunks of a file, reading it in bounded pieces (no mmap, no full read),
    so memory stays at a few chunks whatever the file's size."""
    with open(path, "rb", buffering=0) as f:
        for ch in _cdc(params).cut_stream(f):
            # The view is only valid until the next chunk: copy it out.
            yield bytes(ch.data)


def _cdc(params: ChunkerParams) -> pyfastcdc.FastCDC:
    return pyfastcdc.FastCDC(
        params.avg_size, min_size=params.min_size, max_size=params.max_size, seed=params.seed
    )
