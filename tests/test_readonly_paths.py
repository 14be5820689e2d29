"""Readers create nothing. Every ``bbp-resume`` command that opens an existing store and
backend, and every API entry point used to read, given a mistyped ``file:`` store folder
or ``sqlite:`` database path fails with the library's error naming the path, and leaves
no folder or file behind (the test's directory listed before and after). Writers (a
worker, the coordinator, ``rebuild-index`` for the database) still make what they need."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pytest
from assertions import raises_exactly
from cli_helpers import Cli, run_script

from bbp_dist_resume import (
    BucketNotFound,
    CheckpointConfig,
    CoordinationNotFound,
    InvalidStateError,
    ResumeSystem,
    ResumeSystemManager,
    open_repository,
)
from bbp_dist_resume.api.admin import Admin
from bbp_dist_resume.api.keyadmin import add_key, list_keys
from bbp_dist_resume.blobstore import open_store
from bbp_dist_resume.coordination import open_coordination

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from cli_helpers import cli_fixture  # noqa: F401

NO_STORE = (
    "store directory '{}' does not exist (a reader creates nothing: the first worker creates it)"
)
NO_DATABASE = (
    "SQLite database '{}' does not exist (a reader creates nothing: a worker or the "
    "coordinator creates it, rebuild-index restores a lost one)"
)
NOT_A_DATABASE = NO_DATABASE.replace("does not exist", "is not a coordination database")
NO_STORE_YET = (
    "no checkpoint store at '{}': nothing was ever written there "
    "(a reader creates nothing: the first worker creates it)"
)
SECRET = "base64:" + base64.b64encode(b"a secret for keys add, 32 bytes.").decode()

# Commands that open the store (and, but for keys, the backend); DEST: the test's folder.
OPENING: list[list[str]] = [
    ["ops"],
    ["ops", "op1", "--json"],
    ["checkpoints", "op1"],
    ["checkpoints", "op1", "--worker", "w0"],
    ["inspect", "op1/w0/2"],
    ["verify", "op1"],
    ["verify", "op1/w0/2", "--deep"],
    ["plan", "op1"],
    ["plan", "op1", "--mode", "best", "--json"],
    ["resume", "op1", "--worker", "w0", "--to", "DEST/restored"],
    ["retention", "--dry-run"],
    ["retention", "op1"],
    ["gc", "--dry-run"],
    ["gc"],
    ["keys", "list"],
    ["keys", "add"],
    ["rebuild-index"],  # it may make the database again, never the store it reads
]
# The ones that open the backend: with a real store, the database is what is missing.
OPENING_BACKEND = [c for c in OPENING if c[0] not in ("keys", "rebuild-index")]


def listing(root: Path) -> dict[str, int | None]:
    """Every path under ``root``, with its size (None for a folder)."""
    return {
        str(p.relative_to(root)): None if p.is_dir() else p.stat().st_size
        for p in sorted(root.rglob("*"))
    }


def expected(command: list[str], message: str) -> tuple[int, str]:
    """The exit code and error line of a command that could not open what it reads."""
    if command[:2] == ["config", "validate"]:
        return 3, f"cannot open the store or the backend: {message}"
    return 1, message


def run(cli: Cli, store: str, coord: str, command: list[str], tmp_path: Path) -> tuple[int, str]:
    ran = cli(
        "--store", store, "--coord", coord, *[a.replace("DEST", str(tmp_path)) for a in command]
    )
    assert ran.out == "", command
    return ran.code, ran.error_line()


@pytest.fixture
def stored(tmp_path: Path) -> CheckpointConfig:
    """A local store and SQLite database holding operation op1: w0's checkpoint seq 2."""
    config = CheckpointConfig(
        store_url=f"file:{tmp_path / 'store'}", coord_url=f"sqlite:{tmp_path / 'coord.db'}"
    )
    with ResumeSystem(config, "w0") as rs:
        rs.start_monitoring("op1")
        rs.create_checkpoint("s", {"n": 1})
    return config


