"""Real worker processes that pause, die or compete for one slot (DESIGN.md invariants 2
and 3, "the store is the fence"), on both backend pairs.

The workers are ``tests/_zombie_child.py`` processes: they inherit the AWS_* variables
the ``services`` fixture set and get the store and coordination URLs on their argv.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from assertions import raises_exactly

from bbp_dist_resume import (
    CheckpointConfig,
    LeaseHeldError,
    ResumeSystem,
    open_repository,
)
from bbp_dist_resume.coordination import open_coordination

CHILD = Path(__file__).resolve().parent / "_zombie_child.py"
WORKER = "w0"
STARTUP_S = 30.0  # imports, store probe and the first checkpoint of a child
REPLY_S = 15.0  # one command of a running child
MARGIN_S = 0.5  # past the lease TTL, so that the stopped worker's lease has expired
LOOP_COUNT = 12


class Child:
    """One worker process, spoken to one line at a time, every read with a deadline."""

    def __init__(self, args: list[str], stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        with stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHILD), *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                bufsize=1,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)  # end of output

    def stderr_tail(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def next_line(self, timeout: float) -> str | None:
        """The next line of output, None at its end; fails the test past ``timeout``."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no output from the worker in {timeout} s; stderr:\n{self.stderr_tail()}")

    def expect(self, word: str, timeout: float = REPLY_S) -> list[str]:
        """The next line, split; it must start with ``word``."""
        line = self.next_line(timeout)
        if line is None or line.split()[:1] != [word]:
            pytest.fail(f"expected {word}, got {line!r}; stderr:\n{self.stderr_tail()}")
        return line.split()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def rest(self, timeout: float = REPLY_S) -> list[str]:
        """Every line left until the end of the output (the process has ended)."""
        out = []
        while (line := self.next_line(timeout)) is not None:
            out.append(line)
        return out

    def pause(self) -> None:
        """SIGSTOP, and wait until the kernel shows the process stopped."""
        self.proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while _proc_state(self.proc.pid) != "T":
            assert time.monotonic() < deadline, "the worker did not stop"
            time.sleep(0.01)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def wait(self, timeout: float = REPLY_S) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker did not exit in {timeout} s; stderr:\n{self.stderr_tail()}")

    def kill(self) -> None:
        """SIGKILL (it also ends a stopped process) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=5)  # it reads to the end: never close under it
        pipes = [self.proc.stdin] + ([] if self._reader.is_alive() else [self.proc.stdout])
        for pipe in pipes:
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _proc_state(pid: int) -> str:
    # /proc/<pid>/stat: "pid (comm) S ...": the state follows the last ")".
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """``spawn(mode, config, op, *extra)``: start a worker process; all are killed at the
    end of the test, whatever happened."""
    children: list[Child] = []

    def start(mode: str, config: CheckpointConfig, op: str, *extra: str) -> Child:
        args = [mode, config.model_dump_json(), op, WORKER, *extra]
        child = Child(args, tmp_path / f"child-{len(children)}-{mode}.stderr")
        children.append(child)
        return child

    try:
        yield start
    finally:
        for child in children:
            child.kill()


@pytest.fixture
def systems() -> Iterator[Callable[[CheckpointConfig, str], ResumeSystem]]:
    """``systems(config, worker)``: an in-process ``ResumeSystem``, shut down at the end."""
    opened: list[ResumeSystem] = []

    def make(config: CheckpointConfig, worker: str) -> ResumeSystem:
        rs = ResumeSystem(config, worker)
        opened.append(rs)
        return rs

    try:
        yield make
    finally:
        for rs in reversed(opened):
            rs.shutdown()


def _records(config: CheckpointConfig, op: str) -> list[Any]:
    """The worker's commit records in the store, by seq (read from the store itself)."""
    repo = open_repository(None, config)
    try:
        return [repo.load_record(op, WORKER, seq) for seq in repo.record_seqs(op, WORKER)]
    finally:
        repo.close()


def _state_of(reader: ResumeSystem, checkpoint_id: str) -> Any:
    ctx = reader.resume_from_checkpoint(checkpoint_id)
    return None if ctx is None else dict(ctx.state)


