"""One conformance suite that every BlobStore passes: the local directory store, and S3
against a real SeaweedFS server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bbp_dist_resume.blobstore import BlobStore, LocalBlobStore, open_store
from bbp_dist_resume.errors import InvalidIdentifier, ObjectNotFound

BAD_KEYS = [
    "",
    "/abs",
    "../escape",
    "a/../../escape",
    "a//b",
    "a/./b",
    ".hidden",
    "a/.tmp-x",
    "trailing/",
    "sp ace",
    "back\\slash",
    "nul\x00",
    "ü",
    "x" * 1025,
]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        s: BlobStore = LocalBlobStore(tmp_path / "store")
    else:
        s = open_store(request.getfixturevalue("s3_url"), concurrency=16)
    yield s
    s.close()


def keys_of(store: BlobStore, prefix: str = "") -> list[str]:
    return [info.key for info in store.list(prefix)]


def test_put_if_absent_creates_then_refuses_and_keeps_the_first(store: BlobStore) -> None:
    assert store.put_if_absent("a/b", b"first") is True
    assert store.put_if_absent("a/b", b"second") is False
    assert store.get("a/b") == b"first"


def test_put_replaces_whole_object(store: BlobStore) -> None:
    store.put("k", b"one" * 1000)
    store.put("k", b"two")
    assert store.get("k") == b"two"
    info = store.head("k")
    assert info is not None and info.size == 3 and info.key == "k"


def test_empty_object_round_trips(store: BlobStore) -> None:
    assert store.put_if_absent("empty", b"")
    assert store.get("empty") == b""
    info = store.head("empty")
    assert info is not None and info.size == 0


def test_missing_object_is_not_found_and_head_is_none(store: BlobStore) -> None:
    with pytest.raises(ObjectNotFound) as err:
        store.get("no/such")
    assert err.value.key == "no/such"
    assert store.head("no/such") is None
    with pytest.raises(ObjectNotFound):
        store.get_range("no/such", 0, 4)


def test_get_range_returns_the_slice_and_clips_at_the_end(store: BlobStore) -> None:
    store.put("r", bytes(range(100)))
    assert store.get_range("r", 10, 5) == bytes(range(10, 15))
    assert store.get_range("r", 95, 50) == bytes(range(95, 100))
    assert store.get_range("r", 200, 5) == b""
    assert store.get_range("r", 0, 0) == b""


def test_list_is_ordered_and_filters_by_prefix(store: BlobStore) -> None:
    for key in ["b/2", "a/1", "a/10", "a/2", "ab/1", "c"]:
        store.put(key, key.encode())
    assert keys_of(store) == ["a/1", "a/10", "a/2", "ab/1", "b/2", "c"]
    assert keys_of(store, "a/") == ["a/1", "a/10", "a/2"]
    assert keys_of(store, "a") == ["a/1", "a/10", "a/2", "ab/1"]
    assert keys_of(store, "a/1") == ["a/1", "a/10"]
    assert keys_of(store, "zzz/") == []
    assert [i.key for i in store.list("a/", start_after="a/10")] == ["a/2"]
    assert {i.key: i.size for i in store.list("b/")} == {"b/2": 3}


def test_list_pages_through_more_than_one_page(store: BlobStore) -> None:
    keys = [f"many/{i:05d}" for i in range(1105)]  # S3 pages hold 1000 keys
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put(k, b"x"), keys))
    assert keys_of(store, "many/") == keys
    store.delete_many(keys)
    assert keys_of(store, "many/") == []


def test_delete_many_ignores_missing_keys(store: BlobStore) -> None:
    store.put("d/1", b"1")
    store.put("d/2", b"2")
    store.delete_many(["d/1", "d/missing"])
    assert keys_of(store, "d/") == ["d/2"]
    store.delete_many([])
    assert keys_of(store, "d/") == ["d/2"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_refused_before_any_io(store: BlobStore, key: str) -> None:
    store.put("keep", b"kept")
    calls = [
        lambda: store.put(key, b"x"),
        lambda: store.put_if_absent(key, b"x"),
        lambda: store.get(key),
        lambda: store.head(key),
        lambda: store.get_range(key, 0, 1),
        lambda: store.delete_many([key]),
    ]
    for call in calls:
        with pytest.raises(InvalidIdentifier):
            call()
    assert keys_of(store) == ["keep"]
    assert store.get("keep") == b"kept"


def test_sixteen_racing_create_only_writes_have_exactly_one_winner(store: BlobStore) -> None:
    for trial in range(5):
        key = f"race/{trial}"
        barrier = threading.Barrier(16)

        def attempt(i: int, key: str = key, barrier: threading.Barrier = barrier) -> bool:
            barrier.wait()
            return store.put_if_absent(key, f"writer {i}".encode())

        with ThreadPoolExecutor(16) as pool:
            won = list(pool.map(attempt, range(16)))
        assert won.count(True) == 1
        assert store.get(key) == f"writer {won.index(True)}".encode()


def test_parallel_writers_of_distinct_keys_all_land(store: BlobStore) -> None:
    payloads = {f"p/{i:03d}": bytes([i]) * (i * 1000 + 1) for i in range(64)}
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: store.put_if_absent(*kv), payloads.items()))
    with ThreadPoolExecutor(16) as pool:
        got = dict(zip(payloads, pool.map(store.get, payloads), strict=True))
    assert got == payloads


def test_large_object_round_trips(store: BlobStore) -> None:
    data = bytes(range(256)) * (20 * 4096)  # 20 MiB
    store.put("big", data)
    assert store.get("big") == data


def age_of(store: BlobStore, key: str) -> float:
    info = store.head(key)
    assert info is not None and info.age is not None, info
    return info.age


def test_age_counts_from_the_last_write_by_the_stores_clock(store: BlobStore) -> None:
    # S3 ages are whole seconds (Date minus LastModified), so the bounds allow one second.
    assert store.put_if_absent("age/a", b"1")
    first = age_of(store, "age/a")
    assert 0.0 <= first <= 1.5
    time.sleep(2.2)  # the age is the passing of time itself: nothing to wait on instead
    older = age_of(store, "age/a")
    assert older >= first + 1.0
    listed = {info.key: info.age for info in store.list("age/")}
    assert listed["age/a"] is not None and listed["age/a"] >= older - 1.0
    assert store.put_if_absent("age/a", b"2") is False  # a refused create is no write
    assert age_of(store, "age/a") >= older
    store.put("age/a", b"3")  # a replacing put starts the count again
    assert age_of(store, "age/a") <= 1.5
    assert all(i.age is not None and i.age <= 1.5 for i in store.list("age/"))
