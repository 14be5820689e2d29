"""Chunk evidence: when a writer may skip uploading a chunk that may already be stored.

Garbage collection (``repository/gc.py``, where the safety argument is written down)
deletes a chunk that no commit record references once the store says it is older than
the safety margin M. A writer that deduplicates against such a chunk must therefore only
rely on chunks it has *evidence* were written recently, and must commit soon. This module
holds the pure part of that rule: the timings derived from M, the verdict on a stored
chunk's age, and the per-process evidence cache. ``freshness`` does the I/O.

Nouns:
    M: ``gc_safety_margin``. FRESH = M/2: evidence expires after it. BOUND = M/4: a
        write commits within it of its first dedup decision. G = min(1 s, M/40): a GC
        sends a batch's delete within G of the batch's first HEAD, and the delete is
        answered within 2G of it. SETTLE = 3G: how long a writer waits after (re)writing
        a chunk before it checks that the chunk is still there.
    version: one write of a chunk's key (a create, or a refreshing ``put``).
    t_v: when a version was written, on this process's monotonic clock.
    evidence: (1) this process wrote the version less than FRESH ago; (2) a HEAD showed
        an age under FRESH; (3) the chunk is in the manifest this repository last
        committed for the same (operation, worker) slot, and the write is that slot's
        next seq.
    probable: an id read back from a manifest (a restore, a verify): probably stored,
        but of unknown age, so it is checked with a HEAD before being relied on.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Protocol

# S3 ages are whole seconds on both ends (Date and LastModified), so an age may be off by
# up to a second either way; every comparison below leans to the safe side by this much.
AGE_SLACK = 1.0
WINDOW_CAP = 1.0  # seconds: the GC's HEAD -> delete window G at most
_EVIDENCE_CAP = 2_000_000  # chunk ids remembered (about 200 MB at the cap)
_WRITES_CAP = 4096  # uncommitted writes whose start time is remembered


class Clock(Protocol):
    """Monotonic time and sleeping, injectable so tests need not wait for real."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (no-op when <= 0)."""
        ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` and ``time.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class Verdict(StrEnum):
    """What a HEAD's age means to a writer that wants to rely on the chunk."""

    FRESH = "fresh"  # evidence (2): rely on it
    SETTLE = "settle"  # young: a GC delete issued just before it was written may land yet
    REFRESH = "refresh"  # too old (or of unknown age) to rely on: write it again


@dataclass(frozen=True, slots=True)
class GcTiming:
    """The durations derived from the safety margin M (seconds)."""

    margin: float

    @classmethod
    def of(cls, margin: float | timedelta) -> GcTiming:
        """From seconds or a ``timedelta``."""
        seconds = margin.total_seconds() if isinstance(margin, timedelta) else float(margin)
        return cls(seconds)

    @property
    def fresh(self) -> float:
        return self.margin / 2

    @property
    def bound(self) -> float:
        return self.margin / 4

    @property
    def window(self) -> float:
        return min(WINDOW_CAP, self.margin / 40)

    @property
    def settle(self) -> float:
        # 2G bounds a GC delete after the HEAD before it; one G more for a scheduler's
        # hiccup between the writer's put and its clock reading, and clock-rate skew.
        return 3 * self.window

    def head_verdict(self, age: float | None) -> Verdict:
        """Judge a chunk a HEAD showed with ``age`` (store seconds, None: unknown)."""
        if age is None or age + AGE_SLACK >= self.fresh:
            return Verdict.REFRESH
        if age - AGE_SLACK < self.settle:
            return Verdict.SETTLE
        return Verdict.FRESH

    @staticmethod
    def written_at(age: float, asked: float) -> float:
        """The earliest t_v a version of ``age`` seen by a HEAD sent at ``asked`` may have."""
        return asked - age - AGE_SLACK

    def settled_at(self, age: float, answered: float) -> float:
        """When a version of ``age`` seen by a HEAD answered at ``answered`` is out of reach
        of any delete a GC issued on an older version: SETTLE after its latest t_v."""
        return answered - max(0.0, age - AGE_SLACK) + self.settle

    def collectable(self, age: float | None, elapsed: float) -> bool:
        """True if a version of ``age`` was written more than M before a GC run that
        started ``elapsed`` seconds ago (so it is older than M at the run's start)."""
        return age is not None and age - AGE_SLACK > self.margin + elapsed


Source = bytes | Path


@dataclass(frozen=True, slots=True)
class ChunkSource:
    """Where a chunk's plaintext is in the part being written, to write it again."""

    part: Source
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one chunk of a write was made safe to reference.

    Attributes:
        verdict: FRESH (relied on, nothing pending) or SETTLE (check it after ``until``).
        written: the version's t_v (earliest estimate), for the evidence cache.
        until: for SETTLE, when the check may run.
        sent: bytes sent; created: the version is new to the store.
    """

    verdict: Verdict
    written: float
    until: float = 0.0
    sent: int = 0
    created: bool = False


@dataclass(slots=True)
class WriteState:
    """One write's dedup bookkeeping: the chunks it may reuse from the slot's last commit
    (evidence 3), when it first relied on the store, and the chunks it must check before
    it returns."""

    reuse: frozenset[str] = frozenset()
    started: float | None = None
    # The store's GC state marker when the write began (``gclock``): unchanged and idle
    # at the end means no GC acted meanwhile, so nothing needs settling.
    gc_state: bytes | None = None
    settle: dict[str, tuple[float, float, ChunkSource]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def decided(self, now: float) -> None:
        """Note a dedup decision at ``now``; the first one starts the commit bound."""
        with self.lock:
            if self.started is None:
                self.started = now

    def must_settle(self, cid: str, outcome: Outcome, source: ChunkSource) -> None:
        if outcome.verdict is Verdict.SETTLE:
            with self.lock:
                self.settle[cid] = (outcome.until, outcome.written, source)


class EvidenceCache:
    """Per process: chunk versions written recently, probable ids, each slot's last
    commit, and when each uncommitted write started. Thread-safe."""

    def __init__(self, timing: GcTiming) -> None:
        self.timing = timing
        self._lock = threading.Lock()
        self._written: dict[str, float] = {}
        self._probable: set[str] = set()
        self._last: dict[tuple[str, str], tuple[int, frozenset[str]]] = {}
        self._writes: OrderedDict[str, float | None] = OrderedDict()

    def is_fresh(self, cid: str, now: float) -> bool:
        """Evidence (1) or (2): a version of ``cid`` written less than FRESH ago."""
        with self._lock:
            t_v = self._written.get(cid)
        return t_v is not None and now - t_v < self.timing.fresh

    def is_probable(self, cid: str) -> bool:
        with self._lock:
            return cid in self._probable

    def note_written(self, cid: str, t_v: float, now: float) -> None:
        """Record evidence that a version of ``cid`` was written at ``t_v``."""
        with self._lock:
            if len(self._written) >= _EVIDENCE_CAP:
                self._expire(now)
            if t_v > self._written.get(cid, float("-inf")):
                self._written[cid] = t_v

    def _expire(self, now: float) -> None:
        # Expired evidence is worth nothing: a chunk without any is written again.
        self._written = {c: t for c, t in self._written.items() if now - t < self.timing.fresh}
        if len(self._written) >= _EVIDENCE_CAP:
            self._written.clear()

    def note_probable(self, ids: set[str]) -> None:
        """Record ids read back from a manifest as probably stored (age unknown)."""
        with self._lock:
            if len(self._probable) + len(ids) > _EVIDENCE_CAP:
                self._probable.clear()
            self._probable.update(ids)

    def reusable(self, operation_id: str, worker_id: str, seq: int) -> frozenset[str]:
        """Evidence (3): the chunk ids of the slot's last commit by this repository, when
        ``seq`` directly follows it; else nothing."""
        with self._lock:
            last = self._last.get((operation_id, worker_id))
        return last[1] if last is not None and last[0] + 1 == seq else frozenset()

    def note_committed(self, operation_id: str, worker_id: str, seq: int, ids: set[str]) -> None:
        with self._lock:
            self._last[(operation_id, worker_id)] = (seq, frozenset(ids))

    def note_write(self, write_id: str, started: float | None) -> None:
        """Remember when an uncommitted write made its first dedup decision."""
        with self._lock:
            self._writes[write_id] = started
            while len(self._writes) > _WRITES_CAP:
                self._writes.popitem(last=False)

    def write_started(self, write_id: str) -> tuple[bool, float | None]:
        """``(known, started)`` of a write by its write id."""
        with self._lock:
            if write_id not in self._writes:
                return False, None
            return True, self._writes[write_id]
