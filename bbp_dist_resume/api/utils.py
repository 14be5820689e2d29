"""``utils`` (BB-Pipeline ``ResumeSystemUtils``): presets, config validation, operation
ids, and the ``--resume-*`` command-line arguments."""

from __future__ import annotations

import argparse
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bbp_dist_resume.api.models import ResumeMode
from bbp_dist_resume.config import CheckpointConfig, CheckpointGranularity, CheckpointStrategy
from bbp_dist_resume.coordination import longest_call_s
from bbp_dist_resume.errors import ConfigError, InvalidIdentifier
from bbp_dist_resume.ids import check_id, parse_checkpoint_id

# An id is at most 128 characters: prefix + "-" + 19 (time) + "-" + 20 (random).
_MAX_PREFIX = 128 - 41


def create_default_config(**overrides: Any) -> CheckpointConfig:
    """Hybrid strategy, every 5 minutes or 10 points of progress, 10 kept."""
    return CheckpointConfig(**overrides)


def create_high_frequency_config(**overrides: Any) -> CheckpointConfig:
    """Checkpoint often and finely: every 30 s or 2 points, fine granularity, 50 kept."""
    base: dict[str, Any] = {
        "strategy": CheckpointStrategy.HYBRID,
        "granularity": CheckpointGranularity.FINE,
        "time_interval": timedelta(seconds=30),
        "progress_threshold": 2.0,
        "max_checkpoints": 50,
        "compression_level": 1,
    }
    return CheckpointConfig(**(base | overrides))


def create_low_overhead_config(**overrides: Any) -> CheckpointConfig:
    """Checkpoint rarely: every 30 minutes or 25 points, stage boundaries only, 3 kept."""
    base: dict[str, Any] = {
        "strategy": CheckpointStrategy.HYBRID,
        "granularity": CheckpointGranularity.COARSE,
        "time_interval": timedelta(minutes=30),
        "progress_threshold": 25.0,
        "max_checkpoints": 3,
        "compression_level": 1,
        "enable_verification": False,
    }
    return CheckpointConfig(**(base | overrides))


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeRequest:
    """What ``--resume-operation``, ``--resume-mode`` and ``--resume-checkpoint`` asked."""

    operation_id: str
    mode: ResumeMode
    checkpoint_id: str | None = None


def validate_config(config: CheckpointConfig | Mapping[str, Any]) -> list[str]:
    """Problems with a config (a mapping is built first), as sentences; [] when valid."""
    if isinstance(config, Mapping):
        try:
            config = CheckpointConfig(**config)
        except ConfigError as exc:
            return [f"{field}: {why}" for field, why in exc.problems]
    if not isinstance(config, CheckpointConfig):
        return [f"config: expected a CheckpointConfig or a mapping, not {type(config).__name__}"]
    return _advice(config)


def _advice(config: CheckpointConfig) -> list[str]:
    out = []
    if config.strategy is CheckpointStrategy.ADAPTIVE and config.max_memory_threshold_mb < 16:
        out.append("max_memory_threshold_mb: below 16 MB every adaptive decision checkpoints")
    if config.cleanup_age < config.time_interval:
        out.append("cleanup_age: shorter than time_interval, so retention keeps one checkpoint")
    stuck = longest_call_s(config.coord_timeout.total_seconds())
    if stuck > (config.lease_ttl - config.heartbeat_interval).total_seconds():
        out.append(
            f"coord_timeout: a renewal retried on a hung link can block for {stuck:g} s, "
            "longer than lease_ttl - heartbeat_interval: the lease runs out first"
        )
    return out


def generate_operation_id(prefix: str = "op") -> str:
    """A new operation id, unique across processes and machines (80 random bits) and
    sortable by creation time (UTC, millisecond resolution)."""
    check_id(prefix, "operation id prefix")
    if len(prefix) > _MAX_PREFIX:
        raise InvalidIdentifier("operation id prefix", prefix, f"longer than {_MAX_PREFIX}")
    now = datetime.now(UTC)
    stamp = now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"
    return f"{prefix}-{stamp}-{secrets.token_hex(10)}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit the process
        raise ConfigError([("resume arguments", message)])


def parse_resume_context(argv: Sequence[str]) -> ResumeRequest | None:
    """Read ``--resume-operation OP``, ``--resume-mode {full,last,best,interactive}``
    and ``--resume-checkpoint ID`` from ``argv`` (other arguments are left alone).

    Returns None when no resume was asked. Raises ``ConfigError`` for bad values.
    """
    parser = _Parser(add_help=False, allow_abbrev=False)
    parser.add_argument("--resume-operation")
    parser.add_argument("--resume-mode", choices=[m.value for m in ResumeMode])
    parser.add_argument("--resume-checkpoint")
    known, _ = parser.parse_known_args(list(argv))
    if (
        known.resume_operation is None
        and known.resume_mode is None
        and (known.resume_checkpoint is None)
    ):
        return None
    checkpoint = known.resume_checkpoint
    op = known.resume_operation
    try:
        if checkpoint is not None:
            cp_op = parse_checkpoint_id(checkpoint)[0]
            if op is not None and op != cp_op:
                raise ConfigError([("--resume-checkpoint", f"belongs to {cp_op}, not {op}")])
            op = cp_op
        if op is None:
            raise ConfigError([("--resume-operation", "required with --resume-mode")])
        check_id(op, "operation id")
    except InvalidIdentifier as exc:
        raise ConfigError([("resume arguments", str(exc))]) from None
    return ResumeRequest(
        operation_id=op,
        mode=ResumeMode(known.resume_mode or ResumeMode.LAST_CHECKPOINT.value),
        checkpoint_id=checkpoint,
    )


__all__ = [
    "ResumeRequest",
    "create_default_config",
    "create_high_frequency_config",
    "create_low_overhead_config",
    "generate_operation_id",
    "parse_resume_context",
    "validate_config",
]
