"""End-to-end crash recovery of a multi-process pipeline (DESIGN.md invariants 1-4), with
real processes and real servers, on both backend pairs.

Each run is ``bbp_dist_resume/demo/pipeline.py``: one ``expand`` worker, three probers and
one ``rank`` worker (five processes, each its own slot), relaunched by a coordinator process
(``ResumeSystemManager.run()`` with a command-template launcher) when they crash. The
tests crash them — kill -9 at random moments, fault points of the commit protocol,
SIGSTOP past the lease, a killed leader coordinator, a Redis restart that loses every
key (also with a worker taking its slot before the coordinator repaired the loss) — and
then check, from the store itself:

- the final CSV is byte for byte the output of an uncrashed run (computed in-process
  with the pipeline's own functions);
- every listed checkpoint verifies (deep), the listing is exactly the store's checkpoint
  records, and every checkpoint a worker restored or read is one of them;
- each worker's history is linear (seqs 1..N, one record each), fences never decrease,
  and every checkpoint carries the owner token and fence of the takeover before it: no
  commit of a fenced worker landed;
- the work redone is bounded: on each worker's live lineage the batches are contiguous,
  hold exactly the worker's input, and number exactly as in an uncrashed run; across all
  its checkpoints a worker has at most one more per crash of its own.

Random choices come from ``random.Random(seed)``; failures print the seed, and
``BBP_E2E_SEED=<seed>`` reruns with it.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from resume_helpers import probed_s3_prefix  # noqa: F401  (autouse: cheap fresh S3 prefixes)

from bbp_dist_resume import CheckpointConfig, ResumeSystem, open_repository
from bbp_dist_resume.coordination import OperationStatus, open_coordination
from bbp_dist_resume.coordination.url import sqlite_path
from bbp_dist_resume.demo import pipeline as pipe
from bbp_dist_resume.demo import plumbing, recon
from bbp_dist_resume.errors import BBPError
from bbp_dist_resume.policy.recovery import live_history

BASE_SEED = int(os.environ.get("BBP_E2E_SEED", "1406"))
PARAMS = recon.Params(seed=11, hosts=400, probers=3, batch=20, sleep_s=0.05, poll_s=0.05)
WORKERS = recon.worker_ids(PARAMS)
PROBERS = recon.probers(PARAMS)
COMPLETE_S = 120.0  # a whole run with its crashes (about 10-25 s)
STEP_S = 30.0  # one awaited step of a run (a commit, a takeover, a relaunch)
EXIT_S = 15.0  # a process told to end (or SIGKILLed) is gone
FAULTS = {  # one fault point armed in each of four first workers
    recon.EXPAND: "after_chunks:3",
    "probe-0": "before_commit_record:2",
    "probe-1": "after_manifest:2",
    "probe-2": "after_commit:2",
}
FAULT_EXIT = 77
KILLS = 5  # kill -9 per chaos run


# -- the run: its processes and what they logged ------------------------------------------


@dataclass
class Proc:
    """One process of the run, as its event log shows it."""

    name: str
    pid: int
    events: list[dict[str, Any]] = field(default_factory=list)

    def has(self, event: str) -> bool:
        return any(e["event"] == event for e in self.events)

    def count(self, event: str) -> int:
        return sum(1 for e in self.events if e["event"] == event)

    def first(self, event: str) -> dict[str, Any]:
        return next(e for e in self.events if e["event"] == event)

    @property
    def ended(self) -> bool:
        return any(e["event"] in ("done", "lease_lost", "held", "error") for e in self.events)


class Run:
    """One pipeline run: a coordinator or two, five workers, their replacements."""

    def __init__(self, tmp_path: Path, config: CheckpointConfig, op: str, seed: int) -> None:
        self.op = op
        self.seed = seed
        self.config = config
        self.run_dir = tmp_path / "run"
        self.run_dir.mkdir()
        self.rc = plumbing.RunConfig(checkpoint=config, params=PARAMS, run_dir=str(self.run_dir))
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.actions: list[str] = []
        self.killed_on_purpose: set[str] = set()  # coordinators a test killed

    # -- processes -----------------------------------------------------------------------

    def _spawn(self, key: str, args: list[str], fault: str | None = None) -> None:
        env = dict(os.environ)
        env.pop("BBP_FAULT", None)
        if fault is not None:
            env["BBP_FAULT"] = fault
        with (self.run_dir / f"{key}.stderr").open("wb") as stderr:
            self.children[key] = subprocess.Popen(
                [sys.executable, "-m", plumbing.MODULE, *args, "--config-json", self.rc.to_json()],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )

    def start_coordinator(self, name: str = "c1") -> subprocess.Popen[bytes]:
        self._spawn(f"coordinator-{name}", ["coordinator", "--op", self.op, "--name", name])
        return self.children[f"coordinator-{name}"]

    def start_workers(self, faults: dict[str, str] | None = None) -> None:
        for worker in WORKERS:
            self.start_worker(worker, fault=(faults or {}).get(worker))

    def start_worker(
        self, worker: str, *, key: str | None = None, fault: str | None = None
    ) -> None:
        self._spawn(key or worker, ["worker", "--op", self.op, "--worker", worker], fault)

    def procs(self) -> dict[tuple[str, int], Proc]:
        out: dict[tuple[str, int], Proc] = {}
        for name, pid, event in plumbing.iter_events(self.run_dir):
            out.setdefault((name, pid), Proc(name, pid)).events.append(event)
        return out

    def of(self, name: str) -> list[Proc]:
        """The processes of one worker (or coordinator), by start time."""
        found = [p for p in self.procs().values() if p.name == name]
        return sorted(found, key=lambda p: p.events[0]["t"])

    def running(self, worker: str) -> list[Proc]:
        """Its processes that hold (or held) the lease and are still at work."""
        return [p for p in self.of(worker) if p.has("monitoring") and not p.ended and _alive(p.pid)]

    def first_worker(self, worker: str) -> subprocess.Popen[bytes]:
        return self.children[worker]

    def kill(self, proc: Proc, why: str) -> None:
        self.actions.append(f"{time.monotonic():.2f} SIGKILL {proc.name}[{proc.pid}] ({why})")
        _signal(proc.pid, signal.SIGKILL, self.run_dir)

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float = STEP_S) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            for key, child in self.children.items():
                ended = key.startswith("coordinator") and child.poll() is not None
                if ended and key not in self.killed_on_purpose:
                    pytest.fail(f"{key} exited with {child.returncode} waiting for {what}")
            failed = [p for p in self.procs().values() if p.has("error")]
            if failed:
                pytest.fail(f"{failed[0].name}[{failed[0].pid}] failed waiting for {what}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not reached in {timeout} s")
            time.sleep(0.05)

    def status(self) -> OperationStatus | None:
        coord = open_coordination(self.config.coord_url)
        try:
            return coord.get_operation(self.op).status
        except BBPError:
            return None  # unknown (the backend lost it) or briefly unreachable
        finally:
            coord.close()

    def wait_completed(self) -> None:
        self.wait_for(
            "the operation completed",
            lambda: self.status() is OperationStatus.COMPLETED,
            COMPLETE_S,
        )

    def check_listing(self, reader: ResumeSystem) -> int:
        """Every checkpoint listed now verifies (no torn checkpoint is ever listed, also
        while workers crash); returns how many are listed."""
        listed = reader.list_checkpoints(self.op)
        torn = [c for c in listed if not reader.verify_checkpoint(c)]
        assert not torn, f"listed mid-run but not intact: {torn}"
        return len(listed)

    def crashes(self, worker: str) -> int:
        """How many of its lease holders did not finish (each was replaced once)."""
        return max(0, sum(1 for p in self.of(worker) if p.has("monitoring")) - 1)

    # -- the end -------------------------------------------------------------------------

    def kill_everything(self) -> None:
        """SIGKILL every process of the run (stopped ones too) and wait until each is gone:
        first the coordinators (no more launches), then each child's session (the
        replacements a coordinator launched are in its session), then every pid the event
        logs name, checked to be one of this run's."""
        order = sorted(self.children, key=lambda key: not key.startswith("coordinator"))
        for child in (self.children[key] for key in order):
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=EXIT_S)
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
        pids = {p.pid for p in self.procs().values()}
        for pid in pids:
            _signal(pid, signal.SIGKILL, self.run_dir)
        deadline = time.monotonic() + EXIT_S
        while any(_alive(pid) and _ours(pid, self.run_dir) for pid in pids):
            if time.monotonic() > deadline:
                raise AssertionError(f"processes of {self.run_dir} survived SIGKILL")
            time.sleep(0.05)

    def summary(self) -> str:
        lines = [f"actions: {self.actions}"]
        for (name, pid), p in sorted(self.procs().items(), key=lambda kv: kv[1].events[0]["t"]):
            kinds = Counter(e["event"] for e in p.events)
            last = p.events[-1]
            lines.append(f"  {name}[{pid}]: {dict(kinds)} last={last.get('event')}")
            errors = [e for e in p.events if e["event"] == "error"]
            lines += [f"    error: {e.get('traceback', e.get('error'))}" for e in errors]
        return "\n".join(lines)


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"


