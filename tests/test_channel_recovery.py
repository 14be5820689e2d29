"""The recovery barrier with a real channel (issue 8, part 1), on both backend pairs.

A producer process appends random records to a channel file that a consumer process reads
at once (before the producer commits them), checkpointing only every few batches; the
test kill -9s the producer at random moments and a coordinator process relaunches it
(``tests/_channel_child.py`` has the processes). Each relaunched producer cuts the
channel back to its restored checkpoint and writes different records from there, so a
consumer that kept a record of a dead incarnation would end with a different aggregate.
The test checks that:

- the consumer's final aggregate (its last event and its last checkpoint in the store) is
  the fold over the producer's final channel file, which holds exactly ``TOTAL`` records;
- the producer was killed and relaunched ``KILLS`` times (by the coordinator), each
  relaunch restored the producer's latest checkpoint, and no committed record ever
  changed: what the channel held at each kill up to that checkpoint is in the final file;
- the kills really took records away that the consumer had read (some records past the
  restored checkpoint were replaced by different ones), and the consumer really rolled
  back (``RollbackRequested``) without ever being relaunched itself.

Random choices come from ``random.Random(seed)``: a failure prints it (BBP_CHANNEL_SEED).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _channel_child import CONSUMER, PRODUCER, RECORD, fold_all
from resume_helpers import probed_s3_prefix  # noqa: F401  (autouse: cheap fresh S3 prefixes)

from bbp_dist_resume import CheckpointConfig, ResumeSystem
from bbp_dist_resume.coordination import OperationStatus, open_coordination
from bbp_dist_resume.demo import plumbing, recon
from bbp_dist_resume.errors import BBPError

BASE_SEED = int(os.environ.get("BBP_CHANNEL_SEED", "808"))
CHILD = Path(__file__).resolve().parent / "_channel_child.py"
OP = "channel"
TOTAL, BATCH, EVERY = 480, 4, 3  # records, records a batch, batches a producer checkpoint
STEP_S = 0.06  # the producer's pause after a batch: a kill lands between its commits
CONSUME_EVERY = 10  # records a consumer checkpoint
POLL_S = 0.02  # the consumer's pause when the channel has nothing new
KILLS = 3
COMPLETE_S = 90.0  # the whole run after the last kill
STEP_WAIT_S = 30.0  # one awaited step (a relaunch, a first commit)
EXIT_S = 10.0  # a SIGKILLed process is gone


@dataclass
class Proc:
    """One process of the run, as its event log shows it."""

    name: str
    pid: int
    events: list[dict[str, Any]] = field(default_factory=list)

    def has(self, event: str) -> bool:
        return any(e["event"] == event for e in self.events)

    def all(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]


@dataclass
class Kill:
    """One kill -9 of a producer incarnation, and the channel it left behind."""

    pid: int
    t: float  # wall clock, comparable with the events' ``t``
    channel: bytes


class ChannelRun:
    """A coordinator, a consumer and the producer's incarnations, in one run directory."""

    def __init__(self, tmp_path: Path, config: CheckpointConfig, seed: int) -> None:
        self.seed = seed
        self.config = config
        self.run_dir = tmp_path / "run"
        self.run_dir.mkdir()
        rc = plumbing.RunConfig(checkpoint=config, params=recon.Params(), run_dir=str(self.run_dir))
        settings = dict(run=rc.to_json(), total=TOTAL, batch=BATCH, every=EVERY, step_s=STEP_S)
        settings |= dict(consume_every=CONSUME_EVERY, poll_s=POLL_S)
        (self.run_dir / "settings.json").write_text(json.dumps(settings))
        self.channel = self.run_dir / "channel.txt"
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.kills: list[Kill] = []

    # -- processes -----------------------------------------------------------------------

    def spawn(self, key: str, args: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if k != "BBP_FAULT"}
        with (self.run_dir / f"{key}.stderr").open("wb") as stderr:
            self.children[key] = subprocess.Popen(
                [sys.executable, str(CHILD), *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )

    def start_coordinator(self) -> None:
        self.spawn("coordinator", ["coordinator", str(self.run_dir), OP])

    def start_worker(self, worker: str) -> None:
        self.spawn(worker, ["worker", str(self.run_dir), OP, worker])

    def procs(self) -> dict[tuple[str, int], Proc]:
        out: dict[tuple[str, int], Proc] = {}
        for name, pid, event in plumbing.iter_events(self.run_dir):
            out.setdefault((name, pid), Proc(name, pid)).events.append(event)
        return out

    def of(self, name: str) -> list[Proc]:
        """The processes of one worker (or the coordinator), by start time."""
        found = [p for p in self.procs().values() if p.name == name]
        return sorted(found, key=lambda p: p.events[0]["t"])

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            coordinator = self.children.get("coordinator")
            if coordinator is not None and coordinator.poll() is not None:
                pytest.fail(f"the coordinator exited with {coordinator.returncode}: {what}")
            failed = [p for p in self.procs().values() if p.has("error")]
            if failed:
                pytest.fail(f"{failed[0].name}[{failed[0].pid}] failed waiting for {what}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not reached in {timeout} s")
            time.sleep(0.02)

    def status(self) -> OperationStatus | None:
        coord = open_coordination(self.config.coord_url)
        try:
            return coord.get_operation(OP).status
        except BBPError:
            return None  # not created yet, or briefly unreachable
        finally:
            coord.close()

    def kill(self, proc: Proc) -> None:
        """SIGKILL a producer incarnation, wait until it is gone, keep the channel it left."""
        assert _ours(proc.pid, self.run_dir), f"{proc.name}[{proc.pid}] is not running"
        os.kill(proc.pid, signal.SIGKILL)
        t = time.time()
        first = self.children.get(PRODUCER)
        if first is not None and first.pid == proc.pid:
            first.wait(timeout=EXIT_S)  # our child: reap it
        self.wait_for(f"{proc.name}[{proc.pid}] gone", lambda: not _alive(proc.pid), EXIT_S)
        self.kills.append(Kill(proc.pid, t, self.channel.read_bytes()))

    def kill_everything(self) -> None:
        """SIGKILL every process of the run, the coordinator's session (with the producers
        it relaunched) first, and wait until each (every pid the event logs name) is gone."""
        order = sorted(self.children, key=lambda key: key != "coordinator")
        for child in (self.children[key] for key in order):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=EXIT_S)
        pids = {p.pid for p in self.procs().values()}
        for pid in pids:
            if _ours(pid, self.run_dir):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + EXIT_S
        while any(_alive(pid) and _ours(pid, self.run_dir) for pid in pids):
            if time.monotonic() > deadline:
                raise AssertionError(f"processes of {self.run_dir} survived SIGKILL")
            time.sleep(0.05)

    def summary(self) -> str:
        lines = [f"kills: {[(k.pid, round(k.t, 2), len(k.channel) // RECORD) for k in self.kills]}"]
        for (name, pid), p in sorted(self.procs().items(), key=lambda kv: kv[1].events[0]["t"]):
            kinds = dict(Counter(e["event"] for e in p.events))
            lines.append(f"  {name}[{pid}]: {kinds} last={p.events[-1]}")
            lines += [f"    error: {e.get('traceback')}" for e in p.all("error")]
        return "\n".join(lines)


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _ours(pid: int, run_dir: Path) -> bool:
    """The pid is a live process of this run (its command line names the run directory)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return _alive(pid) and str(CHILD).encode() in cmdline and str(run_dir).encode() in cmdline


@contextlib.contextmanager
def channel_run(tmp_path: Path, config: CheckpointConfig, seed: int) -> Iterator[ChannelRun]:
    """A ``ChannelRun`` whose every process is SIGKILLed and waited for at the end; a
    failure names the seed and shows what each process did."""
    run = ChannelRun(tmp_path, config, seed)
    try:
        yield run
    except (AssertionError, pytest.fail.Exception) as exc:
        raise AssertionError(
            f"seed {seed} (BBP_CHANNEL_SEED={seed} reruns it), run dir {run.run_dir}\n"
            f"{run.summary()}\n{exc}"
        ) from exc
    finally:
        run.kill_everything()


@pytest.fixture
def config(make_config: Callable[..., CheckpointConfig]) -> CheckpointConfig:
    """Short leases, a fast coordinator scan, every checkpoint kept, strict checkpoints,
    no quarantine (a producer killed while it restores is not a poison checkpoint) and a
    recovery barrier bounded well inside the test's waits."""
    return make_config(
        lease_ttl=2,
        heartbeat_interval=0.5,
        scan_interval=0.2,
        auto_cleanup=False,
        strict=True,
        quarantine_after=10,
        recovery_timeout=30,
    )


