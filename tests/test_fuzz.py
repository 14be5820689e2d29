"""Fuzzing every parser of untrusted input: stored objects and commit records, key
objects and the store's config, store and coordination URLs, configs (mappings, the
environment, TOML files), resume arguments, ids and resume plan bodies.

The property is the same for all: a call returns a valid value or raises a ``BBPError``;
any other exception is a bug. Each example has a deadline (a hang fails it), and the
object decoder's memory is measured against the size recorded for the object. ``make
test`` runs a few hundred derandomised examples per target; ``make soak`` many more,
with fresh randomness each run.
"""

from __future__ import annotations

import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import zstandard
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from fuzz_helpers import RAW_KEY, SEALED, MemoryStore, apply_edits
from fuzz_inputs import (
    KEY,
    VALID_PLAN,
    argv_cases,
    bomb_cases,
    canonical,
    chunk_cases,
    config_keys,
    config_values,
    decode_cases,
    env_cases,
    id_cases,
    key_object_cases,
    manifest_doc,
    plan_bodies,
    record_cases,
    store_config_cases,
    toml_texts,
    url_texts,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bbp_dist_resume import CheckpointConfig
from bbp_dist_resume.api.utils import parse_resume_context
from bbp_dist_resume.blobstore.url import parse_file_url, parse_s3_url
from bbp_dist_resume.coordination import url as coord_url
from bbp_dist_resume.coordination.redis_client import connect_client
from bbp_dist_resume.errors import BBPError, IntegrityError
from bbp_dist_resume.ids import check_id, check_seq, parse_checkpoint_id
from bbp_dist_resume.policy.plan import RecoveryPlan, build_plan
from bbp_dist_resume.repository import keys as keys_module
from bbp_dist_resume.repository.chunkid import ChunkId
from bbp_dist_resume.repository.codec import FLAG_COMPRESSED, HEADER_LEN, KeyLookup, decode, encode
from bbp_dist_resume.repository.keys import KeyRing
from bbp_dist_resume.repository.manifest import ChunkRef, parse_record
from bbp_dist_resume.repository.objects import ObjectCodec
from bbp_dist_resume.repository.storeconfig import CONFIG_KEY, load_existing

# A deadline catches a hang or a pathological slowdown, with room for a loaded machine.
QUICK = settings(
    max_examples=300,
    deadline=timedelta(seconds=2),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SOAK = settings(
    QUICK, max_examples=20_000, derandomize=False, deadline=timedelta(seconds=5), print_blob=True
)


def library_errors_only(fn: Callable[[], Any]) -> Any:
    """Run ``fn``: a ``BBPError`` is a refusal (None); any other exception propagates."""
    try:
        return fn()
    except BBPError:
        return None


# -- the object decoder ------------------------------------------------------------------


def check_decode_any(case: tuple[bytes, int, bool, bool]) -> None:
    blob, max_size, with_keys, require_encrypted = case
    keys: KeyLookup = SEALED.ring if with_keys else KeyLookup()
    out = library_errors_only(
        lambda: decode(
            blob,
            store_key="chunks/ab/x",
            max_size=max_size,
            keys=keys,
            require_encrypted=require_encrypted,
        )
    )
    assert out is None or len(out) <= max_size


def check_chunk_mutation(case: tuple[bytes, int | None, bool, list[Any], int]) -> None:
    """A stored chunk, mutated and read back: the original bytes exactly, or an error."""
    data, level, sealed, edits, size_delta = case
    store = SEALED if sealed else MemoryStore()
    codec = ObjectCodec(store, level=level, keyring=store.ring if sealed else None)
    cid = codec.chunk_id(data)
    blob = codec.seal_chunk(cid, data)
    store.objects[cid.store_key] = mutated = apply_edits(blob, edits)
    size = len(data) + size_delta
    ref = ChunkRef.model_construct(id=cid.hex, size=size)
    out = library_errors_only(lambda: codec.get_chunk(ref))
    assert out is None or (bytes(out) == data and size == len(data))
    if sealed and mutated != blob:
        assert out is None  # authenticated: any change is refused


def check_bomb(case: tuple[int, int, bool]) -> None:
    """A compressed body that expands far past the recorded size is refused, and the
    decoder's allocations stay near the recorded size, whatever the frame claims."""
    recorded, factor, declare = case
    plain = bytes(recorded * factor)
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=declare)
    header = encode(b"", store_key="k", level=None, seal=None)
    blob = header[:5] + bytes([FLAG_COMPRESSED]) + header[6:HEADER_LEN] + cctx.compress(plain)
    del plain
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError, match=r"expands past|longer than"):
            decode(
                blob, store_key="k", max_size=recorded, keys=KeyLookup(), require_encrypted=False
            )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * recorded + (256 << 10), (peak, recorded)


