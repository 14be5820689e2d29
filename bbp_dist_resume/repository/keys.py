"""Key management: passphrases wrap random data keys stored under ``keys/``.

A passphrase derives a key-encryption key (KEK) with scrypt and the store's salt (kept in
the store's ``config`` object); ``base64:<32 bytes>`` gives a KEK directly. Each
``keys/<key_id>`` object holds one random 32-byte data key sealed under one KEK. From a
data key, HKDF derives the AES-256-GCM key for objects and the BLAKE3 key for chunk ids.

Writes use the newest data key that the primary secret opens. To rotate, configure the
new secret as ``encryption_key`` and the old one in ``decryption_keys``: the first open
creates a new data key under the new secret, and the old one still opens old objects.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bbp_dist_resume.blobstore import BlobStore
from bbp_dist_resume.errors import EncryptionKeyError, IntegrityError
from bbp_dist_resume.repository.codec import KEY_ID_LEN, KeyLookup, SealKey, decode_plain, encode

KEYS_PREFIX = "keys/"
_RAW_PREFIX = "base64:"
_MAX_KEY_OBJECT = 4096
_WRAPPED_LEN = 12 + 32 + 16  # nonce, data key, GCM tag
# The floor is restic's default (N=2^15, r=8, p=1): a store config claiming less is refused,
# so whoever can write the config cannot make passphrases cheap to guess. The ceiling (16x
# that work, 512 MiB of memory at most) bounds what a hostile config makes an open cost.
_MAX_SCRYPT_WORK = (1 << 15) * 8 * 16


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None


class KdfParams(BaseModel):
    """scrypt parameters and the per-store salt (base64 of at least 16 bytes)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field("scrypt", pattern="^scrypt$")
    salt: str = Field(min_length=16, max_length=128)
    n: int = Field(1 << 15, ge=1 << 15, le=1 << 20)
    r: int = Field(8, ge=8, le=32)
    p: int = Field(1, ge=1, le=16)

    @model_validator(mode="after")
    def _usable(self) -> KdfParams:
        if self.n & (self.n - 1):
            raise ValueError("scrypt n must be a power of two")
        if self.n * self.r * self.p > _MAX_SCRYPT_WORK:
            raise ValueError("scrypt parameters beyond 16x the default work")
        if len(_b64(self.salt)) < 16:
            raise ValueError("salt shorter than 16 bytes")
        return self


