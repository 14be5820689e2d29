"""The processes of a demo run: each started in its own session, and every one of them
killed and waited for at the end, whatever happened.

The coordinator launches replacement workers itself; they are in the coordinator's
session (killed with it) and named in the event logs (found there if they outlived it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import psutil

from bbp_dist_resume.demo.plumbing import MODULE, iter_events
from bbp_dist_resume.errors import DemoFailed

_POLL_S = 0.05


def spawn(argv: list[str], env: Mapping[str, str], output: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session, stdout and stderr to ``output``."""
    with output.open("wb") as out:
        return subprocess.Popen(
            argv,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def terminate(child: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Ask ``child`` to stop (SIGTERM) and wait for it, at most ``timeout_s``."""
    if child.poll() is None:
        child.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=timeout_s)


def kill_run(children: Iterable[subprocess.Popen[bytes]], run_dir: Path, timeout_s: float) -> None:
    """SIGKILL every process of the run and wait until each is gone: each child's session
    (give the coordinator first: the replacements it launched are in its session), then
    any process the run's event logs name that is still a process of this run.

    Raises:
        DemoFailed: a process was still there ``timeout_s`` after its SIGKILL.
    """
    children = list(children)
    for child in children:
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            child.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=timeout_s)
    logged = [pid for pid in {pid for _, pid, _ in iter_events(run_dir)} if ours(pid, run_dir)]
    for pid in logged:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while any(alive(p) for p in logged) or any(c.poll() is None for c in children):
        if time.monotonic() > deadline:
            raise DemoFailed("processes of the run outlived SIGKILL", run_dir)
        time.sleep(_POLL_S)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def ours(pid: int, run_dir: Path) -> bool:
    """The process is one of the run's (its command line names the pipeline module and the
    run's folder), so that a pid reused by another process is never signalled."""
    try:
        cmdline = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    return MODULE in cmdline and any(str(run_dir) in word for word in cmdline)
