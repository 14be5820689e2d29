"""The processes of tests/test_channel_recovery.py (not a test module itself).

One run directory holds ``settings.json`` (written by the test), the channel file
``channel.txt``, and each process's event log and stderr (``bbp_dist_resume.demo.plumbing``)::

    python tests/_channel_child.py coordinator RUN_DIR OP
    python tests/_channel_child.py worker RUN_DIR OP (prod | cons)

- ``prod`` appends random records (32 hex digits and a newline, ``os.urandom``: a record
  produced again differs from the one it replaces) to the channel, ``batch`` at a time,
  each batch fsynced after ``ensure_lease()``; it checkpoints ``produced={ch: n}`` every
  ``every`` batches and completes after ``total`` records. Its ``on_restored`` hook cuts
  the channel back to the records its restored checkpoint produced (a clean start: none).
- ``cons`` reads complete records from the channel as soon as they are there (not only
  committed ones), folds each into a chained sha256, checkpoints ``consumed={ch: c}``
  with the fold every ``consume_every`` records, and on ``RollbackRequested`` resumes
  again and goes on from the restored state. It completes once ``prod`` is done and it
  has read all ``total`` records.
- the coordinator is the demo's (``ResumeSystemManager.run()`` with a command-template
  launcher that starts this script's worker command again for a crashed slot).

Exit codes: 0 done (or the slot held by a live owner, or finished: a late relaunch), 3 lease
lost, 5 any other error (logged as an ``error`` event).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbp_dist_resume import ResumeSystem
from bbp_dist_resume.api import ResumeContext
from bbp_dist_resume.coordination import open_coordination
from bbp_dist_resume.demo import plumbing
from bbp_dist_resume.demo.coordinator import run_coordinator
from bbp_dist_resume.errors import (
    LeaseHeldError,
    LeaseLostError,
    RollbackRequested,
    WorkerFinished,
)

CHANNEL = "ch"
PRODUCER, CONSUMER = "prod", "cons"
WORKERS = [PRODUCER, CONSUMER]
RECORD = 33  # bytes per record: 32 hex digits and a newline
SEED = "0" * 64  # the fold of no record
EXIT_DONE, EXIT_LEASE_LOST, EXIT_ERROR = 0, 3, 5


def fold(agg: str, record: bytes) -> str:
    """One step of the consumer's aggregate: a chained sha256 (order matters)."""
    return hashlib.sha256(agg.encode() + record).hexdigest()


def fold_all(data: bytes) -> str:
    """The aggregate of every record of a channel file."""
    agg = SEED
    for i in range(0, len(data), RECORD):
        agg = fold(agg, data[i : i + RECORD])
    return agg


@dataclass(frozen=True, slots=True)
class Settings:
    """The run's settings, from ``RUN_DIR/settings.json``."""

    rc: plumbing.RunConfig
    total: int
    batch: int
    every: int
    step_s: float
    consume_every: int
    poll_s: float

    @property
    def channel(self) -> Path:
        return Path(self.rc.run_dir) / "channel.txt"

    @classmethod
    def load(cls, run_dir: str) -> Settings:
        data = json.loads((Path(run_dir) / "settings.json").read_text())
        rc = plumbing.RunConfig.from_json(data.pop("run"))
        return cls(rc=rc, **data)


# -- the producer ------------------------------------------------------------------------


def cut_back(s: Settings, events: plumbing.Events, ctx: ResumeContext | None) -> None:
    """``on_restored``: drop every record past what the restored checkpoint produced
    (they belong to a dead incarnation and will be produced again, differently)."""
    n = int(ctx.produced.get(CHANNEL, 0)) if ctx is not None else 0
    with s.channel.open("ab") as f:  # create it on a clean start
        size = f.seek(0, os.SEEK_END)
        if size < n * RECORD:
            raise AssertionError(f"the channel holds {size} bytes, fewer than {n} records")
        f.truncate(n * RECORD)
        os.fsync(f.fileno())
    events.log("restored", n=n, size_before=size, checkpoint=ctx.checkpoint_id if ctx else None)