def _ours(pid: int, run_dir: Path) -> bool:
    """The pid is a process of this run (its command line names the run directory)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return plumbing.MODULE.encode() in cmdline and str(run_dir).encode() in cmdline


def _signal(pid: int, sig: int, run_dir: Path) -> None:
    if _ours(pid, run_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@contextlib.contextmanager
def pipeline_run(
    tmp_path: Path, config: CheckpointConfig, seed: int, *, op: str = "recon"
) -> Iterator[Run]:
    """A ``Run`` whose every process is SIGKILLed and waited for at the end; a failure
    names the seed and shows what each process did."""
    run = Run(tmp_path, config, op, seed)
    try:
        yield run
    except (AssertionError, pytest.fail.Exception) as exc:
        raise AssertionError(
            f"seed {seed} (BBP_E2E_SEED={seed} reruns it), run dir {run.run_dir}\n"
            f"{run.summary()}\n{exc}"
        ) from exc
    finally:
        run.kill_everything()


@pytest.fixture
def config(make_config: Callable[..., CheckpointConfig]) -> CheckpointConfig:
    """Short leases, a fast coordinator scan, every checkpoint kept (the whole history is
    checked) and strict checkpoints (a failed one raises, never a silent gap)."""
    return make_config(
        lease_ttl=2,
        heartbeat_interval=0.5,
        scan_interval=0.2,
        auto_cleanup=False,
        strict=True,
        quarantine_after=10,
    )


class Reader:
    """A ``ResumeSystem`` of the test process that only lists, reads and verifies."""

    def __init__(self, config: CheckpointConfig) -> None:
        self.rs = ResumeSystem(config, "reader")

    def close(self) -> None:
        self.rs.shutdown()


def coordination_writable(coord_url: str) -> bool:
    """False when a SQLite coordination file's write lock is held now (a process stopped
    inside a transaction would block every other one; Redis has no such lock)."""
    if not coord_url.startswith("sqlite:"):
        return True
    db = sqlite3.connect(sqlite_path(coord_url), timeout=0.5, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        db.close()


def stop_outside_transactions(run: Run, pid: int) -> None:
    """SIGSTOP ``pid`` at a moment it holds no SQLite write lock (else continue it and
    try again a little later)."""
    for _ in range(20):
        os.kill(pid, signal.SIGSTOP)
        run.wait_for("the worker stopped", lambda: _state(pid) == "T", 5)
        if coordination_writable(run.config.coord_url):
            run.actions.append(f"{time.monotonic():.2f} SIGSTOP [{pid}]")
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.03)
    pytest.fail("the worker held the SQLite write lock at every try")


# -- what every run must show --------------------------------------------------------------


def expected_hosts(j: int) -> list[str]:
    return [h for b in recon.expand_batches(PARAMS) for h in recon.split(b, PARAMS.probers)[j]]


def assert_recovered_exactly(run: Run) -> None:
    """Every check of the module docstring, on a completed run."""
    config, op = run.config, run.op
    procs = run.procs()
    errors = [p for p in procs.values() if p.has("error")]
    assert not errors, "a process failed with an unexpected error"
    reader = ResumeSystem(config, "reader")
    repo = open_repository(None, config)
    try:
        # Invariant 4: the output of a run that never crashed.
        rank_ids = [c for c in reader.list_checkpoints(op) if c.split("/")[1] == recon.RANK]
        last = max(rank_ids, key=lambda c: int(c.rsplit("/", 1)[1]))
        csv = reader.open_checkpoint(last).attachment(recon.CSV_NAME)
        assert csv == recon.reference_csv(PARAMS), "the final CSV differs from an uncrashed run"

        # Invariant 1: no torn checkpoint listed, restored or read.
        listed = reader.list_checkpoints(op)
        records = {w: repo.records(op, w) for w in WORKERS}
        in_store = {
            f"{op}/{w}/{r.seq}" for w, rs in records.items() for r in rs if r.kind == "checkpoint"
        }
        assert sorted(listed) == sorted(in_store), "the listing is not the store's checkpoints"
        unverified = [c for c in listed if not reader.verify_checkpoint(c, deep=True)]
        assert not unverified, f"listed checkpoints that do not verify: {unverified}"
        for p in procs.values():
            for e in p.events:
                cid = e.get("checkpoint")
                if e["event"] in ("resumed", "read", "committed") and cid is not None:
                    assert cid in in_store, f"{p.name}[{p.pid}] {e['event']} {cid}: not committed"

        for worker in WORKERS:
            assert_linear_and_fenced(worker, records[worker])
        assert_bounded_redo(run, reader, records)
    finally:
        repo.close()
        reader.shutdown()


def assert_linear_and_fenced(worker: str, records: list[Any]) -> None:
    """Invariants 1 and 3 over one worker's commit records, read from the store."""
    seqs = [r.seq for r in records]
    assert seqs == list(range(1, len(seqs) + 1)), f"{worker}: history not linear: {seqs}"
    assert records and records[0].kind == "takeover", f"{worker}: does not start with a takeover"
    fences = [r.fence for r in records]
    assert fences == sorted(fences), f"{worker}: fences decrease along seq: {fences}"
    owner = records[0]
    for r in records:
        if r.kind == "takeover":
            assert r.fence > owner.fence or r is records[0], (
                f"{worker}/{r.seq}: takeover with fence {r.fence}, not above the fence "
                f"{owner.fence} of the takeover at {owner.seq}"
            )
            owner = r
        else:
            assert (r.owner_token, r.fence) == (owner.owner_token, owner.fence), (
                f"{worker}/{r.seq}: committed by fence {r.fence}, "
                f"but takeover {owner.seq} gave the slot to fence {owner.fence}"
            )


