"""``ChunkId``: the BLAKE3 of a chunk's plaintext, keyed when the store is encrypted."""

from __future__ import annotations

import re
from dataclasses import dataclass

import blake3

from bbp_dist_resume.errors import InvalidIdentifier

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class ChunkId:
    """A 32-byte content id, shown as 64 lowercase hex digits."""

    hex: str

    @classmethod
    def parse(cls, value: str) -> ChunkId:
        """Parse 64 lowercase hex digits. Raises ``InvalidIdentifier``."""
        if not isinstance(value, str) or not _HEX64.fullmatch(value):
            raise InvalidIdentifier("chunk id", value, "must be 64 lowercase hex digits")
        return cls(value)

    @classmethod
    def of(cls, data: bytes | memoryview, key: bytes | None = None) -> ChunkId:
        """Hash ``data``; with a 32-byte ``key``, a keyed hash that reveals nothing."""
        h = blake3.blake3(data, key=key) if key is not None else blake3.blake3(data)
        return cls(h.hexdigest())

    @property
    def short(self) -> str:
        """The first 12 hex digits, for messages."""
        return self.hex[:12]

    @property
    def store_key(self) -> str:
        """Where the chunk lives: ``chunks/<id[0:2]>/<id>``."""
        return f"chunks/{self.hex[:2]}/{self.hex}"

    def __str__(self) -> str:
        return self.hex
