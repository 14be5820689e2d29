"""The pure parts of garbage collection and of the writer's side of its safety rule: the
timings and age math, evidence expiry, the commit bound (an injected clock, no sleeping),
sweep batching against the delete window, and the S3 age from response headers."""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from assertions import raises_exactly
from hypothesis import given
from hypothesis import strategies as st

from bbp_dist_resume import CheckpointConfig, CheckpointMeta
from bbp_dist_resume.blobstore import LocalBlobStore, ObjectInfo
from bbp_dist_resume.blobstore.s3 import store_age
from bbp_dist_resume.errors import CommitTooLate
from bbp_dist_resume.repository import Repository, open_on_store
from bbp_dist_resume.repository.chunkid import ChunkId
from bbp_dist_resume.repository.evidence import (
    AGE_SLACK,
    EvidenceCache,
    GcTiming,
    Verdict,
)
from bbp_dist_resume.repository.gc import collect_garbage
from bbp_dist_resume.repository.gclock import GC_STATE_KEY, gc_lock

margins = st.floats(min_value=4.0, max_value=1e7, allow_nan=False)
ages = st.floats(min_value=0.0, max_value=2e7, allow_nan=False)


class FakeClock:
    """Monotonic time that moves only when told (or when something sleeps)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


def test_the_timings_follow_from_the_margin() -> None:
    day = GcTiming.of(timedelta(hours=24))
    assert (day.margin, day.fresh, day.bound, day.window, day.settle) == (
        86400.0,
        43200.0,
        21600.0,
        1.0,
        3.0,
    )
    small = GcTiming.of(4)
    assert (small.fresh, small.bound, small.window) == (2.0, 1.0, 0.1)
    assert small.settle == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("age", "verdict"),
    [(None, Verdict.REFRESH), (0.0, Verdict.SETTLE), (3.9, Verdict.SETTLE), (4.0, Verdict.FRESH),
     (43198.9, Verdict.FRESH), (43199.0, Verdict.REFRESH), (1e9, Verdict.REFRESH)],
)  # fmt: skip
def test_a_heads_age_decides_whether_a_writer_may_rely_on_the_chunk(
    age: float | None, verdict: Verdict
) -> None:
    assert GcTiming.of(86400).head_verdict(age) is verdict


@given(margin=margins, age=ages, lag=st.floats(min_value=0.0, max_value=1.0))
def test_a_version_a_writer_relies_on_is_not_collectable_until_after_its_commit(
    margin: float, age: float, lag: float
) -> None:
    timing = GcTiming.of(margin)
    if timing.head_verdict(age) is Verdict.REFRESH:
        return
    # The true age is within AGE_SLACK of what the writer's HEAD showed; the commit comes
    # at most BOUND later; a GC's listing or HEAD then shows it within AGE_SLACK again.
    seen_by_gc = age + 2 * AGE_SLACK + lag * timing.bound
    assert not timing.collectable(seen_by_gc, 0.0)


@given(margin=margins, age=ages, elapsed=st.floats(min_value=0.0, max_value=1e6))
def test_a_sweep_deletes_only_versions_older_than_the_margin_at_the_runs_start(
    margin: float, age: float, elapsed: float
) -> None:
    timing = GcTiming.of(margin)
    written_before_start = age - elapsed  # by the store's clock, up to AGE_SLACK off
    if timing.collectable(age, elapsed):
        assert written_before_start - AGE_SLACK > margin
    assert not timing.collectable(None, elapsed)


@given(margin=margins, age=ages, answered=st.floats(min_value=0.0, max_value=1e6))
def test_a_young_version_is_checked_a_settle_delay_after_its_latest_possible_write(
    margin: float, age: float, answered: float
) -> None:
    timing = GcTiming.of(margin)
    latest_write = min(answered, answered - age + AGE_SLACK)
    assert timing.settled_at(age, answered) == pytest.approx(latest_write + timing.settle)
    assert timing.written_at(age, answered) <= latest_write


@given(margin=margins, written=st.floats(0, 1e6), later=st.floats(0, 1e7))
def test_evidence_expires_after_fresh(margin: float, written: float, later: float) -> None:
    cache = EvidenceCache(GcTiming.of(margin))
    cache.note_written("c" * 64, written, written)
    assert cache.is_fresh("c" * 64, written + later) == (later < margin / 2)
    assert not cache.is_fresh("d" * 64, written)


def test_slot_reuse_is_evidence_only_for_the_slots_next_seq() -> None:
    cache = EvidenceCache(GcTiming.of(60))
    cache.note_committed("op", "w0", 4, {"a" * 64})
    assert cache.reusable("op", "w0", 5) == {"a" * 64}
    assert cache.reusable("op", "w0", 6) == frozenset()  # a takeover came in between
    assert cache.reusable("op", "w1", 5) == frozenset()


def meta(seq: int, worker: str = "w0") -> CheckpointMeta:
    return CheckpointMeta(
        operation_id="op", worker_id=worker, seq=seq, owner_token="a" * 32, fence=1, stage="s"
    )


def clocked_repo(tmp_path: Path, clock: FakeClock) -> Repository:
    cfg = CheckpointConfig(
        store_url=f"file://{tmp_path}/s", gc_safety_margin=8, inline_threshold=64
    )
    return open_on_store(LocalBlobStore(tmp_path / "s"), cfg, clock=clock)


def test_a_commit_too_long_after_the_first_dedup_decision_is_refused(tmp_path: Path) -> None:
    clock = FakeClock()
    repo = clocked_repo(tmp_path, clock)
    slow = repo.write({"d": os.urandom(5000)}, meta(1))
    clock.t += repo.gc_timing.bound + 0.01  # 2 s with an 8 s margin
    err = raises_exactly(CommitTooLate, lambda: repo.commit(slow))
    assert err.retryable and "op/w0/1" in str(err)
    assert repo.latest_seq("op", "w0") == 0  # nothing written
    prompt = repo.write({"d": os.urandom(5000)}, meta(1))
    clock.t += repo.gc_timing.bound
    assert repo.commit(prompt) == prompt


class SleepCounter(FakeClock):
    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        super().sleep(seconds)


def test_young_chunks_are_settled_only_when_a_gc_acted_during_the_write(tmp_path: Path) -> None:
    clock = SleepCounter()
    first, second = clocked_repo(tmp_path, clock), clocked_repo(tmp_path, clock)
    data = os.urandom(5000)
    first.commit(first.write({"d": data}, meta(1)))
    # Another process relies on the chunk just written: young, so settle-worthy; but no
    # GC ever ran (no state marker), so the write returns without waiting.
    second.commit(second.write({"d": data}, meta(1, "w1")))
    assert clock.slept == []
    # A GC that deletes marks the store running: a write in that time waits and checks.
    third = clocked_repo(tmp_path, clock)
    with gc_lock(third.store):
        third.commit(third.write({"d": data}, meta(1, "w2")))
    assert clock.slept and max(clock.slept) > 0
    # Once the GC is idle again and stays so across a write, no wait again.
    clock.slept.clear()
    fourth = clocked_repo(tmp_path, clock)
    fourth.commit(fourth.write({"d": data}, meta(1, "w3")))
    assert clock.slept == []


def test_a_gc_that_died_running_leaves_writers_settling(tmp_path: Path) -> None:
    clock = SleepCounter()
    first = clocked_repo(tmp_path, clock)
    data = os.urandom(5000)
    first.commit(first.write({"d": data}, meta(1)))
    first.store.put(GC_STATE_KEY, b"running deadbeef")  # a run killed mid-sweep
    second = clocked_repo(tmp_path, clock)
    second.commit(second.write({"d": data}, meta(1, "w1")))
    assert clock.slept and max(clock.slept) > 0


def test_only_manifests_this_repository_wrote_commit_with_chunks(tmp_path: Path) -> None:
    clock = FakeClock()
    writer, other = clocked_repo(tmp_path, clock), clocked_repo(tmp_path, clock)
    foreign = writer.write({"d": os.urandom(5000)}, meta(1))
    raises_exactly(CommitTooLate, lambda: other.commit(foreign))
    inline = writer.write({"s": b"small"}, meta(1))
    assert other.commit(inline) == inline  # no chunks: nothing a GC could free


class TimedStore(LocalBlobStore):
    """HEADs and deletes take ``head_cost`` / ``delete_cost`` seconds of a fake clock."""

    def __init__(self, root: Path, clock: FakeClock, head_cost: float, delete_cost: float) -> None:
        super().__init__(root)
        self.clock, self.head_cost, self.delete_cost = clock, head_cost, delete_cost
        self.deletes: list[int] = []

    def head(self, key: str) -> ObjectInfo | None:
        self.clock.t += self.head_cost
        return super().head(key)

    def delete_many(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if all(k.startswith("chunks/") for k in keys):  # not the GC lock's own delete
            self.deletes.append(len(keys))
            self.clock.t += self.delete_cost
        super().delete_many(keys)


def old_chunks(store: LocalBlobStore, n: int) -> list[str]:
    keys = [ChunkId.parse(f"ab{i:062x}").store_key for i in range(n)]  # one folder
    for k in keys:
        store.put(k, b"x")
        path = store.root / k
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime - 10_000))
    return keys


@pytest.mark.parametrize(
    ("head_cost", "delete_cost", "sizes", "deleted", "late"),
    [
        (0.001, 0.0, [16, 16, 8], 40, 0),  # 16 HEADs take 0.016 s: within G = 0.1 s
        (0.01, 0.0, [8] * 5, 40, 0),  # 16 take 0.16 s: halved until 8 (0.08 s) fit
        (0.2, 0.0, [], 0, 0),  # one HEAD outlasts G: nothing is deleted
        (0.001, 0.3, [16, 16, 8], 40, 40),  # deletes answered after 2G: reported late
    ],
)
def test_the_sweep_sends_each_delete_within_the_window_of_its_first_head(
    tmp_path: Path,
    head_cost: float,
    delete_cost: float,
    sizes: list[int],
    deleted: int,
    late: int,
) -> None:
    clock = FakeClock()
    store = TimedStore(tmp_path / "s", clock, 0.0, delete_cost)
    repo = open_on_store(store, CheckpointConfig(store_url=f"file://{tmp_path}/s"))
    keys = old_chunks(store, 40)
    store.head_cost, store.deletes = head_cost, []  # the open's probe deleted its key
    seen: list[tuple[int, int]] = []
    report = collect_garbage(
        repo,
        margin=4,
        clock=clock,
        batch_size=16,
        concurrency=1,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert store.deletes == sizes
    assert (report.deleted, report.kept, report.late_deletes) == (deleted, 40 - deleted, late)
    assert sum(store.head(k) is None for k in keys) == deleted
    assert seen[-1] == (40, 40) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_the_s3_age_is_the_servers_date_minus_last_modified() -> None:
    modified = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert store_age({"date": "Fri, 02 Jan 2026 03:04:15 GMT"}, modified) == 10.0
    assert store_age({"date": "Fri, 02 Jan 2026 03:04:00 GMT"}, modified) == 0.0  # skew
    assert store_age({}, modified) is None
    assert store_age({"date": "not a date"}, modified) is None
    assert store_age({"date": "Fri, 02 Jan 2026 03:04:15 GMT"}, None) is None
    naive = modified.replace(tzinfo=None)
    assert store_age({"date": "Fri, 02 Jan 2026 03:04:15 GMT"}, naive) is None


def test_a_sparse_range_is_looked_at_with_heads_and_only_old_garbage_goes(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "s")
    repo = open_on_store(store, CheckpointConfig(store_url=f"file://{tmp_path}/s"))
    young = [ChunkId.parse(f"ab{i:062x}").store_key for i in range(1, 1201)]
    for k in young:
        store.put(k, b"young")
    old = [ChunkId.parse(f"ab{i:062x}").store_key for i in (0, 5000)]
    for k in old:  # one before and one after the young ones: a span of 1,202 keys
        store.put(k, b"old")
        os.utime(store.root / k, (0, (store.root / k).stat().st_mtime - 10_000))
    report = collect_garbage(repo, margin=4)
    assert (report.chunks_seen, report.candidates, report.deleted) == (1202, 2, 2)
    assert all(store.head(k) is None for k in old) and all(store.head(k) for k in young)
