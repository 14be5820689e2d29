"""Metrics on both backend pairs, scraped over HTTP from the real Prometheus exporter:
checkpoints, bytes, latencies, resumes, lease losses, rollbacks and the coordinator's
counters move by exactly what the test did. Also: the exporter's configuration, a port
in use, prometheus-client missing, and the no-op path when metrics are off (those in
fresh interpreters, since the exporter is once per process)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from resume_helpers import MakeConfig, Systems, cut_heartbeat, new_op, take_over
from test_manager import Managers, crash, fast, poll, wait_crashed

from bbp_dist_resume import CheckpointConfig, ConfigError, LeaseLostError, RollbackRequested
from bbp_dist_resume.api.metrics import recorder, start_metrics_exporter

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from resume_helpers import probed_s3_prefix, systems_fixture  # noqa: F401
from test_manager import managers_fixture  # noqa: F401

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(name="port", scope="module")
def port_fixture() -> int:
    """The port of this process's exporter (started once, as the library does)."""
    port = free_port()
    start_metrics_exporter(port)
    return port


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        body = answer.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BBP_")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=clean | env,
        check=False,
    )


# -- the worker --------------------------------------------------------------------------


def test_checkpoint_and_resume_metrics_move_by_exactly_what_the_worker_did(
    make_config: MakeConfig, systems: Systems, port: int
) -> None:
    op = new_op()
    rs = systems(make_config(metrics_port=port, inline_threshold=0))
    rs.start_monitoring(op)
    w = {"operation": op, "worker": "w0"}
    blob = os.urandom(300_000)  # the same attachment twice: its chunk is deduplicated
    rs.create_checkpoint("scan", {"n": 1}, attachments={"a.bin": blob})
    rs.create_checkpoint("scan", {"n": 2}, attachments={"a.bin": blob})
    assert rs.create_checkpoint("probe", {"n": 3}, blocking=False).result(timeout=30)
    stats, repo = rs.get_statistics(), rs._repo
    assert repo is not None
    seen = scrape(port)
    assert value(seen, "bbp_checkpoints_total", **w, stage="scan", outcome="committed") == 2
    assert value(seen, "bbp_checkpoints_total", **w, stage="probe", outcome="committed") == 1
    assert value(seen, "bbp_checkpoints_total", **w, stage="scan", outcome="failed") == 0
    assert value(seen, "bbp_checkpoint_blocking_seconds_count", **w) == 3
    assert value(seen, "bbp_checkpoint_commit_seconds_count", **w) == 3
    assert value(seen, "bbp_checkpoint_commit_seconds_sum", **w) > 0
    assert value(seen, "bbp_checkpoint_logical_bytes_total", **w) == stats.logical_bytes
    assert value(seen, "bbp_checkpoint_uploaded_bytes_total", **w) == stats.uploaded_bytes
    assert value(seen, "bbp_checkpoint_stored_bytes_total", **w) == stats.stored_bytes
    dedup = repo.stats().chunks_deduplicated
    assert dedup >= 1 and value(seen, "bbp_checkpoint_dedup_chunks_total", **w) == dedup
    assert stats.logical_bytes > 2 * len(blob) > stats.stored_bytes  # the dedup shows
    context = rs.resume_automatically(op)
    assert context is not None and context.checkpoint_id == f"{op}/w0/4"
    assert rs.resume_from_checkpoint(f"{op}/w0/99") is None  # no such checkpoint
    seen = scrape(port)
    assert value(seen, "bbp_resumes_total", **w, outcome="success") == 1
    assert value(seen, "bbp_resumes_total", **w, outcome="failure") == 1
    assert value(seen, "bbp_restore_seconds_count", **w) == 1
    assert value(seen, "bbp_lease_losses_total", **w) == 0