# -- the kills -----------------------------------------------------------------------------


def incarnation(run: ChannelRun, k: int) -> Proc:
    """The producer's ``k``-th process (0: the first) once it holds its lease."""

    def started() -> bool:
        return len([p for p in run.of(PRODUCER) if p.has("monitoring")]) > k

    run.wait_for(f"producer incarnation {k + 1} monitoring", started, STEP_WAIT_S)
    return [p for p in run.of(PRODUCER) if p.has("monitoring")][k]


def kill_producer(run: ChannelRun, k: int, rng: random.Random) -> None:
    """Kill the producer's ``k``-th incarnation at a random moment: the second one
    anywhere from its lease on (it may still be restoring, or waiting at the barrier),
    the others while they produce: some time after their first commit, at the next
    moment the channel holds records past the last commit (a batch or two since it)."""
    proc = incarnation(run, k)
    anchor = "monitoring" if k == 1 else "committed"

    def reached() -> bool:
        return any(p.pid == proc.pid and p.has(anchor) for p in run.of(PRODUCER))

    run.wait_for(f"producer[{proc.pid}] {anchor}", reached, STEP_WAIT_S)
    time.sleep(rng.uniform(0.0, 1.2) if k == 1 else rng.uniform(0.05, 0.6))
    if k != 1:
        # Commits come every EVERY batches: while the channel's length is not a multiple
        # of a commit's records, the next commit is a batch and a pause away at least.
        run.wait_for(
            f"producer[{proc.pid}] between two commits",
            lambda: (run.channel.stat().st_size // RECORD) % (EVERY * BATCH) != 0,
            STEP_WAIT_S,
        )
    now = next(p for p in run.of(PRODUCER) if p.pid == proc.pid)
    assert not now.has("done"), "the producer finished before its kills were done"
    run.kill(now)


# -- what the run must show ----------------------------------------------------------------


def restored_after(run: ChannelRun, t: float) -> int:
    """The records the first producer restore after wall-clock time ``t`` kept."""
    events = [e for p in run.of(PRODUCER) for e in p.all("restored") if e["t"] > t]
    assert events, f"no producer restored after the kill at {t}"
    return int(min(events, key=lambda e: e["t"])["n"])


def assert_producer_relaunched(run: ChannelRun, stored: set[int]) -> None:
    """KILLS + 1 incarnations: each killed one was relaunched by the coordinator, the
    last one finished, and each restored the checkpoint the one before committed last
    (``stored``: the ``produced`` offsets of the producer's checkpoints in the store)."""
    incarnations = [p for p in run.of(PRODUCER) if p.has("monitoring")]
    assert len(incarnations) == KILLS + 1, f"{len(incarnations)} producer incarnations"
    assert [p.pid for p in incarnations[:-1]] == [k.pid for k in run.kills]
    assert incarnations[-1].has("done"), "the last producer did not finish"
    coordinator = run.children["coordinator"].pid
    for p in incarnations[1:]:
        assert p.all("start")[0]["ppid"] == coordinator, f"producer[{p.pid}] not relaunched"
    logged = sorted((e["t"], e["n"]) for p in incarnations for e in p.all("committed"))
    for kill in run.kills:
        # A kill may land between a commit and its event: then one checkpoint later.
        last = max((n for t, n in logged if t < kill.t), default=0)
        restored = restored_after(run, kill.t)
        assert restored in stored, f"restored {restored} records, never committed"
        assert last <= restored <= last + EVERY * BATCH, "not the latest checkpoint restored"


def assert_committed_records_kept(run: ChannelRun, final: bytes) -> int:
    """At each kill the channel's records up to the restored checkpoint are the final
    ones; those past it were replaced by different ones. Returns the records replaced."""
    replaced = 0
    for kill in run.kills:
        kept = restored_after(run, kill.t) * RECORD
        assert kill.channel[:kept] == final[:kept], "a committed record changed"
        lost = kill.channel[kept:]
        if lost:
            assert lost != final[kept : kept + len(lost)], "replaced records came out the same"
        replaced += len(lost) // RECORD
    return replaced


def assert_consumer_rolled_back(run: ChannelRun) -> None:
    """One consumer process throughout; it rolled back, at least once holding records
    past what the producer's next incarnation restored (records it read and that were
    then replaced)."""
    consumers = run.of(CONSUMER)
    assert len(consumers) == 1, f"the consumer was relaunched: {len(consumers)} processes"
    rollbacks = consumers[0].all("rollback")
    assert rollbacks, "the consumer never rolled back"
    ends = [k.t for k in run.kills[1:]] + [float("inf")]
    dropped = [
        r
        for kill, end in zip(run.kills, ends, strict=True)
        for r in rollbacks
        if kill.t < r["t"] < end and r["held"] > restored_after(run, kill.t)
    ]
    assert dropped, f"no rollback dropped replaced records: {rollbacks}"


def from_store(config: CheckpointConfig) -> tuple[set[int], dict[str, Any]]:
    """The ``produced`` offsets of the producer's checkpoints (and 0, a clean start), and
    the state of the consumer's last checkpoint, read from the store."""
    reader = ResumeSystem(config, "reader")
    try:
        points = reader.get_available_resume_points(OP)
        produced = {0} | {p.produced["ch"] for p in points if p.worker_id == PRODUCER}
        last = max((p for p in points if p.worker_id == CONSUMER), key=lambda p: p.seq)
        return produced, dict(reader.open_checkpoint(last.checkpoint_id).state)
    finally:
        reader.shutdown()


# -- the test ------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_consumer_of_a_killed_random_producer_ends_with_the_fold_of_its_final_channel(
    tmp_path: Path, config: CheckpointConfig
) -> None:
    seed = BASE_SEED
    rng = random.Random(seed)
    with channel_run(tmp_path, config, seed) as run:
        run.start_coordinator()
        run.start_worker(CONSUMER)
        run.wait_for(
            "the consumer's first checkpoint",
            lambda: any(p.has("ready") for p in run.of(CONSUMER)),
            STEP_WAIT_S,
        )
        run.start_worker(PRODUCER)
        for k in range(KILLS):
            kill_producer(run, k, rng)
        run.wait_for(
            "the operation completed",
            lambda: run.status() is OperationStatus.COMPLETED,
            COMPLETE_S,
        )
        assert run.children[CONSUMER].wait(timeout=EXIT_S) == 0
        errors = [p for p in run.procs().values() if p.has("error") or p.has("lease_lost")]
        assert not errors, "a process failed"

        final = run.channel.read_bytes()
        assert len(final) == TOTAL * RECORD, f"the channel holds {len(final)} bytes"
        expected = fold_all(final)
        done = run.of(CONSUMER)[0].all("done")
        assert done and done[0]["c"] == TOTAL, "the consumer did not read every record"
        assert done[0]["agg"] == expected, "the consumer's aggregate is not the channel's"
        produced, consumer_state = from_store(config)
        assert consumer_state == {"c": TOTAL, "agg": expected}

        assert_producer_relaunched(run, produced)
        assert assert_committed_records_kept(run, final) > 0, "no kill replaced a record"
        assert_consumer_rolled_back(run)
