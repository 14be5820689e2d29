"""``CheckpointConfig``: every field of the BB-Pipeline ``CheckpointConfig``, plus the
distributed ones, validated as a whole.

Sources, later ones winning: the defaults, a TOML file, ``BBP_<FIELD>`` environment
variables, keyword arguments (see :meth:`CheckpointConfig.load`). Durations take seconds
(``300``) or ISO 8601 (``"PT5M"``). ``encryption_key`` and ``decryption_keys`` are
secrets: they never appear in ``repr``, logs or error messages, nor does the password of a
URL (``repr`` shows ``redis://***@host``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from bbp_dist_resume.config_sources import read_env, read_toml
from bbp_dist_resume.errors import ConfigError, InvalidIdentifier
from bbp_dist_resume.ids import check_id
from bbp_dist_resume.logs import redact

_HOST = re.compile(r"[A-Za-z0-9:][A-Za-z0-9.:-]*")


class CheckpointStrategy(StrEnum):
    """When a worker checkpoints (BB-Pipeline ``CheckpointStrategy``)."""

    TIME_BASED = "time_based"
    PROGRESS_BASED = "progress_based"
    HYBRID = "hybrid"
    MANUAL = "manual"
    ADAPTIVE = "adaptive"


class CheckpointGranularity(StrEnum):
    """Where checkpoints may be taken: stage boundaries, task boundaries, or also progress."""

    COARSE = "coarse"
    MEDIUM = "medium"
    FINE = "fine"


class CheckpointConfig(BaseModel):
    """Configuration of one worker's (or coordinator's) checkpointing.

    Attributes mirror the BB-Pipeline ``CheckpointConfig`` (``checkpoint_dir`` became
    ``store_url``) and add the distributed ones (``coord_url``, leases, upload).

    Worker behaviour: ``strict`` makes a failed checkpoint raise ``CheckpointFailed``
    (else it is reported and the pipeline goes on); ``max_pending_checkpoints`` bounds the
    non-blocking checkpoints in flight (more block the caller: back-pressure); ``mtbf``
    fixes the ADAPTIVE strategy's mean time between failures (else the rate seen in the
    store); ``best_fn(metadata) -> float`` scores BEST_CHECKPOINT resumes; ``chooser(points)``
    picks the INTERACTIVE resume point (a point, its id, or None to start clean).

    Coordinator: ``scan_interval`` between crash scans; ``quarantine_after`` failed
    restores of one checkpoint (the restoring worker died or raised before its first new
    commit) quarantine it, and plans fall back past it. ``deterministic_producers``: worker
    ids that regenerate the very same records when replayed, so the recovery line keeps
    their consumers ahead of them instead of rolling them back.

    Metrics: ``metrics_port`` starts a Prometheus exporter (``bbp-dist-resume[metrics]``)
    once per process, when the first system or manager is initialised; it listens on
    ``metrics_address``, loopback by default because the endpoint has no authentication.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    store_url: str = Field(
        "file:checkpoints",
        min_length=1,
        max_length=4096,
        description="Where checkpoints live: file:DIR or s3://bucket/prefix?endpoint_url=...",
    )
    strategy: CheckpointStrategy = Field(
        CheckpointStrategy.HYBRID,
        description="When automatic checkpoints are taken: time_based, progress_based, "
        "hybrid, manual or adaptive (Young/Daly interval).",
    )
    granularity: CheckpointGranularity = Field(
        CheckpointGranularity.MEDIUM,
        description="Where automatic checkpoints may be taken: coarse (stage boundaries), "
        "medium (also task boundaries), fine (also progress updates).",
    )
    time_interval: timedelta = Field(
        timedelta(minutes=5), gt=timedelta(0), description="time_based/hybrid: the interval."
    )
    progress_threshold: float = Field(
        10.0, gt=0.0, le=100.0, description="progress_based/hybrid: points of progress."
    )
    max_checkpoints: int = Field(
        10, ge=1, le=100_000, description="Retention: checkpoints kept per worker."
    )
    enable_compression: bool = Field(True, description="zstd-compress chunks and records.")
    enable_encryption: bool = Field(
        False, description="AES-256-GCM objects and keyed chunk ids; needs encryption_key."
    )
    encryption_key: SecretStr | None = Field(
        None, description="Secret: a passphrase (scrypt) or base64:<32 bytes>; never shown."
    )
    decryption_keys: tuple[SecretStr, ...] = Field(
        (), description="Secrets: older keys that still open old objects (comma-separated)."
    )
    enable_verification: bool = Field(
        True, description="Check that every chunk exists before a restore."
    )
    max_memory_threshold_mb: int = Field(
        1024, ge=1, description="adaptive: checkpoint at once above this resident size."
    )
    auto_cleanup: bool = Field(True, description="Apply retention after each commit.")
    cleanup_age: timedelta = Field(
        timedelta(hours=24), gt=timedelta(0), description="Retention: older checkpoints go."
    )

    coord_url: str = Field(
        "sqlite:checkpoints/coord.db",
        min_length=1,
        max_length=4096,
        description="Leases and indexes: sqlite:FILE, redis://, rediss:// or "
        "redis+cluster://host:port.",
    )
    lease_ttl: timedelta = Field(
        timedelta(seconds=30),
        ge=timedelta(seconds=1),
        description="A worker that stops renewing for this long is crashed.",
    )
    heartbeat_interval: timedelta = Field(
        timedelta(seconds=10),
        gt=timedelta(0),
        description="Lease renewal period; at most half of lease_ttl.",
    )
    coord_timeout: timedelta = Field(
        timedelta(seconds=4),
        ge=timedelta(milliseconds=100),
        le=timedelta(minutes=5),
        description="Connect and read timeout of each coordination call (Redis socket, "
        "SQLite lock wait); a Redis call tries up to 4 times.",
    )
    read_committed: bool = Field(
        False,
        description="This worker reads only committed records (committed_offset): "
        "a producer's crash never rolls it back to re-read.",
    )
    recovery_timeout: timedelta = Field(
        timedelta(minutes=10),
        gt=timedelta(0),
        description="Recovery barrier: how long a rolled-back worker waits for the others.",
    )
    upload_concurrency: int = Field(
        8, ge=1, le=256, description="Parallel chunk uploads and downloads."
    )
    compression_level: int = Field(3, ge=-7, le=22, description="zstd level.")
    chunk_min_size: int = Field(
        256 * 1024, ge=64, le=1 << 20, description="FastCDC minimum chunk size (new stores)."
    )
    chunk_avg_size: int = Field(
        1 << 20, ge=256, le=4 << 20, description="FastCDC average chunk size (new stores)."
    )
    chunk_max_size: int = Field(
        4 << 20, ge=1024, le=16 << 20, description="FastCDC maximum chunk size (new stores)."
    )
    inline_threshold: int = Field(
        4096, ge=0, le=65536, description="Parts up to this size live inside the manifest."
    )
    allow_unsafe_store: bool = Field(
        False, description="Run on a store whose create-only writes failed the probe."
    )
    redis_wait_replicas: int = Field(
        0, ge=0, le=16, description="Redis replicas that must acknowledge a lease (WAIT); 0: off."
    )
    redis_wait_timeout_ms: int = Field(
        1000, ge=1, le=60_000, description="How long WAIT waits for them, in milliseconds."
    )
    # Garbage collection deletes unreferenced chunks only when older than this margin;
    # a write must commit within a quarter of it (repository/gc.py has the argument).
    gc_safety_margin: timedelta = Field(
        timedelta(hours=24),
        ge=timedelta(seconds=4),
        description="GC deletes unreferenced chunks older than this; a checkpoint must "
        "commit within a quarter of it.",
    )

    strict: bool = Field(False, description="A failed checkpoint raises CheckpointFailed.")
    quarantine_after: int = Field(
        3, ge=1, le=1000, description="Failed restores that quarantine a checkpoint."
    )
    deterministic_producers: tuple[str, ...] = Field(
        (), description="Workers that replay identical records (comma-separated ids)."
    )
    scan_interval: timedelta = Field(
        timedelta(seconds=1), gt=timedelta(0), description="Coordinator: between crash scans."
    )
    max_pending_checkpoints: int = Field(
        2, ge=1, le=64, description="Non-blocking checkpoints in flight before callers wait."
    )
    mtbf: timedelta | None = Field(
        None, gt=timedelta(0), description="adaptive: mean time between failures (else seen)."
    )
    detailed_logging: bool = Field(False, description="DEBUG logs from bbp_dist_resume.")
    metrics_port: int | None = Field(
        None, gt=0, lt=65536, description="Serve Prometheus metrics on this port (off: none)."
    )
    metrics_address: str = Field(
        "127.0.0.1", min_length=1, max_length=253, description="Bind address of the metrics."
    )
    # Callables are for code, not for files or the environment.
    best_fn: Callable[[Any], float] | None = Field(None, exclude=True)
    chooser: Callable[[list[Any]], Any] | None = Field(None, exclude=True)

    @field_validator(
        "time_interval",
        "cleanup_age",
        "lease_ttl",
        "heartbeat_interval",
        "mtbf",
        "scan_interval",
        "gc_safety_margin",
        "recovery_timeout",
        "coord_timeout",
        mode="before",
    )
    @classmethod
    def _seconds_from_text(cls, value: Any) -> Any:
        # Environment variables and CLI flags give "300": read it as seconds.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
        return value

    @field_validator("store_url")
    @classmethod
    def _store_scheme(cls, value: str) -> str:
        if _scheme(value) not in ("file", "s3"):
            raise ValueError("must start with file: or s3://")
        return value

    @field_validator("coord_url")
    @classmethod
    def _coord_scheme(cls, value: str) -> str:
        if _scheme(value) not in ("redis", "rediss", "redis+cluster", "sqlite"):
            raise ValueError("must start with redis://, rediss://, redis+cluster:// or sqlite:")
        return value

    @field_validator("deterministic_producers")
    @classmethod
    def _worker_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for worker in value:
            try:
                check_id(worker, "worker id")
            except InvalidIdentifier as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("metrics_address")
    @classmethod
    def _host(cls, value: str) -> str:
        # An IP address or a host name: it is handed to bind(), never to a shell or a URL.
        if not _HOST.fullmatch(value):
            raise ValueError("must be an IP address or a host name")
        return value

    @field_validator("encryption_key")
    @classmethod
    def _key_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _check_relations(self) -> Self:
        problems = _relation_problems(self)
        if problems:
            # Raised as ValueError so pydantic reports it with the field errors.
            raise ValueError("; ".join(f"{f}: {why}" for f, why in problems))
        return self

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_problems(exc)) from None

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> CheckpointConfig:
        """Build a config from a TOML file, ``BBP_*`` variables and keyword arguments.

        Args:
            path: a TOML file whose top-level keys (or ``[checkpoint]`` table) are fields.
            env: the environment to read (``os.environ`` by default; ``{}`` to ignore it).
            **overrides: field values that win over the file and the environment.

        Raises:
            ConfigError: naming every bad field and why; a secret's value is never shown.
        """
        data: dict[str, Any] = {}
        if path is not None:
            data.update(read_toml(Path(path)))
        data.update(read_env(os.environ if env is None else env, cls.model_fields))
        data.update(overrides)
        return cls(**data)

    @classmethod
    def sources(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> dict[str, str]:
        """Where :meth:`load` takes each field from: ``default``, ``file``, ``env`` or
        ``argument`` (the same arguments, the same precedence)."""
        out = dict.fromkeys(cls.model_fields, "default")
        if path is not None:
            out.update(dict.fromkeys(read_toml(Path(path)), "file"))
        env_fields = read_env(os.environ if env is None else env, cls.model_fields)
        out.update(dict.fromkeys(env_fields, "env"))
        out.update(dict.fromkeys(overrides, "argument"))
        return out

    def with_changes(self, **changes: Any) -> CheckpointConfig:
        """Return a validated copy with some fields changed."""
        data = dict(self.__dict__)
        data.update(changes)
        return CheckpointConfig(**data)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A URL's user:password part (redis://:secret@host) is a secret like the keys.
        for name, value in super().__repr_args__():
            yield name, redact(value) if isinstance(value, str) else value

    def secret_key(self) -> str | None:
        """The configured encryption key, for the key layer only."""
        return None if self.encryption_key is None else self.encryption_key.get_secret_value()


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].lower() if ":" in url else ""


def _relation_problems(c: CheckpointConfig) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if not c.chunk_min_size < c.chunk_avg_size < c.chunk_max_size:
        problems.append(("chunk_avg_size", "need chunk_min_size < chunk_avg_size < chunk_max_size"))
    if c.heartbeat_interval * 2 > c.lease_ttl:
        problems.append(("heartbeat_interval", "must be at most half of lease_ttl"))
    if c.enable_encryption and c.encryption_key is None:
        problems.append(("encryption_key", "required when enable_encryption is true"))
    if c.redis_wait_replicas and _scheme(c.coord_url) not in ("redis", "rediss"):
        problems.append(("redis_wait_replicas", "needs a redis:// or rediss:// coord_url"))
    return problems


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    # Built from locations and messages only: pydantic's "input" may hold a secret.
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not field and ": " in msg:
            out.extend(tuple(p.split(": ", 1)) for p in msg.split("; "))  # type: ignore[misc]
        else:
            out.append((field or "config", msg))
    return out
