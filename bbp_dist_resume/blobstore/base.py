"""The blob store contract: bytes under keys, nothing more.

Nouns:
    key: a relative path of ``[A-Za-z0-9._-]`` segments joined by ``/``, no segment empty
        or starting with a dot, at most 1024 characters. Keys are validated by every store,
        so a key can never escape the store's root or prefix.
    object: the bytes stored under a key. Objects are written whole and never appended to.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bbp_dist_resume.errors import InvalidIdentifier

MAX_KEY_LENGTH = 1024
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreProperties:
    """What a backend can do, so callers need not guess from its type.

    Attributes:
        name: a short name for messages ("s3", "local").
        atomic_create: ``put_if_absent`` lets exactly one of several concurrent writers win.
        durable_put: a returned ``put`` survives a crash of this process and of the host.
    """

    name: str
    atomic_create: bool
    durable_put: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectInfo:
    """One object's key (relative to the store), size in bytes and age.

    Attributes:
        key: the key, relative to the store.
        size: the object's size in bytes.
        age: seconds since the object was last written (created or replaced), by the
            STORE's clock, measured when the answer came: S3 takes the answer's ``Date``
            header minus ``LastModified`` (both whole seconds, so off by up to a second);
            a local store takes its host's clock minus the file's mtime. None when the
            store did not say. Never compare it with a client's wall clock: it is a
            duration, and garbage collection (``repository.gc``) relies on that.
    """

    key: str
    size: int
    age: float | None = None


def check_key(key: object) -> str:
    """Return ``key`` if it is a valid store key, else raise ``InvalidIdentifier``."""
    if not isinstance(key, str) or not key:
        raise InvalidIdentifier("store key", key, "must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidIdentifier("store key", key[:64] + "...", "is longer than 1024 characters")
    if not all(_SEGMENT.fullmatch(seg) for seg in key.split("/")):
        raise InvalidIdentifier(
            "store key", key, "segments must be [A-Za-z0-9._-], non-empty, not starting with '.'"
        )
    return key


def check_prefix(prefix: object) -> str:
    """Return a listing prefix if valid: empty, or a key, or a key followed by ``/``."""
    if prefix == "":
        return ""
    if not isinstance(prefix, str):
        raise InvalidIdentifier("store prefix", prefix, "must be a string")
    check_key(prefix.removesuffix("/"))
    return prefix


@runtime_checkable
class BlobStore(Protocol):
    """Bytes under keys.

    Contract, for every implementation (checked by ``tests/test_blobstore_conformance.py``):

    * Every method validates its keys first and raises ``InvalidIdentifier`` before any I/O.
    * A written object is visible whole to every later call, or not at all (no torn reads).
    * Failures are ``StoreError`` subclasses; ``err.retryable`` is True only for transient
      ones, after the store's own retries are spent.
    * All methods are safe to call from several threads at once.
    """

    @property
    def properties(self) -> StoreProperties:
        """What this backend guarantees."""
        ...

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` with ``data`` unless it exists.

        Returns:
            True if this call created the object; False if an object was already there,
            which is left unchanged. A retried request whose first try landed returns
            False: callers that must know settle it by reading the object back.
        """
        ...

    def put(self, key: str, data: bytes) -> None:
        """Create or replace ``key`` with ``data`` atomically."""
        ...

    def get(self, key: str) -> bytes:
        """Return the object's bytes. Raises ``ObjectNotFound`` if there is none."""
        ...

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Return up to ``length`` bytes from ``start``. Raises ``ObjectNotFound``."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """Return the object's info (``age`` filled in), or None if there is no object."""
        ...

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, in key order.

        Pages through the backend lazily; ``start_after`` skips keys up to and including it.
        Each ``ObjectInfo`` carries its ``age`` as of the page that listed it.
        """
        ...

    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete every key; keys with no object are not an error."""
        ...

    def close(self) -> None:
        """Release connections and file handles. Idempotent."""
        ...
