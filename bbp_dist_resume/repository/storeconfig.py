"""The store's ``config`` object (format version, chunker parameters, key salt, probe
result) and the start-up probe of create-only writes.

The object is written once, create-only, by the first process that opens an empty store;
every later opener uses its parameters, so all workers chunk alike and deduplicate.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bbp_dist_resume.blobstore import BlobStore
from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.errors import ManifestError, ObjectNotFound, StoreUnsafeError
from bbp_dist_resume.logs import get_logger
from bbp_dist_resume.repository.chunker import ChunkerParams
from bbp_dist_resume.repository.codec import decode_plain, encode
from bbp_dist_resume.repository.keys import KdfParams

log = get_logger(__name__)

CONFIG_KEY = "config"
STORE_FORMAT = 1
PROBE_WRITERS = 16
_MAX_CONFIG = 65536


class ChunkerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    min_size: int = Field(ge=64, le=1 << 20)
    avg_size: int = Field(ge=256, le=4 << 20)
    max_size: int = Field(ge=1024, le=16 << 20)
    seed: int = Field(ge=0, lt=1 << 62)

    @model_validator(mode="after")
    def _ordered(self) -> ChunkerSettings:
        if not self.min_size < self.avg_size < self.max_size:
            raise ValueError("need min_size < avg_size < max_size")
        return self

    def params(self) -> ChunkerParams:
        return ChunkerParams(
            min_size=self.min_size, avg_size=self.avg_size, max_size=self.max_size, seed=self.seed
        )


class ProbeResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    writers: int = Field(ge=1)
    winners: int = Field(ge=0)
    checked_at: str


class StoreConfig(BaseModel):
    """Contents of the ``config`` object."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    format: int = Field(ge=1)
    store_id: str = Field(pattern="^[0-9a-f]{32}$")
    created_at: str
    chunker: ChunkerSettings
    kdf: KdfParams
    probe: ProbeResult


def load_existing(store: BlobStore) -> StoreConfig | None:
    """The store's config, or None for a store nothing was written to yet (nothing is
    created). Raises ``ManifestError`` for a malformed config object."""
    try:
        return _parse(store.get(CONFIG_KEY))
    except ObjectNotFound:
        return None


def load_or_create(store: BlobStore, config: CheckpointConfig) -> StoreConfig:
    """Return the store's config, creating it (create-only) if the store is new.

    A new store is probed first and the result kept in its config; every later open
    checks that recorded result. (Probing at every open would cost seconds on servers
    that serialise conditional writes to one key, as SeaweedFS does.)

    Raises:
        StoreUnsafeError: the probe saw more than one winner and unsafe stores are refused.
        ManifestError: the config object is malformed or of a newer format.
    """
    existing = load_existing(store)
    if existing is not None:
        check_probe(existing.probe, store, config)
        return existing
    probe = run_probe(store)
    check_probe(probe, store, config)
    fresh = _new_config(config, probe)
    body = json.dumps(fresh.model_dump(), sort_keys=True, separators=(",", ":")).encode()
    if store.put_if_absent(CONFIG_KEY, encode(body, store_key=CONFIG_KEY, level=None, seal=None)):
        return fresh
    winner = _parse(store.get(CONFIG_KEY))  # another process created it first
    check_probe(winner.probe, store, config)
    return winner


def _new_config(config: CheckpointConfig, probe: ProbeResult) -> StoreConfig:
    return StoreConfig(
        format=STORE_FORMAT,
        store_id=uuid.uuid4().hex,
        created_at=datetime.now(UTC).isoformat(),
        chunker=ChunkerSettings(
            min_size=config.chunk_min_size,
            avg_size=config.chunk_avg_size,
            max_size=config.chunk_max_size,
            # A per-store gear table: cut points of one store say nothing about another's.
            seed=secrets.randbits(62),
        ),
        kdf=KdfParams(salt=base64.b64encode(os.urandom(16)).decode()),
        probe=probe,
    )


def _parse(blob: bytes) -> StoreConfig:
    body = decode_plain(blob, store_key=CONFIG_KEY, max_size=_MAX_CONFIG)
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ManifestError("the store's config object is not JSON", key=CONFIG_KEY) from None
    if (
        isinstance(raw, dict)
        and isinstance(raw.get("format"), int)
        and raw["format"] > STORE_FORMAT
    ):
        raise ManifestError(
            f"store format {raw['format']} is newer than this library ({STORE_FORMAT})",
            key=CONFIG_KEY,
        )
    try:
        return StoreConfig.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(
            f"malformed store config: {exc.error_count()} problems", key=CONFIG_KEY
        ) from None


def run_probe(store: BlobStore) -> ProbeResult:
    """Race ``PROBE_WRITERS`` create-only writes to one fresh key; count the winners.

    A retried request whose first try landed reports False, so the winner is settled by
    reading the object back: exactly one writer's payload must be there.
    """
    key = f"probe/{uuid.uuid4().hex}"
    payloads = [f"probe {i} {uuid.uuid4().hex}".encode() for i in range(PROBE_WRITERS)]
    start = threading.Barrier(PROBE_WRITERS)

    def attempt(i: int) -> bool:
        start.wait()
        return store.put_if_absent(key, payloads[i])

    try:
        with ThreadPoolExecutor(PROBE_WRITERS) as pool:
            won = list(pool.map(attempt, range(PROBE_WRITERS)))
        stored = store.get(key)
    finally:
        store.delete_many([key])
    winners = sum(won)
    if winners == 0 and stored in payloads:
        winners = 1  # the one write that landed was reported lost by a retry
    elif winners == 1 and stored != payloads[won.index(True)]:
        winners = 2  # the reported winner's bytes were overwritten
    return ProbeResult(
        writers=PROBE_WRITERS, winners=winners, checked_at=datetime.now(UTC).isoformat()
    )


def check_probe(probe: ProbeResult, store: BlobStore, config: CheckpointConfig) -> None:
    """Refuse a store whose recorded probe saw more than one create-only writer win
    (``StoreUnsafeError``), unless ``allow_unsafe_store`` (then a warning)."""
    if probe.winners == 1:
        return
    message = (
        f"{probe.winners} of {probe.writers} concurrent create-only writes won on this "
        f"{store.properties.name} store: its If-None-Match does not hold, so two workers "
        "could both commit the same checkpoint"
    )
    if not config.allow_unsafe_store:
        raise StoreUnsafeError(message + " (set allow_unsafe_store to run anyway)")
    log.warning("%s; going on because allow_unsafe_store is set", message)
