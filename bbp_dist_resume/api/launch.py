"""Launchers: how the coordinator gets a crashed slot running again.

A launcher is a callable ``launcher(operation_id, worker_id)`` or a command template such
as ``"python worker.py --op {operation_id} --worker {worker_id}"``, run without a shell
(the template is split first, then each word formatted, so ids never meet a shell).
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable

from bbp_dist_resume.errors import ConfigError
from bbp_dist_resume.logs import get_logger

log = get_logger(__name__)

Launcher = Callable[[str, str], object] | str


def check_launcher(launcher: object) -> Launcher:
    """The launcher if usable, else ``ConfigError`` (a template must name both ids)."""
    if callable(launcher):
        return launcher
    if isinstance(launcher, str):
        words = shlex.split(launcher)
        if not words:
            raise ConfigError([("launcher", "the command template is empty")])
        try:
            [w.format(operation_id="o", worker_id="w") for w in words]
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError([("launcher", f"bad placeholder in the template: {exc}")]) from None
        return launcher
    raise ConfigError([("launcher", "must be a callable or a command template string")])


class Launches:
    """Runs launchers and reaps the processes they started."""

    def __init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []

    def launch(self, launcher: Launcher, operation_id: str, worker_id: str) -> None:
        self.reap()
        if isinstance(launcher, str):
            argv = [
                w.format(operation_id=operation_id, worker_id=worker_id)
                for w in shlex.split(launcher)
            ]
            log.info("launching %s/%s: %s", operation_id, worker_id, argv)
            self._children.append(subprocess.Popen(argv))
        else:
            launcher(operation_id, worker_id)

    def reap(self) -> None:
        """Forget children that exited (no zombies)."""
        self._children = [c for c in self._children if c.poll() is None]

    def close(self) -> None:
        self.reap()
