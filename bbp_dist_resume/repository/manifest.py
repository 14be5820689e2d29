"""Commit records: strict, versioned, canonical JSON (never pickle).

A *checkpoint record* is the checkpoint's manifest; a *takeover record* only claims a seq
for a new owner. Both carry ``root``, the BLAKE3 of their canonical JSON without
``root``; a manifest's ``root`` is its checkpoint's ``verification_hash``. Parsing
accepts only the exact bytes this module writes: unknown fields, a wrong version, a
non-canonical encoding or a wrong ``root`` are all ``ManifestError``.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

import blake3
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from bbp_dist_resume.errors import InvalidCheckpoint, InvalidIdentifier, ManifestError
from bbp_dist_resume.ids import check_id, check_seq

MANIFEST_VERSION = 1
MAX_PART_SIZE = 1 << 50
MAX_INLINE = 65536


def _ident(kind: str) -> AfterValidator:
    def check(value: str) -> str:
        try:
            return check_id(value, kind)
        except InvalidIdentifier as exc:
            raise ValueError(str(exc)) from None

    return AfterValidator(check)


OpId = Annotated[str, _ident("operation id")]
WorkerId = Annotated[str, _ident("worker id")]
Name = Annotated[str, _ident("name")]
Offsets = dict[Name, Annotated[int, Field(ge=0)]]
Token = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]

_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)


class ChunkRef(BaseModel):
    """One chunk of a part: its id and plaintext size."""

    model_config = _STRICT

    id: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: int = Field(ge=1, le=16 << 20)


class PartRef(BaseModel):
    """One named part: its size and either its ordered chunks or, when small, its bytes."""

    model_config = _STRICT

    size: int = Field(ge=0, le=MAX_PART_SIZE)
    chunks: tuple[ChunkRef, ...] = ()
    inline: str | None = Field(None, max_length=(MAX_INLINE * 4) // 3 + 4)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.inline is not None:
            if self.chunks:
                raise ValueError("a part is either inline or chunked, not both")
            if len(inline_bytes(self)) != self.size:
                raise ValueError("inline bytes do not match the part size")
        elif sum(c.size for c in self.chunks) != self.size:
            raise ValueError("chunk sizes do not add up to the part size")
        return self


def inline_bytes(part: PartRef) -> bytes:
    """Decode a part's inline bytes."""
    try:
        return base64.b64decode(part.inline or "", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("inline bytes are not valid base64") from None


class _Record(BaseModel):
    model_config = _STRICT

    version: Literal[1]
    operation_id: OpId
    worker_id: WorkerId
    seq: int = Field(ge=1, lt=10**10)
    owner_token: Token
    fence: int = Field(ge=0)
    write_id: Token
    created_at: AwareDatetime
    root: str = ""

    @property
    def checkpoint_id(self) -> str:
        return f"{self.operation_id}/{self.worker_id}/{self.seq}"

    @property
    def store_key(self) -> str:
        return record_key(self.operation_id, self.worker_id, self.seq)

    def sealed(self) -> Self:
        """This record with ``root`` computed."""
        return self.model_copy(update={"root": compute_root(self)})

    def to_bytes(self) -> bytes:
        """The canonical JSON of the record (``root`` included)."""
        return _canonical(self.model_dump(mode="json"))


class CheckpointRecord(_Record):
    """A checkpoint's manifest."""

    kind: Literal["checkpoint"] = "checkpoint"
    stage: Name
    granularity: Literal["coarse", "medium", "fine"] = "medium"
    progress: float = Field(0.0, ge=0.0, le=100.0, allow_inf_nan=False)
    memory_bytes: int = Field(0, ge=0)
    elapsed_seconds: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    custom_metadata: dict[str, str] = Field(default_factory=dict)
    epoch: int | None = Field(None, ge=0)
    consumed: Offsets = Field(default_factory=dict)
    produced: Offsets = Field(default_factory=dict)
    # Seq of the checkpoint the worker's state was restored from, on the first commit
    # after a resume (0: restarted clean); the records between it and this one belong
    # to an abandoned incarnation and are never planned from again.
    base: int | None = Field(None, ge=0)
    parts: dict[Name, PartRef]

    @property
    def logical_size(self) -> int:
        """Bytes of all parts together."""
        return sum(p.size for p in self.parts.values())


class TakeoverRecord(_Record):
    """Claims a seq for a new owner, so no earlier owner can commit past it."""

    kind: Literal["takeover"] = "takeover"


Record = Annotated[CheckpointRecord | TakeoverRecord, Field(discriminator="kind")]
Manifest = CheckpointRecord
_RECORD = TypeAdapter(Record)


CHECKPOINTS_PREFIX = "checkpoints/"


def record_prefix(operation_id: str, worker_id: str) -> str:
    """The store prefix of one worker's commit records. Raises ``InvalidIdentifier``."""
    op, worker = check_id(operation_id, "operation id"), check_id(worker_id, "worker id")
    return f"{CHECKPOINTS_PREFIX}{op}/{worker}/"


def record_key(operation_id: str, worker_id: str, seq: int) -> str:
    """``checkpoints/<op>/<worker>/<seq:010d>``: zero-padded so key order is seq order."""
    return f"{record_prefix(operation_id, worker_id)}{check_seq(seq):010d}"


def new_token() -> str:
    """A random 128-bit token (owner tokens, write ids)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


def _canonical(data: Any) -> bytes:
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def compute_root(record: _Record) -> str:
    """BLAKE3 over the canonical JSON of the record without ``root``."""
    return blake3.blake3(_canonical(record.model_dump(mode="json", exclude={"root"}))).hexdigest()


def parse_record(body: bytes, store_key: str) -> CheckpointRecord | TakeoverRecord:
    """Parse and check a commit record read from ``store_key``.

    Raises:
        ManifestError: malformed, unknown version or fields, non-canonical, wrong root,
            or its ids do not match the key it was read from.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ManifestError("commit record is not JSON", key=store_key) from None
    if isinstance(data, dict) and data.get("version") != MANIFEST_VERSION:
        raise ManifestError(
            f"unsupported commit record version {data.get('version')!r}", key=store_key
        )
    try:
        record = _RECORD.validate_json(body, strict=True)
    except ValidationError as exc:
        raise ManifestError(f"invalid commit record: {_summary(exc)}", key=store_key) from None
    if record.to_bytes() != body:
        raise ManifestError("commit record is not in canonical form", key=store_key)
    if record.root != compute_root(record):
        raise ManifestError("commit record root hash does not match its body", key=store_key)
    if record.store_key != store_key:
        raise ManifestError("commit record names another slot than its key", key=store_key)
    return record


def _summary(exc: ValidationError) -> str:
    first = exc.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']} ({exc.error_count()} problems)"


def takeover_record(
    operation_id: str, worker_id: str, seq: int, owner_token: str, fence: int
) -> TakeoverRecord:
    """A new sealed takeover record. Raises ``InvalidCheckpoint`` for a bad value."""
    try:
        record = TakeoverRecord(
            version=1,
            operation_id=operation_id,
            worker_id=worker_id,
            seq=seq,
            owner_token=owner_token,
            fence=fence,
            write_id=new_token(),
            created_at=utcnow(),
        )
    except ValidationError as exc:
        err = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise InvalidCheckpoint(f"invalid takeover: {where}: {err['msg']}") from None
    return record.sealed()
