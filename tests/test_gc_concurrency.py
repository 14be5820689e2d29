"""Garbage collection in a loop while writers commit checkpoints that reuse the same
chunks again and again and retention removes old ones, on both stores; then every
checkpoint left must deep-verify, and the garbage older than the margin must be gone.

Chunks go in and out of use in phases: a block is used for a while, then by no kept
checkpoint for longer than the margin (the GC frees it, unless a pinned checkpoint
still names it), then used again, so writers meet old unreferenced chunks, refresh
them, and race GC deletes of them.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bbp_dist_resume import CheckpointConfig, CheckpointMeta, Repository, open_repository
from bbp_dist_resume.errors import CommitTooLate
from bbp_dist_resume.repository import CheckpointRecord
from bbp_dist_resume.repository.chunkid import ChunkId
from bbp_dist_resume.repository.gc import MarkCache, collect_garbage

MARGIN = 5.0
RUN_SECONDS = 24.0
SOAK_SECONDS = 180.0  # make soak: about 25 phases of chunk reuse, hundreds of GC runs
PHASE_SECONDS = 7.0
WRITERS = 4
BLOCK = 20_000  # one chunk: under chunk_min_size
BLOCKS = [random.Random(i).randbytes(BLOCK) for i in range(18)]
PHASES = [BLOCKS[0:9], BLOCKS[9:18]]
OWNER = "b" * 32


@pytest.fixture(params=["local", "s3"])
def cfg(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointConfig:
    url = (
        f"file://{tmp_path}/store"
        if request.param == "local"
        else request.getfixturevalue("s3_url")
    )
    return CheckpointConfig(
        store_url=url,
        gc_safety_margin=MARGIN,
        chunk_min_size=32 << 10,
        chunk_avg_size=64 << 10,
        chunk_max_size=256 << 10,
        enable_compression=False,
    )


@pytest.fixture
def repos(cfg: CheckpointConfig) -> Iterator[list[Repository]]:
    opened = [open_repository(None, cfg) for _ in range(WRITERS + 2)]
    yield opened
    for repo in opened:
        repo.close()


def meta(worker: str, seq: int) -> CheckpointMeta:
    return CheckpointMeta(
        operation_id="op", worker_id=worker, seq=seq, owner_token=OWNER, fence=1, stage="s"
    )


class Writer(threading.Thread):
    """Commits checkpoints of blocks of the current phase; keeps its newest and every
    fifth of the first phase (pinned), deleting the others as retention would."""

    def __init__(self, repo: Repository, n: int, deadline: float, started: float) -> None:
        super().__init__(name=f"writer-{n}")
        self.repo, self.worker, self.deadline, self.started = repo, f"w{n}", deadline, started
        self.rng = random.Random(100 + n)
        self.committed: list[CheckpointRecord] = []
        self.pinned: set[int] = set()
        self.broken: list[str] = []
        self.too_late = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            seq = 1
            while time.monotonic() < self.deadline:
                if self._one(seq):
                    self._retain(seq)
                    seq += 1
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _one(self, seq: int) -> bool:
        phase = int((time.monotonic() - self.started) / PHASE_SECONDS) % len(PHASES)
        parts = {f"p{i}": b for i, b in enumerate(self.rng.sample(PHASES[phase], 3))}
        manifest = self.repo.write(parts, meta(self.worker, seq))
        time.sleep(self.rng.uniform(0, 0.3))  # in flight: uploaded, not yet committed
        try:
            self.committed.append(self.repo.commit(manifest))
        except CommitTooLate:
            self.too_late += 1  # the machine was too slow: nothing written, try again
            return False
        if phase == 0 and seq % 5 == 0:
            self.pinned.add(seq)
        return True

    def _retain(self, newest: int) -> None:
        old = newest - 1
        if old < 1 or old in self.pinned:
            return
        # Checked just before retention removes it, so that a checkpoint damaged in its
        # short life is caught too, not only those left at the end.
        report = self.repo.verify(self.committed[-2])
        if not report.ok:
            self.broken.append(f"{report.checkpoint_id}: {report.summary()}")
        self.repo.delete_record("op", self.worker, old)


def seed_garbage(repo: Repository) -> set[str]:
    """Commit checkpoints of blocks no one else uses, then remove them: pure garbage."""
    ids: set[str] = set()
    for seq in (1, 2, 3):
        part = random.Random(1000 + seq).randbytes(BLOCK)
        m = repo.commit(repo.write({"g": part}, meta("seed", seq)))
        ids.update(c.id for p in m.parts.values() for c in p.chunks)
        repo.delete_record("op", "seed", seq)
    return ids


def surviving(repo: Repository) -> list[CheckpointRecord]:
    out = []
    for worker in repo.slots().get("op", []):
        out.extend(r for r in repo.records("op", worker) if isinstance(r, CheckpointRecord))
    return out


@pytest.mark.timeout(240)
def test_gc_in_a_loop_never_frees_a_chunk_of_a_committed_checkpoint(
    repos: list[Repository],
) -> None:
    gc_against_writers(repos, RUN_SECONDS)


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_soak_gc_in_a_loop_for_minutes_never_frees_a_chunk_of_a_committed_checkpoint(
    repos: list[Repository],
) -> None:
    gc_against_writers(repos, SOAK_SECONDS)


def gc_against_writers(repos: list[Repository], run_seconds: float) -> None:
    """GC in a loop against the writers for ``run_seconds``, then every check."""
    gc_repo, seed_repo, writer_repos = repos[0], repos[1], repos[2:]
    garbage = seed_garbage(seed_repo)
    started = time.monotonic()
    writers = [Writer(r, n, started + run_seconds, started) for n, r in enumerate(writer_repos)]
    for w in writers:
        w.start()
    cache, runs, deleted = MarkCache(), 0, 0
    while any(w.is_alive() for w in writers):
        deleted += collect_garbage(gc_repo, cache=cache).deleted
        runs += 1
    for w in writers:
        w.join()
        assert w.error is None, f"{w.name}: {w.error!r}"
        assert not w.broken, w.broken
    committed = [m for w in writers for m in w.committed]
    assert len(committed) >= 20 * WRITERS * run_seconds / RUN_SECONDS and runs >= 10
    kept = surviving(gc_repo)
    # Every checkpoint retention kept, and every committed one still listed, is whole.
    assert {m.checkpoint_id for m in committed} >= {
        m.checkpoint_id for m in kept if m.worker_id != "seed"
    }
    for m in kept:
        report = gc_repo.verify(m, deep=True)
        assert report.ok, f"{m.checkpoint_id}: {report.summary()}"
    assert not any(gc_repo.store.head(ChunkId(c).store_key) for c in garbage)
    assert deleted > len(garbage)
    # Writers stopped: once everything is older than the margin, exactly the referenced
    # chunks remain.
    while not all(gc_repo.gc_timing.collectable(i.age, 0) for i in gc_repo.store.list("chunks/")):
        time.sleep(0.2)  # ages come from the store's clock: nothing to wait on but it
    collect_garbage(gc_repo, cache=cache)
    named = {c.id for m in kept for p in m.parts.values() for c in p.chunks}
    assert {i.key for i in gc_repo.store.list("chunks/")} == {ChunkId(c).store_key for c in named}