def append_batch(s: Settings) -> None:
    data = b"".join(os.urandom(16).hex().encode() + b"\n" for _ in range(s.batch))
    with s.channel.open("ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def run_producer(rs: ResumeSystem, s: Settings, op: str, events: plumbing.Events) -> None:
    """Resume, produce to the end, complete; resume again if a newer plan says so."""
    while True:
        try:
            produce(rs, s, op, events)
            return
        except RollbackRequested as exc:
            events.log("rollback", generation=exc.generation)


def produce(rs: ResumeSystem, s: Settings, op: str, events: plumbing.Events) -> None:
    ctx = rs.resume_automatically(op, on_restored=lambda c: cut_back(s, events, c))
    n = int(ctx.produced.get(CHANNEL, 0)) if ctx is not None else 0
    events.log("resumed", n=n, checkpoint=ctx.checkpoint_id if ctx else None)
    while n < s.total:
        rs.ensure_lease()  # an effect outside the store: only while the slot is ours
        append_batch(s)
        n += s.batch
        if (n // s.batch) % s.every == 0 or n >= s.total:
            cid = rs.create_checkpoint("produce", {"n": n}, produced={CHANNEL: n})
            events.log("committed", n=n, checkpoint=cid)
        time.sleep(s.step_s)
    rs.complete()
    events.log("done", n=n)


# -- the consumer ------------------------------------------------------------------------


class Consumer:
    """The consumer's position in the channel and its aggregate (its whole state)."""

    def __init__(self, rs: ResumeSystem, s: Settings, op: str, events: plumbing.Events) -> None:
        self.rs, self.s, self.op, self.events = rs, s, op, events
        self.c, self.agg = 0, SEED
        self.coord = open_coordination(s.rc.checkpoint.coord_url)  # to see prod finish

    def run(self) -> None:
        """Resume, read to the end, complete; resume again after each rollback."""
        try:
            while True:
                try:
                    self._resume()
                    self._read_all()
                    self.rs.complete()
                    self.events.log("done", c=self.c, agg=self.agg)
                    return
                except RollbackRequested as exc:
                    self.events.log("rollback", generation=exc.generation, held=self.c)
        finally:
            self.coord.close()

    def _resume(self) -> None:
        ctx = self.rs.resume_automatically(self.op)
        if ctx is None:
            self.c, self.agg = 0, SEED
            # Known as the channel's consumer from its first checkpoint that names it.
            self._checkpoint()
            self.events.log("ready")
        else:
            self.c, self.agg = int(ctx.state["c"]), str(ctx.state["agg"])
        self.events.log("resumed", c=self.c, checkpoint=ctx.checkpoint_id if ctx else None)

    def _checkpoint(self) -> None:
        state = {"c": self.c, "agg": self.agg}
        cid = self.rs.create_checkpoint("consume", state, consumed={CHANNEL: self.c})
        self.events.log("committed", c=self.c, checkpoint=cid)

    def _read_all(self) -> None:
        while not (self.c >= self.s.total and self._producer_done()):
            self.rs.ensure_lease()
            records = self._new_records()
            if not records:
                time.sleep(self.s.poll_s)
            for record in records:
                self.agg = fold(self.agg, record)
                self.c += 1
                if self.c % self.s.consume_every == 0:
                    self._checkpoint()
        self._checkpoint()

    def _new_records(self) -> list[bytes]:
        """The complete records past ``c`` now in the channel (none while it is shorter:
        a relaunched producer cut it back)."""
        with contextlib.suppress(FileNotFoundError), self.s.channel.open("rb") as f:
            f.seek(self.c * RECORD)
            data = f.read()
            whole = len(data) - len(data) % RECORD
            return [data[i : i + RECORD] for i in range(0, whole, RECORD)]
        return []

    def _producer_done(self) -> bool:
        return PRODUCER in self.coord.get_operation(self.op).done_workers


# -- processes ---------------------------------------------------------------------------


def run_worker(s: Settings, op: str, worker: str) -> int:
    events = plumbing.Events(s.rc.run_dir, worker)
    events.log("start", ppid=os.getppid())
    rs = ResumeSystem(s.rc.checkpoint, worker)
    try:
        rs.start_monitoring(op, workers=WORKERS)
        events.log("monitoring", fence=rs.fencing_token)
        if worker == PRODUCER:
            run_producer(rs, s, op, events)
        else:
            Consumer(rs, s, op, events).run()
        return EXIT_DONE
    except (LeaseHeldError, WorkerFinished) as exc:
        # A second relaunch of one crash (the first was slow to take the slot): no work.
        events.log("held", error=str(exc))
        return EXIT_DONE
    except LeaseLostError as exc:
        events.log("lease_lost", error=str(exc))
        return EXIT_LEASE_LOST
    except Exception as exc:
        events.log("error", error=repr(exc), traceback=traceback.format_exc())
        return EXIT_ERROR
    finally:
        with contextlib.suppress(Exception):
            rs.shutdown()


def coordinator(s: Settings, op: str) -> int:
    argv = [sys.executable, str(Path(__file__).resolve()), "worker", s.rc.run_dir]
    argv += [plumbing.OPERATION_SLOT, plumbing.WORKER_SLOT]
    return run_coordinator(s.rc, op, "c1", plumbing.launcher_template(argv))


def main(argv: list[str]) -> int:
    role, run_dir, op, *rest = argv
    s = Settings.load(run_dir)
    name = rest[0] if role == "worker" else "coordinator-c1"
    plumbing.redirect_stderr(run_dir, name)
    runs: dict[str, Callable[[], Any]] = {
        "worker": lambda: run_worker(s, op, rest[0]),
        "coordinator": lambda: coordinator(s, op),
    }
    return int(runs[role]())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
