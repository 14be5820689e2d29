"""Bad input gets a clear error of the library's own hierarchy, and changes nothing.

DESIGN.md invariant 5: a malformed URL, a missing bucket, a wrong key, a truncated or
bit-flipped object, a manifest with unknown fields or an impossible size, an object written
by something else: each raises one specific ``BBPError`` subclass, and every object already
in the store keeps its bytes. Each test snapshots the whole store (every key -> bytes, read
with a raw client that bypasses the library) before the bad call and compares after it.

Tampering is done with the raw client too ("something else" wrote it); records are crafted
by decoding them with the library's codec on an unencrypted store, editing the JSON and
re-encoding it, so that exactly one defect is present at a time.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import blake3
import psutil
import pytest
import zstandard
from assertions import raises_exactly
from botocore.exceptions import ClientError

from bbp_dist_resume import (
    BBPError,
    BucketNotFound,
    CheckpointConfig,
    CheckpointMeta,
    CommitConflict,
    ConfigError,
    DecryptionError,
    EncryptionKeyError,
    IntegrityError,
    InvalidCheckpoint,
    InvalidIdentifier,
    ManifestError,
    ObjectNotFound,
    StoreAccessDenied,
    StoreUnavailable,
    open_repository,
)
from bbp_dist_resume.blobstore import LocalBlobStore, open_store
from bbp_dist_resume.repository import Manifest, Repository, storeconfig
from bbp_dist_resume.repository.codec import (
    FLAG_COMPRESSED,
    FLAG_ENCRYPTED,
    FORMAT,
    HEADER_LEN,
    KEY_ID_LEN,
    MAGIC,
    NONCE_LEN,
    KeyLookup,
    decode,
    encode,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PASSPHRASE = "correct horse battery staple 7f3a"
TOKEN = "a" * 32
OP, WORKER = "op", "w0"
MB = 1 << 20


# -- raw access to a store, bypassing the library ------------------------------------------


@dataclass
class RawStore:
    """One test's store, seen by "something else": a raw file tree or a raw S3 prefix."""

    kind: str
    url: str
    root: Path | None = None
    client: S3Client | None = None
    bucket: str = ""
    prefix: str = ""

    def _s3(self) -> S3Client:
        assert self.client is not None
        return self.client

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root.joinpath(*key.split("/"))

    def snapshot(self) -> dict[str, bytes]:
        """Every object (hidden files included) -> its bytes."""
        if self.root is not None:
            if not self.root.exists():
                return {}
            return {
                p.relative_to(self.root).as_posix(): p.read_bytes()
                for p in sorted(self.root.rglob("*"))
                if p.is_file()
            }
        out: dict[str, bytes] = {}
        pages = self._s3().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix + "/"):
            for obj in page.get("Contents", []):
                body = self._s3().get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
                out[obj["Key"][len(self.prefix) + 1 :]] = body
        return out

    def get(self, key: str) -> bytes:
        if self.root is not None:
            return self._path(key).read_bytes()
        return self._s3().get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        if self.root is not None:
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        else:
            self._s3().put_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}", Body=data)

    def delete(self, key: str) -> None:
        if self.root is not None:
            self._path(key).unlink()
        else:
            self._s3().delete_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")


