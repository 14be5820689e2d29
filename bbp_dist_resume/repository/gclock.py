"""One garbage collection at a time: a create-only lock object, ``locks/gc``.

Two runs sweeping at the same instant could together delete a chunk a writer created
anew between their deletes (``gc`` module docstring), so a run that deletes holds this
lock. It is taken with a create-only write (exactly one taker wins, as for commit
records) and removed at the end. A run that died leaves it behind: the next run refuses
with the holder and the lock's age, and an operator who knows no GC runs any more breaks
it (``bbp-resume gc --break-lock``), as with restic's ``unlock``.

The lock also keeps the GC state marker (``GC_STATE_KEY``) that lets writers skip their
settle wait when no GC deleted anything during their write.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from bbp_dist_resume.blobstore import BlobStore
from bbp_dist_resume.errors import GarbageCollectionLocked, ObjectNotFound
from bbp_dist_resume.repository.manifest import new_token

LOCK_KEY = "locks/gc"
# Written "running <token>" once the lock is held, before the first look, and
# "idle <token>" after the last delete, before the lock goes: a writer that finds it idle
# and unchanged across its write knows no GC deleted anything meanwhile (``freshness``).
GC_STATE_KEY = "locks/gc-state"
_IDLE = b"idle "


@contextmanager
def gc_lock(store: BlobStore, *, break_lock: bool = False) -> Iterator[None]:
    """Hold the store's GC lock for the ``with`` block.

    Args:
        store: the store to collect.
        break_lock: remove a lock left behind first (only when no other GC runs).

    Raises:
        GarbageCollectionLocked: another run holds the lock (or died holding it).
    """
    token = new_token()
    body = json.dumps(
        {
            "token": token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        sort_keys=True,
    ).encode()
    if break_lock:
        store.delete_many([LOCK_KEY])
    if not store.put_if_absent(LOCK_KEY, body) and _holder(store).get("token") != token:
        raise GarbageCollectionLocked(_describe(store))
    try:
        store.put(GC_STATE_KEY, b"running " + token.encode())
        yield
    finally:
        # A run that dies before this leaves "running": writers then settle, always safe.
        store.put(GC_STATE_KEY, _IDLE + new_token().encode())
        if _holder(store).get("token") == token:
            store.delete_many([LOCK_KEY])


def gc_idle(state: bytes | None) -> bool:
    """True for a GC state marker that says no GC is deleting (None: none ever did)."""
    return state is None or state.startswith(_IDLE)


def _holder(store: BlobStore) -> dict[str, object]:
    """The lock's body; {} when there is none or it is not ours to parse."""
    try:
        data = json.loads(store.get(LOCK_KEY))
    except (ObjectNotFound, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(store: BlobStore) -> str:
    holder = _holder(store)
    info = store.head(LOCK_KEY)
    age = f", {info.age:.0f} s ago" if info is not None and info.age is not None else ""
    who = f"{holder.get('host', '?')} pid {holder.get('pid', '?')}"
    since = holder.get("since", "?")
    return f"another garbage collection holds {LOCK_KEY} ({who}, since {since}{age})"
