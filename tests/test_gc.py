"""Garbage collection over both stores (a local directory and SeaweedFS S3): what it
reclaims, what it keeps, and the writer's side of its safety rule.

The safety margin is 4 s here (the least the config takes), so "older than M" is reached
by waiting a few real seconds: ages come from the store's own clock.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from assertions import raises_exactly
from resume_helpers import preprobe

from bbp_dist_resume import CheckpointConfig, CheckpointMeta, Repository, open_repository
from bbp_dist_resume.blobstore import BlobStore
from bbp_dist_resume.errors import GarbageCollectionAborted, GarbageCollectionLocked
from bbp_dist_resume.repository import CheckpointRecord, open_on_store
from bbp_dist_resume.repository.chunkid import ChunkId
from bbp_dist_resume.repository.gc import GcReport, collect_garbage
from bbp_dist_resume.repository.gclock import LOCK_KEY, gc_lock

MARGIN = 4.0
OWNER = "a" * 32
Opener = Callable[..., Repository]


@pytest.fixture(params=["local", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return f"file://{tmp_path}/store"
    url = str(request.getfixturevalue("s3_url"))
    preprobe(url, config(url))  # the create-only probe is tested elsewhere; it costs seconds
    return url


def config(store_url: str, **changes: object) -> CheckpointConfig:
    base: dict[str, object] = {
        "store_url": store_url,
        "gc_safety_margin": MARGIN,
        "chunk_min_size": 16 << 10,
        "chunk_avg_size": 64 << 10,
        "chunk_max_size": 256 << 10,
        "enable_compression": False,
    }
    return CheckpointConfig(**(base | changes))


@pytest.fixture
def opener(store_url: str) -> Iterator[Opener]:
    opened: list[Repository] = []

    def open_(**changes: object) -> Repository:
        repo = open_repository(None, config(store_url, **changes))
        opened.append(repo)
        return repo

    yield open_
    for repo in opened:
        repo.close()


def meta(seq: int, worker: str = "w0") -> CheckpointMeta:
    return CheckpointMeta(
        operation_id="op", worker_id=worker, seq=seq, owner_token=OWNER, fence=1, stage="s"
    )


def ids_of(*manifests: CheckpointRecord) -> set[str]:
    return {c.id for m in manifests for p in m.parts.values() for c in p.chunks}


def chunk_keys(store: BlobStore) -> set[str]:
    return {i.key for i in store.list("chunks/")}


def key(cid: str) -> str:
    return ChunkId.parse(cid).store_key


def wait_until_collectable(repo: Repository, keys: set[str], timeout: float = 30.0) -> None:
    """Wait until the store says every key is older than the margin (its clock, not ours)."""
    deadline = time.monotonic() + timeout
    while True:
        infos = [repo.store.head(k) for k in keys]
        if all(i is not None and repo.gc_timing.collectable(i.age, 0.0) for i in infos):
            return
        assert time.monotonic() < deadline, f"objects did not age past {MARGIN} s"
        time.sleep(0.2)


def blob(seed: int, size: int = 300_000) -> bytes:
    return random.Random(seed).randbytes(size)


def two_checkpoints_the_first_removed(repo: Repository) -> tuple[set[str], CheckpointRecord]:
    """Commit seq 1 (parts a, b) and seq 2 (parts b, c), remove seq 1 as retention
    would; return the chunk ids only seq 1 named, and seq 2's manifest."""
    m1 = repo.commit(repo.write({"a": blob(1), "b": blob(2)}, meta(1)))
    m2 = repo.commit(repo.write({"b": blob(2), "c": blob(3)}, meta(2)))
    repo.delete_record("op", "w0", 1)
    return ids_of(m1) - ids_of(m2), m2


def test_old_unreferenced_chunks_are_reclaimed_and_referenced_ones_kept(opener: Opener) -> None:
    repo = opener()
    garbage, m2 = two_checkpoints_the_first_removed(repo)
    assert garbage
    wait_until_collectable(repo, chunk_keys(repo.store))
    sizes = {i.key: i.size for i in repo.store.list("chunks/")}
    report = collect_garbage(repo)
    assert chunk_keys(repo.store) == {key(c) for c in ids_of(m2)}
    assert report.deleted == len(garbage) and report.candidates == len(sizes)
    assert report.bytes_freed == sum(sizes[key(c)] for c in garbage)
    assert report.chunks_seen == len(sizes) and report.chunks_referenced == len(ids_of(m2))
    assert (report.records_seen, report.records_read, report.late_deletes) == (1, 1, 0)
    assert report.margin == MARGIN and not report.dry_run
    assert repo.verify(m2, deep=True).ok
    again = collect_garbage(repo)
    assert again.deleted == 0 and again.candidates == len(ids_of(m2))