@pytest.fixture(autouse=True)
def two_probe_writers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Race 2 create-only writers at open instead of 16.

    The probe is not what this suite tests, and on SeaweedFS 16 racing conditional PUTs to
    one key take 1-5 s per open. With 2 the probe still races, and still cleans up after
    itself (which every snapshot comparison here checks).
    """
    monkeypatch.setattr(storeconfig, "PROBE_WRITERS", 2)


@pytest.fixture(params=["local", "s3"])
def raw(request: pytest.FixtureRequest, tmp_path: Path) -> RawStore:
    """A fresh, empty store of each backend, with raw access to it."""
    if request.param == "local":
        root = tmp_path / "store"
        return RawStore("local", f"file://{root}", root=root)
    url = request.getfixturevalue("s3_url")
    parts = urlsplit(url)
    return RawStore(
        "s3",
        url,
        client=request.getfixturevalue("s3_client"),
        bucket=parts.netloc,
        prefix=parts.path.strip("/"),
    )


# Small chunks (the store keeps them), so a checkpoint of 400 KB has at least 3 chunks
# whatever the store's random gear seed, and every test stays fast.
CHUNKING = {"chunk_min_size": 16 << 10, "chunk_avg_size": 64 << 10, "chunk_max_size": 128 << 10}


def make_config(**overrides: Any) -> CheckpointConfig:
    return CheckpointConfig(**(CHUNKING | overrides))


def enc_config(key: str = PASSPHRASE, **overrides: Any) -> CheckpointConfig:
    return make_config(enable_encryption=True, encryption_key=key, **overrides)


def on_backends(cases: dict[str, Any], *, s3: int = 1) -> list[Any]:
    """``(raw, case)`` params: every case on the local store, the first ``s3`` on S3 too.

    Content checks (record parsing, id and value validation) do not depend on the backend;
    one case per group on S3 shows that the S3 path raises the same error and leaves the
    bucket unchanged, without paying for every variant twice.
    """
    out = [pytest.param("local", v, id=f"local-{n}") for n, v in cases.items()]
    out += [pytest.param("s3", v, id=f"s3-{n}") for n, v in list(cases.items())[:s3]]
    return out


@pytest.fixture
def opened() -> Iterator[Callable[[str, CheckpointConfig], Repository]]:
    """``open(url, cfg)``: open a repository, closed at teardown."""
    repos: list[Repository] = []

    def open_(url: str, cfg: CheckpointConfig) -> Repository:
        repo = open_repository(url, cfg)
        repos.append(repo)
        return repo

    yield open_
    for repo in repos:
        repo.close()


@dataclass
class Populated:
    """A store holding a takeover (seq 1) and a committed checkpoint (seq 2)."""

    raw: RawStore
    repo: Repository
    manifest: Manifest
    parts: dict[str, bytes] = field(default_factory=dict)
    record_blob: bytes = b""

    @property
    def record_key(self) -> str:
        return self.manifest.store_key

    def restore_record(self) -> None:
        """Put the original commit record back (between two tamperings)."""
        self.raw.put(self.record_key, self.record_blob)

    def chunk_key(self, index: int = 0) -> str:
        cid = self.manifest.parts["blob"].chunks[index].id
        return f"chunks/{cid[:2]}/{cid}"

    def chunk_id(self, index: int = 0) -> str:
        return self.manifest.parts["blob"].chunks[index].id


def meta(seq: int = 2, **overrides: Any) -> CheckpointMeta:
    values: dict[str, Any] = {
        "operation_id": OP,
        "worker_id": WORKER,
        "seq": seq,
        "owner_token": TOKEN,
        "fence": 1,
        "stage": "s",
    }
    values.update(overrides)
    return CheckpointMeta(**values)


# Compressible but never repeating (no two chunks alike), longer than the largest chunk.
ROWS = b"".join(b"row %08d,value %08d\n" % (i, 7 * i) for i in range(7_000))


def big_blob() -> bytes:
    """About 400 KB: chunk 0 is all rows (stored compressed), the last all random (not)."""
    return ROWS + os.urandom(200_000)


def populate(raw: RawStore, repo: Repository) -> Populated:
    repo.takeover(OP, WORKER, owner_token=TOKEN, fence=1)
    parts = {"state": json.dumps({"done": 41, "todo": [1, 2, 3]}).encode(), "blob": big_blob()}
    manifest = repo.commit(repo.write(parts, meta()))
    p = Populated(raw, repo, manifest, parts, raw.get(manifest.store_key))
    chunks = manifest.parts["blob"].chunks
    assert len(chunks) >= 3
    assert len({c.id for c in chunks}) == len(chunks)
    assert manifest.parts["state"].inline is not None
    assert raw.get(p.chunk_key(0))[5] & FLAG_COMPRESSED
    assert not raw.get(p.chunk_key(len(chunks) - 1))[5] & FLAG_COMPRESSED
    assert repo.read(manifest) == parts
    return p


@pytest.fixture(params=[False, True], ids=["plain", "encrypted"])
def encrypted(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def populated(
    raw: RawStore, encrypted: bool, opened: Callable[[str, CheckpointConfig], Repository]
) -> Populated:
    cfg = enc_config() if encrypted else make_config()
    return populate(raw, opened(raw.url, cfg))


@pytest.fixture
def plain(raw: RawStore, opened: Callable[[str, CheckpointConfig], Repository]) -> Populated:
    return populate(raw, opened(raw.url, make_config()))


@pytest.fixture
def sealed(raw: RawStore, opened: Callable[[str, CheckpointConfig], Repository]) -> Populated:
    return populate(raw, opened(raw.url, enc_config()))


def flip_bit(data: bytes, at: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[at] ^= mask
    return bytes(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- malformed store URLs and configs ------------------------------------------------------

BAD_URLS = [
    ("s3://Bad_Bucket/x", "invalid S3 bucket name"),
    ("s3://b/x?unknown=1", "invalid S3 bucket name"),
    ("s3://bucket-ok/x?unknown=1", "unknown parameter 'unknown'"),
    ("s3://bucket-ok/x?checksum=sometimes", "parameter 'checksum'"),
    ("s3://bucket-ok/x?endpoint_url=ftp://h", "parameter 'endpoint_url'"),
    ("s3://b?max_attempts=0", "invalid S3 bucket name"),
    ("s3://bucket-ok?max_attempts=0", "parameter 'max_attempts'"),
    ("s3://bucket-ok?max_attempts=many", "parameter 'max_attempts'"),
    ("s3://bucket-ok/x?region=a&region=b", "more than once"),
    ("s3://bucket-ok/../x", "invalid S3 prefix"),
    ("s3:///x", "invalid S3 bucket name"),
    ("ftp://x", "must start with file: or s3://"),
    ("file://host/path", "file:///absolute/path"),
    ("file:///tmp/x?sync=1", "no query"),
    ("s3://user:s3cr3t-pw@bucket-ok/x", "credentials"),
    ("", "must start with file: or s3://"),
]


@pytest.mark.parametrize(("url", "reason"), BAD_URLS, ids=[u or "empty" for u, _ in BAD_URLS])
def test_malformed_store_url_raises_config_error_and_creates_nothing(
    url: str, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative fallback would show up here
    err = raises_exactly(ConfigError, lambda: open_store(url))
    assert reason in str(err)
    assert all(name == "store_url" for name, _ in err.problems)
    assert "s3cr3t" not in str(err)
    if url:
        err = raises_exactly(ConfigError, lambda: open_repository(url, make_config()))
        assert "s3cr3t" not in str(err)
    assert list(tmp_path.iterdir()) == []


def test_empty_store_url_in_config_raises_config_error() -> None:
    err = raises_exactly(ConfigError, lambda: CheckpointConfig(store_url=""))
    assert [f for f, _ in err.problems] == ["store_url"]


def test_bad_config_fields_are_all_named_in_one_config_error() -> None:
    err = raises_exactly(
        ConfigError,
        lambda: CheckpointConfig(
            max_checkpoints=0,
            progress_threshold=200,
            upload_concurrency=0,
            compression_level=99,
            chunk_max_size=1,
            strategy="sometimes",
        ),
    )
    named = {f for f, _ in err.problems}
    assert named == {
        "max_checkpoints",
        "progress_threshold",
        "upload_concurrency",
        "compression_level",
        "chunk_max_size",
        "strategy",
    }


def test_bad_field_and_bad_relation_values_are_all_named_in_one_config_error() -> None:
    # A bad store_url scheme and a bad coord_url are only checked by the model-level
    # validator: they must still be reported when another field is bad as well.
    err = raises_exactly(
        ConfigError,
        lambda: CheckpointConfig(max_checkpoints=0, store_url="ftp://x", coord_url="http://x"),
    )
    named = {f for f, _ in err.problems}
    assert named == {"max_checkpoints", "store_url", "coord_url"}


def test_config_errors_and_repr_never_contain_the_passphrase() -> None:
    cfg = enc_config(decryption_keys=("older " + PASSPHRASE,))
    assert PASSPHRASE not in repr(cfg)
    assert PASSPHRASE not in str(cfg)
    bad_calls: list[Callable[[], object]] = [
        lambda: enc_config(max_checkpoints=0),
        lambda: enc_config(enable_compression="perhaps"),
        lambda: CheckpointConfig(decryption_keys=PASSPHRASE),
        lambda: CheckpointConfig(decryption_keys=(PASSPHRASE, 5)),
        lambda: enc_config(store_url="ftp://x"),
    ]
    for call in bad_calls:
        err = raises_exactly(ConfigError, call)
        assert "correct horse" not in str(err)
        assert "correct horse" not in repr(err)


# -- the store itself: missing bucket, wrong credentials, unreachable endpoint -------------


def test_missing_bucket_raises_bucket_not_found_and_creates_nothing(
    s3_endpoint: str, s3_client: S3Client
) -> None:
    bucket = f"no-such-bucket-{uuid.uuid4().hex}"
    url = f"s3://{bucket}/p?endpoint_url={s3_endpoint}&region=us-east-1"
    raises_exactly(BucketNotFound, lambda: open_repository(url, make_config()))
    with pytest.raises(ClientError):
        s3_client.head_bucket(Bucket=bucket)


def test_missing_local_root_raises_bucket_not_found(tmp_path: Path) -> None:
    raises_exactly(BucketNotFound, lambda: LocalBlobStore(tmp_path / "nope", create=False))
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("variable", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
def test_wrong_s3_credentials_raise_store_access_denied_and_change_nothing(
    variable: str,
    s3_url: str,
    s3_client: S3Client,
    monkeypatch: pytest.MonkeyPatch,
    opened: Callable[[str, CheckpointConfig], Repository],
) -> None:
    parts = urlsplit(s3_url)
    store = RawStore(
        "s3", s3_url, client=s3_client, bucket=parts.netloc, prefix=parts.path.strip("/")
    )
    populate(store, opened(s3_url, make_config()))
    before = store.snapshot()
    monkeypatch.setenv(variable, "WRONGWRONGWRONGWRONG")
    err = raises_exactly(StoreAccessDenied, lambda: open_repository(s3_url, make_config()))
    assert err.retryable is False
    assert "WRONGWRONG" not in str(err)
    assert store.snapshot() == before


def test_unreachable_endpoint_raises_retryable_store_unavailable(services: Any) -> None:
    url = (
        f"s3://bbp-test/p?endpoint_url=http://127.0.0.1:{free_port()}"
        "&region=us-east-1&max_attempts=1&connect_timeout=1"
    )
    started = time.monotonic()
    err = raises_exactly(StoreUnavailable, lambda: open_repository(url, make_config()))
    assert err.retryable is True
    assert time.monotonic() - started < 10


# -- encryption keys -----------------------------------------------------------------------


def test_wrong_passphrase_raises_encryption_key_error_and_changes_nothing(
    sealed: Populated,
) -> None:
    before = sealed.raw.snapshot()
    err = raises_exactly(
        EncryptionKeyError, lambda: open_repository(sealed.raw.url, enc_config("not the key"))
    )
    assert "not the key" not in str(err)
    assert PASSPHRASE not in str(err)
    assert sealed.raw.snapshot() == before


def test_encrypted_store_opened_without_encryption_raises_encryption_key_error(
    sealed: Populated, opened: Callable[[str, CheckpointConfig], Repository]
) -> None:
    # Refused at open, so nothing can write plaintext into an encrypted store.
    before = sealed.raw.snapshot()
    raises_exactly(EncryptionKeyError, lambda: opened(sealed.raw.url, make_config()))
    assert sealed.raw.snapshot() == before


RAW_KEYS = {
    "16 bytes": "base64:" + base64.b64encode(b"k" * 16).decode(),
    "33 bytes": "base64:" + base64.b64encode(b"k" * 33).decode(),
    "empty": "base64:",
    "not base64": "base64:!!c29tZSBrZXk*",
    "urlsafe alphabet": "base64:" + base64.urlsafe_b64encode(b"\xfb" * 32).decode(),
}


@pytest.mark.parametrize(("raw", "secret"), on_backends(RAW_KEYS), indirect=["raw"])
def test_malformed_raw_key_raises_encryption_key_error_and_changes_nothing(
    secret: str, sealed: Populated
) -> None:
    before = sealed.raw.snapshot()
    cfg = enc_config(secret)
    err = raises_exactly(EncryptionKeyError, lambda: open_repository(sealed.raw.url, cfg))
    body = secret.removeprefix("base64:")
    assert not body or body not in str(err)
    assert not body or body not in repr(cfg)
    assert sealed.raw.snapshot() == before


# -- tampered chunks -----------------------------------------------------------------------


def integrity_kind(encrypted: bool) -> type[IntegrityError]:
    return DecryptionError if encrypted else IntegrityError


def check_chunk_failure(
    p: Populated, kind: type[BBPError], *, index: int = 0, missing: bool = False
) -> None:
    """Reading the checkpoint raises ``kind``; verify reports the chunk; nothing changes."""
    before = p.raw.snapshot()
    raises_exactly(kind, lambda: p.repo.read(p.manifest))
    raises_exactly(kind, lambda: p.repo.read(p.manifest, ["blob"]))
    assert p.repo.read(p.manifest, ["state"]) == {"state": p.parts["state"]}
    deep = p.repo.verify(p.manifest, deep=True)
    quick = p.repo.verify(p.manifest)
    assert deep.ok is False
    assert deep.problems == ()
    if missing:
        assert deep.missing == (p.chunk_id(index),)
        assert deep.corrupt == ()
        assert quick.ok is False
        assert quick.missing == (p.chunk_id(index),)
    else:
        assert deep.missing == ()
        assert [cid for cid, _ in deep.corrupt] == [p.chunk_id(index)]
        assert quick.missing == ()  # a quick verify only checks presence
    assert p.raw.snapshot() == before


@pytest.mark.parametrize("index", [0, -1], ids=["compressed chunk", "stored chunk"])
def test_truncated_chunk_raises_integrity_error_and_changes_nothing(
    populated: Populated, encrypted: bool, index: int
) -> None:
    index %= len(populated.manifest.parts["blob"].chunks)
    key = populated.chunk_key(index)
    blob = populated.raw.get(key)
    populated.raw.put(key, blob[: len(blob) // 2])
    check_chunk_failure(populated, integrity_kind(encrypted), index=index)


def test_chunk_truncated_to_less_than_a_header_raises_integrity_error(
    populated: Populated,
) -> None:
    key = populated.chunk_key()
    populated.raw.put(key, populated.raw.get(key)[: HEADER_LEN - 1])
    check_chunk_failure(populated, IntegrityError)


FLIP_AT = {"first": HEADER_LEN, "middle": None, "last": -1}


@pytest.mark.parametrize(("raw", "where"), on_backends(FLIP_AT), indirect=["raw"])
@pytest.mark.parametrize("index", [0, -1], ids=["compressed chunk", "stored chunk"])
def test_bit_flipped_chunk_body_raises_integrity_error_and_changes_nothing(
    populated: Populated, encrypted: bool, where: int | None, index: int
) -> None:
    index %= len(populated.manifest.parts["blob"].chunks)
    key = populated.chunk_key(index)
    blob = populated.raw.get(key)
    at = (HEADER_LEN + len(blob)) // 2 if where is None else where % len(blob)
    populated.raw.put(key, flip_bit(blob, at))
    check_chunk_failure(populated, integrity_kind(encrypted), index=index)


HEADER_FIELDS = {"magic": 0, "format": 4, "flags": 5, "key_id": 6, "nonce": 6 + KEY_ID_LEN}


@pytest.mark.parametrize(("raw", "at"), on_backends(HEADER_FIELDS), indirect=["raw"])
def test_bit_flipped_chunk_header_raises_integrity_error_and_changes_nothing(
    populated: Populated, encrypted: bool, at: int
) -> None:
    key = populated.chunk_key()
    populated.raw.put(key, flip_bit(populated.raw.get(key), at))
    # Magic and format are checked before decryption; flags, key id and nonce are bound
    # into the AEAD (a plaintext object must have a zero key id and nonce).
    check_chunk_failure(populated, integrity_kind(encrypted and at >= 5))


def test_chunk_swapped_with_another_chunk_raises_integrity_error_and_changes_nothing(
    populated: Populated, encrypted: bool
) -> None:
    populated.raw.put(populated.chunk_key(0), populated.raw.get(populated.chunk_key(1)))
    check_chunk_failure(populated, integrity_kind(encrypted))


def test_chunk_replaced_by_a_chunk_of_the_same_size_raises_integrity_error(
    plain: Populated,
) -> None:
    # Same length, same format, valid object: only the content hash can tell.
    ref = plain.manifest.parts["blob"].chunks[-1]
    key = plain.chunk_key(-1)
    forged = encode(os.urandom(ref.size), store_key=key, level=None, seal=None)
    assert len(forged) == len(plain.raw.get(key))
    plain.raw.put(key, forged)
    check_chunk_failure(plain, IntegrityError, index=len(plain.manifest.parts["blob"].chunks) - 1)


def test_deleted_chunk_raises_object_not_found_and_verify_reports_it_missing(
    populated: Populated,
) -> None:
    populated.raw.delete(populated.chunk_key(1))
    check_chunk_failure(populated, ObjectNotFound, index=1, missing=True)


def test_random_bytes_at_a_chunk_key_raise_integrity_error_and_change_nothing(
    populated: Populated,
) -> None:
    key = populated.chunk_key()
    size = len(populated.raw.get(key))
    populated.raw.put(key, random.Random(7).randbytes(size))
    check_chunk_failure(populated, IntegrityError)


def test_plaintext_chunk_in_an_encrypted_store_raises_decryption_error(sealed: Populated) -> None:
    # An unencrypted writer put the right plaintext under the chunk's key.
    ref = sealed.manifest.parts["blob"].chunks[0]
    key = sealed.chunk_key()
    plaintext = sealed.parts["blob"][: ref.size]
    sealed.raw.put(key, encode(plaintext, store_key=key, level=3, seal=None))
    check_chunk_failure(sealed, DecryptionError)


def zstd_bomb(expanded: int) -> bytes:
    """A small zstd frame of ``expanded`` zero bytes, made without holding them in memory."""
    chunker: Any = zstandard.ZstdCompressor(level=3).chunker(chunk_size=MB)
    zeros = bytes(16 * MB)
    out: list[bytes] = []
    for _ in range(expanded // len(zeros)):
        out.extend(chunker.compress(zeros))
    out.extend(chunker.finish())
    return b"".join(out)


def test_decompression_bomb_chunk_raises_integrity_error_with_bounded_memory(
    plain: Populated,
) -> None:
    frame = zstd_bomb(1 << 30)  # 1 GiB of zeros in about 32 KiB
    assert len(frame) < MB
    header = MAGIC + bytes([FORMAT, FLAG_COMPRESSED]) + bytes(KEY_ID_LEN + NONCE_LEN)
    plain.raw.put(plain.chunk_key(), header + frame)
    before = plain.raw.snapshot()

    process = psutil.Process()
    base = process.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak.append(process.memory_info().rss)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tracemalloc.start()
    try:
        err = raises_exactly(IntegrityError, lambda: plain.repo.read(plain.manifest, ["blob"]))
        report = plain.repo.verify(plain.manifest, deep=True)
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        stop.set()
        sampler.join()
    assert "expands past" in str(err)
    assert [cid for cid, _ in report.corrupt] == [plain.chunk_id()]
    assert traced_peak < 100 * MB
    assert max(peak) - base < 100 * MB
    assert plain.raw.snapshot() == before


# -- tampered commit records ---------------------------------------------------------------


def canonical(data: Any) -> bytes:
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def root_of(data: dict[str, Any]) -> str:
    return blake3.blake3(canonical({k: v for k, v in data.items() if k != "root"})).hexdigest()


def plain_body(blob: bytes, key: str) -> bytes:
    """An unencrypted object's plaintext, through the library's codec."""
    body = decode(blob, store_key=key, max_size=64 * MB, keys=KeyLookup(), require_encrypted=False)
    return bytes(body)


def record_json(p: Populated, key: str | None = None) -> dict[str, Any]:
    key = key or p.record_key
    data: dict[str, Any] = json.loads(plain_body(p.raw.get(key), key))
    return data


def craft_record(
    p: Populated,
    mutate: Callable[[dict[str, Any]], object],
    *,
    reroot: bool = True,
    dumps: Callable[[Any], bytes] = canonical,
) -> None:
    """Rewrite the original seq-2 record of an unencrypted store with one change. Its root
    is recomputed unless ``reroot`` is False, so only the intended defect is present."""
    key = p.record_key
    data: dict[str, Any] = json.loads(plain_body(p.record_blob, key))
    mutate(data)
    if reroot:
        data["root"] = root_of(data)
    p.repo.store.put(key, encode(dumps(data), store_key=key, level=None, seal=None))


def check_record_failure(
    p: Populated, kind: type[BBPError], match: str | None = None, *, seq: int = 2
) -> None:
    """Loading the record raises ``kind``; so do listing and verify; nothing changes."""
    before = p.raw.snapshot()
    err = raises_exactly(kind, lambda: p.repo.load_record(OP, WORKER, seq))
    if match is not None:
        assert match in str(err)
    raises_exactly(kind, lambda: p.repo.records(OP, WORKER))
    if seq == 2:
        report = p.repo.verify(p.manifest, deep=True)
        assert report.ok is False
        assert len(report.problems) == 1
        assert "unreadable" in report.problems[0]
    assert p.raw.snapshot() == before


def test_crafting_helper_keeps_an_untouched_record_valid(plain: Populated) -> None:
    craft_record(plain, lambda d: None)
    assert plain.repo.load_record(OP, WORKER, 2) == plain.manifest
    assert plain.repo.verify(plain.manifest, deep=True).ok


def uncompressed_record(p: Populated) -> bytes:
    """Re-store the record uncompressed (still valid), so a flipped bit lands in JSON."""
    craft_record(p, lambda d: None)
    blob = p.raw.get(p.record_key)
    assert blob[5] == 0  # no flags: the canonical JSON follows the header
    return blob


@pytest.mark.parametrize(("raw", "where"), on_backends(FLIP_AT), indirect=["raw"])
def test_bit_flipped_commit_record_raises_manifest_error_and_changes_nothing(
    plain: Populated, where: int | None
) -> None:
    blob = uncompressed_record(plain)
    at = (HEADER_LEN + len(blob)) // 2 if where is None else where % len(blob)
    for mask in (0x01, 0x20, 0x80):
        plain.raw.put(plain.record_key, flip_bit(blob, at, mask))
        check_record_failure(plain, ManifestError)


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_truncated_commit_record_raises_manifest_error_and_changes_nothing(
    plain: Populated, keep: float
) -> None:
    blob = uncompressed_record(plain)
    cut = HEADER_LEN + int((len(blob) - HEADER_LEN) * keep)
    plain.raw.put(plain.record_key, blob[:cut])
    check_record_failure(plain, ManifestError, "not JSON")


def test_commit_record_truncated_inside_its_header_raises_integrity_error(
    plain: Populated,
) -> None:
    plain.raw.put(plain.record_key, plain.record_blob[:10])
    check_record_failure(plain, IntegrityError, "too short")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting ``a.b.0.c`` (dict keys and list indexes) to ``value``."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for name in parents:
            node = node[int(name)] if isinstance(node, list) else node[name]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


UNKNOWN_FIELDS = {
    "top level": _set("pickle", "gASVAAAAAAAAAAA="),
    "in a part": _set("parts.blob.compressed", True),
    "in a chunk ref": _set("parts.blob.chunks.0.offset", 0),
}


@pytest.mark.parametrize(("raw", "mutate"), on_backends(UNKNOWN_FIELDS), indirect=["raw"])
def test_commit_record_with_unknown_field_raises_manifest_error_and_changes_nothing(
    plain: Populated, mutate: Callable[[dict[str, Any]], None]
) -> None:
    craft_record(plain, mutate)
    check_record_failure(plain, ManifestError, "invalid commit record")


VERSIONS = {
    "2": (_set("version", 2), "version"),
    "0": (_set("version", 0), "version"),
    "string": (_set("version", "1"), "version"),
    "null": (_set("version", None), "version"),
    "missing": (lambda d: d.pop("version"), "version"),
    "float": (_set("version", 1.0), "canonical"),  # 1.0 == 1: caught as non-canonical
}


@pytest.mark.parametrize(("raw", "case"), on_backends(VERSIONS), indirect=["raw"])
def test_commit_record_of_another_version_raises_manifest_error_and_changes_nothing(
    plain: Populated, case: tuple[Callable[[dict[str, Any]], None], str]
) -> None:
    mutate, match = case
    craft_record(plain, mutate)
    check_record_failure(plain, ManifestError, match)


def _chunk_size(index: int, size: int) -> Callable[[dict[str, Any]], None]:
    """Set one chunk's size and keep the part's size the sum, so only one thing is wrong."""

    def mutate(data: dict[str, Any]) -> None:
        part = data["parts"]["blob"]
        part["chunks"][index]["size"] = size
        part["size"] = sum(c["size"] for c in part["chunks"])

    return mutate


def _part_size(name: str, change: Callable[[int], Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        part = data["parts"][name]
        part["size"] = change(part["size"])

    return mutate


IMPOSSIBLE_SIZES = {
    "part size is not the sum of its chunks": _part_size("blob", lambda n: n + 1),
    "part size one short": _part_size("blob", lambda n: n - 1),
    "negative part size": _part_size("blob", lambda n: -1),
    "part size past the limit": _part_size("blob", lambda n: (1 << 50) + 1),
    "negative chunk size": _chunk_size(0, -5),
    "zero chunk size": _chunk_size(0, 0),
    "chunk larger than 16 MiB": _chunk_size(0, (16 << 20) + 1),
    "inline part size mismatch": _part_size("state", lambda n: n + 1),
    "size as float": _part_size("blob", float),
    "size as string": _part_size("blob", str),
    "inline and chunked at once": _set("parts.blob.inline", "eHh4"),
}


@pytest.mark.parametrize(("raw", "mutate"), on_backends(IMPOSSIBLE_SIZES), indirect=["raw"])
def test_commit_record_with_impossible_size_raises_manifest_error_and_changes_nothing(
    plain: Populated, mutate: Callable[[dict[str, Any]], None]
) -> None:
    craft_record(plain, mutate)
    check_record_failure(plain, ManifestError, "invalid commit record")


BAD_RECORD_VALUES = {
    "unknown kind": _set("kind", "pickle"),
    "bad stage": _set("stage", "../etc"),
    "bad channel": _set("consumed", {"a/b": 1}),
    "bad owner token": _set("owner_token", "not-a-token"),
    "seq as string": _set("seq", "2"),
    "progress 101": _set("progress", 101.0),
    "bad chunk id": _set("parts.blob.chunks.0.id", "../../config"),
    "bad part name": lambda d: d["parts"].update({"a/b": d["parts"].pop("blob")}),
}


@pytest.mark.parametrize(("raw", "mutate"), on_backends(BAD_RECORD_VALUES), indirect=["raw"])
def test_commit_record_with_bad_value_raises_manifest_error_and_changes_nothing(
    plain: Populated, mutate: Callable[[dict[str, Any]], None]
) -> None:
    craft_record(plain, mutate)
    check_record_failure(plain, ManifestError, "invalid commit record")


NON_CANONICAL: dict[str, Callable[[Any], bytes]] = {
    "indented": lambda d: json.dumps(d, sort_keys=True, indent=1, ensure_ascii=False).encode(),
    "spaces after separators": lambda d: json.dumps(d, sort_keys=True).encode(),
    "unsorted keys": lambda d: json.dumps(
        dict(reversed(list(d.items()))), separators=(",", ":")
    ).encode(),
    "ascii escapes": lambda d: canonical(d).replace(b'"stage":"s"', b'"stage":"\\u0073"'),
    "trailing newline": lambda d: canonical(d) + b"\n",
}


@pytest.mark.parametrize(("raw", "dumps"), on_backends(NON_CANONICAL), indirect=["raw"])
def test_non_canonical_commit_record_raises_manifest_error_and_changes_nothing(
    plain: Populated, dumps: Callable[[Any], bytes]
) -> None:
    craft_record(plain, lambda d: None, dumps=dumps)
    check_record_failure(plain, ManifestError, "canonical")


def test_commit_record_with_wrong_root_raises_manifest_error_and_changes_nothing(
    plain: Populated,
) -> None:
    takeover = record_json(plain, plain.record_key.replace("0000000002", "0000000001"))
    for mutate in (
        _set("root", "0" * 64),
        _set("root", takeover["root"]),  # another record's root
        _set("progress", 50.0),  # the body changed, the root did not
    ):
        craft_record(plain, mutate, reroot=False)
        check_record_failure(plain, ManifestError, "root hash")


def test_commit_record_naming_another_slot_raises_manifest_error(plain: Populated) -> None:
    for mutate in (_set("operation_id", "other"), _set("worker_id", "w1"), _set("seq", 3)):
        craft_record(plain, mutate)
        check_record_failure(plain, ManifestError, "another slot")


def test_commit_record_copied_to_another_slot_raises_manifest_error_and_changes_nothing(
    plain: Populated,
) -> None:
    plain.raw.put(f"checkpoints/{OP}/{WORKER}/0000000003", plain.record_blob)
    check_record_failure(plain, ManifestError, "another slot", seq=3)
    plain.raw.put(f"checkpoints/{OP}/w1/0000000002", plain.record_blob)
    before = plain.raw.snapshot()
    raises_exactly(ManifestError, lambda: plain.repo.load_record(OP, "w1", 2))
    assert plain.raw.snapshot() == before


def test_encrypted_commit_record_moved_to_another_slot_raises_decryption_error(
    sealed: Populated,
) -> None:
    sealed.raw.put(f"checkpoints/{OP}/{WORKER}/0000000003", sealed.record_blob)
    check_record_failure(sealed, DecryptionError, "authentication failed", seq=3)


def test_tampered_encrypted_commit_record_raises_decryption_error_and_changes_nothing(
    sealed: Populated,
) -> None:
    blob = sealed.record_blob
    for bad in (
        flip_bit(blob, len(blob) // 2),  # ciphertext
        flip_bit(blob, len(blob) - 1),  # tag
        flip_bit(blob, 6 + KEY_ID_LEN),  # nonce
        flip_bit(blob, 5),  # flags
        blob[:-1],
        blob[: HEADER_LEN + 16],
    ):
        sealed.raw.put(sealed.record_key, bad)
        check_record_failure(sealed, DecryptionError)


def test_plaintext_commit_record_in_an_encrypted_store_raises_decryption_error(
    sealed: Populated,
) -> None:
    # The record as an unencrypted writer would store it: the same JSON, not sealed.
    key = sealed.record_key
    sealed.raw.put(key, encode(sealed.manifest.to_bytes(), store_key=key, level=None, seal=None))
    check_record_failure(sealed, DecryptionError, "not encrypted")


# -- objects written by something else -----------------------------------------------------

FOREIGN_RECORDS = {
    "random": random.Random(3).randbytes(300),
    "empty": b"",
    "magic only": b"BBPO",
    "future format": b"BBPO\x09" + bytes(40),
    "unknown flag": b"BBPO\x01\x10" + bytes(40),
}


@pytest.mark.parametrize(("raw", "foreign"), on_backends(FOREIGN_RECORDS), indirect=["raw"])
def test_foreign_bytes_at_a_record_key_raise_integrity_error_and_change_nothing(
    plain: Populated, foreign: bytes
) -> None:
    plain.raw.put(plain.record_key, foreign)
    check_record_failure(plain, IntegrityError)


def test_raw_json_at_a_record_key_raises_integrity_error_and_changes_nothing(
    plain: Populated,
) -> None:
    # A tool that wrote the record's JSON without the object header.
    plain.raw.put(plain.record_key, plain.manifest.to_bytes())
    check_record_failure(plain, IntegrityError, "bad magic")


FOREIGN_JSON = {
    "array": b"[1, 2, 3]",
    "other object": b'{"hello": "world"}',
    "null": b"null",
    "string": b'"checkpoint"',
    "not utf-8": b'{"stage": "\xff"}',
    "NaN": b'{"version": 1, "progress": NaN}',
}


@pytest.mark.parametrize(("raw", "body"), on_backends(FOREIGN_JSON), indirect=["raw"])
def test_other_json_at_a_record_key_raises_manifest_error_and_changes_nothing(
    plain: Populated, body: bytes
) -> None:
    key = plain.record_key
    plain.raw.put(key, encode(body, store_key=key, level=None, seal=None))
    check_record_failure(plain, ManifestError)


def test_commit_onto_a_slot_taken_by_another_writer_raises_commit_conflict(
    plain: Populated, opened: Callable[[str, CheckpointConfig], Repository]
) -> None:
    manifest = plain.repo.write({"s": b"next"}, meta(seq=3))
    other = opened(plain.raw.url, make_config())
    other.takeover(OP, WORKER, owner_token="b" * 32, fence=2)  # takes seq 3
    before = plain.raw.snapshot()
    raises_exactly(CommitConflict, lambda: plain.repo.commit(manifest))
    assert plain.raw.snapshot() == before


FOREIGN_SLOT_OBJECTS = {k: k for k in ("random bytes", "raw json", "moved record")}


@pytest.mark.parametrize(("raw", "what"), on_backends(FOREIGN_SLOT_OBJECTS), indirect=["raw"])
def test_commit_onto_a_slot_holding_a_foreign_object_raises_commit_conflict(
    populated: Populated, what: str
) -> None:
    slot = f"checkpoints/{OP}/{WORKER}/0000000003"
    foreign = {
        "random bytes": random.Random(5).randbytes(200),
        "raw json": b'{"kind": "checkpoint"}',
        "moved record": populated.record_blob,
    }[what]
    populated.raw.put(slot, foreign)
    manifest = populated.repo.write({"s": b"next"}, meta(seq=3))
    before = populated.raw.snapshot()
    raises_exactly(CommitConflict, lambda: populated.repo.commit(manifest))
    assert populated.raw.snapshot() == before


def store_config(p: Populated, **changes: Any) -> bytes:
    """The store's ``config`` object with some fields changed, validly encoded."""
    data = json.loads(plain_body(p.raw.get("config"), "config"))
    data.update(changes)
    return encode(canonical(data), store_key="config", level=None, seal=None)


