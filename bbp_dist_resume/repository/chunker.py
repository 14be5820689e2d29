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


def chunks_of_bytes(data: bytes, params: ChunkerParams) -> Iterator[memoryview]:
    """Yield views of the chunks of ``data`` (an empty chunk is never yielded)."""
    if not data:
        return
    view = memoryview(data)
    for ch in _cdc(params).cut_buf(view):
        yield ch.data


def chunks_of_file(path: str | os.PathLike[str], params: ChunkerParams) -> Iterator[memoryview]:
    """Yield views of the chunks of a file, reading it in bounded pieces (no mmap, no
    full read), so memory stays at a few chunks whatever the file's size.

    Each view is valid only until the next chunk is asked for: copy what you keep.
    """
    with open(path, "rb", buffering=0) as f:
        for ch in _cdc(params).cut_stream(f):
            yield ch.data


def _cdc(params: ChunkerParams) -> pyfastcdc.FastCDC:
    return pyfastcdc.FastCDC(
        params.avg_size, min_size=params.min_size, max_size=params.max_size, seed=params.seed
    )
