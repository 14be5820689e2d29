"""``ResumeSystem.create_checkpoint`` and ``create_automatic_checkpoint`` on both backend
pairs: ids, non-blocking checkpoints, bad input, the recorded description, strategies."""

from __future__ import annotations

import time
from concurrent.futures import Future
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from resume_helpers import MakeConfig, Systems, index_seqs, new_op, record_seqs, seq_of, store_keys

from bbp_dist_resume import (
    CheckpointGranularity,
    CheckpointMetadata,
    CheckpointStrategy,
    InvalidCheckpoint,
    InvalidIdentifier,
    ResumeState,
)

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from resume_helpers import probed_s3_prefix, systems_fixture  # noqa: F401

# -- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_ids_are_operation_worker_seq_and_follow_the_takeover(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    store_url, coord_url = backend_urls
    op = new_op()
    rs = systems(make_config())
    rs.start_monitoring(op)
    ids = [rs.create_checkpoint("scan", {"i": i}) for i in range(3)]
    assert ids == [f"{op}/w0/2", f"{op}/w0/3", f"{op}/w0/4"]
    assert record_seqs(store_url, op, "w0") == [1, 2, 3, 4]
    assert index_seqs(coord_url, op, "w0") == [1, 2, 3, 4]


def test_non_blocking_checkpoints_return_futures_and_commit_in_call_order(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    _, coord_url = backend_urls
    op = new_op()
    rs = systems(make_config(max_checkpoints=100))
    rs.start_monitoring(op)
    results: list[str] = []
    futures: list[Future[str]] = []
    for i in range(8):
        if i % 3 == 2:
            results.append(rs.create_checkpoint("scan", {"i": i}, {"i": str(i)}))
        else:
            fut = rs.create_checkpoint("scan", {"i": i}, {"i": str(i)}, blocking=False)
            assert isinstance(fut, Future)
            futures.append(fut)
    rs.wait_until_finished()
    ids = {fut.result(timeout=10) for fut in futures} | set(results)
    assert sorted(seq_of(c) for c in ids) == list(range(2, 10))
    # Commit order is call order: the i-th call got seq i + 2.
    points = {p.checkpoint_id: p for p in rs.get_available_resume_points(op)}
    for cid in ids:
        assert int(points[cid].custom_metadata["i"]) == seq_of(cid) - 2
    assert index_seqs(coord_url, op, "w0") == list(range(1, 10))


NOT_JSON: list[Any] = [
    {"x": object()},
    {"x": float("nan")},
    {"x": float("inf")},
    {"x": {1, 2}},
    {"x": b"bytes"},
    {(1, 2): "tuple key"},
    {"deep": [{"x": object()}]},
    ["not", "a", "dict"],
    "a string",
    None,
]


def test_non_json_state_is_rejected_and_nothing_is_stored(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str]
) -> None:
    store_url, _ = backend_urls
    op = new_op()
    rs = systems(make_config())
    rs.start_monitoring(op)
    rs.create_checkpoint("scan", {"ok": 1})
    keys, listed = store_keys(store_url), rs.list_checkpoints()
    for state in NOT_JSON:
        for blocking in (True, False):
            with pytest.raises(InvalidCheckpoint):
                rs.create_checkpoint("scan", state, blocking=blocking)
    rs.wait_until_finished()
    assert store_keys(store_url) == keys
    assert rs.list_checkpoints() == listed
    assert rs.get_current_state() is ResumeState.RUNNING
    assert rs.get_statistics().failed_checkpoints == 0
    # Nothing was used up either: the next checkpoint takes the next seq.
    assert rs.create_checkpoint("scan", {"ok": 2}) == f"{op}/w0/3"


def test_bad_metadata_progress_and_attachments_are_rejected_before_anything_is_stored(
    make_config: MakeConfig, systems: Systems, backend_urls: tuple[str, str], tmp_path: Path
) -> None:
    store_url, _ = backend_urls
    op = new_op()
    rs = systems(make_config(inline_threshold=0))
    rs.start_monitoring(op)
    keys = store_keys(store_url)
    big = b"x" * 10_000
    bad_calls: list[tuple[type[Exception], dict[str, Any]]] = [
        (InvalidCheckpoint, {"custom_metadata": {"k": 1}}),
        (InvalidCheckpoint, {"progress": 150.0}),
        (InvalidCheckpoint, {"progress": -1.0}),
        (InvalidCheckpoint, {"progress": float("nan")}),
        (InvalidIdentifier, {"stage_name": "bad stage"}),
        (InvalidCheckpoint, {"attachments": {"a": 123}}),
        (InvalidCheckpoint, {"attachments": {"ok": big, "a": str(tmp_path / "missing.csv")}}),
        (InvalidIdentifier, {"attachments": {"ok": big, "../escape": b"x"}}),
        (InvalidIdentifier, {"consumed": {"bad channel": 1}}),
        (InvalidCheckpoint, {"produced": {"c": -5}}),
        (InvalidCheckpoint, {"epoch": -1}),
    ]
    for kind, kwargs in bad_calls:
        args: dict[str, Any] = {"stage_name": "scan", "pipeline_state": {"big": "y" * 10_000}}
        args.update(kwargs)
        with pytest.raises(kind):
            rs.create_checkpoint(**args)
    assert store_keys(store_url) == keys
    assert rs.list_checkpoints(op) == []
    assert rs.get_current_state() is ResumeState.RUNNING


