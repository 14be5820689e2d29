"""Read-committed consumers (issue 8, part 2): a consumer that reads a channel only up to
``committed_offset`` never reads a record that a crash of its producer replaces.

The producer is a real process (``tests/_channel_producer.py``) that appends random
records to a channel file and checkpoints every few records; it is killed with SIGKILL
between commits, a coordinator publishes a plan for the crash, and a new producer process
restores the plan entry, cuts the file back and writes different records. The consumer is
a thread of the test, a worker of the same operation, on both backend pairs.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from resume_helpers import cut_heartbeat, take_over

from bbp_dist_resume import (
    CheckpointConfig,
    InvalidIdentifier,
    InvalidStateError,
    ResumeSystem,
    ResumeSystemManager,
)
from bbp_dist_resume.coordination import open_coordination
from bbp_dist_resume.policy.plan import build_plan

CHILD = Path(__file__).resolve().parent / "_channel_producer.py"
RECORD = 17
CH = "ch"
TOTAL = 120
EVERY = 8
KILLS = 3
STARTUP_S = 30.0
WAIT_S = 20.0


class Producer:
    """One producer process; its stdout is read line by line, every read with a deadline."""

    def __init__(self, config: CheckpointConfig, op: str, channel: Path, log: Path) -> None:
        args = [config.model_dump_json(), op, str(channel), str(TOTAL), str(EVERY)]
        with log.open("w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHILD), *args],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.log = log
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def expect(self, word: str, timeout: float = WAIT_S, *, skip: str = "") -> int:
        """The number after the next line starting with ``word`` (``DONE``: 0), passing
        over lines starting with ``skip``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {word} from the producer in {timeout} s:\n{self.log.read_text()}")
            if line is None or line.split()[0] not in (word, skip):
                pytest.fail(f"expected {word}, got {line!r}:\n{self.log.read_text()}")
            if line.split()[0] == word:
                return int(line.split()[1]) if word != "DONE" else 0

    def kill(self) -> None:
        """SIGKILL (nothing runs after it), reap it, close its pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()


class Consumer(threading.Thread):
    """Reads the channel file only below ``committed_offset``, checkpointing how far."""

    def __init__(self, rs: ResumeSystem, channel: Path) -> None:
        super().__init__(name="consumer", daemon=True)
        self.rs, self.channel = rs, channel
        self.seen: list[bytes] = []
        self.watermarks: list[int] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while len(self.seen) < TOTAL and not self.stop.is_set():
                watermark = self.rs.committed_offset(CH)
                self.watermarks.append(watermark)
                if watermark <= len(self.seen):
                    self.stop.wait(0.01)  # nothing new committed: poll again
                    continue
                self.seen += records(self.channel)[len(self.seen) : watermark]
                pos = len(self.seen)
                self.rs.create_checkpoint("consume", {"pos": pos}, consumed={CH: pos})
        except BaseException as exc:  # reported by the test, with its type
            self.error = exc


@dataclass(frozen=True)
class Kill:
    """The channel as a kill left it, and the watermark then."""

    channel: list[bytes]
    watermark: int


def records(path: Path) -> list[bytes]:
    data = path.read_bytes() if path.exists() else b""
    return [data[i : i + RECORD] for i in range(0, len(data) - len(data) % RECORD, RECORD)]


def wait_until(what: str, done: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


@pytest.fixture
def cleanup() -> Iterator[list[Callable[[], object]]]:
    """Things to stop at the end of the test, last first, whatever happened."""
    undo: list[Callable[[], object]] = []
    yield undo
    for step in reversed(undo):
        step()


@pytest.mark.timeout(150)
def test_a_read_committed_consumer_never_reads_a_record_a_crash_replaces(
    make_config: Callable[..., CheckpointConfig],
    tmp_path: Path,
    cleanup: list[Callable[[], object]],
) -> None:
    config, op, channel = make_config(), "read-committed", tmp_path / "channel"
    manager = ResumeSystemManager("coordinator-test")
    manager.initialize(config)
    cleanup.append(manager.shutdown)
    # read_committed: it declares that it reads only below the watermark, so a plan that
    # restarts its producer leaves it where it is (never RollbackRequested).
    rs = ResumeSystem(config.with_changes(read_committed=True), "cons")
    cleanup.append(rs.shutdown)
    rs.start_monitoring(op, workers=["prod", "cons"])
    consumer = Consumer(rs, channel)
    consumer.start()
    cleanup.append(consumer.stop.set)

    kills, starts = [], []
    for n in range(KILLS + 1):
        producer = Producer(config, op, channel, tmp_path / f"producer-{n}.log")
        cleanup.append(producer.kill)
        starts.append(producer.expect("START", STARTUP_S))
        if n == KILLS:
            break
        producer.expect("COMMITTED")  # this incarnation has committed: kill it past that
        wait_until(
            "records past the watermark",
            lambda: len(records(channel)) >= rs.committed_offset(CH) + 3,
        )
        producer.kill()
        kills.append(Kill(records(channel), rs.committed_offset(CH)))
        wait_until("a plan", lambda: manager.attempt_automatic_recovery(op), 4 * WAIT_S)
        plan = manager.current_plan(op)
        assert plan is not None and not plan.entries["cons"].rollback, plan

    producer.expect("DONE", 4 * WAIT_S, skip="COMMITTED")
    assert producer.proc.wait(timeout=WAIT_S) == 0
    consumer.join(timeout=WAIT_S)
    assert consumer.error is None, repr(consumer.error)
    final = records(channel)
    assert len(final) == TOTAL
    assert consumer.seen == final, "the consumer read a record its producer replaced"
    assert consumer.watermarks == sorted(consumer.watermarks), "the watermark went down"
    replaced = 0
    for kill, restored in zip(kills, starts[1:], strict=True):
        assert kill.watermark <= restored, "the restarted producer went below the watermark"
        doomed = range(restored, len(kill.channel))
        # The records past the restored offset were all written again, differently: an
        # optimistic reader that read them before the kill read records that are gone.
        assert all(kill.channel[i] != final[i] for i in doomed)
        replaced += len(doomed)
    assert replaced > 0, "no kill left an uncommitted record: the test proved nothing"
    rs.complete()


def test_committed_offset_needs_an_operation_and_a_valid_channel(
    make_config: Callable[..., CheckpointConfig], cleanup: list[Callable[[], object]]
) -> None:
    rs = ResumeSystem(make_config(), "cons")
    cleanup.append(rs.shutdown)
    with pytest.raises(InvalidStateError, match="start_monitoring"):
        rs.committed_offset(CH)
    rs.start_monitoring("watermark-errors")
    assert rs.committed_offset("no-such-channel") == 0
    with pytest.raises(InvalidIdentifier):
        rs.committed_offset("../escape")


def test_retention_keeps_what_shows_a_relaunched_producer_restored_its_plan_entry(
    make_config: Callable[..., CheckpointConfig],
    cleanup: list[Callable[[], object]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, op = make_config(max_checkpoints=1), "restored-marker"
    old = ResumeSystem(config, "prod")
    cleanup.append(old.shutdown)
    old.start_monitoring(op, workers=["prod"])
    entry = old.create_checkpoint("produce", {"n": 4}, produced={CH: 4})
    coord = open_coordination(config.coord_url)
    cleanup.append(coord.close)
    # The producer is cut off from Redis; a coordinator plans its restart from 4; a commit
    # of the old incarnation (a zombie's, still within its lease) lands after the plan:
    # it will be replaced.
    cut_heartbeat(monkeypatch, old)
    coord.publish_plan(op, build_plan(op, coord.index_all(op), relaunched=["prod"]).to_body())
    old.create_checkpoint("produce", {"n": 9}, produced={CH: 9})
    assert old.committed_offset(CH) == 4
    prod = ResumeSystem(config, "prod")
    cleanup.append(prod.shutdown)
    take_over(prod, op, timeout=config.lease_ttl.total_seconds() + 5)
    assert prod.committed_offset(CH) == 4  # the replacement has not committed yet
    ctx = prod.resume_automatically(op)
    assert ctx is not None and ctx.checkpoint_id == entry
    marker = prod.create_checkpoint("produce", {"n": 6}, produced={CH: 6})
    assert prod.committed_offset(CH) == 6  # its own commit, below the zombie's 9
    for n in (8, 10):
        prod.create_checkpoint("produce", {"n": n}, produced={CH: n})
    prod.cleanup_old_checkpoints()
    kept = prod.list_checkpoints(op)
    assert entry in kept and marker in kept, kept  # the rest went (max_checkpoints=1)
    assert prod.committed_offset(CH) == 10