CONFIG_OBJECTS: dict[str, tuple[Callable[[Populated], bytes], type[BBPError], str]] = {
    "garbage": (lambda p: random.Random(1).randbytes(389), IntegrityError, "bad magic"),
    "empty": (lambda p: b"", IntegrityError, "too short"),
    "raw json": (lambda p: plain_body(p.raw.get("config"), "config"), IntegrityError, "magic"),
    "not json": (
        lambda p: encode(b"format = 1", store_key="config", level=None, seal=None),
        ManifestError,
        "not JSON",
    ),
    "truncated": (lambda p: p.raw.get("config")[:-10], ManifestError, "not JSON"),
    "newer format": (lambda p: store_config(p, format=99), ManifestError, "newer"),
    "format zero": (lambda p: store_config(p, format=0), ManifestError, "malformed"),
    "unknown field": (lambda p: store_config(p, shards=4), ManifestError, "malformed"),
    "bad chunker": (
        lambda p: store_config(p, chunker={"min_size": 1, "avg_size": 0, "max_size": 0, "seed": 0}),
        ManifestError,
        "malformed",
    ),
    "marked encrypted": (
        lambda p: flip_bit(store_config(p), 5, FLAG_ENCRYPTED),
        DecryptionError,
        "",
    ),
}


@pytest.mark.parametrize(
    ("raw", "case"), on_backends({k: k for k in CONFIG_OBJECTS}, s3=2), indirect=["raw"]
)
def test_foreign_store_config_object_raises_on_open_and_changes_nothing(
    plain: Populated, case: str
) -> None:
    make, kind, match = CONFIG_OBJECTS[case]
    plain.raw.put("config", make(plain))
    before = plain.raw.snapshot()
    err = raises_exactly(kind, lambda: open_repository(plain.raw.url, make_config()))
    assert match in str(err)
    assert plain.raw.snapshot() == before


