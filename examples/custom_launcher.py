"""A coordinator with a custom launcher: a crashed worker is relaunched and resumes.

Run it (no server needed)::

    python examples/custom_launcher.py [FOLDER]

``FOLDER`` (default: a new temporary directory, removed at the end) holds the ``file:``
store, the ``sqlite:`` coordination database and the workers' output files.

What it does:

1. It runs a coordinator (``ResumeSystemManager.run()``, in a thread) with a Python
   callable registered as the pipeline's launcher.
2. It starts two workers, ``w0`` and ``w1``, as child processes (this script with
   ``--worker OP WORKER``). Each sums a made-up value over its share of 40 items,
   checkpointing every 4 items, and writes its result to ``FOLDER/out/WORKER.json``.
3. After ``w1``'s second checkpoint it kills ``w1`` with SIGKILL.
4. The coordinator sees ``w1``'s lease expire, publishes a resume plan and calls the
   launcher, which starts a replacement ``w1``; the replacement resumes from its plan entry
   and finishes the work.
5. It checks that both results equal those of a run that never crashed (exit 0), and that
   the launcher ran once, for ``w1`` only.

Instead of a callable, a command template can be registered; the coordinator then runs it
itself (without a shell, each word formatted with the ids)::

    manager.register_pipeline(op, f"{sys.executable} {__file__} {folder} --worker "
                                  "{operation_id} {worker_id}")
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bbp_dist_resume import (
    CheckpointConfig,
    CheckpointStrategy,
    ResumeContext,
    ResumeSystem,
    ResumeSystemManager,
    RollbackRequested,
    utils,
)

WORKERS = ["w0", "w1"]
ITEMS = 40  # item i belongs to worker WORKERS[i % 2]
EVERY = 4  # checkpoint after every 4 items of a worker
STEP_S = 0.05  # each item "works" this long, so that the kill lands mid-run
KILL_AFTER = 2  # kill w1 after this many of its checkpoints


def make_config(folder: Path) -> CheckpointConfig:
    """The embedded default in ``folder``, with explicit checkpoints only."""
    return CheckpointConfig(
        store_url=f"file:{folder / 'store'}",
        coord_url=f"sqlite:{folder / 'coord.db'}",
        strategy=CheckpointStrategy.MANUAL,  # only create_checkpoint() calls save
        # Short, so that the demonstration takes seconds: a crash is seen within
        # lease_ttl + scan_interval. Production values are longer (defaults 30 s, 1 s).
        lease_ttl=2,
        heartbeat_interval=0.5,
        scan_interval=0.2,
    )


# -- the worker --------------------------------------------------------------------------------


def value(i: int) -> int:
    """The made-up value of item ``i``."""
    return int(hashlib.sha256(f"item-{i}".encode()).hexdigest()[:6], 16)


def share(worker: str) -> list[int]:
    """The items of ``worker``."""
    return [i for i in range(ITEMS) if WORKERS[i % len(WORKERS)] == worker]


def expected_total(worker: str) -> int:
    """The result of a run that never crashed."""
    return sum(value(i) for i in share(worker))


def say(worker: str, text: str) -> None:
    print(f"  [{worker} pid {os.getpid()}] {text}", flush=True)


def restore(worker: str, ctx: ResumeContext | None) -> dict[str, Any]:
    """The state to go on from: the checkpoint's, or a clean one."""
    if ctx is None:
        say(worker, "starting clean")
        return {"done": 0, "total": 0}
    say(worker, f"resumed from {ctx.checkpoint_id} ({ctx.resume_reason})")
    return copy.deepcopy(dict(ctx.state))


def work(rs: ResumeSystem, worker: str, state: dict[str, Any]) -> None:
    """Process the items not done yet, checkpointing every ``EVERY`` items."""
    items = share(worker)
    while state["done"] < len(items):
        time.sleep(STEP_S)
        state["total"] += value(items[state["done"]])
        state["done"] += 1
        if state["done"] % EVERY == 0 or state["done"] == len(items):
            cid = rs.create_checkpoint("sum", state, progress=100.0 * state["done"] / len(items))
            say(worker, f"checkpoint {cid} after {state['done']} items")


def run_worker(config: CheckpointConfig, op: str, worker: str, out: Path) -> None:
    """One worker process: resume (from the plan, if any), work, write the result."""
    with ResumeSystem(config, worker_id=worker) as rs:
        rs.start_monitoring(op, workers=WORKERS, stages=["sum"])
        state = restore(worker, rs.resume_automatically(op))
        while True:
            try:
                work(rs, worker, state)
                break
            except RollbackRequested:
                # A new plan puts this worker behind its state (it never does here: the
                # workers share no channel); restore the plan entry and go on.
                state = restore(worker, rs.resume_automatically(op))
        rs.ensure_lease()  # an effect outside the store: only while the slot is ours
        out.mkdir(exist_ok=True)
        (out / f"{worker}.json").write_text(json.dumps(state))
        rs.complete()
    say(worker, f"done: total {state['total']}")


