"""Run the demo's multi-worker pipeline by hand: a coordinator and four worker processes,
kill one mid-run, and check the output against a run that never crashed.

    python examples/multi_worker/run.py

The settings come from the ``BBP_*`` environment, as in docker-compose or Kubernetes;
without ``BBP_STORE_URL`` and ``BBP_COORD_URL`` it uses a file store and a SQLite file in
a temporary folder. Exit code 0 only when the output matched. The pipeline's code is
``bbp_dist_resume/demo/pipeline.py`` (see README.md beside this file).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bbp_dist_resume import CheckpointConfig, ResumeSystem
from bbp_dist_resume.demo.recon import CSV_NAME, Params, reference_csv

OPERATION = f"by-hand-{os.getpid()}"
PARAMS = Params(seed=42, hosts=300, probers=2, batch=20, sleep_s=0.1)
FLAGS = ["--probers", "2", "--hosts", "300", "--batch", "20", "--sleep", "0.1", "--seed", "42"]
WORKERS = ["expand", "probe-0", "probe-1", "rank"]  # --worker-index 0..3
VICTIM = "probe-1"
TIMEOUT_S = 50.0


def start(role: str, *args: str, log: Path) -> subprocess.Popen[bytes]:
    """``python -m bbp_dist_resume.demo.pipeline ROLE --op OPERATION ARGS``, in its own
    session (its process group holds whatever it launches)."""
    argv = [sys.executable, "-m", "bbp_dist_resume.demo.pipeline", role, "--op", OPERATION]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*argv, *args, *FLAGS], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def commits(observer: ResumeSystem, worker: str) -> int:
    """How many checkpoints ``worker`` has committed (read from the checkpoint index)."""
    points = observer.get_available_resume_points(OPERATION)
    return sum(1 for p in points if p.worker_id == worker)


def wait_for(what: str, done: Callable[[], bool], deadline: float) -> None:
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def run(folder: Path) -> bool:
    os.environ.setdefault("BBP_STORE_URL", f"file:{folder / 'store'}")
    os.environ.setdefault("BBP_COORD_URL", f"sqlite:{folder / 'coord.db'}")
    # Short leases, so that the coordinator notices the crash within seconds.
    os.environ.update(BBP_LEASE_TTL="3", BBP_HEARTBEAT_INTERVAL="1", BBP_SCAN_INTERVAL="0.2")
    os.environ.update(BBP_AUTO_CLEANUP="false", BBP_STRICT="true")
    observer = ResumeSystem(CheckpointConfig.load(), "observer")
    observer.initialize()  # creates the store before the processes race to
    deadline = time.monotonic() + TIMEOUT_S
    procs = {"coordinator": start("coordinator", log=folder / "coordinator.log")}
    try:
        for index, worker in enumerate(WORKERS):
            procs[worker] = start(
                "worker", "--worker-index", str(index), log=folder / f"{worker}.log"
            )
        print(f"started a coordinator and {', '.join(WORKERS)} (operation {OPERATION})")
        wait_for(f"{VICTIM}'s third checkpoint", lambda: commits(observer, VICTIM) >= 3, deadline)
        print(f"{VICTIM} committed {commits(observer, VICTIM)} checkpoints: kill -9 it")
        procs[VICTIM].kill()
        # The coordinator relaunches it; rank finishes only once every prober has.
        wait_for("rank to finish", lambda: procs["rank"].poll() is not None, deadline)
        print(f"{VICTIM}'s checkpoints: {commits(observer, VICTIM)} (a replacement went on)")
        final = max(
            (p for p in observer.get_available_resume_points(OPERATION) if p.worker_id == "rank"),
            key=lambda p: p.seq,
        )
        csv = observer.open_checkpoint(final.checkpoint_id).attachment(CSV_NAME)
        matched = csv == reference_csv(PARAMS)
        print(f"{final.checkpoint_id}: {CSV_NAME}, {len(csv)} bytes, matches: {matched}")
        return matched and procs["rank"].returncode == 0
    finally:
        for proc in procs.values():  # the coordinator first: no more relaunches
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        observer.shutdown()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="bbp-multi-worker-") as tmp:
        sys.exit(0 if run(Path(tmp)) else 1)