def _start(record: Any, channel: str) -> int:
    return int(record.custom_metadata[f"start.{channel}"])


def assert_bounded_redo(run: Run, reader: ResumeSystem, records: dict[str, list[Any]]) -> None:
    """Invariant 2: on the live lineage exactly an uncrashed run's batches, contiguous and
    holding exactly each worker's input; at most one extra checkpoint per own crash."""
    exact = recon.exact_checkpoints(PARAMS)
    sizes = recon.partition_sizes(PARAMS)
    live = {w: live_history(rs) for w, rs in records.items()}
    for worker in WORKERS:
        total = sum(1 for r in records[worker] if r.kind == "checkpoint")
        crashes = run.crashes(worker)
        assert len(live[worker]) == exact[worker], (
            f"{worker}: {len(live[worker])} checkpoints on its live lineage, "
            f"an uncrashed run has {exact[worker]}"
        )
        # Fixed: PlanWatch._watch_plan (api/planwatch.py) rolled a surviving worker back
        # whenever its plan entry's seq is below its current state, also when the entry is
        # just its latest checkpoint at the time the plan was built ("latest checkpoint",
        # not "rolled back") and it committed since: a survivor that never crashed redoes
        # batches (RollbackRequested), and this bound fails for it.
        assert total <= exact[worker] + crashes, (
            f"{worker}: {total} checkpoints for {exact[worker]} batches and {crashes} crashes"
        )

    offsets = dict.fromkeys((recon.targets(j) for j in range(PARAMS.probers)), 0)
    for r in live[recon.EXPAND]:
        for channel in offsets:
            assert _start(r, channel) == offsets[channel], f"expand/{r.seq}: gap on {channel}"
            offsets[channel] = r.produced[channel]
    assert list(offsets.values()) == sizes, "expand did not produce exactly its input"

    op = run.op
    for j, worker in enumerate(PROBERS):
        src, dst = recon.targets(j), recon.probes(j)
        consumed, produced, out = 0, 0, []
        for r in live[worker]:
            assert _start(r, dst) == produced, f"{worker}/{r.seq}: gap on {dst}"
            assert r.consumed[src] >= consumed, f"{worker}/{r.seq}: read {src} backwards"
            ctx = reader.open_checkpoint(f"{op}/{worker}/{r.seq}")
            batch = recon.decode_lines(ctx.attachment(dst)) if dst in ctx.attachment_names else []
            assert len(batch) == r.produced[dst] - produced, f"{worker}/{r.seq}: batch size"
            out += batch
            consumed, produced = r.consumed[src], r.produced[dst]
        assert consumed == produced == sizes[j], f"{worker}: did not process exactly its input"
        assert out == [recon.probe(h) for h in expected_hosts(j)], f"{worker}: wrong records"

    ranked = dict.fromkeys((recon.probes(j) for j in range(PARAMS.probers)), 0)
    for r in live[recon.RANK]:
        for channel, before in ranked.items():
            assert r.consumed[channel] >= before, f"rank/{r.seq}: read {channel} backwards"
        ranked = dict(r.consumed)
    assert list(ranked.values()) == sizes, "rank did not consume exactly every probe"


