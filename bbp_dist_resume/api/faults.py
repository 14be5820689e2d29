"""Fault points for crash tests: ``BBP_FAULT=<point>:<probability or count>`` makes the
process ``os._exit`` at that step of the commit protocol.

Points, in commit order: ``after_chunks`` (chunks uploaded, no commit record yet),
``before_commit_record`` (the lease re-checked, the create-only write next),
``after_manifest`` (the commit record written, not yet indexed), ``after_commit``
(indexed, before the caller hears of it). ``:0.2`` exits with probability 0.2 each time
the point is reached; ``:3`` exits the third time. Several points: comma-separated.
Unset (production), ``fault()`` is one dictionary lookup on an empty dict.
"""

from __future__ import annotations

import os
import random
import sys
import threading

from bbp_dist_resume.errors import ConfigError

POINTS = ("after_chunks", "before_commit_record", "after_manifest", "after_commit")
EXIT_CODE = 77  # what a test sees from a process killed at a fault point
_lock = threading.Lock()


def _parse(text: str) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        point, _, value = item.partition(":")
        if point not in POINTS:
            raise ConfigError([("BBP_FAULT", f"unknown fault point {point!r}")])
        try:
            out[point] = int(value) if value.isdigit() else float(value or "1")
        except ValueError:
            raise ConfigError([("BBP_FAULT", f"bad value {value!r} for {point}")]) from None
    return out


_armed = _parse(os.environ.get("BBP_FAULT", ""))
_seen: dict[str, int] = {}


def fault(point: str) -> None:
    """Exit the process here if ``BBP_FAULT`` arms ``point``."""
    rule = _armed.get(point)
    if rule is None:
        return
    with _lock:
        _seen[point] = _seen.get(point, 0) + 1
        count = _seen[point]
    hit = count == rule if isinstance(rule, int) else random.random() < rule
    if hit:
        sys.stderr.write(f"bbp fault point {point} hit ({count})\n")
        sys.stderr.flush()
        os._exit(EXIT_CODE)
