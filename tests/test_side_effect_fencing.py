"""Side-effect fencing (issue 8, part 3): a worker's effects outside the store are guarded
by ``ensure_lease()``, which fails locally once the lease deadline has passed on a
monotonic clock, so a worker paused past its lease writes nothing when it is continued.

The worker is a real process (``tests/_fencing_child.py``) appending numbered lines, each
with its fencing token, to an output file. The test stops it with SIGSTOP between two
lines, waits until a replacement (in the test process) takes the slot and appends its own
lines, continues it, and checks the file, on both backend pairs.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bbp_dist_resume import CheckpointConfig, LeaseHeldError, ResumeSystem

CHILD = Path(__file__).resolve().parent / "_fencing_child.py"
LOST_EXIT = 3
STARTUP_S = 30.0
WAIT_S = 15.0
BEFORE_PAUSE = 5  # lines the worker writes freely before the test holds it
REPLACEMENT_LINES = 3


class Worker:
    """The worker process, spoken to one line at a time, every read with a deadline."""

    def __init__(self, config: CheckpointConfig, op: str, output: Path, log: Path) -> None:
        self.log = log
        with log.open("w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHILD), config.model_dump_json(), op, str(output)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                bufsize=1,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def expect(self, word: str, timeout: float = WAIT_S) -> list[int]:
        """The numbers after the next line, which must start with ``word``."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no {word} from the worker in {timeout} s:\n{self.log.read_text()}")
        if line is None or line.split()[0] != word:
            pytest.fail(f"expected {word}, got {line!r}:\n{self.log.read_text()}")
        return [int(n) for n in line.split()[1:]]

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def pause(self) -> None:
        """SIGSTOP, and wait until the kernel shows the process stopped."""
        self.proc.send_signal(signal.SIGSTOP)
        wait_until("the worker is stopped", lambda: _proc_state(self.proc.pid) == "T")

    def kill(self) -> None:
        """SIGKILL (it also ends a stopped process), reap it, close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout if not self._reader.is_alive() else None):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _proc_state(pid: int) -> str:
    # /proc/<pid>/stat: "pid (comm) S ...": the state follows the last ")".
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def wait_until(what: str, done: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def lines(path: Path) -> list[tuple[int, str, int]]:
    """(fencing token, writer, number) of every line of the output file."""
    text = path.read_text() if path.exists() else ""
    return [(int(t), w, int(n)) for t, w, n in (line.split() for line in text.splitlines())]


def take_over(config: CheckpointConfig, op: str) -> ResumeSystem:
    """A replacement worker ``w0`` that takes the slot once the paused one's lease lapses
    (on the backend's clock); ``LeaseHeldError`` until then."""
    rs = ResumeSystem(config, "w0")
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            rs.start_monitoring(op)
            return rs
        except LeaseHeldError:
            assert time.monotonic() < deadline, "the paused worker's lease never lapsed"
            time.sleep(0.05)


@pytest.fixture
def cleanup() -> Iterator[list[Callable[[], object]]]:
    """Things to stop at the end of the test, last first, whatever happened."""
    undo: list[Callable[[], object]] = []
    yield undo
    for step in reversed(undo):
        step()


@pytest.mark.timeout(90)
def test_a_worker_paused_past_its_lease_writes_nothing_once_continued(
    make_config: Callable[..., CheckpointConfig],
    tmp_path: Path,
    cleanup: list[Callable[[], object]],
) -> None:
    config, op, output = make_config(), "fencing", tmp_path / "output.txt"
    worker = Worker(config, op, output, tmp_path / "worker.log")
    cleanup.append(worker.kill)
    [old_token] = worker.expect("READY", STARTUP_S)
    wait_until("the worker has written", lambda: len(lines(output)) >= BEFORE_PAUSE)
    worker.send("hold")
    [written] = worker.expect("HELD")
    worker.pause()  # between two lines: its next step is ensure_lease()
    stopped_at = lines(output)
    assert len(stopped_at) == written

    replacement = take_over(config, op)
    cleanup.append(replacement.shutdown)
    assert replacement.fencing_token > old_token
    for n in range(REPLACEMENT_LINES):
        replacement.ensure_lease()
        with output.open("a") as out:
            out.write(f"{replacement.fencing_token} replacement {n}\n")

    worker.proc.send_signal(signal.SIGCONT)
    worker.send("go")
    lost, round_trips = worker.expect("LOST")
    assert worker.proc.wait(timeout=WAIT_S) == LOST_EXIT, worker.log.read_text()
    assert lost == written, "the continued worker wrote before its lease check failed"
    assert round_trips == 0, "ensure_lease or fencing_token made a round trip"

    final = lines(output)
    first = [line for line in final if line[1] == "first"]
    assert first == stopped_at, "the paused worker wrote after it was continued"
    assert [line[1] for line in final] == ["first"] * written + ["replacement"] * REPLACEMENT_LINES
    tokens = [line[0] for line in final]
    assert tokens == sorted(tokens), "a fencing token in the file went down"
    replacement.ensure_lease()  # the slot is still the replacement's
