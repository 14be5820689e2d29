"""Byte and chunk counters of a repository, for benchmarks, the CLI and statistics."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class RepositoryStats:
    """Cumulative counts since the repository was opened.

    Attributes:
        logical_bytes: bytes of parts written (before dedup and compression).
        chunks: chunks cut; chunks_deduplicated: of those, skipped as already present.
        chunks_uploaded: chunks sent; chunks_created: of those, new to the store.
        uploaded_bytes: encoded bytes sent over the wire.
        stored_bytes: plaintext bytes of the chunks new to the store (after dedup).
    """

    logical_bytes: int = 0
    chunks: int = 0
    chunks_deduplicated: int = 0
    chunks_uploaded: int = 0
    chunks_created: int = 0
    uploaded_bytes: int = 0
    stored_bytes: int = 0


class StatsCounter:
    """Thread-safe accumulator behind ``Repository.stats()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._v = {name: 0 for name in RepositoryStats.__dataclass_fields__}

    def _add(self, **deltas: int) -> None:
        with self._lock:
            for name, d in deltas.items():
                self._v[name] += d

    def add_inline(self, n: int) -> None:
        # An inline part is stored again in every manifest that carries it.
        self._add(logical_bytes=n, stored_bytes=n)

    def add_chunk(self, n: int) -> None:
        self._add(logical_bytes=n, chunks=1)

    def add_dedup(self) -> None:
        self._add(chunks_deduplicated=1)

    def add_upload(self, n: int, created: bool, plain: int) -> None:
        self._add(
            chunks_uploaded=1,
            chunks_created=int(created),
            uploaded_bytes=n,
            stored_bytes=plain if created else 0,
        )

    def snapshot(self) -> RepositoryStats:
        with self._lock:
            return RepositoryStats(**self._v)
