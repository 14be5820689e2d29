"""``Callbacks``: the user's event callbacks, called with no internal lock held."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bbp_dist_resume.errors import ConfigError
from bbp_dist_resume.logs import get_logger

log = get_logger("bbp_dist_resume")

EVENTS = ("progress", "checkpoint", "recovery", "error", "rollback")


class Callbacks:
    """One optional callable per event; a failing callback is logged, never raised."""

    def __init__(self) -> None:
        self._fns: dict[str, Callable[..., None] | None] = dict.fromkeys(EVENTS)

    def set(self, event: str, fn: Callable[..., None] | None) -> None:
        if fn is not None and not callable(fn):
            raise ConfigError([(f"{event} callback", "must be callable or None")])
        self._fns[event] = fn

    def call(self, event: str, *args: Any) -> None:
        fn = self._fns[event]
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.exception("%s callback failed", event)
