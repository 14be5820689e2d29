"""``bbp-resume`` for a person at a terminal: the installed script on a pseudo-terminal
shows a progress bar on stderr and the interactive picker; stdout stays a plain pipe.
(Quiet pipes on both backend pairs: test_cli_script.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import ANSI, no_terminal_output, run_on_terminal, urls

from bbp_dist_resume import CheckpointConfig, ResumeSystem

ATTACHMENT = bytes(range(256)) * 50


@pytest.fixture
def embedded(tmp_path: Path) -> tuple[CheckpointConfig, list[str]]:
    """A local store and SQLite file: operation op1, worker w0, three checkpoints."""
    config = CheckpointConfig(
        store_url=f"file:{tmp_path / 'store'}",
        coord_url=f"sqlite:{tmp_path / 'coord.db'}",
        lease_ttl=2,
        heartbeat_interval=0.5,
    )
    with ResumeSystem(config, "w0") as rs:
        rs.start_monitoring("op1")
        made = [
            rs.create_checkpoint(
                stage, {"stage": stage}, attachments={"blob": ATTACHMENT + stage.encode()}
            )
            for stage in ("first", "second", "third")
        ]
    return config, made


def test_verify_deep_shows_a_progress_bar_on_a_terminal_and_a_plain_table_on_stdout(
    embedded: tuple[CheckpointConfig, list[str]],
) -> None:
    config, made = embedded
    ran = run_on_terminal(*urls(config), "verify", "op1", "--deep")
    assert ran.code == 0, ran
    shown = ran.terminal.decode()
    # rich draws "verifying", the bar and done/total, then erases it (transient).
    assert "verifying" in shown and "━" in shown and "3/3" in shown, shown
    assert ANSI.search(shown), shown
    no_terminal_output(ran.out)
    assert [line.split("│")[1].strip() for line in ran.out.splitlines() if "│ op1/" in line] == made


def test_the_interactive_picker_lists_the_points_and_restores_the_number_typed(
    embedded: tuple[CheckpointConfig, list[str]], tmp_path: Path
) -> None:
    config, made = embedded
    dest = tmp_path / "picked"
    ran = run_on_terminal(
        *urls(config),
        *["resume", "op1", "--worker", "w0", "--mode", "interactive"],
        *["--to", str(dest), "--json"],
        answers=[(b"resume from", b"2\r")],
    )
    assert ran.code == 0, ran
    shown = ran.terminal.decode()
    listed = shown[: shown.index("resume from")]
    assert "resume points (0: start clean)" in listed
    for number, cid in enumerate(made, 1):
        (row,) = [line for line in listed.splitlines() if f" {cid} " in line]
        assert row.split("│")[1].strip() == str(number)
    # No progress bar before the answer (it would draw over the prompt); one after it,
    # while the files are written.
    assert "restoring" not in listed
    assert "restoring" in shown[shown.index("resume from") :]
    got = json.loads(ran.out)
    assert (got["checkpoint_id"], got["reason"]) == (made[1], "chosen interactively")
    assert json.loads((dest / "state.json").read_text()) == {"stage": "second"}
    assert (dest / "blob").read_bytes() == ATTACHMENT + b"second"


def test_typing_0_at_the_picker_starts_clean_and_writes_only_the_empty_state(
    embedded: tuple[CheckpointConfig, list[str]], tmp_path: Path
) -> None:
    config, _ = embedded
    dest = tmp_path / "clean"
    ran = run_on_terminal(
        *urls(config),
        *["resume", "op1", "--worker", "w0", "--mode", "interactive"],
        *["--to", str(dest), "--json"],
        answers=[(b"resume from", b"0\r")],
    )
    assert ran.code == 0, ran
    got = json.loads(ran.out)
    assert got["checkpoint_id"] is None and got["attachments"] == []
    assert json.loads((dest / "state.json").read_text()) == {}


def test_ctrl_c_at_the_picker_is_exit_130_with_one_line_and_nothing_written(
    embedded: tuple[CheckpointConfig, list[str]], tmp_path: Path
) -> None:
    config, _ = embedded
    dest = tmp_path / "never"
    ran = run_on_terminal(
        *urls(config),
        *["resume", "op1", "--worker", "w0", "--mode", "interactive", "--to", str(dest)],
        answers=[(b"resume from", b"\x03")],  # Ctrl-C: the terminal sends SIGINT
    )
    assert ran.code == 130, ran
    shown = ran.terminal.decode()
    assert shown.rstrip().endswith("bbp-resume: error: interrupted"), shown
    assert "Traceback" not in shown and ran.out == ""
    assert not dest.exists()


def test_gc_shows_its_progress_bar_on_a_terminal(
    embedded: tuple[CheckpointConfig, list[str]],
) -> None:
    config, _ = embedded
    ran = run_on_terminal(*urls(config), "gc", "--dry-run")
    assert ran.code == 0, ran
    assert "collecting" in ran.terminal.decode()
    no_terminal_output(ran.out)
    assert "would delete 0" in ran.out