# -- the coordinator ---------------------------------------------------------------------------


class Relauncher:
    """The launcher: starts a replacement worker process for a crashed slot."""

    def __init__(self, manager: ResumeSystemManager, folder: Path) -> None:
        self.manager = manager
        self.folder = folder
        self.calls: list[str] = []
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.launched = threading.Event()

    def __call__(self, operation_id: str, worker_id: str) -> None:
        """Called by the coordinator's loop once a plan for the crash is published."""
        self.calls.append(worker_id)
        running = self.children.get(worker_id)
        if running is not None and running.poll() is None:
            # Ours is still starting up (the coordinator relaunches a slot nobody took
            # within 3 lease TTLs): never run two copies of one worker.
            return
        plan = self.manager.current_plan(operation_id)
        entry = plan.entries[worker_id] if plan else None
        print(
            f"launcher called for {operation_id}/{worker_id}: plan "
            f"{plan.generation if plan else '-'} resumes it from "
            f"{entry.checkpoint_id if entry else None}",
            flush=True,
        )
        self.children[worker_id] = spawn(self.folder, operation_id, worker_id)
        self.launched.set()


def spawn(folder: Path, op: str, worker: str, *, pipe: bool = False) -> subprocess.Popen[bytes]:
    """Start a worker process (its output piped when ``pipe``, else shown as is)."""
    argv = [sys.executable, __file__, str(folder), "--worker", op, worker]
    return subprocess.Popen(argv, stdout=subprocess.PIPE if pipe else None)


def kill_after_checkpoints(child: subprocess.Popen[bytes], count: int) -> None:
    """Echo the child's output; SIGKILL it after its ``count``-th checkpoint."""
    assert child.stdout is not None
    seen = 0
    for raw in child.stdout:
        line = raw.decode().rstrip()
        print(line, flush=True)
        seen += "] checkpoint " in line
        if seen == count:
            os.kill(child.pid, signal.SIGKILL)  # a hard crash: nothing runs after it
            break
    child.stdout.close()
    if child.wait() != -signal.SIGKILL:
        sys.exit(f"the worker was not killed mid-run (exit code {child.returncode})")


def demonstrate(folder: Path) -> int:
    config, op = make_config(folder), utils.generate_operation_id("launcher")
    manager = ResumeSystemManager("coordinator-a")
    manager.initialize(config)
    relauncher = Relauncher(manager, folder)
    manager.register_pipeline(op, relauncher)  # or "*": the launcher of every operation
    loop = threading.Thread(target=manager.run, name="coordinator")
    loop.start()
    try:
        w0 = spawn(folder, op, "w0")
        kill_after_checkpoints(spawn(folder, op, "w1", pipe=True), KILL_AFTER)
        print(f"killed w1 of {op} with SIGKILL", flush=True)
        if not relauncher.launched.wait(timeout=60):
            sys.exit("the coordinator never relaunched w1")
        for child in [w0, *relauncher.children.values()]:
            child.wait(timeout=120)
    finally:
        manager.stop()
        loop.join()
        manager.shutdown()
    return check(folder / "out", relauncher.calls)


def check(out: Path, calls: list[str]) -> int:
    """0 when every result equals an uncrashed run's and only w1 was relaunched."""
    ok = set(calls) == {"w1"}
    print(f"the launcher was called for {sorted(set(calls))}")
    for worker in WORKERS:
        total = json.loads((out / f"{worker}.json").read_text())["total"]
        same = total == expected_total(worker)
        ok = ok and same
        print(f"{worker}: total {total}, uncrashed run {expected_total(worker)}")
    print("OK: the relaunched worker resumed and every result matches" if ok else "FAILED")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("folder", nargs="?", help="where the store, database and output go")
    parser.add_argument("--worker", nargs=2, metavar=("OP", "WORKER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.folder is None:
        with tempfile.TemporaryDirectory(prefix="bbp-launcher-") as tmp:
            return demonstrate(Path(tmp))
    folder = Path(args.folder).resolve()
    if args.worker:
        op, worker = args.worker
        run_worker(make_config(folder), op, worker, folder / "out")
        return 0
    return demonstrate(folder)


if __name__ == "__main__":
    sys.exit(main())