def test_young_unreferenced_chunks_of_an_inflight_write_are_kept(opener: Opener) -> None:
    repo = opener()
    inflight = repo.write({"a": blob(4)}, meta(1))  # uploaded, not yet committed
    report = collect_garbage(repo)
    assert (report.candidates, report.deleted) == (0, 0)
    assert chunk_keys(repo.store) == {key(c) for c in ids_of(inflight)}
    repo.commit(inflight)
    assert repo.verify(inflight, deep=True).ok


def test_a_dry_run_deletes_nothing_and_reports_what_it_would(opener: Opener) -> None:
    repo = opener()
    garbage, _ = two_checkpoints_the_first_removed(repo)
    wait_until_collectable(repo, chunk_keys(repo.store))
    before = {i.key: repo.store.get(i.key) for i in repo.store.list()}
    dry = collect_garbage(repo, dry_run=True)
    assert {i.key: repo.store.get(i.key) for i in repo.store.list()} == before
    assert dry.dry_run and dry.deleted == len(garbage) and dry.bytes_freed > 0
    real = collect_garbage(repo)
    assert (real.deleted, real.bytes_freed) == (dry.deleted, dry.bytes_freed)


def test_an_unreadable_commit_record_aborts_the_run_with_nothing_deleted(opener: Opener) -> None:
    repo = opener()
    two_checkpoints_the_first_removed(repo)
    repo.commit(repo.write({"x": blob(5)}, meta(1, worker="w1")))
    bad = "checkpoints/op/w1/0000000001"
    repo.store.put(bad, repo.store.get(bad)[:-1] + b"!")  # one byte flipped
    wait_until_collectable(repo, chunk_keys(repo.store))
    before = chunk_keys(repo.store)
    err = raises_exactly(GarbageCollectionAborted, lambda: collect_garbage(repo))
    assert err.key == bad and bad in str(err)
    assert chunk_keys(repo.store) == before


def test_a_record_under_a_key_this_config_lacks_aborts_the_run(opener: Opener) -> None:
    old = opener(enable_encryption=True, encryption_key="old-pw")
    m1 = old.commit(old.write({"a": blob(6)}, meta(1)))
    new = opener(enable_encryption=True, encryption_key="new-pw", decryption_keys=("old-pw",))
    new.commit(new.write({"b": blob(7)}, meta(2)))
    old.delete_record("op", "w0", 2)  # its chunks are garbage, but only "new-pw" knows
    wait_until_collectable(new, chunk_keys(new.store))
    before = chunk_keys(new.store)
    lacking = opener(enable_encryption=True, encryption_key="new-pw")
    err = raises_exactly(GarbageCollectionAborted, lambda: collect_garbage(lacking))
    assert err.key == "checkpoints/op/w0/0000000001"
    assert chunk_keys(new.store) == before
    assert collect_garbage(new).deleted == len(before) - len(ids_of(m1))


def test_objects_outside_chunks_are_never_touched(opener: Opener) -> None:
    repo = opener()
    two_checkpoints_the_first_removed(repo)
    odd_chunk = "chunks/zz/" + "ab" * 32  # an id under the wrong folder: not ours
    for k in ["other/x", "chunks/ab/not-a-chunk", odd_chunk, "checkpoints/op/w0/junk"]:
        repo.store.put(k, b"keep me")
    everything = {i.key for i in repo.store.list()}
    wait_until_collectable(repo, everything)
    outside = {k: repo.store.get(k) for k in everything if k not in chunk_keys(repo.store)}
    inside = chunk_keys(repo.store)
    collect_garbage(repo)
    assert {k: repo.store.get(k) for k in outside} == outside
    assert {"chunks/ab/not-a-chunk", odd_chunk} <= chunk_keys(repo.store) < inside