def commits(run: Run, worker: str) -> int:
    return sum(p.count("committed") for p in run.of(worker))


def first_started(run: Run) -> None:
    """Every first worker holds its lease."""
    run.wait_for(
        "every worker monitoring",
        lambda: all(any(p.has("monitoring") for p in run.of(w)) for w in WORKERS),
    )


# -- tests ---------------------------------------------------------------------------------


def test_uncrashed_multi_process_run_writes_the_reference_csv_with_one_checkpoint_per_batch(
    tmp_path: Path, config: CheckpointConfig
) -> None:
    with pipeline_run(tmp_path, config, BASE_SEED) as run:
        run.start_coordinator()
        run.start_workers()
        run.wait_completed()
        for worker in WORKERS:
            assert run.first_worker(worker).wait(timeout=EXIT_S) == pipe.EXIT_DONE, worker
            assert run.crashes(worker) == 0
        assert_recovered_exactly(run)
        assert not any(p.has("rollback") for p in run.procs().values())


def test_workers_killed_at_random_moments_are_relaunched_and_the_output_is_unchanged(
    tmp_path: Path, config: CheckpointConfig
) -> None:
    seed = BASE_SEED + 1
    rng = random.Random(seed)
    kills: Counter[str] = Counter()
    with pipeline_run(tmp_path, config, seed) as run, contextlib.closing(Reader(config)) as rd:
        run.start_coordinator()
        run.start_workers()
        first_started(run)
        deadline = time.monotonic() + COMPLETE_S
        while sum(kills.values()) < KILLS and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.2, 1.2))
            victims = {w: ps for w in WORKERS if (ps := run.running(w))}
            if not victims:
                if run.status() is OperationStatus.COMPLETED:
                    break
                continue  # only replacements still starting: kill one once it holds its lease
            worker = rng.choice(sorted(victims))
            run.kill(victims[worker][-1], "chaos")
            kills[worker] += 1
            run.check_listing(rd.rs)
        assert sum(kills.values()) >= 3, "the run ended before the crashes were done"
        run.wait_completed()
        for worker, n in kills.items():
            # Each kill ended a lease holder (a kill after complete() needs no relaunch).
            assert run.crashes(worker) <= n, worker
        assert sum(run.crashes(w) for w in WORKERS) >= 3
        assert_recovered_exactly(run)