def test_foreign_object_under_keys_raises_integrity_error_on_open_and_changes_nothing(
    sealed: Populated,
) -> None:
    (key_obj,) = [k for k in sealed.raw.snapshot() if k.startswith("keys/")]
    for name, data in (
        ("keys/00112233aabbccdd", random.Random(2).randbytes(215)),
        ("keys/00112233aabbccdd", sealed.raw.get(key_obj)),  # a key object under a wrong name
    ):
        sealed.raw.put(name, data)
        before = sealed.raw.snapshot()
        raises_exactly(IntegrityError, lambda: open_repository(sealed.raw.url, enc_config()))
        assert sealed.raw.snapshot() == before


def test_foreign_objects_beside_commit_records_are_ignored_by_record_seqs(
    plain: Populated,
) -> None:
    prefix = f"checkpoints/{OP}/{WORKER}/"
    foreign = {
        prefix + "README": b"notes",
        prefix + "123": b"short name",
        prefix + "0000000000": b"seq zero",
        prefix + "00000000099": b"eleven digits",
        prefix + "-000000001": b"negative",
        prefix + "000000009x": b"not digits",
        prefix + "sub/0000000007": b"nested",
        f"checkpoints/{OP}/{WORKER}x/0000000009": b"a sibling worker with a longer name",
    }
    for key, data in foreign.items():
        plain.raw.put(key, data)
    before = plain.raw.snapshot()
    assert plain.repo.record_seqs(OP, WORKER) == [1, 2]
    assert [r.seq for r in plain.repo.records(OP, WORKER)] == [1, 2]
    assert plain.repo.latest_seq(OP, WORKER) == 2
    assert plain.raw.snapshot() == before
    record = plain.repo.takeover(OP, WORKER, owner_token="b" * 32, fence=2)
    assert record.seq == 3
    after = plain.raw.snapshot()
    assert after.pop(record.store_key)
    assert after == before


