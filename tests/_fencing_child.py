"""A worker process for tests/test_side_effect_fencing.py (not a test module itself).

Run as ``python tests/_fencing_child.py CONFIG_JSON OPERATION OUTPUT``. As worker ``w0``
of OPERATION it prints ``READY <fencing token>``, then loops: ``ensure_lease()``, append
the line ``<fencing token> first <n>`` to OUTPUT (flushed and fsynced), sleep a little.

On the stdin line ``hold`` it finishes the line it is writing, prints ``HELD <lines
written>`` and waits for ``go`` (the test stops it there), then goes on with its next
``ensure_lease()``. When that raises ``LeaseLostError`` it prints ``LOST <lines written>
<round trips>`` and exits with code 3: ``<round trips>`` counts the calls the main thread
made to the coordination backend since it started monitoring (the lease checks are local:
it must be 0). Any other exit code is a failure.
"""

from __future__ import annotations

import functools
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bbp_dist_resume import CheckpointConfig, LeaseLostError, ResumeSystem
from bbp_dist_resume.coordination import Coordination

LOST_EXIT = 3
STEP_S = 0.02


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def count_main_thread_calls(coord: object) -> list[str]:
    """Wrap every method of the coordination protocol on ``coord``; the returned list
    gets the name of each one the main thread calls."""
    calls: list[str] = []

    def counted(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is threading.main_thread():
                calls.append(name)
            return method(*args, **kwargs)

        return call

    for name in dir(Coordination):
        if not name.startswith("_") and callable(getattr(coord, name, None)):
            setattr(coord, name, counted(name, getattr(coord, name)))
    return calls


def append(path: Path, line: str) -> None:
    with path.open("a") as out:
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())


def held() -> bool:
    """Whether the test asked to hold (a ``hold`` line waits on stdin)."""
    if not select.select([sys.stdin], [], [], 0)[0]:
        return False
    return sys.stdin.readline().strip() == "hold"


def work(rs: ResumeSystem, output: Path, calls: list[str]) -> int:
    written = 0
    while True:
        try:
            rs.ensure_lease()  # an effect outside the store: only while the slot is ours
        except LeaseLostError:
            say(f"LOST {written} {len(calls)}")
            return LOST_EXIT
        append(output, f"{rs.fencing_token} first {written}")
        written += 1
        if held():
            say(f"HELD {written}")
            if sys.stdin.readline().strip() != "go":
                return 1
        else:
            time.sleep(STEP_S)


def main(argv: list[str]) -> int:
    config_json, op, output = argv
    rs = ResumeSystem(CheckpointConfig.model_validate_json(config_json), "w0")
    try:
        rs.start_monitoring(op)
        calls = count_main_thread_calls(rs._coord)
        say(f"READY {rs.fencing_token}")
        return work(rs, Path(output), calls)
    finally:
        rs.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
