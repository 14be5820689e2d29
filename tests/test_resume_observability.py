"""``ResumeSystem`` on both backend pairs: statistics, config updates, logging and
callbacks."""

from __future__ import annotations

import logging
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from resume_helpers import LOGGER, MakeConfig, Systems, fail_store_writes, new_op

from bbp_dist_resume import (
    CheckpointMetadata,
    InvalidStateError,
    ResumeState,
    ResumeSystem,
    StoreUnavailable,
)

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from resume_helpers import (  # noqa: F401
    package_logger_level_fixture,
    probed_s3_prefix,
    systems_fixture,
)

# -- statistics ----------------------------------------------------------------------------


def test_statistics_count_checkpoints_bytes_dedup_and_overhead(
    make_config: MakeConfig, systems: Systems
) -> None:
    rs = systems(make_config())
    rs.start_monitoring(new_op())
    state = {"data": "abcdefgh" * 4000}
    size = len(b'{"data":"') + 32_000 + len(b'"}')
    for _ in range(2):
        assert rs.create_checkpoint("scan", state)
    stats = rs.get_statistics()
    assert stats.total_checkpoints_created == 2
    assert stats.failed_checkpoints == 0
    assert stats.logical_bytes == 2 * size
    assert stats.stored_bytes == size  # the second checkpoint's only chunk was known
    assert stats.dedup_ratio == pytest.approx(2.0)
    assert 0 < stats.uploaded_bytes < size  # compressed
    assert stats.checkpoint_overhead_percentage > 0
    assert stats.average_checkpoint_time > timedelta(0)
    assert stats.monitored_time > timedelta(0)
    assert isinstance(stats.recommendations, tuple)
    assert all(isinstance(r, str) for r in stats.recommendations)
    assert stats.created_at.tzinfo is UTC
    created = stats.created_at

    rs.reset_statistics()
    reset = rs.get_statistics()
    assert reset.total_checkpoints_created == 0
    assert reset.logical_bytes == reset.stored_bytes == reset.uploaded_bytes == 0
    assert reset.dedup_ratio == 1.0
    assert reset.created_at >= created
    rs.create_checkpoint("scan", {"small": 1})
    after = rs.get_statistics()
    assert after.total_checkpoints_created == 1
    assert after.monitored_time > timedelta(0)  # still monitoring after the reset


def test_statistics_before_initialize_are_zero(make_config: MakeConfig) -> None:
    rs = ResumeSystem(make_config(), "w0")
    stats = rs.get_statistics()
    assert stats.total_checkpoints_created == 0
    assert stats.checkpoint_overhead_percentage == 0.0
    assert stats.recommendations == ()


# -- config and logging --------------------------------------------------------------------


def test_update_config_refuses_to_move_the_store_while_open(
    make_config: MakeConfig, systems: Systems, tmp_path: Path
) -> None:
    config = make_config()
    rs = systems(config)
    rs.start_monitoring(new_op())
    elsewhere = f"file:{tmp_path / 'elsewhere'}"
    with pytest.raises(InvalidStateError):
        rs.update_config(config.with_changes(store_url=elsewhere))
    with pytest.raises(InvalidStateError):
        rs.update_config(config.with_changes(coord_url=f"sqlite:{tmp_path / 'other.db'}"))
    assert rs.get_config() is config
    changed = config.with_changes(max_checkpoints=3, progress_threshold=5.0)
    rs.update_config(changed)
    assert rs.get_config() is changed
    rs.shutdown()
    moved = config.with_changes(store_url=elsewhere)
    rs.update_config(moved)  # closed: allowed
    assert rs.get_config().store_url == elsewhere


def test_an_updated_config_is_used_from_then_on(make_config: MakeConfig, systems: Systems) -> None:
    op = new_op()
    config = make_config(max_checkpoints=100)
    rs = systems(config)
    rs.start_monitoring(op)
    for i in range(4):
        rs.create_checkpoint("scan", {"i": i})
    assert len(rs.list_checkpoints(op)) == 4
    rs.update_config(config.with_changes(max_checkpoints=2))
    last = rs.create_checkpoint("scan", {"i": 4})
    assert rs.list_checkpoints(op) == [f"{op}/w0/5", last]
    assert rs.create_automatic_checkpoint("scan", {}, 4.0) is None
    rs.update_config(config.with_changes(max_checkpoints=2, progress_threshold=1.0))
    assert rs.create_automatic_checkpoint("scan", {}, 4.0) is not None


# Compression settings changed by update_config while open apply to later checkpoints.
def test_compression_settings_changed_by_update_config_apply_from_then_on(
    make_config: MakeConfig, systems: Systems
) -> None:
    config = make_config(enable_compression=True)
    rs = systems(config)
    rs.start_monitoring(new_op())
    rs.create_checkpoint("scan", {"data": "a" * 100_000})
    compressed = rs.get_statistics().uploaded_bytes
    assert compressed < 10_000
    rs.update_config(config.with_changes(enable_compression=False))
    rs.reset_statistics()
    rs.create_checkpoint("scan", {"data": "b" * 100_000})
    assert rs.get_statistics().uploaded_bytes >= 100_000


