"""The demo's multi-worker pipeline: a recon-style scan run by ``k + 2`` worker processes
and a coordinator, which survives any of them being killed.

::

    expand ──targets-0──▶ probe-0 ──probes-0──▶
           ──targets-1──▶ probe-1 ──probes-1──▶ rank ──▶ ranked.csv
           ...            ...

Each worker is its own process and its own slot (lease) in one operation. What the
stages compute is in ``recon.py``; this module is how they checkpoint, pass data to each
other through the store, and recover. The pattern, in the order a worker meets it:

1. **Take the slot, then resume** (:func:`run_worker`). ``start_monitoring(op,
   workers=[...])`` takes this worker's lease and names every worker of the pipeline, so
   the coordinator knows them all. ``resume_automatically(op)`` says where to go on
   from: None on a clean start, else a context whose ``state`` is the dict this worker
   checkpointed last, or, after a crash, the checkpoint the coordinator's recovery plan
   chose. A role starts from that state and from nothing else.

2. **One checkpoint per batch, with channel offsets** (:meth:`Worker.checkpoint`). Each
   batch ends in one blocking ``create_checkpoint``: the state to go on from, the batch's
   records as an attachment, and how far the worker got on each channel:
   ``produced={"targets-0": n}`` for what it wrote, ``consumed={"targets-0": m}`` for
   what it read. The coordinator's recovery line uses the offsets: a consistent cut has
   no consumer past what its producer's checkpoint in the cut produced.

3. **Read committed** (:meth:`Worker.read`). A consumer never talks to its producer. It
   lists the operation's checkpoints, picks the producer's checkpoint whose batch covers
   its next offset (``custom_metadata["start.<channel>"]`` up to ``produced``) and reads
   that attachment with ``open_checkpoint(id).attachment(channel)``: verified bytes that
   are in the store for good. It never sees what a producer has not committed.

4. **Roll back when told** (:func:`_resume_and_run`). When a crash makes the coordinator
   publish a plan that puts a running worker behind its current state, that worker's
   next call raises ``RollbackRequested``; it resumes again (step 1) and redoes the work
   after its plan entry.

5. **Finish** (``complete()``). The slot is done (the coordinator no longer counts it as
   crashed); once every slot is done, the operation is COMPLETED. ``rank`` writes
   ``ranked.csv`` as an attachment of its last checkpoint, so the output is committed
   like any checkpoint.

A ``LeaseLostError`` ends the process: a newer owner holds the slot. The coordinator
(``coordinator.py``) notices an expired lease within ``lease_ttl + scan_interval``,
publishes the plan and relaunches the slot with this module's worker command line.

Command line (``--config-json`` is the tests': settings and parameters in one JSON; else
the config comes from ``--config FILE`` and the ``BBP_*`` environment)::

    python -m bbp_dist_resume.demo.pipeline worker --op OP (--worker ID | --worker-index N)
        [--probers K] [--hosts N] [--batch N] [--sleep S] [--seed N] [--run-dir DIR]
        [--config FILE | --config-json JSON]
    python -m bbp_dist_resume.demo.pipeline coordinator --op OP [--name NAME] [same flags]

``--worker-index``: 0 is ``expand``, 1..K ``probe-(N-1)``, K+1 ``rank`` (a Kubernetes
Indexed Job's ``JOB_COMPLETION_INDEX``). Exit codes: 0 done, 3 lease lost, 4 the lease is
held by a live owner, 5 any other error (logged as an ``error`` event).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from bbp_dist_resume.api import ResumeSystem
from bbp_dist_resume.demo.command import (
    build_parser,
    check_args,
    relaunch_flags,
    run_config,
    worker_id,
)
from bbp_dist_resume.demo.coordinator import run_coordinator
from bbp_dist_resume.demo.plumbing import (
    OPERATION_SLOT,
    WORKER_SLOT,
    Events,
    RunConfig,
    launcher_template,
    redirect_stderr,
    setup_logging,
    worker_command,
)
from bbp_dist_resume.demo.recon import (
    CSV_NAME,
    DONE,
    EXPAND,
    RANK,
    encode_lines,
    expand_batches,
    partition_sizes,
    probe,
    prober_index,
    probers,
    probes,
    rank_csv,
    split,
    targets,
    worker_ids,
)
from bbp_dist_resume.demo.worker import Batch, Worker, batches_of, covering, drained
from bbp_dist_resume.errors import (
    ConfigError,
    LeaseHeldError,
    LeaseLostError,
    RollbackRequested,
    WorkerFinished,
)

EXIT_DONE = 0
EXIT_LEASE_LOST = 3
EXIT_LEASE_HELD = 4
EXIT_ERROR = 5


# -- the roles ---------------------------------------------------------------------------

Role = Callable[[Worker, Mapping[str, Any]], None]


def run_expand(w: Worker, state: Mapping[str, Any]) -> None:
    """Cut the input into batches: one checkpoint per batch, carrying each prober's hosts
    of it as attachment ``targets-j`` and the offsets ``[start, produced)`` on each."""
    if state.get(DONE):
        return
    k = w.params.probers
    batches = expand_batches(w.params) or [[]]  # no input still ends with a done checkpoint
    produced = {targets(j): 0 for j in range(k)} | dict(state.get("produced", {}))
    for index in range(int(state.get("next_batch", 0)), len(batches)):
        parts = split(batches[index], k)
        start = {f"start.{c}": str(n) for c, n in produced.items()}
        produced = {targets(j): produced[targets(j)] + len(parts[j]) for j in range(k)}
        last = index + 1 == len(batches)
        w.checkpoint(
            EXPAND,
            {"next_batch": index + 1, "produced": produced, DONE: last},
            start | ({DONE: "1"} if last else {}),
            attachments={targets(j): encode_lines(part) for j, part in enumerate(parts) if part},
            progress=100.0 * (index + 1) / len(batches),
            produced=produced,
        )
        time.sleep(w.params.sleep_s)


@dataclass(frozen=True, slots=True)
class Cursor:
    """How far a prober got: records consumed from ``targets-j``, produced to ``probes-j``."""

    consumed: int = 0
    produced: int = 0


def run_probe(w: Worker, j: int, state: Mapping[str, Any]) -> None:
    """Probe partition ``j``: each committed batch of ``targets-j`` in offset order, one
    checkpoint per batch, until ``expand``'s last batch is consumed."""
    if state.get(DONE):
        return
    at = Cursor(int(state.get("consumed", 0)), int(state.get("produced", 0)))
    size = max(partition_sizes(w.params)[j], 1)
    while True:
        available = batches_of(w.points(), EXPAND, targets(j))
        batch = covering(available, at.consumed)
        if batch is not None:
            at = _probe_batch(w, j, batch, at, size)
            if batch.done:
                return
        elif drained(available, at.consumed):
            # The partition's last hosts came in an earlier batch than expand's last.
            _probe_checkpoint(w, j, at, [], done=True, progress=100.0)
            return
        else:
            w.idle()