def test_workers_exiting_at_each_commit_fault_point_are_relaunched_and_the_output_is_unchanged(
    tmp_path: Path, config: CheckpointConfig
) -> None:
    with pipeline_run(tmp_path, config, BASE_SEED + 2) as run:
        run.start_coordinator()
        run.start_workers(FAULTS)
        with contextlib.closing(Reader(config)) as rd:
            run.wait_for(
                "the faulted workers relaunched",
                lambda: run.check_listing(rd.rs) >= 0 and all(len(run.of(w)) >= 2 for w in FAULTS),
            )
        run.wait_completed()
        for worker, fault in FAULTS.items():
            point = fault.split(":")[0]
            first = run.first_worker(worker)
            assert first.wait(timeout=EXIT_S) == FAULT_EXIT, f"{worker} did not stop at {point}"
            log = (run.run_dir / "logs" / f"{worker}.{first.pid}.log").read_text()
            assert f"bbp fault point {point} hit" in log, worker
            replacements = run.of(worker)[1:]
            assert replacements, f"{worker} was not relaunched"
            assert all(p.first("start")["fault"] is None for p in replacements), worker
            assert run.crashes(worker) == 1, worker
        assert run.crashes(recon.RANK) == 0
        assert_recovered_exactly(run)


def test_stopped_worker_continued_after_its_takeover_stops_with_lease_lost_and_commits_nothing(
    tmp_path: Path, config: CheckpointConfig
) -> None:
    victim = "probe-1"
    with pipeline_run(tmp_path, config, BASE_SEED + 3) as run:
        run.start_coordinator()
        run.start_workers()
        run.wait_for(f"{victim} committed twice", lambda: commits(run, victim) >= 2)
        zombie = run.first_worker(victim)
        old = run.of(victim)[0]
        stop_outside_transactions(run, zombie.pid)
        run.wait_for(
            "a replacement committed",
            lambda: any(p.has("committed") for p in run.of(victim)[1:]),
        )
        assert not old.ended and _state(zombie.pid) == "T"
        os.kill(zombie.pid, signal.SIGCONT)
        run.actions.append(f"{time.monotonic():.2f} SIGCONT {victim}[{zombie.pid}]")
        assert zombie.wait(timeout=STEP_S) == pipe.EXIT_LEASE_LOST
        zombie_proc = run.of(victim)[0]
        assert zombie_proc.has("lease_lost")
        run.wait_completed()
        assert_recovered_exactly(run)

        repo = open_repository(None, config)
        try:
            records = repo.records(run.op, victim)
        finally:
            repo.close()
        old_fence = zombie_proc.first("monitoring")["fence"]
        new_fence = run.of(victim)[1].first("monitoring")["fence"]
        assert new_fence > old_fence
        takeover = next(r for r in records if r.kind == "takeover" and r.fence == new_fence)
        late = [r.seq for r in records if r.fence == old_fence and r.seq > takeover.seq]
        assert not late, f"commits of the fenced worker after the takeover: {late}"
        # Its event log may name a commit that landed just before the SIGSTOP (stopped
        # between the commit and the log line): the store says which ones are its.
        mine = [r for r in records if r.kind == "checkpoint" and r.fence == old_fence]
        assert len(mine) == zombie_proc.count("committed"), "the fenced worker committed"


