"""``bbp-resume`` settings and input checks that need no server: ``config show`` and
``config validate`` (sources, masked secrets, every problem listed), ``BBP_*`` variables
and ``--config FILE`` (also through the installed script), usage errors (exit 2) and ids
refused by their syntax, each with nothing changed in an embedded store."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from cli_helpers import Cli, run_script, snapshot, urls

from bbp_dist_resume import CheckpointConfig, ResumeSystem

# isort: split
# Fixtures reach a test module by being imported into it.
from cli_helpers import cli_fixture  # noqa: F401

FILE_SECRET = "file-secret-7d41"
ENV_SECRET = "env-secret-c09e"
MASK = "**********"
ID_RULE = "must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}"
NOT_A_CHECKPOINT = "must be operation/worker/seq"


@pytest.fixture(autouse=True)
def no_bbp_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test names the BBP_* variables it means (the test services' stay)."""
    for name in list(os.environ):
        if name.startswith("BBP_") and not name.startswith("BBP_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture
def embedded(tmp_path: Path) -> CheckpointConfig:
    """A local store and SQLite file holding one operation of one worker, w0."""
    config = CheckpointConfig(
        store_url=f"file:{tmp_path / 'store'}",
        coord_url=f"sqlite:{tmp_path / 'coord.db'}",
        lease_ttl=2,
        heartbeat_interval=0.5,
    )
    with ResumeSystem(config, "w0") as rs:
        rs.start_monitoring("op1")
        rs.create_checkpoint("s", {"n": 1})
    return config


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- config show -------------------------------------------------------------------------------


def check_sources(shown: dict[str, dict[str, object]], coord_url: str) -> None:
    assert shown["store_url"] == {"value": "file:/data/from-file", "source": "file"}
    assert shown["lease_ttl"] == {"value": "PT1M", "source": "file"}
    assert shown["max_checkpoints"] == {"value": 9, "source": "env"}  # env over file
    assert shown["coord_url"] == {"value": coord_url, "source": "argument"}
    assert shown["strategy"] == {"value": "hybrid", "source": "default"}
    assert shown["encryption_key"] == {"value": MASK, "source": "file"}
    assert shown["decryption_keys"] == {"value": [MASK], "source": "env"}
    assert set(shown) == set(CheckpointConfig.model_fields) - {"best_fn", "chooser"}


SHOWN_TOML = f"""
[checkpoint]
store_url = "file:/data/from-file"
lease_ttl = 60
max_checkpoints = 7
encryption_key = "{FILE_SECRET}"
"""


def test_config_show_gives_each_value_and_its_source_with_secrets_masked(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = write_toml(tmp_path / "bbp.toml", SHOWN_TOML)
    monkeypatch.setenv("BBP_MAX_CHECKPOINTS", "9")
    monkeypatch.setenv("BBP_DECRYPTION_KEYS", ENV_SECRET)
    coord = f"sqlite:{tmp_path / 'c.db'}"
    ran = cli("--config", str(toml), "--coord", coord, "config", "show", "--json")
    check_sources(ran.json(), coord)
    table = cli("--config", str(toml), "--coord", coord, "config", "show")
    rows = {
        cells[0]: cells[1:]
        for line in table.out.splitlines()
        if line.startswith("│")
        for cells in [[c.strip() for c in line.strip("│ ").split("│")]]
    }
    assert rows["max_checkpoints"] == ["9", "env"]
    assert rows["store_url"] == ["file:/data/from-file", "file"]
    assert rows["coord_url"] == [coord, "argument"]
    assert rows["encryption_key"] == [MASK, "file"]
    assert rows["strategy"] == ["hybrid", "default"]
    for run in (ran, table):
        assert FILE_SECRET not in run.out + run.err and ENV_SECRET not in run.out + run.err


def test_the_installed_script_reads_bbp_variables_and_the_config_file(tmp_path: Path) -> None:
    toml = write_toml(tmp_path / "bbp.toml", SHOWN_TOML)
    coord = f"sqlite:{tmp_path / 'c.db'}"
    env = {"BBP_MAX_CHECKPOINTS": "9", "BBP_DECRYPTION_KEYS": ENV_SECRET}
    ran = run_script("--config", str(toml), "--coord", coord, "config", "show", "--json", env=env)
    check_sources(ran.json(), coord)
    assert FILE_SECRET not in ran.out + ran.err and ENV_SECRET not in ran.out + ran.err


def test_bbp_config_names_the_file_and_bbp_coord_url_stands_in_for_the_flag(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = write_toml(tmp_path / "bbp.toml", SHOWN_TOML)
    coord = f"sqlite:{tmp_path / 'c.db'}"
    monkeypatch.setenv("BBP_CONFIG", str(toml))
    monkeypatch.setenv("BBP_COORD_URL", coord)
    shown = cli("config", "show", "--json").json()
    assert shown["store_url"] == {"value": "file:/data/from-file", "source": "file"}
    assert shown["coord_url"] == {"value": coord, "source": "env"}
    flagged = cli("--store", "file:/elsewhere", "config", "show", "--json").json()
    assert flagged["store_url"] == {"value": "file:/elsewhere", "source": "argument"}


def test_a_command_takes_its_store_and_backend_from_bbp_variables_alone(
    embedded: CheckpointConfig, tmp_path: Path
) -> None:
    env = {"BBP_STORE_URL": embedded.store_url, "BBP_COORD_URL": embedded.coord_url}
    ran = run_script("ops", "--json", env=env)
    assert [v["operation_id"] for v in ran.json()] == ["op1"]
    toml = write_toml(
        tmp_path / "site.toml",
        f'store_url = "{embedded.store_url}"\ncoord_url = "{embedded.coord_url}"\n',
    )
    points = run_script("--config", str(toml), "checkpoints", "op1", "--json").json()
    assert [p["checkpoint_id"] for p in points] == ["op1/w0/2"]


# -- config validate -----------------------------------------------------------------------


def test_config_validate_lists_every_field_problem_and_exits_3(cli: Cli, tmp_path: Path) -> None:
    toml = write_toml(
        tmp_path / "bad.toml",
        'store_url = "ftp://x"\nlease_ttl = 0\nchunk_min_size = 1\nstrategy = "sometimes"\n',
    )
    ran = cli("--config", str(toml), "config", "validate")
    assert ran.code == 3
    assert ran.out.splitlines() == [
        "store_url: must start with file: or s3://",
        "strategy: Input should be 'time_based', 'progress_based', 'hybrid', 'manual' or "
        "'adaptive'",
        "lease_ttl: Input should be greater than or equal to 1 second",
        "chunk_min_size: Input should be greater than or equal to 64",
    ]
    assert ran.error_line() == "4 problems in the configuration"


def test_config_validate_lists_every_problem_between_fields(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BBP_LEASE_TTL", "4")
    monkeypatch.setenv("BBP_HEARTBEAT_INTERVAL", "3")
    monkeypatch.setenv("BBP_ENABLE_ENCRYPTION", "true")
    monkeypatch.setenv("BBP_CHUNK_AVG_SIZE", "100000")
    monkeypatch.setenv("BBP_CHUNK_MIN_SIZE", "200000")
    ran = cli("config", "validate")
    assert ran.code == 3
    assert ran.out.splitlines() == [
        "chunk_avg_size: need chunk_min_size < chunk_avg_size < chunk_max_size",
        "heartbeat_interval: must be at most half of lease_ttl",
        "encryption_key: required when enable_encryption is true",
    ]
    assert ran.error_line() == "3 problems in the configuration"


def test_config_validate_passes_a_good_config_with_its_warnings_and_connects(
    cli: Cli, embedded: CheckpointConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BBP_CLEANUP_AGE", "60")  # shorter than the 5 min time_interval
    ran = cli(*urls(embedded), "config", "validate", "--connect")
    assert (ran.code, ran.err) == (0, "")
    assert ran.out.splitlines() == [
        "warning: cleanup_age: shorter than time_interval, so retention keeps one checkpoint",
        "configuration is valid and reachable",
    ]
    port = closed_port()
    ran = cli(
        "--store",
        embedded.store_url,
        "--coord",
        f"redis://127.0.0.1:{port}/0",
        "config",
        "validate",
    )
    assert ran.out.splitlines()[-1] == "configuration is valid"  # nothing opened: no problem
    ran = cli(
        *["--store", embedded.store_url, "--coord", f"redis://127.0.0.1:{port}/0"],
        *["config", "validate", "--connect"],
    )
    assert ran.code == 3
    assert ran.error_line().startswith(
        f"cannot open the store or the backend: Redis did not answer: Error 111 connecting to "
        f"127.0.0.1:{port}"
    )


# -- configuration errors: one line, exit 1, nothing touched -----------------------------------


def test_an_unknown_bbp_variable_is_named_and_nothing_is_created(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BBP_MAX_CHECKPOINT", "3")  # a typo of BBP_MAX_CHECKPOINTS
    store, coord = tmp_path / "store", tmp_path / "coord.db"
    ran = cli("--store", f"file:{store}", "--coord", f"sqlite:{coord}", "ops")
    assert ran.code == 1
    assert (
        ran.error_line() == "invalid configuration: BBP_MAX_CHECKPOINT: not a configuration field"
    )
    assert not store.exists() and not coord.exists()
    listed = cli("config", "validate")
    assert (
        listed.code == 3 and listed.out.strip() == "BBP_MAX_CHECKPOINT: not a configuration field"
    )


def test_a_malformed_or_missing_toml_file_is_one_error_line(
    cli: Cli, embedded: CheckpointConfig, tmp_path: Path
) -> None:
    before = snapshot(embedded)
    bad = write_toml(tmp_path / "bad.toml", 'store_url = "file:x"\nlease_ttl = [\n')
    ran = cli("--config", str(bad), *urls(embedded), "retention")
    assert ran.code == 1
    assert ran.error_line().startswith(
        f"invalid configuration: config file: '{bad}' is not valid TOML: "
    )
    table = write_toml(tmp_path / "table.toml", "checkpoint = 3\n")
    ran = cli("--config", str(table), *urls(embedded), "retention")
    assert ran.error_line() == "invalid configuration: config file: [checkpoint] must be a table"
    gone = tmp_path / "missing.toml"
    ran = cli("--config", str(gone), *urls(embedded), "retention")
    assert ran.code == 1
    assert ran.error_line() == (
        f"invalid configuration: config file: cannot read '{gone}': No such file or directory"
    )
    assert snapshot(embedded) == before


def test_an_unreachable_redis_is_one_error_line_and_the_store_is_untouched(
    cli: Cli, embedded: CheckpointConfig
) -> None:
    before = snapshot(embedded)
    port = closed_port()
    started = time.monotonic()
    ran = cli("--store", embedded.store_url, "--coord", f"redis://127.0.0.1:{port}/0", "ops")
    # A closed port refuses at once: the command gives up quickly, it does not hang.
    assert time.monotonic() - started < 15
    assert ran.code == 1
    assert ran.error_line() == (
        f"Redis did not answer: Error 111 connecting to 127.0.0.1:{port}. Connection refused."
    )
    assert snapshot(embedded) == before


# -- ids refused by their syntax ---------------------------------------------------------------

MALFORMED: list[tuple[list[str], str]] = [
    (["inspect", "../x"], f"invalid checkpoint id '../x': {NOT_A_CHECKPOINT}"),
    (["inspect", "a/b/c/d"], f"invalid checkpoint id 'a/b/c/d': {NOT_A_CHECKPOINT}"),
    (["inspect", "{op}"], f"invalid checkpoint id '{{op}}': {NOT_A_CHECKPOINT}"),
    (["inspect", "op1/w0/x"], f"invalid checkpoint id 'op1/w0/x': {NOT_A_CHECKPOINT}"),
    (["inspect", "op1/w0/-1"], f"invalid checkpoint id 'op1/w0/-1': {NOT_A_CHECKPOINT}"),
    (["inspect", "op1/../2"], f"invalid worker id '..': {ID_RULE}"),
    (["verify", "../x"], f"invalid checkpoint id '../x': {NOT_A_CHECKPOINT}"),
    (["verify", "a/b/c/d", "--deep"], f"invalid checkpoint id 'a/b/c/d': {NOT_A_CHECKPOINT}"),
    (["ops", "../x"], f"invalid operation id '../x': {ID_RULE}"),
    (["ops", "{op}"], f"invalid operation id '{{op}}': {ID_RULE}"),
    (["checkpoints", "{op}"], f"invalid operation id '{{op}}': {ID_RULE}"),
    (["checkpoints", "op1", "--worker", "../w0"], f"invalid worker id '../w0': {ID_RULE}"),
    (["plan", "../x"], f"invalid operation id '../x': {ID_RULE}"),
    (["retention", "{op}"], f"invalid operation id '{{op}}': {ID_RULE}"),
    (["resume", "{op}", "--worker", "w0"], f"invalid operation id '{{op}}': {ID_RULE}"),
    (["resume", "op1", "--worker", "../w0"], f"invalid worker id '../w0': {ID_RULE}"),
    (["resume", "../x", "--worker", "w0"], f"invalid checkpoint id '../x': {NOT_A_CHECKPOINT}"),
]


def test_each_malformed_id_is_one_error_line_exit_1_and_changes_nothing(
    cli: Cli, embedded: CheckpointConfig, tmp_path: Path
) -> None:
    before = snapshot(embedded)
    dest = tmp_path / "never-written"
    for args, expected in MALFORMED:
        argv = [*args, "--to", str(dest)] if args[0] == "resume" else args
        ran = cli(*urls(embedded), *argv)
        assert (ran.code, ran.error_line(), ran.out) == (1, expected, ""), argv
    assert not dest.exists()
    assert snapshot(embedded) == before


# -- usage errors: exit 2 ------------------------------------------------------------------

USAGE: list[tuple[list[str], str]] = [
    (["checkpoints"], "Error: Missing argument 'OPERATION'."),
    (["resume", "op1"], "Error: Missing option '--worker'."),
    (["resume", "op1", "--worker", "w0", "--mode", "newest"], "Error: Invalid value for '--mode'"),
    (["plan", "op1", "--mode", "full"], "Error: Invalid value for '--mode'"),
    (["ops", "--yaml"], "Error: No such option"),
    (["opz"], "Error: No such command 'opz'."),
    (["keys", "rotate"], "Error: No such command 'rotate'."),
    (["--log-format", "xml", "ops"], "Error: Invalid value for '--log-format'"),
]


def test_usage_errors_exit_2_with_the_usage_and_no_traceback(
    cli: Cli, embedded: CheckpointConfig
) -> None:
    before = snapshot(embedded)
    for args, expected in USAGE:
        ran = cli(*urls(embedded), *args)
        assert ran.code == 2, args
        assert ran.err.startswith("Usage: bbp-resume"), (args, ran.err)
        assert expected in ran.err.splitlines()[-1], (args, ran.err)
        assert "Traceback" not in ran.err and ran.out == ""
    assert snapshot(embedded) == before


# -- the same exits through the installed script ----------------------------------------------


def test_the_installed_script_exits_2_1_and_shows_a_traceback_only_with_debug(
    embedded: CheckpointConfig,
) -> None:
    usage = run_script("resume", "op1")
    assert usage.code == 2 and "Error: Missing option '--worker'." in usage.err
    assert "Traceback" not in usage.err
    failed = run_script(*urls(embedded), "checkpoints", "nope")
    assert (failed.code, failed.out) == (1, "")
    assert failed.error_line() == "unknown operation 'nope'"
    debug = run_script(*urls(embedded), "--debug", "checkpoints", "nope")
    assert debug.code == 1
    assert "Traceback (most recent call last):" in debug.err
    assert "bbp_dist_resume.errors.UnknownOperation" in debug.err
    assert debug.err.strip().splitlines()[-1] == "bbp-resume: error: unknown operation 'nope'"


def test_bbp_debug_in_the_environment_asks_for_the_traceback_too(
    cli: Cli, embedded: CheckpointConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BBP_DEBUG", "1")
    ran = cli(*urls(embedded), "checkpoints", "nope")
    assert ran.code == 1 and "Traceback (most recent call last):" in ran.err
    assert ran.err.strip().splitlines()[-1] == "bbp-resume: error: unknown operation 'nope'"
    assert cli("--version").out.startswith("bbp-resume, version ")