class _KeyObject(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    version: int = Field(ge=1, le=1)
    key_id: str = Field(pattern="^[0-9a-f]{16}$")
    created_at: str
    wrapped: str = Field(max_length=512)

    @field_validator("wrapped")
    @classmethod
    def _wrapped_key(cls, value: str) -> str:
        if len(_b64(value)) != _WRAPPED_LEN:
            raise ValueError("a wrapped key is nonce, key and tag")
        return value


@dataclass(frozen=True, slots=True)
class DataKey:
    """One data key: its id, the sealing key for objects, the key for chunk ids."""

    key_id: str
    created_at: str
    seal: SealKey
    id_key: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyInfo:
    """One data key as an operator sees it (never its bytes)."""

    key_id: str
    created_at: str
    opened_by: int | None
    writer: bool


def derive_kek(secret: str, kdf: KdfParams) -> bytes:
    """Turn a configured secret into a 32-byte KEK. Raises ``EncryptionKeyError``."""
    if secret.startswith(_RAW_PREFIX):
        try:
            raw = base64.b64decode(secret[len(_RAW_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise EncryptionKeyError("a base64: key is not valid base64") from None
        if len(raw) != 32:
            raise EncryptionKeyError(f"a base64: key must be 32 bytes, not {len(raw)}")
        return raw
    salt = base64.b64decode(kdf.salt)
    return Scrypt(salt=salt, length=32, n=kdf.n, r=kdf.r, p=kdf.p).derive(secret.encode())


def _derive(data_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(data_key)


def _data_key(key_id: str, created_at: str, raw: bytes) -> DataKey:
    seal = SealKey(bytes.fromhex(key_id), AESGCM(_derive(raw, b"bbp object seal v1")))
    return DataKey(key_id, created_at, seal, _derive(raw, b"bbp chunk id v1"))


class KeyRing(KeyLookup):
    """The data keys the configured secrets open, and the one used for writing."""

    def __init__(self, store: BlobStore, kdf: KdfParams, secrets: list[str]) -> None:
        if not secrets:
            raise EncryptionKeyError("encryption is on but no encryption_key is configured")
        self._store = store
        self._keks = [derive_kek(s, kdf) for s in secrets]
        self._keys: dict[bytes, DataKey] = {}
        self._writer: DataKey | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, store: BlobStore, kdf: KdfParams, secrets: list[str]) -> KeyRing:
        """Open the store's keys, creating a data key under the primary secret when the
        store has none (first use) or when only an older secret opens one (rotation).

        Raises:
            EncryptionKeyError: keys exist and no configured secret opens any of them.
        """
        ring = cls(store, kdf, secrets)
        found = ring.reload()
        if ring._writer is None:
            if found and not ring._keys:
                raise EncryptionKeyError(
                    "no configured encryption key opens any of the store's keys"
                )
            ring.add_key()
        return ring

    @property
    def writer(self) -> DataKey:
        """The data key new objects are sealed with."""
        assert self._writer is not None  # set by open()
        return self._writer

    def reload(self) -> int:
        """Read every ``keys/`` object; return how many there are."""
        infos = list(self._store.list(KEYS_PREFIX))
        for info in infos:
            opened = self._try_open(info.key)
            if opened is not None:
                dk, kek_index = opened
                with self._lock:
                    self._keys[dk.seal.key_id] = dk
                    if kek_index == 0 and (
                        self._writer is None
                        or (dk.created_at, dk.key_id)
                        > (self._writer.created_at, self._writer.key_id)
                    ):
                        self._writer = dk
        return len(infos)

    def _try_open(self, store_key: str) -> tuple[DataKey, int] | None:
        obj = _parse_key_object(self._store.get(store_key), store_key)
        nonce_ct = base64.b64decode(obj.wrapped, validate=True)  # checked by _KeyObject
        aad = f"bbp key {obj.key_id}".encode()
        for i, kek in enumerate(self._keks):
            try:
                raw = AESGCM(kek).decrypt(nonce_ct[:12], nonce_ct[12:], aad)
            except InvalidTag:
                continue
            return _data_key(obj.key_id, obj.created_at, raw), i
        return None

    def add_key(self) -> DataKey:
        """Create a new random data key sealed under the primary secret; it becomes the
        writer. Used at first use and to rotate."""
        key_id = os.urandom(KEY_ID_LEN).hex()
        raw = os.urandom(32)
        nonce = os.urandom(12)
        aad = f"bbp key {key_id}".encode()
        wrapped = nonce + AESGCM(self._keks[0]).encrypt(nonce, raw, aad)
        created = datetime.now(UTC).isoformat()
        obj = _KeyObject(
            version=1,
            key_id=key_id,
            created_at=created,
            wrapped=base64.b64encode(wrapped).decode(),
        )
        body = json.dumps(obj.model_dump(), sort_keys=True).encode()
        store_key = KEYS_PREFIX + key_id
        self._store.put_if_absent(
            store_key, encode(body, store_key=store_key, level=None, seal=None)
        )
        dk = _data_key(key_id, created, raw)
        with self._lock:
            self._keys[dk.seal.key_id] = dk
            self._writer = dk
        return dk

    def seal_key(self, key_id: bytes) -> SealKey | None:
        dk = self._keys.get(key_id)
        if dk is None and self.reload() and key_id in self._keys:
            dk = self._keys[key_id]  # written by another process since we opened
        return None if dk is None else dk.seal

    def id_key_for(self, key_id: bytes) -> bytes | None:
        """The chunk-id key of a data key, by its 8-byte id."""
        return None if self.seal_key(key_id) is None else self._keys[key_id].id_key

    def describe(self) -> list[KeyInfo]:
        """Every ``keys/`` object of the store: which configured secret opens it (0 the
        primary, i > 0 ``decryption_keys[i-1]``, None none) and which one writes."""
        out = []
        for info in self._store.list(KEYS_PREFIX):
            obj = _parse_key_object(self._store.get(info.key), info.key)
            opened = self._try_open(info.key)
            writer = self._writer is not None and self._writer.key_id == obj.key_id
            out.append(
                KeyInfo(
                    key_id=obj.key_id,
                    created_at=obj.created_at,
                    opened_by=None if opened is None else opened[1],
                    writer=writer,
                )
            )
        return sorted(out, key=lambda k: (k.created_at, k.key_id))

    def key_ids(self) -> list[str]:
        """Ids of the data keys the configured secrets open."""
        return sorted(dk.key_id for dk in self._keys.values())


def _parse_key_object(blob: bytes, store_key: str) -> _KeyObject:
    body = decode_plain(blob, store_key=store_key, max_size=_MAX_KEY_OBJECT)
    try:
        obj = _KeyObject.model_validate_json(body)
    except ValidationError:
        raise IntegrityError("malformed key object", key=store_key) from None
    if store_key != KEYS_PREFIX + obj.key_id:
        raise IntegrityError("key object under the wrong name", key=store_key)
    return obj
