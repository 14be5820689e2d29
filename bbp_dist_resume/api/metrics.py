"""Metrics: what the library counts, behind a narrow ``Recorder``.

The library reports events to ``recorder()``: checkpoints (outcome, latencies, bytes,
dedup), resumes, lost leases, rollbacks, and the coordinator's crashes, plans,
relaunches, leadership and scans. Until metrics are turned on in the process the
recorder is ``NoRecorder``, whose methods do nothing, and ``prometheus_client`` is not
even imported. ``start_metrics_exporter`` (or a config with ``metrics_port``, at the
first ``initialize``) turns them on for the whole process: every system and manager of
the process records into the default Prometheus registry, served over HTTP once.

Labels are bounded: operation, worker, stage, outcome, coordinator; never a checkpoint
id or a seq (one series per checkpoint would grow without end).
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Protocol

from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.errors import ConfigError
from bbp_dist_resume.repository import RepositoryStats

_INSTALL = "prometheus-client is not installed: pip install 'bbp-dist-resume[metrics]'"
_BACKEND = "bbp_dist_resume.api.metrics_prometheus"


class Recorder(Protocol):
    """Where the library reports what it does. Every method is cheap, never raises, and
    may be called from any thread."""

    @property
    def enabled(self) -> bool:
        """False when every call is a no-op (callers skip measuring what they would pass)."""
        ...

    def checkpoint(
        self,
        op: str,
        worker: str,
        stage: str,
        *,
        ok: bool,
        seconds: float,
        written: RepositoryStats,
    ) -> None:
        """A checkpoint committed (``ok``) or failed, after ``seconds`` on the committer
        thread, having written ``written`` (a ``RepositoryStats`` difference)."""

    def blocked(self, op: str, worker: str, seconds: float) -> None:
        """A checkpoint call blocked its caller this long (snapshot, back-pressure, commit)."""

    def resumed(self, op: str, worker: str, *, ok: bool, seconds: float) -> None:
        """A resume attempt ended (``ok``: restored), ``seconds`` after the call began."""

    def lease_lost(self, op: str, worker: str) -> None:
        """A worker lost its lease (once per held lease)."""

    def rolled_back(self, op: str, worker: str) -> None:
        """A new plan rolled a surviving worker back."""

    def crash_detected(self, op: str) -> None:
        """The coordinator found a new crashed slot of ``op``."""

    def plan_published(self, op: str) -> None:
        """The coordinator published a resume plan for ``op``."""

    def relaunched(self, op: str) -> None:
        """The coordinator pushed a crashed slot of ``op`` to the reclaim queue."""

    def leadership(self, coordinator: str, leader: bool) -> None:
        """``coordinator`` became the leader (``leader``) or stopped being it."""

    def scanned(self, coordinator: str, seconds: float) -> None:
        """One coordinator scan took ``seconds``."""

    def data_loss_repaired(self) -> None:
        """The coordinator rebuilt a backend that had lost its data."""


class NoRecorder:
    """The recorder while metrics are off: every call does nothing."""

    enabled = False

    def checkpoint(
        self,
        op: str,
        worker: str,
        stage: str,
        *,
        ok: bool,
        seconds: float,
        written: RepositoryStats,
    ) -> None:
        return

    def blocked(self, op: str, worker: str, seconds: float) -> None:
        return

    def resumed(self, op: str, worker: str, *, ok: bool, seconds: float) -> None:
        return

    def lease_lost(self, op: str, worker: str) -> None:
        return

    def rolled_back(self, op: str, worker: str) -> None:
        return

    def crash_detected(self, op: str) -> None:
        return

    def plan_published(self, op: str) -> None:
        return

    def relaunched(self, op: str) -> None:
        return

    def leadership(self, coordinator: str, leader: bool) -> None:
        return

    def scanned(self, coordinator: str, seconds: float) -> None:
        return

    def data_loss_repaired(self) -> None:
        return


class _Process:
    """The process-wide metrics state: one registry, one exporter."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.recorder: Recorder = NoRecorder()
        self.serving: tuple[str, int] | None = None


_PROCESS = _Process()


def recorder() -> Recorder:
    """The process's recorder (``NoRecorder`` while metrics are off)."""
    return _PROCESS.recorder


def written_between(before: RepositoryStats, after: RepositoryStats) -> RepositoryStats:
    """What a repository wrote between two of its ``stats()``."""
    # Spelled out: a loop over the dataclass fields costs several times more, per commit.
    return RepositoryStats(
        logical_bytes=after.logical_bytes - before.logical_bytes,
        chunks=after.chunks - before.chunks,
        chunks_deduplicated=after.chunks_deduplicated - before.chunks_deduplicated,
        chunks_uploaded=after.chunks_uploaded - before.chunks_uploaded,
        chunks_created=after.chunks_created - before.chunks_created,
        uploaded_bytes=after.uploaded_bytes - before.uploaded_bytes,
        stored_bytes=after.stored_bytes - before.stored_bytes,
    )


def enable_metrics() -> None:
    """Record into the default Prometheus registry, without serving it: for an
    application that already exports that registry itself. Idempotent.

    Raises:
        ConfigError: prometheus-client is not installed.
    """
    with _PROCESS.lock:
        if not _PROCESS.recorder.enabled:
            _PROCESS.recorder = _backend().PrometheusRecorder()


def start_metrics_exporter(port: int, address: str = "127.0.0.1") -> None:
    """Serve the metrics at ``http://address:port/metrics`` and record them: once per
    process (a second call with the same address and port does nothing).

    The default address is loopback: the endpoint has no authentication and names the
    operations and workers; give ``0.0.0.0`` (or an interface's address) for a
    Prometheus on another host.

    Args:
        port: the TCP port, 1 to 65535.
        address: the address to bind.

    Raises:
        ConfigError: prometheus-client is not installed, the port is out of range or
            cannot be bound (in use, not allowed), or this process already serves its
            metrics on another address or port.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError([("metrics_port", f"must be from 1 to 65535, not {port!r}")])
    with _PROCESS.lock:
        serving = _PROCESS.serving
        if serving == (address, port):
            return
        if serving is not None:
            where = f"{serving[0]}:{serving[1]}"
            raise ConfigError([("metrics_port", f"this process already serves metrics on {where}")])
        backend = _backend()
        try:
            backend.serve(port, address)
        except OSError as exc:
            why = exc.strerror or str(exc)
            problem = f"cannot serve metrics on {address}:{port}: {why}"
            raise ConfigError([("metrics_port", problem)]) from None
        _PROCESS.serving = (address, port)
    enable_metrics()


def start_configured_exporter(config: CheckpointConfig) -> None:
    """``start_metrics_exporter`` for a config whose ``metrics_port`` is set; nothing when
    it is not. Called by ``initialize`` of systems and managers.

    Args:
        config: the configuration.

    Raises:
        ConfigError: see ``start_metrics_exporter``.
    """
    if config.metrics_port is not None:
        start_metrics_exporter(config.metrics_port, config.metrics_address)


def _backend() -> ModuleType:
    # Imported on first use only: with metrics off, prometheus_client is never loaded.
    try:
        return importlib.import_module(_BACKEND)
    except ModuleNotFoundError as exc:
        if exc.name == "prometheus_client":
            raise ConfigError([("metrics_port", _INSTALL)]) from None
        raise