def _zombie_takes_over(
    spawn: Callable[..., Child],
    systems: Callable[[CheckpointConfig, str], ResumeSystem],
    config: CheckpointConfig,
    mode: str,
) -> tuple[Child, ResumeSystem, str, str]:
    """A worker commits once, is SIGSTOPped past its TTL, a replacement takes its slot and
    commits, then the worker is continued. Returns (zombie, replacement, the zombie's
    checkpoint id, the replacement's checkpoint id)."""
    op = f"zombie-{mode}"
    zombie = spawn(mode, config, op)
    original = zombie.expect("READY", STARTUP_S)[1]
    assert original == f"{op}/{WORKER}/2"  # 1 is the takeover record
    zombie.pause()
    time.sleep(config.lease_ttl.total_seconds() + MARGIN_S)
    replacement = systems(config, WORKER)
    assert replacement.start_monitoring(op)  # the stopped worker's lease has expired
    taken = replacement.create_checkpoint("work", {"by": "replacement"})
    assert taken == f"{op}/{WORKER}/4"  # 3 is the replacement's takeover
    zombie.resume()
    return zombie, replacement, original, taken


def _assert_only_original_and_replacement(
    config: CheckpointConfig,
    reader: ResumeSystem,
    replacement: ResumeSystem,
    original: str,
    taken: str,
) -> None:
    op = original.partition("/")[0]
    assert reader.list_checkpoints(op) == [original, taken]
    records = _records(config, op)
    assert [(r.seq, r.kind) for r in records] == [
        (1, "takeover"),
        (2, "checkpoint"),
        (3, "takeover"),
        (4, "checkpoint"),
    ]
    old, new = records[0], records[2]
    assert (records[1].owner_token, records[1].fence) == (old.owner_token, old.fence)
    assert (records[3].owner_token, records[3].fence) == (new.owner_token, new.fence)
    assert new.owner_token != old.owner_token
    assert new.fence == replacement.fencing_token > old.fence
    assert _state_of(reader, original) == {"by": "original"}
    assert _state_of(reader, taken) == {"by": "replacement"}
    # The seq the zombie would have committed at is the replacement's takeover, and
    # there is nothing past the replacement's checkpoint.
    assert _state_of(reader, f"{op}/{WORKER}/3") is None
    assert _state_of(reader, f"{op}/{WORKER}/5") is None
    replacement.ensure_lease()


def test_stopped_worker_continued_after_a_takeover_gets_lease_lost_and_commits_nothing(
    spawn: Callable[..., Child],
    systems: Callable[[CheckpointConfig, str], ResumeSystem],
    make_config: Callable[..., CheckpointConfig],
) -> None:
    config = make_config()
    zombie, replacement, original, taken = _zombie_takes_over(spawn, systems, config, "hold")
    zombie.send("checkpoint zombie")
    verdict = zombie.expect("LOST")
    # Refused by its own local lease check (the monotonic deadline), before any write.
    assert verdict[1:] == [f"{original.rsplit('/', 1)[0]}/3", "NoneType"], verdict
    zombie.send("quit")
    assert zombie.wait() == 0
    assert zombie.rest() == []

    reader = systems(config, "reader")
    _assert_only_original_and_replacement(config, reader, replacement, original, taken)
    # The zombie's shutdown did not release or disturb the replacement's slot.
    assert replacement.create_checkpoint("work", {"by": "replacement-2"}) == (
        f"{original.rsplit('/', 1)[0]}/5"
    )


def test_zombie_without_local_lease_checks_is_refused_by_the_store_commit(
    spawn: Callable[..., Child],
    systems: Callable[[CheckpointConfig, str], ResumeSystem],
    make_config: Callable[..., CheckpointConfig],
) -> None:
    config = make_config()
    zombie, replacement, original, taken = _zombie_takes_over(spawn, systems, config, "bypass")
    slot = original.rsplit("/", 1)[0]
    fence = replacement.fencing_token
    for _ in range(2):  # a second try after the refusal is refused too
        zombie.send("checkpoint zombie")
        verdict = zombie.expect("LOST")
        # It really got to the commit point: the store's create-only write refused it.
        assert verdict[1:] == [f"{slot}/3", "CommitConflict"], verdict
    zombie.send("quit")
    assert zombie.wait() == 0
    assert zombie.rest() == []

    reader = systems(config, "reader")
    _assert_only_original_and_replacement(config, reader, replacement, original, taken)
    coord = open_coordination(config.coord_url)
    try:
        assert coord.fence_of(slot.partition("/")[0], WORKER) == fence
    finally:
        coord.close()
    assert replacement.create_checkpoint("work", {"by": "replacement-2"}) == f"{slot}/5"


def _step(state: dict[str, int]) -> dict[str, int]:
    return {"i": state["i"] + 1, "sum": state["sum"] + state["i"]}


