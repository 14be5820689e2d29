"""A worker process for tests/test_zombie_worker.py (not a test module itself).

Run as ``python tests/_zombie_child.py MODE CONFIG_JSON OPERATION WORKER [COUNT]``, with
the ``CheckpointConfig`` as JSON (``model_dump_json()``: the store and coordination URLs,
the lease TTL, ...). It talks one line at a time on stdout (flushed after every line)
and reads its commands from stdin:

- ``hold``: start monitoring, commit one checkpoint, print ``READY <checkpoint id>``;
  then for each stdin line ``checkpoint <tag>`` try a checkpoint of ``{"by": tag}`` and
  print ``COMMITTED <id>``, or on ``LeaseLostError`` ``LOST <id it would have used>
  <type of the exception it was raised from, or NoneType>``
  (``ERROR <type> <message>`` on anything else); ``quit`` shuts down and exits.
- ``bypass``: like ``hold``, but the local lease checks are switched off first
  (``WorkerSession.check`` never raises, the heartbeat never marks the lease lost), so a
  lost lease is only noticed by the store's create-only commit.
- ``loop``: start monitoring, then commit COUNT checkpoints of ``{"i": i, "sum":
  sum(range(i))}`` with progress ``100 * i / COUNT``, printing ``COMMITTED <i> <id>``
  after each one, then ``DONE``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from bbp_dist_resume import CheckpointConfig, LeaseLostError, ResumeSystem
from bbp_dist_resume.api.session import WorkerSession
from bbp_dist_resume.coordination.heartbeat import Heartbeat
from bbp_dist_resume.coordination.models import Lease

LOOP_PAUSE_S = 0.1


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def bypass_local_lease_checks() -> None:
    """Make this process a zombie that does not know it is one."""

    def unchecked(self: WorkerSession) -> Lease:
        return self._heartbeat.lease

    def never_lost(self: Heartbeat, why: str) -> None:
        return None

    WorkerSession.check = unchecked  # type: ignore[method-assign]
    Heartbeat._mark_lost = never_lost  # type: ignore[method-assign]


def next_id(rs: ResumeSystem, op: str, worker: str) -> str:
    session = rs._session
    return f"{op}/{worker}/{session.next_seq if session is not None else '?'}"


def serve(rs: ResumeSystem, op: str, worker: str) -> None:
    for line in sys.stdin:
        command, _, tag = line.strip().partition(" ")
        if command == "quit":
            return
        if command != "checkpoint":
            say(f"ERROR UnknownCommand {command}")
            continue
        attempted = next_id(rs, op, worker)
        try:
            cid = rs.create_checkpoint("work", {"by": tag})
        except LeaseLostError as exc:
            # ``raise ... from None`` hides the cause from tracebacks, not from __context__.
            say(f"LOST {attempted} {type(exc.__context__).__name__}")
        except Exception as exc:
            say(f"ERROR {type(exc).__name__} {exc}")
        else:
            say(f"COMMITTED {cid}")


def loop(rs: ResumeSystem, count: int) -> None:
    state: dict[str, Any] = {"i": 0, "sum": 0}
    for _ in range(count):
        state = {"i": state["i"] + 1, "sum": state["sum"] + state["i"]}
        cid = rs.create_checkpoint("loop", state, progress=100.0 * state["i"] / count)
        say(f"COMMITTED {state['i']} {cid}")
        time.sleep(LOOP_PAUSE_S)
    say("DONE")


def main(argv: list[str]) -> int:
    mode, config_json, op, worker = argv[:4]
    config = CheckpointConfig.model_validate_json(config_json)
    if mode == "bypass":
        bypass_local_lease_checks()
    rs = ResumeSystem(config, worker)
    try:
        rs.start_monitoring(op)
        if mode == "loop":
            loop(rs, int(argv[4]))
            return 0
        say(f"READY {rs.create_checkpoint('work', {'by': 'original'})}")
        serve(rs, op, worker)
        return 0
    finally:
        rs.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