# -- commit records, key objects, the store's config ------------------------------------


def check_record(case: tuple[bytes, bool, int | None, str]) -> None:
    body, sealed, level, key = case
    store = SEALED if sealed else MemoryStore()
    codec = ObjectCodec(store, level=level, keyring=store.ring if sealed else None)
    blob = encode(body, store_key=key, level=level, seal=store.ring.writer.seal if sealed else None)
    store.objects[key] = blob
    record = library_errors_only(lambda: codec.get_record(key))
    assert record is None or (record.store_key == key and record.to_bytes() == body)
    library_errors_only(lambda: parse_record(body, key))


def check_key_object(case: tuple[bytes, str]) -> None:
    body, key_id = case
    store = MemoryStore()
    store.objects[f"keys/{key_id}"] = encode(
        body, store_key=f"keys/{key_id}", level=None, seal=None
    )
    kdf = MemoryStore.kdf()
    library_errors_only(lambda: KeyRing.open(store, kdf, [RAW_KEY]))


class CheapScrypt:
    """cryptography's own checks of scrypt parameters, without the cost of deriving."""

    def __init__(self, **params: Any) -> None:
        Scrypt(**params)

    def derive(self, secret: bytes) -> bytes:
        return bytes(32)


def check_store_config(body: bytes) -> None:
    store = MemoryStore()
    store.objects[CONFIG_KEY] = encode(body, store_key=CONFIG_KEY, level=None, seal=None)
    found = library_errors_only(lambda: load_existing(store))
    if found is not None:  # a config the library accepts must also open its keys
        library_errors_only(lambda: KeyRing.open(store, found.kdf, [RAW_KEY]))
        with mock.patch.object(keys_module, "Scrypt", CheapScrypt):
            library_errors_only(lambda: keys_module.derive_kek("a passphrase", found.kdf))


# -- URLs, configs, arguments, ids, plans ------------------------------------------------


def check_store_url(url: str) -> None:
    library_errors_only(lambda: parse_file_url(url))
    library_errors_only(lambda: parse_s3_url(url))


def check_coord_url(url: str) -> None:
    # Parsing only: Redis clients are built (never connected) and SQLite files never made.
    def redis_client(u: str, timeout_s: float, **_: Any) -> Any:
        if u.startswith("redis+cluster://"):
            return None  # a Cluster client connects while it is built
        client = connect_client(u, timeout_s=timeout_s)
        client.close()
        return client

    with (
        mock.patch.object(coord_url, "connect", redis_client),
        mock.patch.object(coord_url, "SQLiteCoordination", lambda path, **_: path),
    ):
        library_errors_only(lambda: coord_url.open_coordination(url))


def check_config_mapping(data: dict[str, Any]) -> None:
    config = library_errors_only(lambda: CheckpointConfig(**data))
    assert config is None or isinstance(config, CheckpointConfig)


def check_config_env(env: dict[str, str]) -> None:
    library_errors_only(lambda: CheckpointConfig.load(env=env))


@pytest.fixture(scope="module")
def toml_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def check_config_toml(text: str, folder: Path) -> None:
    path = folder / "c.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    library_errors_only(lambda: CheckpointConfig.load(path, env={}))


def check_argv(argv: list[str]) -> None:
    request = library_errors_only(lambda: parse_resume_context(argv))
    if request is not None:
        check_id(request.operation_id)
        if request.checkpoint_id is not None:
            assert parse_checkpoint_id(request.checkpoint_id)[0] == request.operation_id


