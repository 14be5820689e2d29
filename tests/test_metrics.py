"""Metrics on both backend pairs, scraped over HTTP from the real Prometheus exporter:
checkpoints, bytes, latencies, resumes, lease losses, rollbacks and the coordinator's
counters move by exactly what the test did (tests/test_metrics_setup.py: the exporter)."""

from __future__ import annotations

import os

import pytest
from metrics_helpers import exporter_port, scrape, value
from resume_helpers import MakeConfig, Systems, cut_heartbeat, new_op, take_over
from test_manager import Managers, crash, fast, poll, wait_crashed

from bbp_dist_resume import LeaseLostError, RollbackRequested

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from resume_helpers import probed_s3_prefix, systems_fixture  # noqa: F401
from test_manager import managers_fixture  # noqa: F401


@pytest.fixture(name="port")
def port_fixture() -> int:
    return exporter_port()


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