def _probe_batch(w: Worker, j: int, batch: Batch, at: Cursor, size: int) -> Cursor:
    records = [probe(host) for host in w.read(batch, targets(j), at.consumed)]
    moved = Cursor(batch.end, at.produced)
    _probe_checkpoint(w, j, moved, records, done=batch.done, progress=100.0 * batch.end / size)
    time.sleep(w.params.sleep_s)
    return replace(moved, produced=at.produced + len(records))


def _probe_checkpoint(
    w: Worker, j: int, at: Cursor, records: list[Any], *, done: bool, progress: float
) -> None:
    """One prober checkpoint: ``at.consumed`` read, ``records`` written from
    ``at.produced`` on."""
    src, dst = targets(j), probes(j)
    end = at.produced + len(records)
    w.checkpoint(
        "probe",
        {"consumed": at.consumed, "produced": end, DONE: done},
        {f"start.{dst}": str(at.produced)} | ({DONE: "1"} if done else {}),
        attachments={dst: encode_lines(records)} if records else None,
        progress=progress,
        consumed={src: at.consumed},
        produced={dst: end},
    )


class Ranker:
    """``rank``: reads every ``probes-j``, one producer batch per checkpoint, and once
    every prober is done and consumed, writes ``ranked.csv``."""

    def __init__(self, w: Worker, state: Mapping[str, Any]) -> None:
        self.w = w
        self.channels = [probes(j) for j in range(w.params.probers)]
        saved = {c: int(n) for c, n in dict(state.get("consumed", {})).items()}
        self.consumed = dict.fromkeys(self.channels, 0) | saved
        self.records: list[Any] = list(state.get("records", []))
        self.expected = max(sum(partition_sizes(w.params)), 1)

    def run(self) -> None:
        """Read until every channel is drained, then write the ranked CSV."""
        while True:
            finished, progressed = self._round()
            if finished and not progressed:
                self._checkpoint(done=True)
                return
            if not progressed:
                self.w.idle()

    def _round(self) -> tuple[bool, bool]:
        """Read each channel's next committed batch; returns (every channel was drained
        before this round, some batch was read)."""
        points = self.w.points()
        finished, progressed = True, False
        for producer, channel in zip(probers(self.w.params), self.channels, strict=True):
            available = batches_of(points, producer, channel)
            batch = covering(available, self.consumed[channel])
            finished = finished and drained(available, self.consumed[channel])
            if batch is not None:
                self.records += self.w.read(batch, channel, self.consumed[channel])
                self.consumed[channel] = batch.end
                self._checkpoint(done=False)
                progressed = True
                time.sleep(self.w.params.sleep_s)
        return finished, progressed

    def _checkpoint(self, *, done: bool) -> None:
        share = 100.0 * len(self.records) / self.expected
        self.w.checkpoint(
            RANK,
            {"consumed": self.consumed, "records": self.records, DONE: done},
            {DONE: "1", "records": str(len(self.records))} if done else None,
            attachments={CSV_NAME: rank_csv(self.records)} if done else None,
            progress=100.0 if done else min(99.0, share),
            consumed=dict(self.consumed),
        )