def check_ids(value: Any) -> None:
    accepted = library_errors_only(lambda: check_id(value, "x"))
    if accepted is not None:
        assert accepted.isascii() and len(accepted) <= 128
        assert not accepted.startswith(".") and not set(accepted) & set("/\\{}\x00 :")
    parsed = library_errors_only(lambda: parse_checkpoint_id(value))
    if parsed is not None:
        op, worker, seq = parsed
        check_id(op)
        check_id(worker)
        check_seq(seq)
        assert value.split("/")[:2] == [op, worker]
    library_errors_only(lambda: check_seq(value))


def check_plan(body: Any) -> None:
    plan = library_errors_only(lambda: RecoveryPlan.from_body("op", 4, body))
    if plan is None:
        return
    assert RecoveryPlan.from_body("op", 4, plan.to_body()) == plan
    # What the coordinator does with a published plan: plan again from its counts.
    histories: dict[str, Any] = {w: [] for w in plan.entries} or {"w0": []}
    library_errors_only(
        lambda: build_plan(
            "op",
            histories,
            quarantined=plan.quarantined,
            attempts=plan.attempts,
            counted=plan.counted,
        )
    )


# -- the tests ---------------------------------------------------------------------------

TARGETS: dict[str, tuple[Any, Callable[[Any], None]]] = {
    "decode-any-bytes": (decode_cases, check_decode_any),
    "chunk-mutated": (chunk_cases, check_chunk_mutation),
    "decompression-bomb": (bomb_cases, check_bomb),
    "commit-record": (record_cases, check_record),
    "key-object": (key_object_cases, check_key_object),
    "store-config": (store_config_cases, check_store_config),
    "store-url": (url_texts(), check_store_url),
    "coord-url": (url_texts(), check_coord_url),
    "config-mapping": (
        st.dictionaries(config_keys, config_values, max_size=6),
        check_config_mapping,
    ),
    "config-env": (env_cases, check_config_env),
    "resume-argv": (argv_cases, check_argv),
    "ids": (id_cases, check_ids),
    "plan-body": (plan_bodies(), check_plan),
}


def run_target(name: str, profile: settings) -> None:
    strategy, check = TARGETS[name]

    @profile
    @given(strategy)
    def fuzz(value: Any) -> None:
        check(value)

    fuzz()


def run_toml(folder: Path, profile: settings) -> None:
    @profile
    @given(toml_texts())
    def fuzz(text: str) -> None:
        check_config_toml(text, folder)

    fuzz()


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz_target_raises_only_library_errors(name: str) -> None:
    run_target(name, QUICK)


def test_fuzz_toml_config_files_raise_only_config_errors(toml_dir: Path) -> None:
    run_toml(toml_dir, QUICK)


@pytest.mark.soak
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", list(TARGETS))
def test_soak_fuzz_target_raises_only_library_errors(name: str) -> None:
    run_target(name, SOAK)


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_soak_fuzz_toml_config_files(toml_dir: Path) -> None:
    run_toml(toml_dir, SOAK)


def test_the_fuzzed_parsers_accept_what_the_library_writes() -> None:
    """The fuzzers are not vacuous: the valid inputs they mutate do parse."""
    store = MemoryStore()
    codec = ObjectCodec(store, level=3, keyring=None)
    cid = ChunkId.of(b"x" * 100)
    store.objects[cid.store_key] = codec.seal_chunk(cid, b"x" * 100)
    assert codec.get_chunk(ChunkRef(id=cid.hex, size=100)) == b"x" * 100
    assert load_existing(MemoryStore.with_config()) is not None
    assert parse_resume_context(["--resume-checkpoint", "op/w0/3"]) is not None
    assert parse_file_url("file:///tmp/x") == "/tmp/x"
    assert RecoveryPlan.from_body("op", 4, VALID_PLAN).entries
    record = canonical(manifest_doc([5, 7], inline=True))
    assert parse_record(record, KEY).store_key == KEY
