"""Identifiers that become parts of store keys, paths and Redis keys.

Operation, worker, stage and channel ids match ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``
(DESIGN.md, "Names"): no ``/``, ``{``, ``}``, whitespace or leading dot, so an id can never
escape its key prefix or break a Redis hash tag.
"""

from __future__ import annotations

import re

from bbp_dist_resume.errors import InvalidIdentifier

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_id(value: object, kind: str = "identifier") -> str:
    """Return ``value`` if it is a valid identifier.

    Raises:
        InvalidIdentifier: for anything else, naming ``kind`` (e.g. "operation id").
    """
    if not isinstance(value, str):
        raise InvalidIdentifier(kind, value, "must be a string")
    if not _ID.fullmatch(value):
        raise InvalidIdentifier(kind, value, "must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}")
    return value


def check_seq(value: object) -> int:
    """Return ``value`` if it is a valid checkpoint sequence number (a positive int)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidIdentifier("seq", value, "must be a positive integer")
    if value >= 10**10:
        raise InvalidIdentifier("seq", value, "must be below 10**10 (10-digit key)")
    return value


def checkpoint_id(operation_id: str, worker_id: str, seq: int) -> str:
    """The public id of a checkpoint: ``"{operation_id}/{worker_id}/{seq}"``."""
    op = check_id(operation_id, "operation id")
    return f"{op}/{check_id(worker_id, 'worker id')}/{check_seq(seq)}"


def parse_checkpoint_id(value: str) -> tuple[str, str, int]:
    """Split a checkpoint id into ``(operation_id, worker_id, seq)``.

    Raises:
        InvalidIdentifier: when it is not of the form ``op/worker/seq``.
    """
    parts = value.split("/") if isinstance(value, str) else []
    # A seq has at most 10 digits: refuse longer ones before int() parses them.
    seq = parts[2] if len(parts) == 3 else ""
    if not (seq.isdigit() and seq.isascii() and len(seq) <= 10):
        raise InvalidIdentifier("checkpoint id", value, "must be operation/worker/seq")
    return (
        check_id(parts[0], "operation id"),
        check_id(parts[1], "worker id"),
        check_seq(int(parts[2])),
    )
