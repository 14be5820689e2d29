"""The repository over both stores: write, commit, takeover, read, verify, encryption."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bbp_dist_resume import (
    CheckpointConfig,
    CheckpointMeta,
    CommitConflict,
    EncryptionKeyError,
    Repository,
    StoreUnsafeError,
    open_repository,
)
from bbp_dist_resume.blobstore import LocalBlobStore
from bbp_dist_resume.repository import CheckpointRecord, TakeoverRecord, open_on_store
from bbp_dist_resume.repository.chunkid import ChunkId
from bbp_dist_resume.repository.manifest import new_token

OWNER = "a" * 32
Opener = Callable[..., Repository]


@pytest.fixture(params=["local", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return f"file://{tmp_path}/store"
    return str(request.getfixturevalue("s3_url"))


@pytest.fixture
def opener(store_url: str) -> Iterator[Opener]:
    opened: list[Repository] = []

    def open_(**changes: object) -> Repository:
        base: dict[str, object] = {
            "store_url": store_url,
            "chunk_min_size": 16 << 10,
            "chunk_avg_size": 64 << 10,
            "chunk_max_size": 256 << 10,
        }
        repo = open_repository(None, CheckpointConfig(**(base | changes)))
        opened.append(repo)
        return repo

    yield open_
    for repo in opened:
        repo.close()


def meta(seq: int, **changes: object) -> CheckpointMeta:
    base: dict[str, object] = dict(
        operation_id="op", worker_id="w0", seq=seq, owner_token=OWNER, fence=1, stage="scan"
    )
    return CheckpointMeta(**(base | changes))  # type: ignore[arg-type]


def all_objects(repo: Repository) -> dict[str, bytes]:
    return {i.key: repo.store.get(i.key) for i in repo.store.list()}


@pytest.mark.parametrize("encrypted", [False, True])
def test_written_parts_read_back_exactly(opener: Opener, tmp_path: Path, encrypted: bool) -> None:
    repo = opener(enable_encryption=encrypted, encryption_key="pw" if encrypted else None)
    big = random.Random(3).randbytes(700_000) + b"row,1,2\n" * 40_000
    path = tmp_path / "big.bin"
    path.write_bytes(big)
    parts = {"state": b'{"done": 3}', "empty": b"", "file": path, "bytes": big}
    m = repo.commit(repo.write(parts, meta(1)))
    again = repo.load_record("op", "w0", 1)
    assert again == m
    assert repo.read(again) == {"state": b'{"done": 3}', "empty": b"", "file": big, "bytes": big}
    out = tmp_path / "restored.bin"
    repo.restore_part(again, "file", out)
    assert out.read_bytes() == big
    assert m.parts["state"].inline is not None and len(m.parts["file"].chunks) > 3
    assert m.parts["file"] == m.parts["bytes"]  # same content, same chunks


def test_an_incremental_write_uploads_only_changed_chunks(opener: Opener) -> None:
    repo = opener(enable_compression=False)
    data = bytearray(random.Random(4).randbytes(2_000_000))
    repo.commit(repo.write({"d": bytes(data)}, meta(1)))
    first = repo.stats()
    data[1_000_000:1_000_100] = os.urandom(100)
    m2 = repo.commit(repo.write({"d": bytes(data)}, meta(2)))
    delta = repo.stats().uploaded_bytes - first.uploaded_bytes
    assert 0 < delta <= 4 * (256 << 10)
    assert repo.stats().chunks_deduplicated > first.chunks_deduplicated
    assert repo.read(m2)["d"] == bytes(data)


def test_a_fresh_process_deduplicates_against_the_store(opener: Opener) -> None:
    data = random.Random(5).randbytes(1_000_000)
    writer = opener(enable_compression=False)
    writer.commit(writer.write({"d": data}, meta(1)))
    other = opener(enable_compression=False)
    other.write({"d": data}, meta(2))
    stats = other.stats()
    assert stats.chunks_uploaded == stats.chunks and stats.chunks_created == 0


def test_takeover_claims_the_next_seq_and_fences_the_old_owner(opener: Opener) -> None:
    repo = opener()
    assert repo.latest_seq("op", "w0") == 0
    repo.commit(repo.write({"s": b"1"}, meta(1)))
    stale = repo.write({"s": b"2"}, meta(2))  # prepared by the old owner, not yet committed
    t = repo.takeover("op", "w0", owner_token="b" * 32, fence=2)
    assert isinstance(t, TakeoverRecord) and t.seq == 2 and t.fence == 2
    with pytest.raises(CommitConflict) as err:
        repo.commit(stale)
    assert (err.value.worker_id, err.value.seq) == ("w0", 2)
    assert [type(r) for r in repo.records("op", "w0")] == [CheckpointRecord, TakeoverRecord]
    assert repo.takeover("op", "w0", owner_token="c" * 32, fence=3).seq == 3


def test_sixteen_racing_commits_of_one_seq_have_exactly_one_winner(opener: Opener) -> None:
    repo = opener()
    manifests = [
        repo.write({"s": f"writer {i}".encode()}, meta(1, owner_token=new_token()))
        for i in range(16)
    ]
    barrier = threading.Barrier(16)

    def commit(m: CheckpointRecord) -> str:
        barrier.wait()
        try:
            repo.commit(m)
        except CommitConflict:
            return "lost"
        return "won"

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(commit, manifests))
    assert results.count("won") == 1 and results.count("lost") == 15
    winner = manifests[results.index("won")]
    assert repo.load_record("op", "w0", 1) == winner


def test_a_retried_commit_of_the_same_manifest_is_settled_by_its_write_id(opener: Opener) -> None:
    repo = opener()
    m = repo.write({"s": b"x"}, meta(1))
    repo.commit(m)
    assert repo.commit(m) == m  # as if the first request landed and the retry was refused


def test_concurrent_takeovers_never_share_a_seq_and_their_fences_grow_along_seq(
    opener: Opener,
) -> None:
    """Eight owners race (fences 1-8, as a counter hands them out, and one fence handed
    out twice, as a Redis failover can): each lands on its own seq or is refused because
    a record with its fence or a newer one is already there."""
    repo = opener()
    barrier = threading.Barrier(9)

    def take(fence: int) -> TakeoverRecord | None:
        barrier.wait()
        try:
            return repo.takeover("op", "w0", owner_token=new_token(), fence=fence)
        except CommitConflict:
            return None

    with ThreadPoolExecutor(9) as pool:
        results = list(pool.map(take, [*range(1, 9), 8]))
    landed = sorted((r for r in results if r is not None), key=lambda r: r.seq)
    assert [r.seq for r in landed] == list(range(1, len(landed) + 1))
    fences = [r.fence for r in landed]
    assert fences == sorted(set(fences)), f"fences do not strictly grow along seq: {fences}"
    assert [r.seq for r in repo.records("op", "w0")] == [r.seq for r in landed]


def test_a_takeover_whose_fence_is_not_above_the_last_records_is_refused(opener: Opener) -> None:
    repo = opener()
    repo.commit(repo.write({"s": b"1"}, meta(1, fence=3)))
    for fence in (1, 3):
        with pytest.raises(CommitConflict) as err:
            repo.takeover("op", "w0", owner_token="b" * 32, fence=fence)
        assert (err.value.worker_id, err.value.seq) == ("w0", 2)
    assert [r.seq for r in repo.records("op", "w0")] == [1]
    assert repo.takeover("op", "w0", owner_token="b" * 32, fence=4).seq == 2


def test_verify_quick_and_deep_find_missing_chunks(opener: Opener) -> None:
    repo = opener()
    m = repo.commit(repo.write({"d": random.Random(6).randbytes(600_000)}, meta(1)))
    assert repo.verify(m).ok and repo.verify(m, deep=True).ok
    victim = m.parts["d"].chunks[1].id
    repo.store.delete_many([ChunkId.parse(victim).store_key])
    for deep in (False, True):
        report = repo.verify(m, deep=deep)
        assert not report.ok and report.missing == (victim,)


def test_encrypted_stores_hold_no_plaintext_and_keyed_ids(opener: Opener) -> None:
    marker = b"SECRET-MARKER-" * 1000
    repo = opener(enable_encryption=True, encryption_key="pw", enable_compression=False)
    m = repo.commit(repo.write({"d": marker, "s": b"SECRET-MARKER-inline"}, meta(1)))
    blobs = all_objects(repo)
    assert not any(b"SECRET-MARKER" in b for b in blobs.values())
    assert not any(b"scan" in b for k, b in blobs.items() if k.startswith("checkpoints/"))
    plain_id = ChunkId.of(marker).hex
    assert all(plain_id not in k for k in blobs)
    assert m.parts["d"].chunks[0].id != plain_id


def test_a_key_rotation_keeps_old_checkpoints_readable(opener: Opener) -> None:
    old = opener(enable_encryption=True, encryption_key="old-pw")
    m1 = old.commit(old.write({"d": b"x" * 10_000}, meta(1)))
    with pytest.raises(EncryptionKeyError):
        opener(enable_encryption=True, encryption_key="new-pw")
    new = opener(enable_encryption=True, encryption_key="new-pw", decryption_keys=("old-pw",))
    m2 = new.commit(new.write({"d": b"y" * 10_000}, meta(2)))
    assert new.read(new.load_record("op", "w0", 1)) == {"d": b"x" * 10_000}
    assert m1.parts["d"].chunks[0].id != m2.parts["d"].chunks[0].id
    raw = "base64:" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="  # 32 bytes
    rawrepo = opener(enable_encryption=True, encryption_key=raw, decryption_keys=("new-pw",))
    assert rawrepo.read(rawrepo.load_record("op", "w0", 2)) == {"d": b"y" * 10_000}


def test_the_store_config_fixes_chunk_sizes_for_every_opener(opener: Opener) -> None:
    first = opener()
    data = random.Random(7).randbytes(1_000_000)
    m1 = first.write({"d": data}, meta(1))
    second = opener(chunk_min_size=256 << 10, chunk_avg_size=1 << 20, chunk_max_size=4 << 20)
    m2 = second.write({"d": data}, meta(2))
    assert m1.parts == m2.parts


class UnsafeStore(LocalBlobStore):
    """A store whose create-only writes all 'win', like one without If-None-Match."""

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self.put(key, data)
        return True


def test_a_store_without_atomic_create_only_writes_is_refused(tmp_path: Path) -> None:
    cfg = CheckpointConfig(store_url=f"file://{tmp_path}")
    with pytest.raises(StoreUnsafeError, match="of 16 concurrent create-only writes won"):
        open_on_store(UnsafeStore(tmp_path / "s"), cfg)
    assert not (tmp_path / "s" / "config").exists()
    repo = open_on_store(UnsafeStore(tmp_path / "s"), cfg.with_changes(allow_unsafe_store=True))
    repo.close()
    # The recorded result keeps refusing the store to openers that do not allow it,
    # readers too (a GC relies on create-only writes for its lock).
    with pytest.raises(StoreUnsafeError):
        open_on_store(LocalBlobStore(tmp_path / "s"), cfg)
    with pytest.raises(StoreUnsafeError):
        open_on_store(LocalBlobStore(tmp_path / "s", create=False), cfg, create=False)


class CountingStore(LocalBlobStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.created: list[str] = []

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self.created.append(key)
        return super().put_if_absent(key, data)


def test_only_the_first_open_of_a_store_probes_it(tmp_path: Path) -> None:
    cfg = CheckpointConfig(store_url=f"file://{tmp_path}")
    first = CountingStore(tmp_path / "s")
    open_on_store(first, cfg).close()
    assert sum(k.startswith("probe/") for k in first.created) == 16
    assert not list(first.list("probe/"))
    again = CountingStore(tmp_path / "s")
    open_on_store(again, cfg).close()
    assert again.created == []


def test_concurrent_first_opens_agree_on_one_store_config(store_url: str) -> None:
    cfg = CheckpointConfig(store_url=store_url)

    def open_id(_: int) -> str:
        with open_repository(None, cfg) as repo:
            return repo.store.get("config").hex()

    with ThreadPoolExecutor(4) as pool:
        assert len(set(pool.map(open_id, range(4)))) == 1
