"""``bbp-resume`` on bad input, on both backend pairs: every case is exit code 1 and one
error line on stderr (no traceback unless ``--debug``), and the store and the backend are
exactly as they were."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import Cli, snapshot, urls
from resume_helpers import MakeConfig, new_op

from bbp_dist_resume import CheckpointConfig, ResumeSystem

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from cli_helpers import cli_fixture  # noqa: F401
from resume_helpers import probed_s3_prefix, systems_fixture  # noqa: F401

# (arguments, the error line); OP stands for the test's operation. Ids malformed by their
# syntax alone are in test_cli_config.py: those need no backend to be refused.
CASES: list[tuple[list[str], str]] = [
    (["ops", "nope"], "unknown operation 'nope'"),
    (["checkpoints", "nope"], "unknown operation 'nope'"),
    (["verify", "nope", "--deep"], "unknown operation 'nope'"),
    (["retention", "nope"], "unknown operation 'nope'"),
    (["resume", "nope", "--worker", "w0"], "unknown operation 'nope'"),
    (["checkpoints", "OP", "--worker", "w9"], "invalid worker id 'w9': not a worker of 'OP'"),
    (["resume", "OP", "--worker", "w9"], "invalid worker id 'w9': not a worker of 'OP'"),
    (["inspect", "OP/w0/1"], "OP/w0/1 is a takeover record, not a checkpoint"),
    (["inspect", "OP/w0/99"], "no such object (key 'checkpoints/OP/w0/0000000099')"),
    (
        ["resume", "OP", "--worker", "w0", "--mode", "interactive"],
        "interactive resume needs a terminal",
    ),
]


@pytest.fixture
def stored(make_config: MakeConfig) -> tuple[CheckpointConfig, str]:
    """An operation of one worker, w0, with two checkpoints (seqs 2 and 3)."""
    config, op = make_config(), new_op()
    with ResumeSystem(config, "w0") as rs:
        rs.start_monitoring(op)
        rs.create_checkpoint("s", {"n": 1}, attachments={"a.bin": b"x" * 9000})
        rs.create_checkpoint("s", {"n": 2})
    return config, op


def test_each_bad_name_or_id_is_one_error_line_exit_1_and_changes_nothing(
    stored: tuple[CheckpointConfig, str], cli: Cli, tmp_path: Path
) -> None:
    config, op = stored
    before = snapshot(config)
    for args, expected in CASES:
        argv = [a.replace("OP", op) for a in args]
        dest = tmp_path / "never-written"
        if argv[0] == "resume":
            argv += ["--to", str(dest)]
        ran = cli(*urls(config), *argv)
        assert (ran.code, ran.error_line(), ran.out) == (1, expected.replace("OP", op), ""), argv
        assert not dest.exists(), argv
    assert snapshot(config) == before


def test_resume_into_a_folder_holding_state_json_overwrites_nothing(
    stored: tuple[CheckpointConfig, str], cli: Cli, tmp_path: Path
) -> None:
    config, op = stored
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "state.json").write_text("my own state\n")
    before = snapshot(config)
    ran = cli(*urls(config), "resume", op, "--worker", "w0", "--to", str(dest))
    assert ran.code == 1
    assert ran.error_line() == f"{dest / 'state.json'} exists: restore into an empty folder"
    assert (dest / "state.json").read_text() == "my own state\n"
    assert [p.name for p in dest.iterdir()] == ["state.json"]
    # The same for an attachment's name: the first checkpoint has a.bin.
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.bin").write_bytes(b"mine")
    ran = cli(*urls(config), "resume", f"{op}/w0/2", "--worker", "w0", "--to", str(other))
    assert ran.code == 1
    assert ran.error_line() == f"{other / 'a.bin'} exists: restore into an empty folder"
    assert [p.name for p in other.iterdir()] == ["a.bin"]
    assert (other / "a.bin").read_bytes() == b"mine"
    assert snapshot(config) == before


def test_debug_adds_the_traceback_to_the_same_error_line(
    stored: tuple[CheckpointConfig, str], cli: Cli
) -> None:
    config, _ = stored
    ran = cli(*urls(config), "--debug", "ops", "nope")
    assert ran.code == 1
    assert "Traceback (most recent call last):" in ran.err
    assert "bbp_dist_resume.errors.UnknownOperation: unknown operation 'nope'" in ran.err
    assert ran.err.strip().splitlines()[-1] == "bbp-resume: error: unknown operation 'nope'"
    quiet = cli(*urls(config), "ops", "nope")
    assert "Traceback" not in quiet.err and quiet.error_line() == "unknown operation 'nope'"