def test_reusing_an_old_unreferenced_chunk_rewrites_it_and_it_survives_a_gc(
    opener: Opener,
) -> None:
    first = opener()
    first.commit(first.write({"a": blob(1), "d": blob(9)}, meta(1)))
    first.commit(first.write({"b": blob(2)}, meta(2)))
    first.delete_record("op", "w0", 1)
    wait_until_collectable(first, chunk_keys(first.store))
    # A fresh process (no evidence of its own) and the first one (its evidence expired)
    # reuse old chunks: both must write them again, not trust the refused create.
    for writer, seq, part in ((opener(), 3, blob(1)), (first, 4, blob(9))):
        sent = writer.stats().uploaded_bytes
        m = writer.commit(writer.write({"a": part}, meta(seq)))
        assert writer.stats().uploaded_bytes - sent >= 300_000
        ages = [writer.store.head(key(c)) for c in ids_of(m)]
        assert all(a is not None and a.age is not None and a.age < 2.0 for a in ages)
    report = collect_garbage(first)
    assert report.deleted == 0
    assert first.verify(first.load_record("op", "w0", 4), deep=True).ok  # type: ignore[arg-type]


class DeletingStore:
    """Passes every call to ``inner``, but deletes each chunk right after its first
    refreshing ``put``, as a GC delete issued on an older version lands just too late."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.deleted: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)
        if key.startswith("chunks/") and key not in self.deleted:
            self.deleted.append(key)
            self.inner.delete_many([key])


def test_a_refreshed_chunk_deleted_by_a_racing_gc_is_written_again_before_commit(
    opener: Opener, store_url: str
) -> None:
    first = opener()
    garbage, _ = two_checkpoints_the_first_removed(first)
    wait_until_collectable(first, {key(c) for c in garbage})
    racing = DeletingStore(first.store)
    writer = open_on_store(racing, config(store_url))  # type: ignore[arg-type]
    with gc_lock(first.store):  # the racing GC marks itself running, as every deleting run does
        m = writer.commit(writer.write({"a": blob(1)}, meta(3)))
    assert set(racing.deleted) == {key(c) for c in garbage}
    assert first.verify(m, deep=True).ok


def test_every_report_field_is_counted_from_the_store(opener: Opener) -> None:
    repo = opener()
    report = collect_garbage(repo)
    assert report == GcReport(
        margin=MARGIN,
        dry_run=False,
        chunks_seen=0,
        candidates=0,
        chunks_referenced=0,
        records_seen=0,
        records_read=0,
        deleted=0,
        bytes_freed=0,
        kept=0,
        late_deletes=0,
        duration=report.duration,
    )
    assert 0 <= report.duration < 5


def test_one_gc_at_a_time_a_second_is_refused_until_the_lock_is_released_or_broken(
    opener: Opener,
) -> None:
    repo = opener()
    garbage, _ = two_checkpoints_the_first_removed(repo)
    wait_until_collectable(repo, {key(c) for c in garbage})
    before = chunk_keys(repo.store)
    with gc_lock(repo.store):  # another run holds the lock
        with pytest.raises(GarbageCollectionLocked, match="--break-lock") as exc:
            collect_garbage(repo)
        assert "another garbage collection holds locks/gc" in str(exc.value)
        assert chunk_keys(repo.store) == before  # refused before anything was deleted
        assert collect_garbage(repo, dry_run=True).deleted == len(garbage)  # no lock needed
    assert collect_garbage(repo).deleted == len(garbage)  # released: a run goes ahead
    assert repo.store.head(LOCK_KEY) is None  # and leaves no lock behind


def test_a_lock_left_by_a_dead_gc_is_reported_and_broken_only_when_asked(
    opener: Opener,
) -> None:
    repo = opener()
    garbage, _ = two_checkpoints_the_first_removed(repo)
    wait_until_collectable(repo, {key(c) for c in garbage})
    repo.store.put(LOCK_KEY, b'{"host": "gone", "pid": 4242, "since": "x", "token": "t"}')
    with pytest.raises(GarbageCollectionLocked, match="gone pid 4242"):
        collect_garbage(repo)
    assert collect_garbage(repo, break_lock=True).deleted == len(garbage)
    assert repo.store.head(LOCK_KEY) is None


def test_a_gc_that_aborts_releases_its_lock(opener: Opener) -> None:
    repo = opener()
    two_checkpoints_the_first_removed(repo)
    repo.store.put("checkpoints/op/w0/0000000009", b"not a record")
    with pytest.raises(GarbageCollectionAborted):
        collect_garbage(repo)
    assert repo.store.head(LOCK_KEY) is None