def test_standby_coordinator_takes_over_from_a_killed_leader_and_the_output_is_unchanged(
    tmp_path: Path, config: CheckpointConfig
) -> None:
    seed = BASE_SEED + 4
    rng = random.Random(seed)
    with pipeline_run(tmp_path, config, seed) as run:
        coordinators = {"c1": run.start_coordinator("c1"), "c2": run.start_coordinator("c2")}

        def leader() -> str | None:
            for name in coordinators:
                procs = run.of(f"coordinator-{name}")
                if procs and procs[0].has("leader"):
                    return name
            return None

        run.wait_for("a leader", lambda: leader() is not None)
        run.start_workers()
        first_started(run)
        first = rng.choice(PROBERS)
        run.kill(run.running(first)[-1], "before the leader dies")
        run.wait_for(f"{first} relaunched", lambda: len(run.of(first)) >= 2)
        name = leader()
        assert name is not None
        standby = "c2" if name == "c1" else "c1"
        run.killed_on_purpose.add(f"coordinator-{name}")
        coordinators[name].kill()
        run.actions.append(f"{time.monotonic():.2f} SIGKILL coordinator-{name}")
        assert coordinators[name].wait(timeout=EXIT_S) == -signal.SIGKILL
        killed_at = time.time()
        # rank waits for every prober, the relaunched one too: it is still at work.
        victims = {w: ps for w in WORKERS if (ps := run.running(w))}
        assert victims, "the run finished before the leader was killed"
        second = rng.choice(sorted(victims))
        run.kill(victims[second][-1], "after the leader died")
        run.wait_completed()
        took_over = run.of(f"coordinator-{standby}")[0]
        assert any(e["event"] == "leader" and e["t"] > killed_at for e in took_over.events)
        relaunched = run.of(second)[-1]
        assert relaunched.first("start")["ppid"] == took_over.pid, "not launched by the standby"
        assert run.crashes(second) == (2 if second == first else 1)
        assert_recovered_exactly(run)