# -- bad identifiers and metadata ----------------------------------------------------------

BAD_IDS: dict[str, Any] = {
    "slash": "a/b",
    "brace": "a{b}",
    "dotdot": "..",
    "leading dot": ".hidden",
    "empty": "",
    "129 chars": "x" * 129,
    "space": "a b",
    "newline": "ab\n",
    "non-ascii": "ü",
    "int": 5,
    "none": None,
}


# Where a store is involved, a few of them (every one is checked on CheckpointMeta above).
STORE_BAD_IDS = {k: BAD_IDS[k] for k in ("slash", "dotdot", "empty", "129 chars", "int", "none")}


@pytest.mark.parametrize("bad", list(BAD_IDS.values()), ids=list(BAD_IDS))
@pytest.mark.parametrize("where", ["operation_id", "worker_id", "stage", "consumed", "produced"])
def test_bad_id_in_checkpoint_meta_raises_invalid_identifier(where: str, bad: Any) -> None:
    value: Any = {bad: 1} if where in ("consumed", "produced") else bad
    raises_exactly(InvalidIdentifier, lambda: meta(**{where: value}))


BAD_SEQS: dict[str, Any] = {
    "zero": 0,
    "negative": -1,
    "bool": True,
    "string": "2",
    "float": 2.0,
    "eleven digits": 10**10,
    "none": None,
}


