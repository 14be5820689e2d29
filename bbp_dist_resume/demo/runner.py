"""``run_demo``: the multi-worker pipeline (``pipeline.py``) run end to end in child
processes, one worker killed with SIGKILL mid-run, and the recovery measured.

The runner computes the output of an uncrashed run in-process, starts a coordinator and
the ``k + 2`` workers (each ``python -m bbp_dist_resume.demo.pipeline``, in its own
session, its settings in its ``BBP_*`` environment), kills one prober once it has
committed part of its work, and follows the processes' event logs: the coordinator's
plan, the replacement it launched, the replacement's resume and first commit. It then
reads the final CSV back from the store, compares it byte for byte with the reference,
and counts checkpoints and bytes from the store itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bbp_dist_resume.api import ResumeSystem
from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.coordination import OperationStatus, open_coordination
from bbp_dist_resume.demo.plumbing import (
    EventTail,
    child_env,
    coordinator_command,
    pipeline_flags,
    worker_command,
)
from bbp_dist_resume.demo.processes import kill_run, spawn, terminate
from bbp_dist_resume.demo.recon import (
    CSV_NAME,
    RANK,
    Params,
    exact_checkpoints,
    probers,
    reference_csv,
    worker_ids,
)
from bbp_dist_resume.demo.report import (
    DemoEvent,
    DemoEventKind,
    DemoReport,
    count_checkpoints,
    redact_url,
    store_bytes,
)
from bbp_dist_resume.demo.tracker import Crash, Tracker, crash_fields, event
from bbp_dist_resume.errors import ConfigError, DemoFailed
from bbp_dist_resume.repository import open_repository

# The demo's pace: leases lapse 3 s after a crash, the coordinator looks every 0.2 s.
DEMO_TIMING: dict[str, Any] = {"lease_ttl": 3, "heartbeat_interval": 1, "scan_interval": 0.2}
# Every checkpoint kept (the report counts them all and consumers read old batches), a
# failed checkpoint raises, and 1 KiB chunks: rank's state grows to ~40 KB, and chunks
# that size dedup it as the default 1 MiB chunks dedup states of tens of MB.
DEMO_SETTINGS: dict[str, Any] = DEMO_TIMING | {
    "strict": True,
    "auto_cleanup": False,
    "chunk_min_size": 256,
    "chunk_avg_size": 1024,
    "chunk_max_size": 4096,
}
DEFAULT_HOSTS = 600
BATCH = 20
SLEEP_S = 0.1
TIMEOUT_S = 120.0
_POLL_S = 0.05
_STATUS_EVERY_S = 0.25
_PROGRESS_EVERY_S = 2.0
_EXIT_WAIT_S = 10.0
_MIN_VICTIM_CHECKPOINTS = 4
_WORKER_EXITS = (0, 3, 4, -signal.SIGKILL)  # done, lease lost, lease held, the demo's kill

OnEvent = Callable[[DemoEvent], None]


def demo_config(config: CheckpointConfig | None, work_dir: Path) -> CheckpointConfig:
    """The config the demo runs with: ``config`` (its store, coordination, encryption)
    or else a file store and a SQLite file under ``work_dir``, with the demo's settings
    (:data:`DEMO_SETTINGS`) applied."""
    if config is None:
        root = Path(work_dir).resolve()
        config = CheckpointConfig(
            store_url=f"file:{root / 'store'}", coord_url=f"sqlite:{root / 'coord.db'}"
        )
    return config.with_changes(**DEMO_SETTINGS)


def new_operation_id() -> str:
    """A fresh operation id (time and random), so runs never meet on shared servers."""
    return f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def run_demo(
    config: CheckpointConfig | None,
    work_dir: Path,
    *,
    probers: int = 2,
    hosts: int = DEFAULT_HOSTS,
    kill: bool = True,
    seed: int | None = None,
    on_event: OnEvent | None = None,
    timeout_s: float = TIMEOUT_S,
) -> DemoReport:
    """Run the demo pipeline with a coordinator and ``probers + 2`` worker processes.

    Args:
        config: the store and coordination to use (with its encryption settings); None
            for the embedded default under ``work_dir``. The demo's timing is applied.
        work_dir: where the run's logs go (``runs/<operation>/``), and the embedded
            store. probers: parallel probe workers. hosts: the input's size.
        kill: SIGKILL one prober mid-run. seed: the input and the crash's victim and
            moment (None: random; the report names it).
        on_event: called with each step as it happens, in the caller's thread; an
            exception from it ends the run (every process is killed first).
        timeout_s: bound on the whole run.

    Returns:
        The report; ``output_matches`` tells whether the CSV equals the uncrashed run's.

    Raises:
        DemoFailed: a process failed, the crash was not recovered, or the run timed out.
        ConfigError: unusable settings. Any error of the store or coordination backend.
    """
    seed = secrets.randbelow(2**31) if seed is None else seed
    params = Params(seed=seed, hosts=hosts, probers=probers, batch=BATCH, sleep_s=SLEEP_S)
    run = DemoRun(demo_config(config, work_dir), Path(work_dir).resolve(), params, on_event)
    return run.execute(kill=kill, timeout_s=timeout_s)


class DemoRun:
    """One demo run: its processes, its event logs, and what they showed."""

    def __init__(
        self, config: CheckpointConfig, work_dir: Path, params: Params, on_event: OnEvent | None
    ) -> None:
        self.config = config
        self.params = params
        self.op = new_operation_id()
        self.run_dir = work_dir / "runs" / self.op
        self.workers = worker_ids(params)
        self.rng = random.Random(params.seed)
        self.on_event = on_event
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.children: dict[str, subprocess.Popen[bytes]] = {}  # the coordinator first
        self.tail = EventTail(self.run_dir)
        self.track = Tracker(self.workers, self._told)
        self.victim: tuple[str, int] | None = None
        self.said = ""  # the last progress line

    def _told(self, kind: DemoEventKind, message: str, at: float) -> None:
        self._tell(kind, message, at - self.started_wall)

    def _tell(self, kind: DemoEventKind, message: str, elapsed: float | None = None) -> None:
        if elapsed is None:
            elapsed = time.monotonic() - self.started
        if self.on_event is not None:
            self.on_event(event(kind, message, elapsed))

    # -- the run -------------------------------------------------------------------------

    def execute(self, *, kill: bool, timeout_s: float) -> DemoReport:
        """Set up, run, check and report; every process is gone when this returns."""
        self.victim = self._victim() if kill else None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        reader = ResumeSystem(self.config, "demo-reader")
        try:
            reference = self._setup(reader)
            self._start()
            self._supervise(timeout_s)
            terminate(self.children["coordinator"], _EXIT_WAIT_S)
            return self._report(reader, reference)
        finally:
            try:
                kill_run(self.children.values(), self.run_dir, _EXIT_WAIT_S)
            finally:
                reader.shutdown()

    def _victim(self) -> tuple[str, int]:
        """The prober to kill and after how many of its commits (a quarter to a half of
        its work: it has committed some and still has some to do)."""
        worker = self.rng.choice(probers(self.params))
        expected = exact_checkpoints(self.params)[worker]
        if expected < _MIN_VICTIM_CHECKPOINTS:
            raise ConfigError([("hosts", "too few to crash a prober mid-run")])
        return worker, max(2, round(expected * self.rng.uniform(0.25, 0.5)))

    def _setup(self, reader: ResumeSystem) -> bytes:
        reader.initialize()  # opens the store once (and probes a new one) before the workers
        store, coord = redact_url(self.config.store_url), redact_url(self.config.coord_url)
        self._tell(DemoEventKind.SETUP, f"operation {self.op} on {store} + {coord}")
        reference = reference_csv(self.params)
        rows = reference.count(b"\n") - 1
        self._tell(DemoEventKind.SETUP, f"reference output computed in-process ({rows} rows)")
        return reference

    def _spawn(self, key: str, argv: list[str]) -> int:
        child = spawn(argv, child_env(self.config), self.run_dir / f"{key}.out")
        self.children[key] = child
        return child.pid

    def _start(self) -> None:
        flags = pipeline_flags(self.params, str(self.run_dir))
        pid = self._spawn("coordinator", coordinator_command(self.op, "c0", flags))
        self._tell(DemoEventKind.START, f"coordinator started (pid {pid})")
        pids = [f"{w} {self._spawn(w, worker_command(self.op, w, flags))}" for w in self.workers]
        self._tell(DemoEventKind.START, f"{len(pids)} workers started (pids: {', '.join(pids)})")

    def _supervise(self, timeout_s: float) -> None:
        """Follow the run until the operation is COMPLETED; kill the victim on the way."""
        deadline = self.started + timeout_s
        next_status = next_progress = time.monotonic()
        while True:
            for e in self.tail.new():
                self.track.feed(e)
            self._check_health()
            if self.victim is not None and self.track.crash is None:
                self._maybe_kill(*self.victim)
            now = time.monotonic()
            if now >= next_progress:
                next_progress = now + _PROGRESS_EVERY_S
                self._progress()
            if self.track.done >= set(self.workers) and now >= next_status:
                next_status = now + _STATUS_EVERY_S
                if self._completed():
                    return
            if now > deadline:
                raise DemoFailed(f"the run did not complete in {timeout_s:.0f} s", self.run_dir)
            time.sleep(_POLL_S)

    def _progress(self) -> None:
        """Every worker's checkpoints so far, when they changed."""
        counts = ", ".join(f"{w} {self.track.commits[w]}" for w in self.workers)
        if counts != self.said and self.track.commits.total() > 0:
            self.said = counts
            self._tell(DemoEventKind.PROGRESS, f"checkpoints so far: {counts}")

    def _check_health(self) -> None:
        if self.track.errors:
            raise DemoFailed(self.track.errors[0], self.run_dir)
        for key, child in self.children.items():
            code = child.poll()
            if code is None or (key != "coordinator" and code in _WORKER_EXITS):
                continue
            raise DemoFailed(f"{key} (pid {child.pid}) exited with {code}", self.run_dir)

    def _maybe_kill(self, worker: str, after: int) -> None:
        commits = self.track.commits[worker]
        if commits < after or worker in self.track.done:
            return
        child = self.children[worker]
        self._tell(DemoEventKind.PROGRESS, f"{worker} committed {commits} checkpoints")
        os.kill(child.pid, signal.SIGKILL)
        self.track.killed(worker, child.pid, time.time())
        self._tell(DemoEventKind.KILL, f"kill -9 {worker} (pid {child.pid})")

    def _completed(self) -> bool:
        coord = open_coordination(
            self.config.coord_url, timeout_s=self.config.coord_timeout.total_seconds()
        )
        try:
            done = coord.get_operation(self.op).status is OperationStatus.COMPLETED
        finally:
            coord.close()
        if done:
            self._tell(DemoEventKind.OUTPUT, f"operation {self.op} completed")
        return done

    # -- the end -------------------------------------------------------------------------

    def _report(self, reader: ResumeSystem, reference: bytes) -> DemoReport:
        for e in self.tail.new():  # what was logged since the last look
            self.track.feed(e)
        crash = self._check_crash()
        cid, csv = self._output(reader)
        digest = hashlib.sha256(csv).hexdigest()
        self._tell_comparison(csv, reference, digest)
        with contextlib.closing(open_repository(None, self.config)) as repo:
            counts = count_checkpoints(repo, self.op, self.workers)
            sizes = store_bytes(repo, self.op, self.workers)
        return DemoReport(
            operation_id=self.op,
            store_url=redact_url(self.config.store_url),
            coord_url=redact_url(self.config.coord_url),
            seed=self.params.seed,
            hosts=self.params.hosts,
            workers=tuple(self.workers),
            wall_time_s=time.monotonic() - self.started,
            checkpoints=sum(counts.values()),
            checkpoints_per_worker={w: counts[w] for w in self.workers},
            **crash_fields(crash),
            rolled_back=tuple(self.track.rolled_back),
            logical_bytes=sizes.logical,
            stored_bytes=sizes.stored,
            stored_object_bytes=sizes.stored_objects,
            uploaded_bytes=self.track.uploaded_bytes(),
            dedup_ratio=sizes.logical / sizes.stored if sizes.stored else 1.0,
            output_checkpoint=cid,
            output_bytes=len(csv),
            output_sha256=digest,
            output_matches=csv == reference,
            work_dir=str(self.run_dir),
        )

    def _check_crash(self) -> Crash | None:
        """The crash, checked to have been detected and recovered from; None without one.

        Raises:
            DemoFailed: a crash was asked for and did not happen or was not recovered.
        """
        crash = self.track.crash
        if crash is None and self.victim is not None:
            raise DemoFailed(f"{self.victim[0]} finished before it was killed", self.run_dir)
        missing = crash.missing() if crash is not None else []
        if missing:
            raise DemoFailed(f"the run completed, but {missing[0]} was never seen", self.run_dir)
        return crash

    def _output(self, reader: ResumeSystem) -> tuple[str, bytes]:
        """Rank's last checkpoint and its CSV, read back from the store and verified."""
        ids = [c for c in reader.list_checkpoints(self.op) if c.split("/")[1] == RANK]
        if not ids:
            raise DemoFailed("rank committed no checkpoint", self.run_dir)
        cid = max(ids, key=lambda c: int(c.rsplit("/", 1)[1]))
        if not reader.verify_checkpoint(cid, deep=True):
            raise DemoFailed(f"the output checkpoint {cid} does not verify", self.run_dir)
        return cid, reader.open_checkpoint(cid).attachment(CSV_NAME)

    def _tell_comparison(self, csv: bytes, reference: bytes, digest: str) -> None:
        if csv == reference:
            said = f"output identical to the uncrashed run ({len(csv)} bytes, sha256 {digest[:16]})"
        else:
            said = f"output DIFFERS from the uncrashed run ({len(csv)}, not {len(reference)} bytes)"
        self._tell(DemoEventKind.CHECK, said)