def role(worker_id: str) -> Role:
    """The role function of a worker id."""
    if worker_id == EXPAND:
        return run_expand
    if worker_id == RANK:
        return lambda w, state: Ranker(w, state).run()
    j = prober_index(worker_id)
    return lambda w, state: run_probe(w, j, state)


# -- a worker process --------------------------------------------------------------------


def run_worker(rc: RunConfig, op: str, worker_id: str) -> int:
    """One worker process from start to exit; returns its exit code."""
    events = Events(rc.run_dir, worker_id)
    events.log("start", argv=sys.argv[1:3], fault=os.environ.get("BBP_FAULT"), ppid=os.getppid())
    # Consumers here read only what producers committed (step 3): a producer's crash
    # never makes them drop what they read.
    rs = ResumeSystem(rc.checkpoint.with_changes(read_committed=True), worker_id)
    try:
        rs.start_monitoring(op, workers=worker_ids(rc.params))
        events.log("monitoring", fence=rs.fencing_token)
        _resume_and_run(Worker(rs, op, rc.params, events), role(worker_id))
        return EXIT_DONE
    except WorkerFinished as exc:  # a late relaunch of a finished slot: nothing to do
        events.log("finished", error=str(exc))
        return EXIT_DONE
    except LeaseHeldError as exc:
        events.log("held", error=str(exc))
        return EXIT_LEASE_HELD
    except LeaseLostError as exc:
        events.log("lease_lost", error=str(exc))
        return EXIT_LEASE_LOST
    except Exception as exc:
        events.log("error", error=repr(exc), traceback=traceback.format_exc())
        return EXIT_ERROR
    finally:
        with contextlib.suppress(Exception):
            rs.shutdown()


def _resume_and_run(w: Worker, run: Role) -> None:
    """Resume, run the role from the restored state, complete; again after a rollback."""
    while True:
        try:
            ctx = w.rs.resume_automatically(w.op)
            w.events.log(
                "resumed",
                checkpoint=ctx.checkpoint_id if ctx else None,
                reason=ctx.resume_reason if ctx else "clean start",
            )
            run(w, dict(ctx.state) if ctx else {})
            w.rs.complete()
            w.events.log("done")
            return
        except RollbackRequested as exc:
            w.events.log("rollback", generation=exc.generation, checkpoint=exc.checkpoint_id)


# -- command line ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run a worker or the coordinator (see the module docstring); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    try:
        rc = run_config(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    worker = worker_id(parser, args, rc.params) if args.role == "worker" else ""
    name = worker or f"coordinator-{args.name}"
    if args.config_json is not None:
        redirect_stderr(rc.run_dir, name)  # the tests read the logs there
    else:
        setup_logging(name)  # to stderr: the container's log
    if worker:
        return run_worker(rc, args.op, worker)
    argv_worker = worker_command(OPERATION_SLOT, WORKER_SLOT, relaunch_flags(args, rc))
    return run_coordinator(rc, args.op, args.name, launcher_template(argv_worker))


if __name__ == "__main__":
    sys.exit(main())