@pytest.mark.parametrize("backend_urls", ["s3-redis"], indirect=True)
def test_redis_restarted_empty_mid_run_is_repaired_from_the_store_and_the_output_is_unchanged(
    tmp_path: Path, config: CheckpointConfig, restart_redis: Callable[[], Any]
) -> None:
    with pipeline_run(tmp_path, config, BASE_SEED + 5) as run:
        run.start_coordinator()
        run.start_workers()
        run.wait_for("expand half way", lambda: commits(run, recon.EXPAND) >= 8)
        holders = [w for w in WORKERS if run.running(w)]
        restart_redis()
        run.actions.append(f"{time.monotonic():.2f} redis restarted; holders {holders}")
        run.wait_completed()
        coordinator = run.of("coordinator-c1")[0]
        assert coordinator.has("data_loss_recovered"), "the coordinator missed the data loss"
        for worker in holders:
            first = run.of(worker)[0]
            assert first.has("lease_lost"), f"{worker} went on without its lease"
            assert run.first_worker(worker).wait(timeout=EXIT_S) == pipe.EXIT_LEASE_LOST
        assert_recovered_exactly(run)


@pytest.mark.parametrize("backend_urls", ["s3-redis"], indirect=True)
def test_worker_taking_its_slot_after_redis_lost_its_data_gets_a_fence_above_the_stores(
    tmp_path: Path, config: CheckpointConfig, restart_redis: Callable[[], Any]
) -> None:
    """The window between the data loss and the coordinator's repair: a worker that takes
    its slot then (a relaunch in flight, a pool, an operator) must still get a fence above
    every fence its slot's commit records carry, or an external system that rejects stale
    fencing tokens would take the new owner for a stale one and a stale one for current."""
    with pipeline_run(tmp_path, config, BASE_SEED + 6) as run:
        coordinator = run.start_coordinator()
        run.start_workers()
        run.wait_for("expand a quarter way", lambda: commits(run, recon.EXPAND) >= 5)
        os.kill(coordinator.pid, signal.SIGSTOP)  # the repair waits until the new owner is in
        run.actions.append(f"{time.monotonic():.2f} SIGSTOP coordinator-c1")
        run.wait_for("the coordinator stopped", lambda: _state(coordinator.pid) == "T", 5)
        restart_redis()
        run.actions.append(f"{time.monotonic():.2f} redis restarted")
        for worker in WORKERS:
            code = run.first_worker(worker).wait(timeout=STEP_S)
            assert code in (pipe.EXIT_DONE, pipe.EXIT_LEASE_LOST), (worker, code)
        repo = open_repository(None, config)
        try:
            before = max(r.fence for r in repo.records(run.op, recon.EXPAND))
        finally:
            repo.close()
        run.start_worker(recon.EXPAND, key="expand-after-the-loss")
        run.wait_for(
            "expand taken over after the loss",
            lambda: any(p.has("monitoring") for p in run.of(recon.EXPAND)[1:]),
        )
        fence = run.of(recon.EXPAND)[1].first("monitoring")["fence"]
        os.kill(coordinator.pid, signal.SIGCONT)
        run.actions.append(f"{time.monotonic():.2f} SIGCONT coordinator-c1")
        run.wait_completed()
        # Fixed: session.py WorkerSession.open (line 96) takes whatever fence acquire()
        # returns, though it reads the slot's store history right after (repair_index):
        # after the data loss the counter restarts at 1, at or below fences in the store,
        # and the coordinator's rebuild (restart_fences to "at least" the store's highest)
        # leaves that live owner's fence as it is.
        assert fence > before, f"the new owner got fence {fence}, the store has seen {before}"
        assert run.of("coordinator-c1")[0].has("data_loss_recovered")
        assert_recovered_exactly(run)
