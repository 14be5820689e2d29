"""Quickstart: one worker checkpoints a small pipeline, is killed with SIGKILL, and resumes.

Run it (no server needed)::

    python examples/quickstart.py [FOLDER]

``FOLDER`` (default: a new temporary directory, removed at the end) holds everything, the
embedded default: the checkpoint store ``FOLDER/store`` (a ``file:`` store) and the
coordination database ``FOLDER/coord.db`` (``sqlite:``).

What it does:

1. It starts itself as a child process (``--worker OP``) that runs the pipeline
   ``resolve -> probe -> report`` over 40 hosts, checkpointing as it goes.
2. As soon as the child has committed a checkpoint in the ``probe`` stage, this process
   kills it with SIGKILL: no cleanup, no final checkpoint, its lease left behind.
3. It runs the same pipeline again, here: it waits for the dead worker's lease to lapse,
   resumes from the last checkpoint, redoes only what came after it, and finishes.
4. It compares the result with what an uncrashed run computes (the same stage functions
   without any checkpointing) and exits 0 only when they are equal.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bbp_dist_resume import (
    CheckpointConfig,
    CheckpointGranularity,
    CheckpointGuard,
    CheckpointMetadata,
    CheckpointStrategy,
    LeaseHeldError,
    ResumeContext,
    ResumeSystem,
    utils,
)

HOSTS = [f"host{i:02d}.example.net" for i in range(40)]
STAGES = ("resolve", "probe", "report")
TOTAL_STEPS = 2 * len(HOSTS) + 1  # one step per host in resolve and probe, one report
STEP_S = 0.04  # each step "works" this long, so that the kill lands mid-stage
WORKER = "w0"


# -- the pipeline's work: pure functions, no checkpointing ----------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def resolve(host: str) -> str:
    """A made-up IPv4 address for ``host`` (deterministic)."""
    h = _digest("dns:" + host)
    return ".".join(str(int(h[i : i + 2], 16)) for i in range(0, 8, 2))


def probe(host: str, ip: str) -> int:
    """A made-up score of what probing ``host`` at ``ip`` found (deterministic)."""
    return int(_digest(f"probe:{host}@{ip}")[:4], 16) % 1000


def report(scores: dict[str, int]) -> str:
    """The final report: every host, best score first."""
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return "".join(f"{rank},{host},{score}\n" for rank, (host, score) in enumerate(ranked, 1))


def reference_result() -> str:
    """What an uncrashed run computes: the report's sha256."""
    ips = {host: resolve(host) for host in HOSTS}
    return _digest(report({host: probe(host, ips[host]) for host in HOSTS}))


# -- the worker -------------------------------------------------------------------------------


def make_config(folder: Path) -> CheckpointConfig:
    """The embedded default in ``folder``, checkpointing every 5 points of progress."""
    return CheckpointConfig(
        store_url=f"file:{folder / 'store'}",
        coord_url=f"sqlite:{folder / 'coord.db'}",
        strategy=CheckpointStrategy.PROGRESS_BASED,
        progress_threshold=5.0,
        # FINE: guard.update_progress() may checkpoint, not only stage and task ends.
        granularity=CheckpointGranularity.FINE,
        # A short lease, so that the restart below waits ~2 s for the dead worker's
        # lease to lapse. Production values are longer (default: 30 s ttl, 10 s beats).
        lease_ttl=2,
        heartbeat_interval=0.5,
    )