# A rejected checkpoint reports no progress (callback, heartbeat or next record).
def test_a_rejected_checkpoint_does_not_report_its_progress(
    make_config: MakeConfig, systems: Systems
) -> None:
    op = new_op()
    rs = systems(make_config())
    reported: list[float] = []
    rs.set_progress_callback(lambda _op, p: reported.append(p))
    rs.start_monitoring(op)
    rs.create_checkpoint("scan", {"n": 1}, progress=10.0)
    with pytest.raises(InvalidCheckpoint):
        rs.create_checkpoint("scan", {"x": object()}, progress=90.0)
    assert reported == [10.0]
    rs.create_checkpoint("scan", {"n": 2})
    assert rs.get_available_resume_points(op)[-1].progress_percentage == 10.0


def test_create_checkpoint_records_its_description_in_the_resume_point(
    make_config: MakeConfig, systems: Systems, tmp_path: Path
) -> None:
    op = new_op()
    csv = tmp_path / "rows.csv"
    csv.write_text("a,b\n1,2\n")
    blob = bytes(range(256)) * 40
    rs = systems(make_config())
    rs.start_monitoring(op)
    cid = rs.create_checkpoint(
        "enrich",
        {"rows": 12},
        {"host": "n1"},
        attachments={"model": blob, "rows": csv},
        progress=42.5,
        consumed={"in": 7},
        produced={"out": 12},
        epoch=3,
    )
    (point,) = rs.get_available_resume_points(op)
    assert isinstance(point, CheckpointMetadata)
    assert point.checkpoint_id == cid
    assert point.pipeline_id == op
    assert point.worker_id == "w0"
    assert point.seq == seq_of(cid)
    assert point.stage_name == "enrich"
    assert point.progress_percentage == 42.5
    assert point.custom_metadata == {"host": "n1"}
    assert point.attachments == ("model", "rows")
    assert point.consumed == {"in": 7}
    assert point.produced == {"out": 12}
    assert point.epoch == 3
    assert point.granularity == "medium"
    assert point.is_verified is True
    assert len(point.verification_hash) == 64
    int(point.verification_hash, 16)
    assert point.timestamp.tzinfo is not None
    assert point.timestamp.utcoffset() == timedelta(0)
    assert point.elapsed_time >= timedelta(0)
    assert point.memory_footprint > 0
    assert point.logical_size >= len(blob) + csv.stat().st_size


def test_automatic_checkpoint_returns_none_until_the_strategy_says_it_is_due(
    make_config: MakeConfig, systems: Systems
) -> None:
    rs = systems(make_config(progress_threshold=10.0))
    op = new_op()
    rs.start_monitoring(op)
    assert rs.create_automatic_checkpoint("scan", {"p": 1}, 1.0) is None
    assert rs.create_automatic_checkpoint("scan", {"p": 5}, 5.0) is None
    cid = rs.create_automatic_checkpoint("scan", {"p": 12}, 12.0)
    assert cid == f"{op}/w0/2"
    assert rs.create_automatic_checkpoint("scan", {"p": 15}, 15.0) is None
    assert rs.create_automatic_checkpoint("scan", {"p": 22}, 22.0) == f"{op}/w0/3"
    assert rs.list_checkpoints(op) == [f"{op}/w0/2", f"{op}/w0/3"]


def test_automatic_checkpoint_never_saves_with_the_manual_strategy(
    make_config: MakeConfig, systems: Systems
) -> None:
    rs = systems(make_config(strategy=CheckpointStrategy.MANUAL))
    op = new_op()
    rs.start_monitoring(op)
    for p in (10.0, 50.0, 100.0):
        assert rs.create_automatic_checkpoint("scan", {}, p) is None
    assert rs.create_automatic_checkpoint("next", {}, 100.0) is None
    assert rs.list_checkpoints(op) == []


def test_automatic_checkpoint_is_time_based_with_the_time_strategy(
    make_config: MakeConfig, systems: Systems
) -> None:
    rs = systems(make_config(strategy=CheckpointStrategy.TIME_BASED, time_interval=0.3))
    rs.start_monitoring(new_op())
    assert rs.create_automatic_checkpoint("scan", {}, 90.0) is None
    time.sleep(0.35)
    assert rs.create_automatic_checkpoint("scan", {}, 91.0)
    assert rs.create_automatic_checkpoint("scan", {}, 92.0) is None


def test_automatic_checkpoint_with_coarse_granularity_saves_only_at_stage_changes(
    make_config: MakeConfig, systems: Systems
) -> None:
    rs = systems(make_config(granularity=CheckpointGranularity.COARSE, progress_threshold=10.0))
    rs.start_monitoring(new_op())
    assert rs.create_automatic_checkpoint("a", {}, 50.0)  # a new stage, and due
    assert rs.create_automatic_checkpoint("a", {}, 70.0) is None  # a task boundary: skipped
    assert rs.create_automatic_checkpoint("b", {}, 75.0)  # a new stage, 25 points gained
    assert rs.create_automatic_checkpoint("c", {}, 76.0) is None  # a new stage, not due