@pytest.mark.parametrize("seq", list(BAD_SEQS.values()), ids=list(BAD_SEQS))
def test_bad_seq_in_checkpoint_meta_raises_invalid_identifier(seq: Any) -> None:
    raises_exactly(InvalidIdentifier, lambda: meta(seq=seq))


@pytest.mark.parametrize(("raw", "bad"), on_backends(STORE_BAD_IDS), indirect=["raw"])
def test_bad_part_name_raises_invalid_identifier_before_any_upload(
    plain: Populated, bad: Any
) -> None:
    before = plain.raw.snapshot()
    parts: dict[Any, bytes] = {"good": big_blob(), bad: b"x" * 10_000}
    raises_exactly(InvalidIdentifier, lambda: plain.repo.write(parts, meta(seq=3)))
    assert plain.raw.snapshot() == before


@pytest.mark.parametrize(("raw", "bad"), on_backends(STORE_BAD_IDS), indirect=["raw"])
def test_bad_id_in_takeover_raises_invalid_identifier_and_writes_nothing(
    plain: Populated, bad: Any
) -> None:
    before = plain.raw.snapshot()
    repo = plain.repo
    raises_exactly(
        InvalidIdentifier, lambda: repo.takeover(bad, WORKER, owner_token=TOKEN, fence=2)
    )
    raises_exactly(InvalidIdentifier, lambda: repo.takeover(OP, bad, owner_token=TOKEN, fence=2))
    assert plain.raw.snapshot() == before


