"""``ObjectCodec``: chunks and commit records to and from their stored form.

It holds what every object needs (the store, the compression level, the key ring) so the
repository reads as the protocol and not as byte fiddling. Every read is verified: a chunk
is re-hashed against its id (one re-read, then ``IntegrityError``); a record is checked by
``manifest.parse_record``.
"""

from __future__ import annotations

from bbp_dist_resume.blobstore import BlobStore
from bbp_dist_resume.errors import IntegrityError
from bbp_dist_resume.repository.chunkid import ChunkId
from bbp_dist_resume.repository.codec import HEADER_LEN, KeyLookup, SealKey, decode, encode
from bbp_dist_resume.repository.keys import KeyRing
from bbp_dist_resume.repository.manifest import (
    CheckpointRecord,
    ChunkRef,
    TakeoverRecord,
    parse_record,
)

MAX_RECORD_SIZE = 64 << 20
_KEY_ID_AT = 6  # offset of the key id in the header: magic(4) format(1) flags(1)


class ObjectCodec:
    """Encodes and decodes the objects of one repository."""

    def __init__(self, store: BlobStore, *, level: int | None, keyring: KeyRing | None) -> None:
        self._store = store
        self._level = level
        self._ring = keyring
        self._keys: KeyLookup = keyring if keyring is not None else KeyLookup()

    @property
    def encrypted(self) -> bool:
        return self._ring is not None

    def set_level(self, level: int | None) -> None:
        """Compress objects written from now on at ``level`` (None: not at all)."""
        self._level = level

    @property
    def plain(self) -> bool:
        """Objects are stored as header + plaintext (no compression, no encryption)."""
        return self._ring is None and self._level is None

    def chunk_id(self, data: bytes | memoryview) -> ChunkId:
        """The id a chunk gets when written now (keyed by the writer's data key)."""
        return ChunkId.of(data, None if self._ring is None else self._ring.writer.id_key)

    def seal_chunk(self, cid: ChunkId, data: bytes | memoryview) -> bytes:
        return encode(data, store_key=cid.store_key, level=self._level, seal=self._seal())

    def _seal(self) -> SealKey | None:
        return None if self._ring is None else self._ring.writer.seal

    def get_chunk(self, ref: ChunkRef) -> bytes | memoryview:
        """Read, open and verify one chunk; one re-read on a mismatch, as restic does."""
        cid = ChunkId.parse(ref.id)
        try:
            return self._open_chunk(cid, ref.size, self._store.get(cid.store_key))
        except IntegrityError:
            return self._open_chunk(cid, ref.size, self._store.get(cid.store_key))

    def _open_chunk(self, cid: ChunkId, size: int, blob: bytes) -> bytes | memoryview:
        data = decode(
            blob,
            store_key=cid.store_key,
            max_size=size,
            keys=self._keys,
            require_encrypted=self.encrypted,
        )
        if len(data) != size:
            raise IntegrityError(f"chunk is {len(data)} bytes, expected {size}", key=cid.store_key)
        id_key = None
        if self._ring is not None:
            id_key = self._ring.id_key_for(blob[_KEY_ID_AT : _KEY_ID_AT + 8])
        if ChunkId.of(data, id_key) != cid:
            raise IntegrityError("chunk content does not match its id", key=cid.store_key)
        return data

    def record_blob(self, record: CheckpointRecord | TakeoverRecord) -> bytes:
        return encode(
            record.to_bytes(), store_key=record.store_key, level=self._level, seal=self._seal()
        )

    def get_record(self, store_key: str) -> CheckpointRecord | TakeoverRecord:
        """Read and check the record under ``store_key``. Raises ``ObjectNotFound``,
        ``IntegrityError``, ``DecryptionError`` or ``ManifestError``."""
        blob = self._store.get(store_key)
        if len(blob) > MAX_RECORD_SIZE + HEADER_LEN + 64:
            raise IntegrityError("commit record larger than the limit", key=store_key)
        body = decode(
            blob,
            store_key=store_key,
            max_size=MAX_RECORD_SIZE,
            keys=self._keys,
            require_encrypted=self.encrypted,
        )
        return parse_record(bytes(body), store_key)
