"""Helpers of the ``bbp-resume`` test modules (test_cli_*.py): running the CLI in-process
(``main(argv)``), as the installed console script, and on a pseudo-terminal; snapshots
of a store and a backend to show that a failed command changed nothing.

A fixture defined here reaches a test module only when the module imports it by name.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pty
import re
import select
import sqlite3
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from bbp_dist_resume import CheckpointConfig, ResumeSystem
from bbp_dist_resume.blobstore import open_store
from bbp_dist_resume.cli.main import main
from bbp_dist_resume.coordination.url import sqlite_path

# The console script pip installed beside the interpreter running the tests.
SCRIPT = Path(sys.executable).with_name("bbp-resume")
ERROR_PREFIX = "bbp-resume: error: "
# What colour, a progress bar or a cursor move leaves in a stream.
ANSI = re.compile(r"\x1b\[")


@dataclass(frozen=True, slots=True)
class Ran:
    """One command's exit code and output."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self
        return json.loads(self.out)

    def error_line(self) -> str:
        """The one error line on stderr (fails unless there is exactly one line)."""
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, f"expected one error line, got:\n{self.err}"
        assert lines[0].startswith(ERROR_PREFIX), lines[0]
        assert "Traceback" not in self.err
        return lines[0].removeprefix(ERROR_PREFIX)


Cli = Callable[..., Ran]


def urls(config: CheckpointConfig) -> list[str]:
    return ["--store", config.store_url, "--coord", config.coord_url]


@pytest.fixture(name="cli")
def cli_fixture(capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    """``cli(*args)``: ``main(list(args))`` in this process, its output captured. The
    root logger (which ``main`` sets up) is put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def run(*args: str) -> Ran:
        capsys.readouterr()
        code = main(list(args))
        got = capsys.readouterr()
        return Ran(code, got.out, got.err)

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)


def script_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without any ``BBP_*`` setting (a test names its own), plus
    ``extra``. The AWS_* credentials of the test services stay."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BBP_")}
    return env | dict(extra or {})


def run_script(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60, cwd: Path | None = None
) -> Ran:
    """The installed ``bbp-resume`` as a subprocess, its output through pipes."""
    assert SCRIPT.is_file(), f"{SCRIPT} is not installed: pip install -e ."
    done = subprocess.run(
        [str(SCRIPT), *args],
        env=script_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        check=False,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True, slots=True)
class OnTerminal:
    """A command run with stdin and stderr on a pseudo-terminal, stdout on a pipe."""

    code: int
    out: str
    terminal: bytes


def run_on_terminal(
    *args: str,
    answers: list[tuple[bytes, bytes]] = [],  # noqa: B006 - never mutated
    timeout: float = 60,
) -> OnTerminal:
    """Run ``bbp-resume`` with stdin and stderr on a new pseudo-terminal (a person at a
    terminal) and stdout on a pipe. ``answers``: when the terminal has shown the first
    bytes of a pair, type the second (in order)."""
    master, slave = pty.openpty()
    env = script_env({"COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"})
    proc = subprocess.Popen(
        [str(SCRIPT), *args],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
        start_new_session=True,
        preexec_fn=_controlling_terminal,  # noqa: PLW1509 - no lock is taken in it
    )
    os.close(slave)
    try:
        shown = _talk(master, proc, list(answers), time.monotonic() + timeout)
        out = proc.communicate(timeout=max(1.0, timeout / 2))[0].decode()
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    return OnTerminal(proc.returncode, out, shown)


def _controlling_terminal() -> None:
    """In the child, a session leader by now: make stdin (the pseudo-terminal) its
    controlling terminal, so that Ctrl-C typed there sends it SIGINT."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _talk(
    master: int, proc: subprocess.Popen[bytes], answers: list[tuple[bytes, bytes]], end: float
) -> bytes:
    shown = b""
    while time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 0.2)
        if not ready:
            if proc.poll() is not None:
                return shown
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end of the terminal
            return shown
        if not data:
            return shown
        shown += data
        if answers and answers[0][0] in shown:
            os.write(master, answers.pop(0)[1])
    raise AssertionError(f"the command did not end in time; the terminal showed:\n{shown!r}")


# -- what is stored -------------------------------------------------------------------------


def store_snapshot(store_url: str) -> dict[str, bytes]:
    """Every object of the store, by key."""
    store = open_store(store_url)
    try:
        return {info.key: store.get(info.key) for info in store.list("")}
    finally:
        store.close()


def backend_snapshot(coord_url: str) -> dict[str, Any]:
    """Everything in the coordination backend: every SQLite row, or every Redis key's
    type, serialised value and whether it expires."""
    if coord_url.startswith("sqlite:"):
        db = sqlite3.connect(sqlite_path(coord_url))
        try:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            return {t: sorted(map(repr, db.execute(f"SELECT * FROM {t}"))) for t in tables}
        finally:
            db.close()
    client = redis.Redis.from_url(coord_url)
    try:
        return {
            key: (client.type(key), client.dump(key), client.pttl(key) > 0)
            for key in sorted(client.scan_iter())
        }
    finally:
        client.close()


def snapshot(config: CheckpointConfig) -> tuple[dict[str, bytes], dict[str, Any]]:
    return store_snapshot(config.store_url), backend_snapshot(config.coord_url)


def wipe_backend(coord_url: str) -> None:
    """The coordination backend loses everything (FLUSHDB, or the SQLite file deleted)."""
    if coord_url.startswith("sqlite:"):
        path = Path(sqlite_path(coord_url))
        for p in path.parent.glob(path.name + "*"):  # the -wal and -shm files too
            p.unlink()
        return
    client = redis.Redis.from_url(coord_url)
    client.flushdb()
    client.close()


def chunk_keys(store_url: str) -> set[str]:
    store = open_store(store_url)
    try:
        return {info.key for info in store.list("chunks/")}
    finally:
        store.close()


def checkpoint_with_own_chunks(
    rs: ResumeSystem, stage: str, state: dict[str, Any], **kwargs: Any
) -> tuple[str, list[str]]:
    """A checkpoint and the store keys of the chunks only it has (its state must be
    unique and not inlined: ``inline_threshold=0``)."""
    store_url = rs._config.store_url
    before = chunk_keys(store_url)
    cid = rs.create_checkpoint(stage, state, **kwargs)
    assert cid
    added = sorted(chunk_keys(store_url) - before)
    assert added, "the checkpoint added no chunk"
    return cid, added


def no_terminal_output(text: str) -> None:
    """Fails when ``text`` holds an ANSI escape or a carriage return (a redrawn line)."""
    assert not ANSI.search(text), f"ANSI escape in piped output:\n{text!r}"
    assert "\r" not in text, f"a redrawn line in piped output:\n{text!r}"