def test_a_lost_lease_is_counted_once_and_a_refused_commit_as_a_failed_checkpoint(
    make_config: MakeConfig, systems: Systems, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    op = new_op()
    config = make_config(metrics_port=port, lease_ttl=1, heartbeat_interval=0.25)
    first, second, third = systems(config), systems(config), systems(config)
    first.start_monitoring(op)
    first.create_checkpoint("scan", {"n": 1})
    cut_heartbeat(monkeypatch, first)
    take_over(second, op)
    for _ in range(3):
        with pytest.raises(LeaseLostError):
            first.create_checkpoint("scan", {"n": 2})
    w = {"operation": op, "worker": "w0"}
    seen = scrape(port)
    assert value(seen, "bbp_lease_losses_total", **w) == 1
    # Refused before a commit was tried: no failed checkpoint.
    assert value(seen, "bbp_checkpoints_total", **w, stage="scan", outcome="failed") == 0
    # A writer that never noticed (a long pause) is refused by the store: one more loss.
    session = second._session
    assert session is not None
    lease = session.lease
    cut_heartbeat(monkeypatch, second)
    monkeypatch.setattr(session, "check", lambda: lease)
    take_over(third, op)
    with pytest.raises(LeaseLostError):
        second.create_checkpoint("scan", {"n": "stale"})
    seen = scrape(port)
    assert value(seen, "bbp_lease_losses_total", **w) == 2
    assert value(seen, "bbp_checkpoints_total", **w, stage="scan", outcome="failed") == 1
    assert value(seen, "bbp_checkpoints_total", **w, stage="scan", outcome="committed") == 1


# -- the coordinator ---------------------------------------------------------------------


def test_coordinator_metrics_count_crashes_plans_relaunches_rollbacks_and_leadership(
    make_config: MakeConfig, managers: Managers, systems: Systems, port: int
) -> None:
    cfg, op = fast(make_config, metrics_port=port), new_op()
    mgr = managers(cfg)
    trio = ["w0", "w1", "w2"]
    a, b, c = (systems(cfg, w) for w in trio)
    for rs in (a, b, c):
        rs.start_monitoring(op, workers=trio)
    a.create_checkpoint("produce", {"n": 10}, produced={"ch": 10})  # w0/2
    a.create_checkpoint("produce", {"n": 20}, produced={"ch": 20})  # w0/3
    b.create_checkpoint("consume", {"n": 15}, consumed={"ch": 15})  # w1/2: beyond 10
    c.create_checkpoint("other", {"n": 1})
    assert a._rt is not None  # w0 loses its newest checkpoint, then dies
    a._rt.repo.delete_record(op, "w0", 3)
    a._rt.coord.delete_entries(op, "w0", [3])
    crash(a)
    wait_crashed(mgr, op)
    mgr.run(max_scans=3)  # leads at once, recovers w0 once
    poll(lambda: b._session is not None and b._session._rollback is not None, 3.0, step=0.01)
    with pytest.raises(RollbackRequested):
        b.ensure_lease()
    seen = scrape(port)
    per_op = {"operation": op}
    assert value(seen, "bbp_coordinator_crashes_detected_total", **per_op) == 1
    assert value(seen, "bbp_coordinator_plans_published_total", **per_op) == 1
    assert value(seen, "bbp_coordinator_relaunches_total", **per_op) == 1
    assert value(seen, "bbp_rollbacks_total", operation=op, worker="w1") == 1
    assert value(seen, "bbp_rollbacks_total", operation=op, worker="w2") == 0
    me = {"coordinator": mgr.coordinator_id}
    assert value(seen, "bbp_coordinator_scan_seconds_count", **me) == 3
    assert value(seen, "bbp_coordinator_leader_changes_total", **me) == 1
    assert value(seen, "bbp_coordinator_is_leader", **me) == 1
    mgr.shutdown()  # gives up leadership
    seen = scrape(port)
    assert value(seen, "bbp_coordinator_leader_changes_total", **me) == 2
    assert value(seen, "bbp_coordinator_is_leader", **me) == 0


# -- configuration and the exporter ------------------------------------------------------


def test_metrics_port_and_address_are_validated_and_read_from_the_environment() -> None:
    assert CheckpointConfig().metrics_port is None
    assert CheckpointConfig().metrics_address == "127.0.0.1"
    assert CheckpointConfig.load(env={"BBP_METRICS_PORT": "9464"}).metrics_port == 9464
    for bad in (0, 65536, -1, "http"):
        with pytest.raises(ConfigError, match="metrics_port"):
            CheckpointConfig(metrics_port=bad)
    for bad in ("", "a b", "-x", "host;rm"):
        with pytest.raises(ConfigError, match="metrics_address"):
            CheckpointConfig(metrics_address=bad)
    assert CheckpointConfig(metrics_address="::1").metrics_address == "::1"


def test_the_exporter_is_once_per_process(port: int, make_config: MakeConfig) -> None:
    start_metrics_exporter(port)  # the same port again: nothing to do
    assert recorder().enabled
    other = free_port()
    with pytest.raises(ConfigError, match=f"already serves metrics on 127.0.0.1:{port}"):
        start_metrics_exporter(other)
    for bad in (0, 70000):
        with pytest.raises(ConfigError, match="metrics_port"):
            start_metrics_exporter(bad)


def test_a_port_in_use_is_a_config_error_and_opens_nothing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_python(
            f"""
            from bbp_dist_resume import ConfigError, ResumeSystem, CheckpointConfig
            config = CheckpointConfig(store_url="file:{tmp_path}/store",
                                      coord_url="sqlite:{tmp_path}/coord.db", metrics_port={port})
            try:
                ResumeSystem(config).initialize()
            except ConfigError as exc:
                print(exc)
            """
        )
    assert done.returncode == 0, done.stderr
    assert f"metrics_port: cannot serve metrics on 127.0.0.1:{port}" in done.stdout
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "store").exists() and not (tmp_path / "coord.db").exists()


def test_metrics_port_without_prometheus_client_says_what_to_install(tmp_path: Path) -> None:
    done = run_python(
        f"""
        import sys
        sys.modules["prometheus_client"] = None  # as if it were not installed
        from bbp_dist_resume import ConfigError, ResumeSystemManager, CheckpointConfig
        config = CheckpointConfig(store_url="file:{tmp_path}/store",
                                  coord_url="sqlite:{tmp_path}/coord.db", metrics_port=9)
        try:
            ResumeSystemManager("c1").initialize(config)
        except ConfigError as exc:
            print(exc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'bbp-dist-resume[metrics]'" in done.stdout


def test_with_metrics_off_nothing_is_imported_served_or_recorded(tmp_path: Path) -> None:
    done = run_python(
        f"""
        import sys, threading
        from bbp_dist_resume import CheckpointConfig, ResumeSystem
        from bbp_dist_resume.api.metrics import NoRecorder, recorder
        config = CheckpointConfig(store_url="file:{tmp_path}/store",
                                  coord_url="sqlite:{tmp_path}/coord.db")
        with ResumeSystem(config) as rs:
            rs.start_monitoring("op-1")
            rs.create_checkpoint("scan", {{"n": 1}})
            assert rs.resume_automatically("op-1") is not None
            rs.complete()
        assert type(recorder()) is NoRecorder, recorder()
        assert "prometheus_client" not in sys.modules
        assert not any(m.startswith("prometheus_client") for m in sys.modules)
        assert "bbp_dist_resume.api.metrics_prometheus" not in sys.modules
        print(sorted(t.name for t in threading.enumerate()))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['MainThread']"


@pytest.fixture(autouse=True)
def _no_metrics_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A BBP_METRICS_PORT in the environment must not leak into configs built here.
    monkeypatch.delenv("BBP_METRICS_PORT", raising=False)
    yield
