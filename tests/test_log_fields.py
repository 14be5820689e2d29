"""Structured log fields on both backend pairs: every library record carries
``operation``, ``worker`` and ``checkpoint``, those of the committer, heartbeat, catalog
and coordinator threads included; a format string can use them; the JSON formatter
writes them, and no config secret reaches a log line (tests/test_log_format.py: the
JSON formatter itself)."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest
from resume_helpers import LOGGER, MakeConfig, Systems, cut_heartbeat, new_op, wait_for
from test_manager import Managers, crash, fast, wait_crashed

from bbp_dist_resume import EncryptionKeyError, ResumeSystem
from bbp_dist_resume.logs import FIELDS, JsonFormatter, json_handler

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from resume_helpers import probed_s3_prefix, systems_fixture  # noqa: F401
from test_manager import managers_fixture  # noqa: F401


class Capture(logging.Handler):
    """Keeps every record it is given, from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._records_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._records_lock:
            self.records.append(record)

    def where(self, thread_prefix: str, text: str) -> list[logging.LogRecord]:
        with self._records_lock:
            return [
                r
                for r in self.records
                if r.threadName.startswith(thread_prefix) and text in r.getMessage()
            ]


@pytest.fixture(name="captured")
def captured_fixture() -> Iterator[Capture]:
    """Every record of the package logger (DEBUG and up) during the test."""
    logger = logging.getLogger(LOGGER)
    handler, level = Capture(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def fields(record: logging.LogRecord) -> tuple[str, str, str]:
    return record.operation, record.worker, record.checkpoint  # type: ignore[attr-defined]


def test_committer_thread_records_carry_the_operation_worker_and_checkpoint(
    make_config: MakeConfig, systems: Systems, captured: Capture
) -> None:
    op = new_op()
    rs = systems(make_config(), "w3")
    rs.start_monitoring(op)
    rs.create_checkpoint("scan", {"n": 1})
    assert rs.create_checkpoint("scan", {"n": 2}, blocking=False).result(timeout=30)
    rs.complete()
    for seq in (2, 3):
        cid = f"{op}/w3/{seq}"
        [record] = captured.where("bbp-committer", f"checkpoint {cid} committed")
        assert fields(record) == (op, "w3", cid)
    [monitoring] = captured.where("MainThread", f"monitoring {op}")
    assert fields(monitoring) == (op, "w3", "")
    assert all(all(hasattr(r, f) for f in FIELDS) for r in captured.records)


def test_heartbeat_thread_records_carry_the_operation_and_worker(
    make_config: MakeConfig,
    systems: Systems,
    captured: Capture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    op = new_op()
    rs = systems(make_config(lease_ttl=1, heartbeat_interval=0.25), "w1")
    rs.start_monitoring(op)
    cut_heartbeat(monkeypatch, rs)
    wait_for(lambda: bool(captured.where("bbp-heartbeat-w1", "lost")), timeout=5.0)
    [record] = captured.where("bbp-heartbeat-w1", "lost")
    assert record.levelno == logging.WARNING
    assert fields(record) == (op, "w1", "")


def test_catalog_pool_records_carry_the_callers_fields(
    make_config: MakeConfig, systems: Systems, captured: Capture
) -> None:
    op = new_op()
    rs = systems(make_config())
    rs.start_monitoring(op)
    cid = rs.create_checkpoint("scan", {"n": 1})
    rs.create_checkpoint("scan", {"n": 2})
    assert rs._rt is not None
    rs._rt.repo.delete_record(op, "w0", 2)  # the index still lists it
    rs._rt.catalog.forget(cid)
    rs.get_available_resume_points(op)
    [record] = captured.where("bbp-catalog", f"resume point {cid} cannot be read")
    assert fields(record) == (op, "w0", "")


def test_coordinator_loop_records_name_the_operation_and_slot(
    make_config: MakeConfig, managers: Managers, systems: Systems, captured: Capture
) -> None:
    cfg, op = fast(make_config), new_op()
    mgr = managers(cfg)

    def broken(o: str, w: str) -> None:
        raise RuntimeError("a launcher bug")

    mgr.register_pipeline("*", broken)
    rs = systems(cfg, "w2")
    rs.start_monitoring(op, workers=["w2"])
    rs.create_checkpoint("s", {"n": 1})
    crash(rs)
    wait_crashed(mgr, op)
    mgr.run(max_scans=1)
    [plan] = captured.where("MainThread", f"of {op} published")
    assert fields(plan) == (op, "", "")
    [launcher] = captured.where("MainThread", f"launcher for {op}/w2 failed")
    assert fields(launcher) == (op, "w2", "")
    out = JsonFormatter().format(launcher)
    entry = json.loads(out)
    assert "\n" not in out and "RuntimeError: a launcher bug" in entry["exception"]


def test_a_format_string_can_name_the_fields(make_config: MakeConfig, systems: Systems) -> None:
    logger = logging.getLogger(LOGGER)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(operation)s|%(worker)s|%(checkpoint)s|%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        op = new_op()
        rs = systems(make_config())
        rs.start_monitoring(op)
        cid = rs.create_checkpoint("scan", {"n": 1})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = stream.getvalue().splitlines()
    assert f"{op}|w0||monitoring {op} as w0" in lines
    assert f"{op}|w0|{cid}|checkpoint {cid} committed" in lines


def test_no_config_secret_reaches_a_log_line(
    make_config: MakeConfig, systems: Systems, captured: Capture
) -> None:
    secret, old = "hunter2-very-secret", "old-secret-xyz"
    config = make_config(
        enable_encryption=True,
        encryption_key=secret,
        decryption_keys=(old,),
        detailed_logging=True,
        strict=False,
    )
    stream = io.StringIO()
    handler = json_handler(stream)
    logging.getLogger(LOGGER).addHandler(handler)
    try:
        op = new_op()
        rs = systems(config)
        rs.start_monitoring(op)
        rs.create_checkpoint("scan", {"n": 1}, attachments={"a": b"x" * 10_000})
        assert rs.resume_automatically(op) is not None
        rs.complete()
        wrong = ResumeSystem(config.with_changes(encryption_key="not-the-key", decryption_keys=()))
        with pytest.raises(EncryptionKeyError):
            wrong.initialize()
        wrong.shutdown()
    finally:
        logging.getLogger(LOGGER).removeHandler(handler)
    text = stream.getvalue()
    assert text.count("\n") >= 3 and f"monitoring {op}" in text
    everything = text + "".join(
        logging.Formatter().format(r) + repr(r.__dict__) for r in captured.records
    )
    assert secret not in everything and old not in everything