# -- bbp-resume ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", OPENING, ids=" ".join)
def test_a_command_given_a_mistyped_store_folder_names_it_and_creates_nothing(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setenv("BBP_ENCRYPTION_KEY", SECRET)  # keys add asks for one first
    store, coord = tmp_path / "typo" / "store", tmp_path / "typo.db"
    got = run(cli, f"file:{store}", f"sqlite:{coord}", command, tmp_path)
    assert got == expected(command, NO_STORE.format(store))
    assert listing(tmp_path) == {}


@pytest.mark.parametrize("command", OPENING_BACKEND, ids=" ".join)
def test_a_command_given_a_mistyped_database_names_it_and_creates_nothing(
    cli: Cli, tmp_path: Path, stored: CheckpointConfig, command: list[str]
) -> None:
    before = listing(tmp_path)
    coord = tmp_path / "no-such-folder" / "coord.db"
    got = run(cli, stored.store_url, f"sqlite:{coord}", command, tmp_path)
    assert got == expected(command, NO_DATABASE.format(coord))
    assert listing(tmp_path) == before


def test_the_installed_script_refuses_both_typos_and_leaves_nothing(tmp_path: Path) -> None:
    store, coord = tmp_path / "typo", tmp_path / "typo.db"
    ran = run_script("--store", f"file://{store}", "--coord", f"sqlite://{coord}", "ops")
    assert (ran.code, ran.error_line()) == (1, NO_STORE.format(store))
    assert listing(tmp_path) == {}


def test_config_validate_connect_notes_what_the_first_worker_will_make_and_makes_nothing(
    cli: Cli, tmp_path: Path, stored: CheckpointConfig
) -> None:
    store, coord, empty = tmp_path / "fresh", tmp_path / "fresh.db", tmp_path / "empty"
    empty.mkdir()
    before = listing(tmp_path)
    for urls, notes in (
        ((f"file:{store}", f"sqlite:{coord}"), [NO_STORE.format(store), NO_DATABASE.format(coord)]),
        ((f"file:{empty}", stored.coord_url), [NO_STORE_YET.format(empty)]),
    ):
        ran = cli("--store", urls[0], "--coord", urls[1], "config", "validate", "--connect")
        assert (ran.code, ran.err) == (0, "")
        said = " ".join(ran.out.split())  # the console wraps long lines
        assert said == " ".join(
            [*(f"note: {n}" for n in notes), "configuration is valid and reachable"]
        )
    assert listing(tmp_path) == before


def test_a_folder_that_holds_no_store_is_refused_and_stays_empty(
    cli: Cli, tmp_path: Path, stored: CheckpointConfig
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in (["ops"], ["plan", "op1"], ["verify", "op1"], ["gc", "--dry-run"]):
        got = run(cli, f"file:{empty}", stored.coord_url, command, tmp_path)
        assert got == (1, NO_STORE_YET.format(empty)), command
    assert list(empty.iterdir()) == []


def test_another_programs_sqlite_file_is_refused_and_left_as_it_was(
    cli: Cli, tmp_path: Path, stored: CheckpointConfig
) -> None:
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
    db.close()
    before, content = listing(tmp_path), other.read_bytes()
    for command in (["ops"], ["checkpoints", "op1"], ["config", "validate", "--connect"]):
        got = run(cli, stored.store_url, f"sqlite:{other}", command, tmp_path)
        assert got == expected(command, NOT_A_DATABASE.format(other)), command
    assert listing(tmp_path) == before and other.read_bytes() == content


# -- the API ------------------------------------------------------------------------------------

Opener = Callable[[CheckpointConfig], object]


class Closing(Protocol):
    def close(self) -> None: ...


def _manager(config: CheckpointConfig) -> None:
    manager = ResumeSystemManager("reader")
    try:
        manager.initialize(config, create_store=False, create_backend=False)
    finally:
        manager.shutdown()


def _closing(open_fn: Callable[[CheckpointConfig], Closing]) -> Opener:
    def opened(config: CheckpointConfig) -> None:
        open_fn(config).close()

    return opened


STORE_READERS: dict[str, Opener] = {
    "Admin": _closing(Admin),
    "ResumeSystemManager.initialize": _manager,
    "open_repository": _closing(lambda c: open_repository(None, c, create=False)),
    "open_store": _closing(lambda c: open_store(c.store_url, create=False)),
    "list_keys": list_keys,
    "add_key": add_key,
}
BACKEND_READERS: dict[str, Opener] = {
    "Admin": _closing(Admin),
    "ResumeSystemManager.initialize": _manager,
    "open_coordination": _closing(lambda c: open_coordination(c.coord_url, create=False)),
}


@pytest.mark.parametrize("name", list(STORE_READERS))
def test_an_api_reader_given_a_mistyped_store_folder_raises_bucket_not_found(
    tmp_path: Path, name: str
) -> None:
    store = tmp_path / "typo" / "store"
    config = CheckpointConfig(
        store_url=f"file:{store}",
        coord_url=f"sqlite:{tmp_path / 'typo.db'}",
        encryption_key=SECRET,  # add_key asks for one first
    )
    err = raises_exactly(BucketNotFound, lambda: STORE_READERS[name](config))
    assert str(err) == NO_STORE.format(store)
    assert listing(tmp_path) == {}


@pytest.mark.parametrize("name", list(BACKEND_READERS))
def test_an_api_reader_given_a_mistyped_database_raises_coordination_not_found(
    tmp_path: Path, stored: CheckpointConfig, name: str
) -> None:
    before = listing(tmp_path)
    coord = tmp_path / "no-such-folder" / "coord.db"
    config = stored.with_changes(coord_url=f"sqlite:{coord}")
    err = raises_exactly(CoordinationNotFound, lambda: BACKEND_READERS[name](config))
    assert (str(err), err.path) == (NO_DATABASE.format(coord), str(coord))
    assert listing(tmp_path) == before


def test_a_readers_database_deleted_while_it_runs_is_refused_not_made_again(
    tmp_path: Path, stored: CheckpointConfig
) -> None:
    coord = open_coordination(stored.coord_url, create=False)
    try:
        assert [o.operation_id for o in coord.list_operations()] == ["op1"]
        for path in tmp_path.glob("coord.db*"):  # the -wal and -shm files too
            path.unlink()
        err = raises_exactly(CoordinationNotFound, coord.list_operations)
        assert err.path == str(tmp_path / "coord.db")
    finally:
        coord.close()
    assert not list(tmp_path.glob("coord.db*"))


def test_a_reader_of_a_store_never_written_to_raises_invalid_state_and_writes_nothing(
    tmp_path: Path,
) -> None:
    config = CheckpointConfig(store_url=f"file:{tmp_path}")
    err = raises_exactly(InvalidStateError, lambda: open_repository(None, config, create=False))
    assert str(err) == NO_STORE_YET.format(tmp_path)
    assert listing(tmp_path) == {}


# -- writers still create -----------------------------------------------------------------------


def test_a_worker_makes_the_store_folder_and_the_database_on_first_use(tmp_path: Path) -> None:
    store, coord = tmp_path / "a" / "store", tmp_path / "b" / "coord.db"
    config = CheckpointConfig(store_url=f"file:{store}", coord_url=f"sqlite:{coord}")
    with ResumeSystem(config, "w0") as rs:
        rs.start_monitoring("op1")
        cid = rs.create_checkpoint("s", {"n": 1})
    assert store.is_dir() and coord.is_file()
    with Admin(config) as admin:  # and now a reader finds them
        assert [p.checkpoint_id for p in admin.resume_points("op1")] == [cid]


def test_the_coordinator_makes_both_on_first_use(tmp_path: Path) -> None:
    store, coord = tmp_path / "store", tmp_path / "coord.db"
    manager = ResumeSystemManager("c1")
    try:
        manager.initialize(CheckpointConfig(store_url=f"file:{store}", coord_url=f"sqlite:{coord}"))
        assert manager.detect_crashed_operations() == []
    finally:
        manager.shutdown()
    assert store.is_dir() and coord.is_file()


def test_rebuild_index_makes_a_lost_database_again_from_the_store(
    cli: Cli, tmp_path: Path, stored: CheckpointConfig
) -> None:
    coord = tmp_path / "coord.db"
    coord.unlink()  # the worker closed it: no -wal or -shm file is left
    urls = ("--store", stored.store_url, "--coord", stored.coord_url)
    assert cli(*urls, "rebuild-index").code == 0
    assert coord.is_file()
    points = cli(*urls, "checkpoints", "op1", "--json").json()
    assert [p["checkpoint_id"] for p in points] == ["op1/w0/2"]
