"""The object encoding of DESIGN.md: ``magic | format | flags | key_id | nonce | body``.

``body`` is the plaintext, zstd-compressed when that saves space, then AES-256-GCM-sealed
when encrypted, with the header and the object's store key as associated data: a blob
moved to another key, or given another header, fails to open. Decompression is bounded by
the size the caller expects, so a small object cannot expand into a memory bomb.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bbp_dist_resume.errors import DecryptionError, IntegrityError

MAGIC = b"BBPO"
FORMAT = 1
FLAG_COMPRESSED = 0x01
FLAG_ENCRYPTED = 0x02
KEY_ID_LEN = 8
NONCE_LEN = 12
_HEADER = struct.Struct(f">4sBB{KEY_ID_LEN}s{NONCE_LEN}s")
HEADER_LEN = _HEADER.size
_NO_KEY = bytes(KEY_ID_LEN)
_NO_NONCE = bytes(NONCE_LEN)
# Keep compressed output only if it saves at least this fraction: random data then costs
# no decompression on read, and the flag tells the reader which it got.
_MIN_SAVING = 0.03
_SAMPLE = 64 * 1024


@dataclass(frozen=True, slots=True)
class SealKey:
    """An AES-256-GCM key and the 8-byte id written into headers sealed with it."""

    key_id: bytes
    aead: AESGCM


class KeyLookup:
    """Finds the ``SealKey`` for a header's key id; the key layer subclasses it."""

    def seal_key(self, key_id: bytes) -> SealKey | None:
        """Return the key with that id, or None when it is not available."""
        return None


def encode(
    plaintext: bytes | memoryview, *, store_key: str, level: int | None, seal: SealKey | None
) -> bytes:
    """Encode one object.

    Args:
        plaintext: the bytes to store.
        store_key: the key the object will live under (bound into the AEAD).
        level: zstd level, or None for no compression.
        seal: the key to encrypt with, or None for no encryption.
    """
    flags, body = _compress(plaintext, level)
    if seal is None:
        return _HEADER.pack(MAGIC, FORMAT, flags, _NO_KEY, _NO_NONCE) + body
    flags |= FLAG_ENCRYPTED
    nonce = os.urandom(NONCE_LEN)  # random per object, never derived from content
    header = _HEADER.pack(MAGIC, FORMAT, flags, seal.key_id, nonce)
    return header + seal.aead.encrypt(nonce, body, header + store_key.encode())


def _compress(plaintext: bytes | memoryview, level: int | None) -> tuple[int, bytes | memoryview]:
    if level is None or len(plaintext) < 64:
        return 0, plaintext
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
    # Random-looking data (already compressed, encrypted): a sample tells, and saves
    # compressing a whole chunk into a buffer that would be thrown away.
    sample = plaintext[:_SAMPLE]
    if len(plaintext) > 4 * _SAMPLE and not _saves(len(cctx.compress(sample)), _SAMPLE):
        return 0, plaintext
    packed = cctx.compress(plaintext)
    if _saves(len(packed), len(plaintext)):
        return FLAG_COMPRESSED, packed
    return 0, plaintext


def _saves(packed_size: int, size: int) -> bool:
    return packed_size <= size * (1 - _MIN_SAVING)


def decode(
    blob: bytes,
    *,
    store_key: str,
    max_size: int,
    keys: KeyLookup,
    require_encrypted: bool,
) -> bytes | memoryview:
    """Decode one object written by :func:`encode`.

    Args:
        blob: the stored bytes.
        store_key: the key it was read from.
        max_size: the largest plaintext accepted (the size recorded for it, or a cap).
        keys: where to find the key a sealed object names.
        require_encrypted: refuse plaintext objects (an encrypted store holds none).

    Raises:
        IntegrityError: not an object of this format, or it decompresses past ``max_size``.
        DecryptionError: the key is missing or wrong, or the object was tampered with.
    """
    if len(blob) < HEADER_LEN:
        raise IntegrityError("object too short to be a bbp object", key=store_key)
    magic, fmt, flags, key_id, nonce = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise IntegrityError("not a bbp object (bad magic)", key=store_key)
    if fmt != FORMAT or flags & ~(FLAG_COMPRESSED | FLAG_ENCRYPTED):
        raise IntegrityError(f"unsupported object format {fmt} flags {flags:#x}", key=store_key)
    # A view, not a slice: a chunk's bytes are copied as few times as possible.
    body: bytes | memoryview = memoryview(blob)[HEADER_LEN:]
    if flags & FLAG_ENCRYPTED:
        body = _open(blob, store_key, keys)
    elif require_encrypted:
        raise DecryptionError("object is not encrypted in an encrypted store", key=store_key)
    elif key_id != _NO_KEY or nonce != _NO_NONCE:
        raise IntegrityError("plaintext object with a key id or nonce", key=store_key)
    if flags & FLAG_COMPRESSED:
        return _decompress(body, max_size, store_key)
    if len(body) > max_size:
        raise IntegrityError(f"object larger than the expected {max_size} bytes", key=store_key)
    return body


def decode_plain(blob: bytes, *, store_key: str, max_size: int) -> bytes:
    """Decode a small object that is never encrypted (the store ``config``, key objects)."""
    body = decode(
        blob, store_key=store_key, max_size=max_size, keys=KeyLookup(), require_encrypted=False
    )
    return bytes(body)


def _open(blob: bytes, store_key: str, keys: KeyLookup) -> bytes:
    _, _, _, key_id, nonce = _HEADER.unpack_from(blob)
    seal = keys.seal_key(key_id)
    if seal is None:
        raise DecryptionError(
            f"object is sealed with key {key_id.hex()}, which no configured key opens",
            key=store_key,
        )
    try:
        aad = blob[:HEADER_LEN] + store_key.encode()
        return seal.aead.decrypt(nonce, memoryview(blob)[HEADER_LEN:], aad)
    except InvalidTag:
        raise DecryptionError(
            "authentication failed: wrong key, or the object was altered or moved",
            key=store_key,
        ) from None


def _decompress(body: bytes | memoryview, max_size: int, store_key: str) -> bytes:
    # A stream reader reads at most max_size + 1 bytes whatever the frame header claims.
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(body)
        out = reader.read(max_size + 1)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"corrupt compressed data: {exc}", key=store_key) from None
    if len(out) > max_size:
        raise IntegrityError(f"object expands past the expected {max_size} bytes", key=store_key)
    return out
