"""Snapshots: a checkpoint's state and attachments, frozen at the moment of the call.

The state becomes JSON bytes at once (never pickle). Attachments given as bytes are
kept (``bytes`` is immutable; a ``bytearray`` or ``memoryview`` is copied); attachments
given as file paths are read during the upload when the caller waits for it, and copied
to a private spool file first when it does not, so the caller may change the file as
soon as the call returns.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bbp_dist_resume.errors import InvalidCheckpoint, InvalidIdentifier, StoreError
from bbp_dist_resume.ids import check_id

STATE_PART = "state"
ATTACHMENT_PREFIX = "att."
_MAX_ATTACHMENT_NAME = 128 - len(ATTACHMENT_PREFIX)
# Types the standard library refuses are refused by orjson too (then json.dumps decides).
_ORJSON_STRICT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS

Attachment = bytes | bytearray | memoryview | str | os.PathLike[str]


@dataclass(slots=True)
class Snapshot:
    """The parts of one checkpoint, ready to upload, and the spool files to remove."""

    parts: dict[str, bytes | os.PathLike[str]]
    spooled: list[Path] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(
            len(p) if isinstance(p, bytes) else Path(p).stat().st_size for p in self.parts.values()
        )

    def discard(self) -> None:
        """Remove the spool copies (idempotent)."""
        for path in self.spooled:
            path.unlink(missing_ok=True)
        self.spooled.clear()


def encode_state(state: object) -> bytes:
    """``pipeline_state`` as JSON bytes, with the standard library's rules (``json.dumps``
    with ``allow_nan=False``). Raises ``InvalidCheckpoint`` when it is not a
    JSON-serialisable dict (NaN and infinities included: they are not JSON).

    orjson is the fast path (15x faster here: it is most of a non-blocking checkpoint's
    cost). It writes NaN as ``null`` and refuses what the standard library accepts
    (int keys, huge ints), so output with a ``null`` value in it, and every refusal, is
    done again by ``json.dumps``, which is the reference. One difference remains: orjson
    stores ``uuid.UUID`` and ``enum.Enum`` values as their JSON value (a string, the
    member's value), which ``json.dumps`` would refuse; they read back as that value.
    """
    if not isinstance(state, Mapping):
        raise InvalidCheckpoint(f"pipeline_state must be a dict, not {type(state).__name__}")
    try:
        fast = orjson.dumps(state, option=_ORJSON_STRICT)
        if not _may_hold_nan(fast):
            return fast
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:
        return json.dumps(state, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidCheckpoint(f"pipeline_state is not JSON-serialisable: {exc}") from None


def _may_hold_nan(data: bytes) -> bool:
    # orjson writes NaN and infinities as a null *value*: one follows ":", "," or "[".
    # (A string holding ":null" also matches: that costs only the slower path.)
    at = data.find(b"null")
    while at != -1:
        if data[at - 1 : at] in (b":", b",", b"["):
            return True
        at = data.find(b"null", at + 4)
    return False


def decode_state(data: bytes) -> dict[str, Any]:
    """The inverse of :func:`encode_state`. Raises ``InvalidCheckpoint``."""
    # The standard library reads back exactly what it wrote (ints beyond 64 bits, lone
    # surrogates), which orjson would not.
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidCheckpoint("the checkpoint's state is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidCheckpoint("the checkpoint's state is not a JSON object")
    return value


def take_snapshot(
    state: object,
    attachments: Mapping[str, Attachment] | None,
    *,
    spool_dir: Path | None,
) -> Snapshot:
    """Freeze ``state`` and ``attachments``; file attachments are copied into
    ``spool_dir`` when given (non-blocking checkpoints). Every name and value is checked
    before anything is copied."""
    checked = _check_attachments(attachments or {})
    snap = Snapshot(parts={STATE_PART: encode_state(state)})
    try:
        for name, value in checked.items():
            snap.parts[ATTACHMENT_PREFIX + name] = _freeze(value, spool_dir, snap)
    except BaseException:
        snap.discard()
        raise
    return snap


def attachment_names(part_names: list[str]) -> tuple[str, ...]:
    """The attachment names among a manifest's part names."""
    return tuple(
        sorted(n[len(ATTACHMENT_PREFIX) :] for n in part_names if n.startswith(ATTACHMENT_PREFIX))
    )


def _check_attachments(attachments: object) -> dict[str, bytes | bytearray | memoryview | Path]:
    if not isinstance(attachments, Mapping):
        raise InvalidCheckpoint("attachments must map names to bytes or file paths")
    out: dict[str, bytes | bytearray | memoryview | Path] = {}
    for name, value in attachments.items():
        if not isinstance(name, str):
            raise InvalidIdentifier("attachment name", repr(name), "must be a string")
        check_id(name, "attachment name")
        if len(name) > _MAX_ATTACHMENT_NAME:
            raise InvalidIdentifier("attachment name", name, f"longer than {_MAX_ATTACHMENT_NAME}")
        out[name] = _check_value(name, value)
    return out


def _check_value(name: str, value: object) -> bytes | bytearray | memoryview | Path:
    if isinstance(value, bytes | bytearray | memoryview):
        return value
    if not isinstance(value, str | os.PathLike):
        raise InvalidCheckpoint(
            f"attachment {name!r} must be bytes or a file path, not {type(value).__name__}"
        )
    path = Path(value)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise InvalidCheckpoint(f"attachment {name!r}: {str(path)!r} is not a readable file")
    return path


def _freeze(
    value: bytes | bytearray | memoryview | Path, spool_dir: Path | None, snap: Snapshot
) -> bytes | os.PathLike[str]:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if spool_dir is None:
        return value
    fd, tmp = tempfile.mkstemp(dir=spool_dir, prefix="att-")
    os.close(fd)
    copy = Path(tmp)
    snap.spooled.append(copy)
    try:
        shutil.copyfile(value, copy)
    except OSError as exc:
        raise StoreError(f"cannot snapshot attachment {str(value)!r}: {exc.strerror}") from exc
    return copy
