"""The demo pipeline's process plumbing: its run settings, command lines, per-process
event logs and log files.

Every process of a run appends what it does to its own event log,
``<run_dir>/events/<name>.<pid>.jsonl`` (one JSON object a line, written with
``O_APPEND`` in one ``write`` each, so a kill loses nothing written and tears at most the
last line). The tests and the demo runner read these logs; nothing in the pipeline does.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.demo.recon import Params
from bbp_dist_resume.errors import ConfigError

MODULE = "bbp_dist_resume.demo.pipeline"
OPERATION_SLOT = "{operation_id}"  # the launcher's placeholders (api/launch.py)
WORKER_SLOT = "{worker_id}"
_ENV_PREFIX = "BBP_"


# -- run settings ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    """Everything a process of one run needs: the checkpoint config, the pipeline's
    parameters, and the run directory of the event logs and log files."""

    checkpoint: CheckpointConfig
    params: Params
    run_dir: str

    def to_json(self) -> str:
        """The ``--config-json`` of a process (used by the tests).

        Raises:
            ConfigError: the config holds a secret (a command line is no place for one:
                pass such a config through the ``BBP_*`` environment instead).
        """
        if self.checkpoint.encryption_key or self.checkpoint.decryption_keys:
            raise ConfigError([("--config-json", "cannot carry encryption keys")])
        checkpoint = json.loads(self.checkpoint.model_dump_json())
        data = {"checkpoint": checkpoint, "params": asdict(self.params), "run_dir": self.run_dir}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        """Parse :meth:`to_json`'s output. Raises ``ConfigError`` for a malformed one."""
        try:
            data = json.loads(text)
            return cls(
                checkpoint=CheckpointConfig(**data["checkpoint"]),
                params=Params(**data["params"]),
                run_dir=str(data["run_dir"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError([("--config-json", f"malformed: {exc!r}")]) from None


def config_env(config: CheckpointConfig) -> dict[str, str]:
    """The ``BBP_*`` variables from which ``CheckpointConfig.load`` rebuilds ``config``
    (secrets included: a process's environment is private to its user, unlike its
    command line). Callables (``best_fn``, ``chooser``) cannot travel and are left out.

    Raises:
        ConfigError: a list value holds a comma, the list separator of the environment.
    """
    env: dict[str, str] = {}
    for name, info in CheckpointConfig.model_fields.items():
        value = getattr(config, name)
        if info.exclude or value is None:
            continue
        env[_ENV_PREFIX + name.upper()] = _env_value(name, value)
    return env


def _env_value(name: str, value: object) -> str:
    if isinstance(value, tuple):
        items = [_env_value(name, v) for v in value]
        if any("," in item for item in items):
            raise ConfigError([(name, "a value with ',' cannot be passed in the environment")])
        return ",".join(items)
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, timedelta):
        return repr(value.total_seconds())
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def child_env(config: CheckpointConfig) -> dict[str, str]:
    """This process's environment with every ``BBP_*`` variable replaced by ``config``'s
    (so a stray ``BBP_FAULT`` or setting of the caller never reaches the children)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIX)}
    return env | config_env(config)


# -- command lines -----------------------------------------------------------------------


def pipeline_flags(params: Params, run_dir: str) -> list[str]:
    """The command-line flags that give a process ``params`` and ``run_dir``."""
    return [
        *("--probers", str(params.probers), "--hosts", str(params.hosts)),
        *("--batch", str(params.batch), "--sleep", repr(params.sleep_s)),
        *("--seed", str(params.seed), "--run-dir", run_dir),
    ]


def worker_command(operation_id: str, worker_id: str, tail: list[str]) -> list[str]:
    """``python -m bbp_dist_resume.demo.pipeline worker ...`` with ``tail`` (its flags)."""
    return [
        sys.executable,
        "-m",
        MODULE,
        "worker",
        "--op",
        operation_id,
        "--worker",
        worker_id,
        *tail,
    ]


def coordinator_command(operation_id: str, name: str, tail: list[str]) -> list[str]:
    """``python -m bbp_dist_resume.demo.pipeline coordinator ...`` with ``tail``."""
    return [
        sys.executable,
        "-m",
        MODULE,
        "coordinator",
        "--op",
        operation_id,
        "--name",
        name,
        *tail,
    ]


def launcher_template(argv: list[str]) -> str:
    """A launcher command template (api/launch.py) from an argv whose operation and worker
    words are :data:`OPERATION_SLOT` and :data:`WORKER_SLOT`: every other word's braces
    are doubled, so that formatting the template gives them back unchanged."""

    def word(w: str) -> str:
        return w if w in (OPERATION_SLOT, WORKER_SLOT) else w.replace("{", "{{").replace("}", "}}")

    return " ".join(shlex.quote(word(w)) for w in argv)


# -- event logs ----------------------------------------------------------------------------


class Events:
    """One process's event log, ``run_dir/events/<name>.<pid>.jsonl``."""

    def __init__(self, run_dir: str, name: str) -> None:
        directory = Path(run_dir) / "events"
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}.{os.getpid()}.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def log(self, event: str, **fields: Any) -> None:
        """Append one event (``t`` is the wall clock, comparable across processes)."""
        line = json.dumps({"t": time.time(), "event": event, **fields}, sort_keys=True)
        with self._lock:
            os.write(self._fd, line.encode() + b"\n")


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One event as read back: which process logged it, and what."""

    name: str
    pid: int
    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.fields.get("event", ""))

    @property
    def t(self) -> float:
        return float(self.fields.get("t", 0.0))


def _parse(name: str, pid: int, line: bytes) -> LoggedEvent | None:
    try:
        data = json.loads(line)
    except ValueError:  # a line torn by a kill
        return None
    return LoggedEvent(name, pid, data) if isinstance(data, dict) else None


def _log_name(path: Path) -> tuple[str, int]:
    name, pid = path.stem.rsplit(".", 1)
    return name, int(pid)


def iter_events(run_dir: str | Path) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """``(name, pid, event)`` of every event every process of the run logged."""
    for path in sorted((Path(run_dir) / "events").glob("*.jsonl")):
        name, pid = _log_name(path)
        for line in path.read_bytes().splitlines():
            event = _parse(name, pid, line)
            if event is not None:
                yield name, pid, dict(event.fields)


class EventTail:
    """Reads the events a run's processes append, each complete line once."""

    def __init__(self, run_dir: str | Path) -> None:
        self._dir = Path(run_dir) / "events"
        self._offsets: dict[Path, int] = {}

    def new(self) -> list[LoggedEvent]:
        """The events logged since the last call, oldest first."""
        out: list[LoggedEvent] = []
        for path in sorted(self._dir.glob("*.jsonl")):
            name, pid = _log_name(path)
            for line in self._read_lines(path):
                event = _parse(name, pid, line)
                if event is not None:
                    out.append(event)
        return sorted(out, key=lambda e: e.t)

    def _read_lines(self, path: Path) -> list[bytes]:
        start = self._offsets.get(path, 0)
        with path.open("rb") as f:
            f.seek(start)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        self._offsets[path] = start + end
        return data[:end].splitlines()


def redirect_stderr(run_dir: str, name: str) -> None:
    """This process's stderr (fault-point messages, logs) to ``run_dir/logs``."""
    directory = Path(run_dir) / "logs"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.{os.getpid()}.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    setup_logging(name)


def setup_logging(name: str) -> None:
    """Log records at INFO to stderr, each line naming the process."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s {name}[%(process)d] %(threadName)s %(name)s: %(message)s",
    )