def _expected(i: int) -> dict[str, int]:
    return {"i": i, "sum": sum(range(i))}


def _run_to_the_end(rs: ResumeSystem, state: dict[str, int]) -> str:
    last = ""
    while state["i"] < LOOP_COUNT:
        state = _step(state)
        last = rs.create_checkpoint("loop", state, progress=100.0 * state["i"] / LOOP_COUNT)
    return last


def _start_when_the_lease_expires(rs: ResumeSystem, op: str, config: CheckpointConfig) -> None:
    deadline = time.monotonic() + config.lease_ttl.total_seconds() + 10
    while True:
        try:
            rs.start_monitoring(op)
            return
        except LeaseHeldError:
            assert time.monotonic() < deadline, "the killed worker's lease never expired"
            time.sleep(0.1)


def test_killed_worker_is_resumed_from_its_last_commit_and_ends_like_an_uninterrupted_run(
    spawn: Callable[..., Child],
    systems: Callable[[CheckpointConfig, str], ResumeSystem],
    make_config: Callable[..., CheckpointConfig],
) -> None:
    config = make_config(auto_cleanup=False)  # the whole history stays, to be checked
    op = "crash"
    worker = spawn("loop", config, op, str(LOOP_COUNT))
    printed = 0
    while printed < 3:
        printed = int(worker.expect("COMMITTED", STARTUP_S if printed == 0 else REPLY_S)[1])
    os.kill(worker.proc.pid, signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL
    for line in worker.rest():  # lines printed before the kill that were not read yet
        assert line.split()[0] == "COMMITTED", line
        printed = int(line.split()[1])
    assert printed < LOOP_COUNT - 1, "the worker finished before it was killed"

    rs = systems(config, WORKER)
    _start_when_the_lease_expires(rs, op, config)
    ctx = rs.resume_automatically(op)
    assert ctx is not None
    resumed = dict(ctx.state)
    # The last commit it printed, or one it committed after its last line.
    assert resumed["i"] in {printed, printed + 1}, (printed, resumed)
    assert resumed == _expected(resumed["i"])
    assert ctx.checkpoint_id == rs.list_checkpoints(op)[-1] == f"{op}/{WORKER}/{resumed['i'] + 1}"
    assert ctx.progress_percentage == pytest.approx(100.0 * resumed["i"] / LOOP_COUNT)
    last = _run_to_the_end(rs, resumed)
    assert rs.complete()

    reference = systems(config, WORKER)
    reference.start_monitoring("reference")
    reference_last = _run_to_the_end(reference, {"i": 0, "sum": 0})
    reference.complete()

    reader = systems(config, "reader")
    assert _state_of(reader, last) == _state_of(reader, reference_last) == _expected(LOOP_COUNT)
    # Nothing lost, nothing done twice: one checkpoint per step, in order.
    history = [_state_of(reader, cid) for cid in reader.list_checkpoints(op)]
    assert history == [_expected(i) for i in range(1, LOOP_COUNT + 1)]


def test_start_monitoring_a_slot_a_live_worker_holds_raises_lease_held_and_changes_nothing(
    spawn: Callable[..., Child],
    systems: Callable[[CheckpointConfig, str], ResumeSystem],
    make_config: Callable[..., CheckpointConfig],
) -> None:
    config = make_config()
    op = "held"
    holder = spawn("hold", config, op)
    first = holder.expect("READY", STARTUP_S)[1]
    coord = open_coordination(config.coord_url)
    try:
        fence, index = coord.fence_of(op, WORKER), coord.index(op, WORKER)
        records = _records(config, op)
        second = systems(config, WORKER)
        # Tried for longer than the TTL: the holder's heartbeats keep the lease alive.
        deadline = time.monotonic() + config.lease_ttl.total_seconds() + 0.5
        while time.monotonic() < deadline:
            raises_exactly(LeaseHeldError, lambda: second.start_monitoring(op))
            assert second.operation_id is None
            assert coord.fence_of(op, WORKER) == fence
            time.sleep(0.25)
        assert coord.index(op, WORKER) == index
        assert _records(config, op) == records
        assert second.list_checkpoints(op) == [first]
    finally:
        coord.close()

    # The holder still owns its slot: its next checkpoint commits at the next seq.
    holder.send("checkpoint after")
    assert holder.expect("COMMITTED")[1] == f"{op}/{WORKER}/3"
    holder.send("quit")
    assert holder.wait() == 0