BAD_LEASES = {
    "short token": ("xyz", 2),
    "uppercase token": ("A" * 32, 2),
    "no token": (None, 2),
    "negative fence": (TOKEN, -1),
    "string fence": (TOKEN, "2"),
}


@pytest.mark.parametrize(("raw", "lease"), on_backends(BAD_LEASES), indirect=["raw"])
def test_bad_owner_token_or_fence_in_takeover_raises_invalid_checkpoint_and_writes_nothing(
    plain: Populated, lease: tuple[Any, Any]
) -> None:
    token, fence = lease
    before = plain.raw.snapshot()
    raises_exactly(
        InvalidCheckpoint, lambda: plain.repo.takeover(OP, WORKER, owner_token=token, fence=fence)
    )
    assert plain.raw.snapshot() == before


@pytest.mark.parametrize(("raw", "bad"), on_backends(STORE_BAD_IDS), indirect=["raw"])
def test_bad_id_in_record_listing_raises_invalid_identifier(plain: Populated, bad: Any) -> None:
    repo = plain.repo
    for call in (
        lambda: repo.records(bad, WORKER),
        lambda: repo.records(OP, bad),
        lambda: repo.record_seqs(bad, WORKER),
        lambda: repo.latest_seq(OP, bad),
    ):
        raises_exactly(InvalidIdentifier, call)


