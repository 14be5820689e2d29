"""Argument checks shared by every backend, so both refuse the same inputs alike."""

from __future__ import annotations

from collections.abc import Sequence

from bbp_dist_resume.errors import ConfigError, InvalidCheckpoint, InvalidIdentifier
from bbp_dist_resume.ids import check_id

MAX_TTL_MS = 86_400_000


def check_ttl(ttl_ms: int) -> int:
    """A lease or leader ttl: an int of 1 ms to 1 day."""
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or not 1 <= ttl_ms <= MAX_TTL_MS:
        raise ConfigError([("lease_ttl", f"must be 1 ms to 1 day, not {ttl_ms!r}")])
    return ttl_ms


def check_progress(progress: float | None) -> float | None:
    """A reported progress: None, or a percentage."""
    if progress is None:
        return None
    if isinstance(progress, bool) or not isinstance(progress, int | float):
        raise InvalidCheckpoint(f"progress must be a percentage, not {progress!r}")
    if not 0.0 <= progress <= 100.0:
        raise InvalidCheckpoint(f"progress must be a percentage, not {progress!r}")
    return float(progress)


def check_generation(generation: int) -> int:
    """A plan generation: a positive int (the first plan published is 1)."""
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 1:
        raise InvalidIdentifier("generation", generation, "must be a positive integer")
    return generation


def check_workers(workers: Sequence[str]) -> list[str]:
    """An operation's workers: a non-empty list of unique, valid ids."""
    if isinstance(workers, str):
        raise InvalidIdentifier("workers", workers, "must be a list of ids, not one string")
    ws = [check_id(w, "worker id") for w in workers]
    if not ws or len(set(ws)) != len(ws):
        raise InvalidIdentifier("workers", list(workers), "must be a non-empty list of unique ids")
    return ws
