"""The object encoding: round trips, binding to the key, bounded decompression."""

from __future__ import annotations

import os
import random

import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from bbp_dist_resume.errors import DecryptionError, IntegrityError
from bbp_dist_resume.repository.codec import (
    FLAG_COMPRESSED,
    HEADER_LEN,
    KeyLookup,
    SealKey,
    decode,
    encode,
)

KEY = SealKey(b"\x01" * 8, AESGCM(b"k" * 32))
OTHER = SealKey(b"\x01" * 8, AESGCM(b"j" * 32))


class Keys(KeyLookup):
    def __init__(self, *keys: SealKey) -> None:
        self._keys = {k.key_id: k for k in keys}

    def seal_key(self, key_id: bytes) -> SealKey | None:
        return self._keys.get(key_id)


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=5000),
    level=st.sampled_from([None, 1, 3, 19, -3]),
    sealed=st.booleans(),
)
def test_every_encoding_round_trips(data: bytes, level: int | None, sealed: bool) -> None:
    blob = encode(data, store_key="chunks/aa/x", level=level, seal=KEY if sealed else None)
    out = decode(
        blob, store_key="chunks/aa/x", max_size=len(data), keys=Keys(KEY), require_encrypted=sealed
    )
    assert out == data


def test_the_same_plaintext_gets_a_fresh_nonce_each_time() -> None:
    a = encode(b"same", store_key="k", level=None, seal=KEY)
    b = encode(b"same", store_key="k", level=None, seal=KEY)
    assert a[: HEADER_LEN - 12] == b[: HEADER_LEN - 12] and a != b


def test_incompressible_data_is_stored_uncompressed() -> None:
    blob = encode(os.urandom(100_000), store_key="k", level=3, seal=None)
    assert not blob[5] & FLAG_COMPRESSED
    text = encode(b"a,b,c\n" * 20_000, store_key="k", level=3, seal=None)
    assert text[5] & FLAG_COMPRESSED and len(text) < 10_000


def test_a_sealed_object_moved_to_another_key_fails_to_open() -> None:
    blob = encode(b"payload", store_key="chunks/aa/one", level=None, seal=KEY)
    with pytest.raises(DecryptionError):
        decode(
            blob, store_key="chunks/aa/two", max_size=100, keys=Keys(KEY), require_encrypted=True
        )


@pytest.mark.parametrize("offset", [4, 5, 6, 14, HEADER_LEN, -1])
def test_any_flipped_byte_of_a_sealed_object_is_detected(offset: int) -> None:
    blob = bytearray(encode(b"payload" * 10, store_key="k", level=None, seal=KEY))
    blob[offset] ^= 0x01
    with pytest.raises(IntegrityError):
        decode(bytes(blob), store_key="k", max_size=100, keys=Keys(KEY), require_encrypted=True)


def test_a_wrong_or_missing_key_is_a_decryption_error() -> None:
    blob = encode(b"payload", store_key="k", level=None, seal=KEY)
    with pytest.raises(DecryptionError, match="authentication failed"):
        decode(blob, store_key="k", max_size=100, keys=Keys(OTHER), require_encrypted=True)
    with pytest.raises(DecryptionError, match="no configured key"):
        decode(blob, store_key="k", max_size=100, keys=Keys(), require_encrypted=True)


def test_a_plaintext_object_in_an_encrypted_store_is_refused() -> None:
    blob = encode(b"payload", store_key="k", level=None, seal=None)
    with pytest.raises(DecryptionError, match="not encrypted"):
        decode(blob, store_key="k", max_size=100, keys=Keys(KEY), require_encrypted=True)


@pytest.mark.parametrize(
    "blob", [b"", b"BBPO", b"XXXX" + bytes(40), random.Random(64).randbytes(64)]
)
def test_foreign_bytes_are_an_integrity_error(blob: bytes) -> None:
    with pytest.raises(IntegrityError):
        decode(blob, store_key="k", max_size=100, keys=Keys(), require_encrypted=False)


def test_a_decompression_bomb_stops_at_the_expected_size() -> None:
    bomb_body = zstandard.ZstdCompressor(level=19).compress(bytes(512 << 20))
    header = encode(b"", store_key="k", level=None, seal=None)
    blob = header[:5] + bytes([FLAG_COMPRESSED]) + header[6:] + bomb_body
    assert len(blob) < 100_000
    with pytest.raises(IntegrityError, match="expands past"):
        decode(blob, store_key="k", max_size=1 << 20, keys=Keys(), require_encrypted=False)


def test_unknown_flags_and_formats_are_refused() -> None:
    blob = bytearray(encode(b"x" * 10, store_key="k", level=None, seal=None))
    blob[5] = 0x80
    with pytest.raises(IntegrityError, match="unsupported"):
        decode(bytes(blob), store_key="k", max_size=100, keys=Keys(), require_encrypted=False)
    blob[5], blob[4] = 0, 9
    with pytest.raises(IntegrityError, match="unsupported"):
        decode(bytes(blob), store_key="k", max_size=100, keys=Keys(), require_encrypted=False)