# Without detailed logging the package logger keeps the level the application set.
def test_a_system_without_detailed_logging_leaves_the_application_logger_level_alone(
    make_config: MakeConfig, systems: Systems, package_logger_level: None
) -> None:
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.ERROR)  # the application silenced the library's warnings
    rs = systems(make_config(detailed_logging=False))
    assert logger.level == logging.ERROR
    rs.update_config(rs.get_config().with_changes(max_checkpoints=5))
    assert logger.level == logging.ERROR


def test_set_detailed_logging_puts_the_package_logger_at_debug(
    make_config: MakeConfig,
    systems: Systems,
    caplog: pytest.LogCaptureFixture,
    package_logger_level: None,
) -> None:
    logger = logging.getLogger(LOGGER)
    rs = systems(make_config())
    rs.set_detailed_logging(True)
    assert logger.level == logging.DEBUG
    assert logger.isEnabledFor(logging.DEBUG)
    rs.start_monitoring(new_op())
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        cid = rs.create_checkpoint("scan", {})
    assert any(r.levelno == logging.DEBUG and cid in r.getMessage() for r in caplog.records)
    rs.set_detailed_logging(False)
    assert logger.level == logging.NOTSET
    systems(make_config(detailed_logging=True), "w1")
    assert logger.level == logging.DEBUG


# -- callbacks -----------------------------------------------------------------------------


def test_callbacks_are_called_with_their_arguments(
    make_config: MakeConfig, systems: Systems, monkeypatch: pytest.MonkeyPatch
) -> None:
    op = new_op()
    rs = systems(make_config())
    progress: list[tuple[str, float]] = []
    checkpoints: list[tuple[str, CheckpointMetadata]] = []
    recoveries: list[tuple[str, bool]] = []
    errors: list[tuple[str, BaseException]] = []
    rs.set_progress_callback(lambda o, p: progress.append((o, p)))
    rs.set_checkpoint_callback(lambda c, m: checkpoints.append((c, m)))
    rs.set_recovery_callback(lambda c, ok: recoveries.append((c, ok)))
    rs.set_error_callback(lambda s, e: errors.append((s, e)))
    rs.start_monitoring(op)
    cid = rs.create_checkpoint("scan", {"n": 1}, {"k": "v"}, progress=25.0)
    assert progress == [(op, 25.0)]
    assert rs.create_automatic_checkpoint("scan", {}, 30.0) is None
    assert progress[-1] == (op, 30.0)
    ((seen_id, meta),) = checkpoints
    assert seen_id == cid
    assert meta.checkpoint_id == cid
    assert meta.stage_name == "scan"
    assert meta.custom_metadata == {"k": "v"}
    assert meta.progress_percentage == 25.0
    assert rs.resume_automatically(op) is not None
    assert rs.resume_from_checkpoint(f"{op}/w0/99") is None
    assert recoveries == [(cid, True), (f"{op}/w0/99", False)]
    fail_store_writes(monkeypatch, rs)
    assert rs.create_checkpoint("enrich", {"n": 2}) == ""
    ((stage, exc),) = errors
    assert stage == "enrich"
    assert isinstance(exc, StoreUnavailable)
    assert len(checkpoints) == 1
    rs.set_checkpoint_callback(None)  # callbacks can be removed
    monkeypatch.undo()
    assert rs.create_checkpoint("scan", {"n": 3})
    assert len(checkpoints) == 1


def test_a_callback_that_raises_is_logged_and_never_breaks_the_system(
    make_config: MakeConfig,
    systems: Systems,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    op = new_op()
    rs = systems(make_config())

    def explode(*args: Any) -> None:
        raise RuntimeError("callback bug")

    rs.set_progress_callback(explode)
    rs.set_checkpoint_callback(explode)
    rs.set_recovery_callback(explode)
    rs.set_error_callback(explode)
    rs.start_monitoring(op)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cid = rs.create_checkpoint("scan", {"n": 1}, progress=10.0)
        assert cid == f"{op}/w0/2"
        fut = rs.create_checkpoint("scan", {"n": 2}, blocking=False)
        assert fut.result(timeout=10) == f"{op}/w0/3"
        ctx = rs.resume_automatically(op)
        assert ctx is not None and ctx.state == {"n": 2}
        fail_store_writes(monkeypatch, rs)
        assert rs.create_checkpoint("scan", {"n": 3}) == ""
        monkeypatch.undo()
        assert rs.create_checkpoint("scan", {"n": 4}) == f"{op}/w0/4"
    failed = [r for r in caplog.records if "callback failed" in r.getMessage()]
    assert {r.getMessage().split()[0] for r in failed} >= {
        "progress",
        "checkpoint",
        "recovery",
        "error",
    }
    assert all(r.exc_info is not None for r in failed)
    assert rs.get_current_state() is ResumeState.RUNNING
    assert rs.get_statistics().total_checkpoints_created == 3