@pytest.mark.parametrize(("raw", "bad"), on_backends(STORE_BAD_IDS), indirect=["raw"])
def test_bad_id_in_load_record_raises_invalid_identifier(plain: Populated, bad: Any) -> None:
    raises_exactly(InvalidIdentifier, lambda: plain.repo.load_record(bad, WORKER, 2))
    raises_exactly(InvalidIdentifier, lambda: plain.repo.load_record(OP, bad, 2))


@pytest.mark.parametrize(("raw", "seq"), on_backends(BAD_SEQS), indirect=["raw"])
def test_bad_seq_in_load_record_raises_invalid_identifier(plain: Populated, seq: Any) -> None:
    raises_exactly(InvalidIdentifier, lambda: plain.repo.load_record(OP, WORKER, seq))


BAD_VALUES: dict[str, dict[str, Any]] = {
    "progress 101": {"progress": 101},
    "progress -1": {"progress": -1.0},
    "progress NaN": {"progress": float("nan")},
    "progress inf": {"progress": float("inf")},
    "negative memory_bytes": {"memory_bytes": -1},
    "float memory_bytes": {"memory_bytes": 1.5},
    "elapsed NaN": {"elapsed_seconds": float("nan")},
    "negative elapsed": {"elapsed_seconds": -3.0},
    "unknown granularity": {"granularity": "ultra"},
    "negative epoch": {"epoch": -1},
    "non-str custom metadata": {"custom_metadata": {"k": 5}},
    "negative offset": {"consumed": {"in": -1}},
    "bool offset": {"produced": {"out": True}},
    "bad owner token": {"owner_token": "not-a-token"},
    "negative fence": {"fence": -1},
}


@pytest.mark.parametrize(("raw", "values"), on_backends(BAD_VALUES), indirect=["raw"])
def test_bad_metadata_value_raises_invalid_checkpoint_before_any_upload(
    plain: Populated, values: dict[str, Any]
) -> None:
    before = plain.raw.snapshot()

    def write() -> None:
        plain.repo.write({"blob": big_blob()}, meta(seq=3, **values))

    raises_exactly(InvalidCheckpoint, write)
    assert plain.raw.snapshot() == before


def test_metadata_mapping_changed_after_construction_does_not_change_the_checkpoint(
    plain: Populated,
) -> None:
    consumed = {"in": 5}
    m = meta(seq=3, consumed=consumed)
    consumed["in"] = -1  # the caller reuses its offsets dict
    manifest = plain.repo.write({"blob": big_blob()}, m)
    assert dict(manifest.consumed) == {"in": 5}


BAD_PARTS: dict[str, Any] = {"int": 42, "float": 4.5, "dict": {"nested": b"x"}, "none": None}


@pytest.mark.parametrize(("raw", "bad"), on_backends(BAD_PARTS), indirect=["raw"])
def test_part_of_unsupported_type_raises_invalid_checkpoint_before_any_upload(
    plain: Populated, bad: Any
) -> None:
    before = plain.raw.snapshot()
    parts = {"good": big_blob(), "bad": bad}
    raises_exactly(InvalidCheckpoint, lambda: plain.repo.write(parts, meta(seq=3)))
    assert plain.raw.snapshot() == before


def test_part_path_that_does_not_exist_raises_invalid_checkpoint_before_any_upload(
    plain: Populated, tmp_path: Path
) -> None:
    before = plain.raw.snapshot()
    parts: dict[str, Any] = {"good": big_blob(), "model": tmp_path / "no-such-file.bin"}
    raises_exactly(InvalidCheckpoint, lambda: plain.repo.write(parts, meta(seq=3)))
    assert plain.raw.snapshot() == before
