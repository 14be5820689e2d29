"""``P``: a commit record implementing the ``Point`` protocol of policy/recovery.py, for
the pure tests of the recovery line, plans, restarts and watermarks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class P:
    """A commit record implementing the ``Point`` protocol."""

    seq: int
    kind: str = "checkpoint"
    progress: float = 0.0
    epoch: int | None = None
    base: int | None = None
    consumed: Mapping[str, int] = field(default_factory=dict)
    produced: Mapping[str, int] = field(default_factory=dict)
    root: str = ""
    fence: int = 0
