"""What the demo tells as it goes (:class:`DemoEvent`) and at the end (:class:`DemoReport`),
and the store accounting behind the report's byte counts."""

from __future__ import annotations

import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from bbp_dist_resume.repository import CheckpointRecord, ChunkId, Repository

_USERINFO_SECRET = re.compile(r"(://[^/@:?#]*:)[^@/?#]*@")
_HEAD_THREADS = 8


class DemoEventKind(StrEnum):
    """What a :class:`DemoEvent` is about."""

    SETUP = "setup"  # the store, the coordination backend, the reference output
    START = "start"  # processes started, leases taken, a leader elected
    PROGRESS = "progress"  # checkpoints committed, a worker done
    KILL = "kill"  # the crash the demo injects
    DETECT = "detect"  # the coordinator saw the expired lease and published a plan
    RESUME = "resume"  # a replacement resumed, or a survivor rolled back
    RECOVER = "recover"  # the replacement's first new checkpoint
    OUTPUT = "output"  # rank committed ranked.csv; the operation completed
    CHECK = "check"  # the output compared with the uncrashed run's
    WARNING = "warning"  # something the run recovers from by itself (a lost lease)


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoEvent:
    """One step of the demo, reported as it happens.

    Attributes:
        elapsed_s: seconds since ``run_demo`` started. kind: what it is about.
        message: one line for a person.
    """

    elapsed_s: float
    kind: DemoEventKind
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreBytes:
    """Byte counts of one operation's checkpoints, read from their manifests.

    Attributes:
        logical: every checkpoint's parts, added up (what a copy per checkpoint costs).
        stored: the distinct chunks they reference plus the parts inlined in manifests
            (plaintext, after dedup).
        stored_objects: the encoded size (compressed, encrypted) of those chunk objects.
        chunks: how many distinct chunks.
    """

    logical: int
    stored: int
    stored_objects: int
    chunks: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoReport:
    """The demo's summary; :meth:`to_dict` is its JSON form.

    Times are seconds. ``detection_time_s``: the kill to the coordinator's plan;
    ``recovery_time_s``: the kill to the replacement resumed; ``first_commit_time_s``:
    the kill to the replacement's first new checkpoint (None without a kill). Byte counts
    are those of :class:`StoreBytes`, plus ``uploaded_bytes`` that the worker processes
    sent (each reports its own; a killed one's last report counts). ``dedup_ratio`` =
    logical / stored.
    """

    operation_id: str
    store_url: str
    coord_url: str
    seed: int
    hosts: int
    workers: tuple[str, ...]
    wall_time_s: float
    checkpoints: int
    checkpoints_per_worker: dict[str, int]
    crashes_injected: int
    killed_worker: str | None
    killed_pid: int | None
    detection_time_s: float | None
    recovery_time_s: float | None
    first_commit_time_s: float | None
    resumed_from: str | None
    plan_generation: int | None
    rolled_back: tuple[str, ...]
    logical_bytes: int
    stored_bytes: int
    stored_object_bytes: int
    uploaded_bytes: int
    dedup_ratio: float
    output_checkpoint: str
    output_bytes: int
    output_sha256: str
    output_matches: bool
    work_dir: str

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able values (tuples become lists)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out


def redact_url(url: str) -> str:
    """``url`` with every password in it (``scheme://user:password@host``) shown as
    ``***``."""
    return _USERINFO_SECRET.sub(r"\1***@", url)


def store_bytes(repo: Repository, operation_id: str, workers: list[str]) -> StoreBytes:
    """Count the bytes of an operation's committed checkpoints from their manifests."""
    manifests = [
        r for w in workers for r in repo.records(operation_id, w) if isinstance(r, CheckpointRecord)
    ]
    chunks: dict[str, int] = {}
    inline = 0
    for manifest in manifests:
        for part in manifest.parts.values():
            if part.inline is not None:
                inline += part.size
            chunks.update((c.id, c.size) for c in part.chunks)
    return StoreBytes(
        logical=sum(m.logical_size for m in manifests),
        stored=inline + sum(chunks.values()),
        stored_objects=_object_bytes(repo, list(chunks)),
        chunks=len(chunks),
    )


def _object_bytes(repo: Repository, chunk_ids: list[str]) -> int:
    def size(chunk_id: str) -> int:
        info = repo.store.head(ChunkId.parse(chunk_id).store_key)
        return info.size if info is not None else 0

    with ThreadPoolExecutor(_HEAD_THREADS) as pool:
        return sum(pool.map(size, chunk_ids))


def count_checkpoints(repo: Repository, operation_id: str, workers: list[str]) -> Counter[str]:
    """Committed checkpoints per worker, from the store's commit records."""
    return Counter(
        w for w in workers for r in repo.records(operation_id, w) if r.kind == "checkpoint"
    )
