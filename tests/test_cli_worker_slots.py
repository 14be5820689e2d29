"""``bbp-resume worker --slots N``: a crash that relaunches a consumer and its producer
together, their slots claimed by one worker process.

The reclaim queue hands out the consumer first (``c0`` sorts before ``p0``); the consumer
waits at the recovery barrier until the producer has restored. With one slot nobody
claims the producer while the consumer waits (``RecoveryTimeout``); with two both run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from resume_helpers import MakeConfig, Systems, monitored, new_op
from test_manager import Managers, crash, fast, poll

from bbp_dist_resume.cli.main import main

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from resume_helpers import probed_s3_prefix, systems_fixture  # noqa: F401
from test_manager import managers_fixture  # noqa: F401

pytestmark = pytest.mark.timeout(120)
PAIR = ["c0", "p0"]


def both_crashed(make_config: MakeConfig, managers: Managers, systems: Systems) -> tuple[str, str]:
    """Producer ``p0`` and consumer ``c0`` commit, die, and are relaunched by one plan;
    returns the operation and the CLI's backend arguments."""
    config, op = fast(make_config), new_op()
    producer = monitored(systems, config, op, worker_id="p0", workers=PAIR)
    consumer = monitored(systems, config, op, worker_id="c0", workers=PAIR)
    producer.create_checkpoint("produce", {"n": 10}, produced={"ch": 10})
    consumer.create_checkpoint("consume", {"n": 5}, consumed={"ch": 5})
    crash(producer)
    crash(consumer)
    mgr = managers(config)
    poll(lambda: sorted(w for o, w in mgr._coordination().crashed_workers() if o == op) == PAIR, 10)
    assert mgr.attempt_automatic_recovery(op)
    plan = mgr.current_plan(op)
    assert plan is not None and plan.relaunched == ("c0", "p0")
    return op, f"--store={config.store_url} --coord={config.coord_url}"


def run_worker(backends: str, slots: int) -> int:
    return main(
        [
            *backends.split(),
            "worker",
            "--run",
            "_slot_runner:record",
            "--idle-exit",
            "1",
            "--slots",
            str(slots),
        ]
    )


def test_two_slots_run_a_consumer_and_the_producer_it_waits_for(
    make_config: MakeConfig,
    managers: Managers,
    systems: Systems,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    op, backends = both_crashed(make_config, managers, systems)
    log = tmp_path / "slots.log"
    monkeypatch.setenv("BBP_TEST_SLOT_LOG", str(log))
    monkeypatch.setenv("BBP_RECOVERY_TIMEOUT", "30")
    assert run_worker(backends, slots=2) == 0
    lines = sorted(log.read_text().splitlines())
    assert lines == [f"c0 {op}/c0/2", f"p0 {op}/p0/2"]


def test_one_slot_cannot_run_them_and_says_which_producer_it_waited_for(
    make_config: MakeConfig,
    managers: Managers,
    systems: Systems,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, backends = both_crashed(make_config, managers, systems)
    log = tmp_path / "slots.log"
    monkeypatch.setenv("BBP_TEST_SLOT_LOG", str(log))
    monkeypatch.setenv("BBP_RECOVERY_TIMEOUT", "1")
    assert run_worker(backends, slots=1) == 1
    assert "p0" in capsys.readouterr().err
    assert not log.exists()  # the consumer never ran past its barrier


def test_slots_must_be_between_1_and_64(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "65", "two"):
        assert main(["worker", "--run", "json:dumps", "--slots", bad]) == 2
        assert "--slots" in capsys.readouterr().err