def start_when_free(rs: ResumeSystem, op: str, timeout_s: float = 10.0) -> None:
    """Start monitoring ``op``, waiting while a dead process's lease is still live."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            rs.start_monitoring(op, workers=[WORKER], stages=list(STAGES))
            return
        except LeaseHeldError:
            # The killed worker never released its lease; it lapses after lease_ttl.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run_stage(guard: CheckpointGuard, stage: str, state: dict[str, Any]) -> int:
    """Do what is left of one stage, reporting progress to the guard; returns steps done."""
    guard.set_pipeline_state(state)  # the dict the guard's checkpoints save
    if stage == "report":
        state["report"] = report(state["scores"])
        steps = 1
        # The guard's own checkpoints carry the progress it was last given.
        guard.update_progress(100.0 * steps_done(state) / TOTAL_STEPS)
    else:
        steps = run_host_stage(guard, stage, state)
    # Inside the block, so the guard's final checkpoint has it. "completed_stages" is the
    # key a ResumeContext reads its completed_stages and pending_stages from.
    state["completed_stages"].append(stage)
    return steps


def run_host_stage(guard: CheckpointGuard, stage: str, state: dict[str, Any]) -> int:
    """Resolve or probe every host not done yet; returns how many were done now."""
    table = state["ips"] if stage == "resolve" else state["scores"]
    steps = 0
    for host in HOSTS:
        if host in table:
            continue  # done before the crash, restored from the checkpoint
        time.sleep(STEP_S)
        table[host] = resolve(host) if stage == "resolve" else probe(host, state["ips"][host])
        steps += 1
        guard.add_metadata("last_host", host)  # custom metadata of its next checkpoints
        guard.update_progress(100.0 * steps_done(state) / TOTAL_STEPS)  # may checkpoint
    return steps


def steps_done(state: dict[str, Any]) -> int:
    return len(state["ips"]) + len(state["scores"]) + (state["report"] is not None)


def describe(rs: ResumeSystem, ctx: ResumeContext) -> str:
    """One line about the checkpoint ``ctx`` came from, with its custom metadata."""
    points = rs.get_available_resume_points(ctx.operation_id)
    meta: CheckpointMetadata = next(p for p in points if p.checkpoint_id == ctx.checkpoint_id)
    return (
        f"resumed from {ctx.checkpoint_id}: stage {ctx.stage_name}, "
        f"{ctx.progress_percentage:.0f}% done, last host {meta.custom_metadata.get('last_host')}; "
        f"completed {list(ctx.completed_stages)}, pending {list(ctx.pending_stages)}"
    )


def on_checkpoint(cid: str, meta: CheckpointMetadata) -> None:
    print(f"checkpoint {cid} ({meta.stage_name}, {meta.progress_percentage:.0f}%)", flush=True)


def run_pipeline(config: CheckpointConfig, op: str) -> str:
    """Run (or resume) the pipeline as worker ``w0`` of ``op``; returns the result."""
    with ResumeSystem(config, worker_id=WORKER) as rs:
        rs.set_checkpoint_callback(on_checkpoint)
        start_when_free(rs, op)
        ctx = rs.resume_automatically(op)  # None: nothing to resume, start clean
        if ctx is None:
            state: dict[str, Any] = {"ips": {}, "scores": {}, "report": None}
            state["completed_stages"] = []
            print("starting clean", flush=True)
        else:
            state = copy.deepcopy(dict(ctx.state))
            print(describe(rs, ctx), flush=True)
        steps = 0
        for stage in STAGES if ctx is None else ctx.pending_stages:
            with CheckpointGuard(op, stage, rs) as guard:  # final checkpoint on exit
                steps += run_stage(guard, stage, state)
        rs.complete()  # this worker, and so the operation, is done
    print(f"this run did {steps} of {TOTAL_STEPS} steps", flush=True)
    return _digest(state["report"])


# -- the demonstration: crash a child, resume here ----------------------------------------------


def crash_a_worker(folder: Path, op: str) -> None:
    """Run the pipeline in a child process and SIGKILL it once it checkpointed in probe."""
    argv = [sys.executable, __file__, str(folder), "--worker", op]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        for line in child.stdout:
            print(f"  [child {child.pid}] {line.rstrip()}", flush=True)
            if line.startswith("checkpoint") and "(probe," in line:
                os.kill(child.pid, signal.SIGKILL)  # a hard crash: nothing runs after it
                break
        code = child.wait()
    if code != -signal.SIGKILL:
        sys.exit(f"the child was not killed mid-run (exit code {code})")
    print(f"killed worker {WORKER} of {op} with SIGKILL in stage probe", flush=True)


def demonstrate(folder: Path) -> int:
    op = utils.generate_operation_id("quickstart")
    crash_a_worker(folder, op)
    print("running the pipeline again: it resumes", flush=True)
    result = run_pipeline(make_config(folder), op)
    expected = reference_result()
    print(f"result {result}\nan uncrashed run computes {expected}")
    if result != expected:
        print("MISMATCH: the resumed run differs from an uncrashed run")
        return 1
    print("OK: the resumed run produced exactly the result of an uncrashed run")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("folder", nargs="?", help="where the store and database go")
    parser.add_argument("--worker", metavar="OP", help=argparse.SUPPRESS)  # the child
    args = parser.parse_args()
    if args.folder is None:
        with tempfile.TemporaryDirectory(prefix="bbp-quickstart-") as tmp:
            return demonstrate(Path(tmp))
    folder = Path(args.folder).resolve()
    if args.worker:
        run_pipeline(make_config(folder), args.worker)
        return 0
    return demonstrate(folder)


if __name__ == "__main__":
    sys.exit(main())
