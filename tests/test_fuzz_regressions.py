"""Inputs the fuzzers of tests/test_fuzz.py found raising something other than a
``BBPError``, each kept as a plain example so the fix stays fixed; and a real
decompression bomb opened under a hard memory limit."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import zstandard
from fuzz_helpers import RAW_KEY, VALID_CONFIG, MemoryStore

from bbp_dist_resume import CheckpointConfig
from bbp_dist_resume.blobstore.url import parse_file_url, parse_s3_url
from bbp_dist_resume.coordination.url import sqlite_path
from bbp_dist_resume.errors import (
    ConfigError,
    IntegrityError,
    InvalidCheckpoint,
    InvalidIdentifier,
    ManifestError,
)
from bbp_dist_resume.ids import parse_checkpoint_id
from bbp_dist_resume.policy.plan import RecoveryPlan, build_plan
from bbp_dist_resume.repository.codec import encode
from bbp_dist_resume.repository.keys import KdfParams, KeyRing
from bbp_dist_resume.repository.storeconfig import CONFIG_KEY, load_existing


@pytest.mark.parametrize("name", ["self", "__pydantic_self__"])
def test_a_config_key_named_like_an_argument_is_a_config_error(name: str) -> None:
    # It was a TypeError ("got multiple values for argument 'self'"), from a TOML file too.
    with pytest.raises(ConfigError, match=name):
        CheckpointConfig(**{name: "x"})


def test_a_toml_file_with_a_self_key_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('self = "PT5M"\n')
    with pytest.raises(ConfigError, match="self"):
        CheckpointConfig.load(path, env={})


@pytest.mark.parametrize("url", ["file://[", "file://]/x", "s3://[", "s3://b]"])
def test_an_unbalanced_bracket_in_a_store_url_is_a_config_error(url: str) -> None:
    # urllib raised ValueError("Invalid IPv6 URL").
    with pytest.raises(ConfigError, match="does not parse"):
        parse_file_url(url) if url.startswith("file") else parse_s3_url(url)


def test_an_unbalanced_bracket_in_a_sqlite_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="does not parse"):
        sqlite_path("sqlite://[/x.db")


@pytest.mark.parametrize("wrapped", ["\u0080", "0", "", "AAAA", "=" * 80])
def test_a_key_object_with_a_bad_wrapped_key_is_an_integrity_error(wrapped: str) -> None:
    # Non-ASCII and bad padding raised ValueError / binascii.Error from base64; an empty
    # or short value reached AESGCM, which raised ValueError for the nonce.
    body = {"version": 1, "key_id": "0011223344556677", "created_at": "", "wrapped": wrapped}
    store = MemoryStore()
    store.objects["keys/0011223344556677"] = encode(
        json.dumps(body).encode(), store_key="keys/0011223344556677", level=None, seal=None
    )
    with pytest.raises(IntegrityError, match="malformed key object"):
        KeyRing.open(store, MemoryStore.kdf(), [RAW_KEY])


@pytest.mark.parametrize(
    "kdf",
    [
        {"n": (1 << 15) + 1},  # not a power of two: cryptography's Scrypt raised ValueError
        {"salt": "a" * 17},  # not base64: binascii.Error when a passphrase was derived
        {"salt": base64.b64encode(bytes(12)).decode()},  # 16 characters, 12 bytes
        {"n": 1 << 20, "r": 32, "p": 16},  # hours of scrypt and 4 GiB at every open
    ],
)
def test_a_store_config_with_unusable_scrypt_parameters_is_refused(kdf: dict[str, Any]) -> None:
    doc = {**VALID_CONFIG, "kdf": {**VALID_CONFIG["kdf"], **kdf}}
    store = MemoryStore()
    store.objects[CONFIG_KEY] = encode(
        json.dumps(doc).encode(), store_key=CONFIG_KEY, level=None, seal=None
    )
    with pytest.raises(ManifestError, match="malformed store config"):
        load_existing(store)
    assert load_existing(MemoryStore.with_config()) is not None  # the unchanged one opens
    assert KdfParams(salt=VALID_CONFIG["kdf"]["salt"]).n == 1 << 15


# -- a real decompression bomb, under a hard limit on the address space ------------------

BOMB = 1 << 30  # 1 GiB of zeros: about 32 KiB compressed
HEADROOM = 384 << 20  # what the child may still allocate: far less than the bomb

CHILD = textwrap.dedent(
    """
    import resource, sys, zstandard
    from bbp_dist_resume.errors import IntegrityError
    from bbp_dist_resume.repository.codec import HEADER_LEN
    from bbp_dist_resume.repository.manifest import ChunkRef
    from bbp_dist_resume.repository.objects import ObjectCodec
    from fuzz_helpers import MemoryStore

    store = MemoryStore()
    codec = ObjectCodec(store, level=3, keyring=None)
    bomb = open(sys.argv[1], "rb").read()
    chunk = "chunks/00/" + "0" * 64
    store.objects[chunk] = store.objects["checkpoints/op/w0/0000000001"] = bomb
    vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize"))
    limit = vm * 1024 + int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:  # the control: trusting the frame's own size does not fit under the limit
        zstandard.ZstdDecompressor().decompress(bomb[HEADER_LEN:])
        print("control: decompressed")
    except MemoryError:
        print("control: out of memory")
    for name, read in [
        ("chunk", lambda: codec.get_chunk(ChunkRef(id="0" * 64, size=1 << 20))),
        ("record", lambda: codec.get_record("checkpoints/op/w0/0000000001")),
    ]:
        try:
            read()
            print(name, "read")
        except IntegrityError as exc:
            print(name, "refused:", exc)
    """
)


def zstd_bomb(size: int) -> bytes:
    """``size`` zero bytes as one zstd frame that declares its size, compressed as a
    stream so that the test never holds them."""
    cobj = zstandard.ZstdCompressor(level=1).compressobj(size=size)
    block = bytes(16 << 20)
    parts = [cobj.compress(block) for _ in range(size // len(block))]
    return b"".join([*parts, cobj.flush()])


def test_a_real_zstd_bomb_is_refused_without_allocating_its_size(tmp_path: Path) -> None:
    frame = zstd_bomb(BOMB)
    assert len(frame) < 64 << 10
    assert zstandard.get_frame_parameters(frame).content_size == BOMB
    header = encode(b"", store_key="k", level=None, seal=None)
    blob = header[:5] + bytes([0x01]) + header[6:] + frame  # flags: compressed
    (tmp_path / "bomb").write_bytes(blob)
    ran = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "bomb"), str(HEADROOM)],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0] == "control: out of memory"  # the limit bites: a 1 GiB buffer fails
    # A chunk is bounded by its recorded size (1 MiB), a record by the 64 MiB record cap.
    assert lines[1].startswith("chunk refused: object expands past the expected 1048576")
    assert lines[2].startswith("record refused: object expands past the expected 67108864")


def test_a_checkpoint_id_with_a_seq_of_thousands_of_digits_is_an_invalid_identifier() -> None:
    # int() of a 5,000-digit string raised ValueError (Python's digit limit).
    with pytest.raises(InvalidIdentifier):
        parse_checkpoint_id("op/w0/" + "9" * 5000)
    with pytest.raises(InvalidIdentifier):
        parse_checkpoint_id("op/w0/" + "1" * 11)
    assert parse_checkpoint_id("op/w0/9999999999") == ("op", "w0", 9999999999)


@pytest.mark.parametrize("field", ["quarantined", "attempts"])
def test_a_plan_body_keyed_by_something_else_than_checkpoint_ids_is_invalid(field: str) -> None:
    # A quarantined id 'op/w0/1_extra' reached int() when the coordinator planned again.
    body = {
        "version": 1,
        "entries": {},
        field: {"op/w0/1_extra": "" if field == "quarantined" else 1},
    }
    with pytest.raises(InvalidCheckpoint):
        RecoveryPlan.from_body("op", 4, body)
    with pytest.raises(InvalidIdentifier):
        build_plan("op", {"w0": []}, quarantined={"op/w0/1_extra": "crashed"})
