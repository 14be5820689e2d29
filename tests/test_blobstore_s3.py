"""What only the S3 store does: the lean GET path and its fallback to botocore."""

from __future__ import annotations

from typing import Any

import pytest

from bbp_dist_resume.blobstore import S3BlobStore, open_store
from bbp_dist_resume.blobstore.s3_fastget import FastGetter
from bbp_dist_resume.errors import ObjectNotFound, StoreAccessDenied


class Counting:
    """Counts the GETs that the lean path answered and those left to botocore."""

    def __init__(self, store: S3BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fast = 0
        self.slow = 0
        fast_get, slow_get = FastGetter.get, S3BlobStore._get

        def fast(getter: FastGetter, key: str) -> bytes | None:
            data = fast_get(getter, key)
            self.fast += data is not None
            return data

        def slow(s: S3BlobStore, key: str, byte_range: str | None) -> bytes:
            self.slow += 1
            return slow_get(s, key, byte_range)

        monkeypatch.setattr(FastGetter, "get", fast)
        monkeypatch.setattr(S3BlobStore, "_get", slow)


def s3_store(url: str) -> S3BlobStore:
    store = open_store(url)
    assert isinstance(store, S3BlobStore)
    return store


def test_whole_object_gets_take_the_lean_path(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = s3_store(s3_url)
    counts = Counting(store, monkeypatch)
    store.put("a/b", b"payload" * 1000)
    assert store.get("a/b") == b"payload" * 1000
    assert (counts.fast, counts.slow) == (1, 0)
    assert store.get_range("a/b", 0, 7) == b"payload"  # ranges go through botocore
    assert counts.slow == 1
    store.close()


def test_a_missing_object_falls_back_and_is_not_found(
    s3_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = s3_store(s3_url)
    counts = Counting(store, monkeypatch)
    with pytest.raises(ObjectNotFound):
        store.get("no/such")
    assert (counts.fast, counts.slow) == (0, 1)
    store.close()


def test_refused_credentials_fall_back_to_a_clear_error(
    s3_url: str, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = s3_store(s3_url)
    good.put("k", b"v")
    good.close()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", services.secret_key + "x")
    bad = s3_store(s3_url)
    counts = Counting(bad, monkeypatch)
    with pytest.raises(StoreAccessDenied):
        bad.get("k")
    assert (counts.fast, counts.slow) == (0, 1)
    bad.close()


def test_fast_get_can_be_turned_off(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = s3_store(s3_url + "&fast_get=false")
    counts = Counting(store, monkeypatch)
    store.put("k", b"v")
    assert store.get("k") == b"v"
    assert (counts.fast, counts.slow) == (0, 1)
    store.close()


def test_virtual_addressing_puts_the_bucket_in_the_host(s3_url: str) -> None:
    store = s3_store(s3_url.replace("region=", "addressing_style=virtual&region="))
    fast = store._fast
    assert fast is not None and fast._base.startswith("http://bbp-test.127.0.0.1:")
    store.close()
    auto = s3_store(s3_url.replace("region=", "addressing_style=auto&region="))
    assert auto._fast is None
    auto.close()
