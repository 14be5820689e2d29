"""Strategies and an in-memory store for tests/test_fuzz.py: valid inputs of each parser
(records, store configs, plans, TOML files, URLs) and ways to damage them."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from typing import Any

from hypothesis import strategies as st

from bbp_dist_resume.blobstore.base import ObjectInfo, StoreProperties, check_key, check_prefix
from bbp_dist_resume.errors import ObjectNotFound
from bbp_dist_resume.repository.codec import encode
from bbp_dist_resume.repository.keys import KdfParams, KeyRing
from bbp_dist_resume.repository.storeconfig import CONFIG_KEY

RAW_KEY = "base64:" + base64.b64encode(bytes(range(32))).decode()
_SALT = base64.b64encode(b"0123456789abcdef").decode()


class MemoryStore:
    """A ``BlobStore`` in a dict: enough for the codec, the key ring and the config."""

    properties = StoreProperties(name="memory", atomic_create=True, durable_put=False)

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.ring: KeyRing = None  # type: ignore[assignment]  # set by with_keyring

    @classmethod
    def with_keyring(cls) -> MemoryStore:
        store = cls()
        store.ring = KeyRing.open(store, cls.kdf(), [RAW_KEY])
        return store

    @classmethod
    def with_config(cls) -> MemoryStore:
        store = cls()
        body = json.dumps(VALID_CONFIG).encode()
        store.objects[CONFIG_KEY] = encode(body, store_key=CONFIG_KEY, level=None, seal=None)
        return store

    @staticmethod
    def kdf() -> KdfParams:
        return KdfParams(salt=_SALT)

    @staticmethod
    def config_dicts() -> st.SearchStrategy[Any]:
        return damaged(VALID_CONFIG)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        if check_key(key) in self.objects:
            return False
        self.objects[key] = bytes(data)
        return True

    def put(self, key: str, data: bytes) -> None:
        self.objects[check_key(key)] = bytes(data)

    def get(self, key: str) -> bytes:
        try:
            return self.objects[check_key(key)]
        except KeyError:
            raise ObjectNotFound("no such object", key=key) from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self.get(key)[start : start + length]

    def head(self, key: str) -> ObjectInfo | None:
        data = self.objects.get(check_key(key))
        return None if data is None else ObjectInfo(key=key, size=len(data), age=0.0)

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        for key in sorted(self.objects):
            if key.startswith(prefix) and (start_after is None or key > start_after):
                yield ObjectInfo(key=key, size=len(self.objects[key]), age=0.0)

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.objects.pop(check_key(key), None)

    def close(self) -> None:
        pass


SEALED = MemoryStore.with_keyring()  # an encrypting store, its key ring opened once

VALID_CONFIG: dict[str, Any] = {
    "format": 1,
    "store_id": "0" * 32,
    "created_at": "2024-01-01T00:00:00+00:00",
    "chunker": {"min_size": 1024, "avg_size": 4096, "max_size": 16384, "seed": 7},
    "kdf": {"name": "scrypt", "salt": _SALT, "n": 1 << 15, "r": 8, "p": 1},
    "probe": {"writers": 16, "winners": 1, "checked_at": "2024-01-01T00:00:00+00:00"},
}


def json_values(depth: int = 2) -> st.SearchStrategy[Any]:
    """Any JSON value: the odd ones first in mind (huge ints, nan-free floats, nesting)."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(2**70), 2**70)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20)
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=6,
    )


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _edit(doc: Any, path: tuple[Any, ...], action: str, new: Any) -> Any:
    if not path:
        return new if action == "replace" else doc
    head, rest = path[0], path[1:]
    copy: Any = dict(doc) if isinstance(doc, dict) else list(doc)
    if rest:
        copy[head] = _edit(copy[head], rest, action, new)
    elif action == "delete":
        del copy[head]
    elif action == "add" and isinstance(copy, dict):
        copy[f"{head}_extra"] = new
    else:
        copy[head] = new
    return copy


@st.composite
def damaged(draw: st.DrawFn, valid: Any) -> Any:
    """``valid`` with up to three edits: a value replaced, a field removed or added."""
    doc = valid
    for _ in range(draw(st.integers(0, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        doc = _edit(doc, path, action, draw(json_values()))
    return doc


def apply_edits(blob: bytes, edits: list[Any]) -> bytes:
    out = bytearray(blob)
    for kind, where, value in edits:
        at = where % (len(out) + 1)
        if kind == "flip" and at < len(out):
            out[at] ^= 1 << (value % 8)
        elif kind == "set" and at < len(out):
            out[at] = value % 256
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = bytes([value % 256])
        elif kind == "flags" and len(out) > 5:
            out[5] = value % 256
    return bytes(out)


def mutations() -> st.SearchStrategy[list[tuple[str, int, int]]]:
    """Byte-level edits of a stored object: bit flips, bytes set, truncations,
    insertions, and the header's flags byte."""
    edit = st.tuples(
        st.sampled_from(["flip", "set", "truncate", "insert", "flags"]),
        st.integers(0, 1 << 14) | st.integers(0, 40),
        st.integers(0, 255),
    )
    return st.lists(edit, max_size=3)
