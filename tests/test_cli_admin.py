"""``bbp-resume resume``, ``retention``, ``rebuild-index`` and ``keys`` on both backend pairs:
what they write (restored files byte for byte, the store after retention, the index after
a rebuild, the keys of an encrypted store) is checked against the store and the backend."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import pytest
from cli_helpers import (
    Cli,
    Ran,
    checkpoint_with_own_chunks,
    chunk_keys,
    snapshot,
    urls,
    wipe_backend,
)
from resume_helpers import MakeConfig, index_seqs, new_op, record_seqs

from bbp_dist_resume import CheckpointConfig, ResumeSystem
from bbp_dist_resume.blobstore import open_store
from bbp_dist_resume.coordination.url import sqlite_path

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from cli_helpers import cli_fixture  # noqa: F401
from resume_helpers import probed_s3_prefix, systems_fixture  # noqa: F401

MODEL = bytes(range(256)) * 64  # 16 KiB: stored as a chunk, not inline
NOTES = "résumé notes\n".encode()


# -- resume ------------------------------------------------------------------------------------


def test_resume_to_a_folder_writes_the_state_and_every_attachment_byte_for_byte(
    make_config: MakeConfig, cli: Cli, tmp_path: Path
) -> None:
    config, op = make_config(), new_op()
    state = {"weights": [1.5, 2, 3], "name": "model", "nested": {"k": None}}
    with ResumeSystem(config, "w0") as rs:
        rs.start_monitoring(op, workers=["w0", "w1"])
        best = rs.create_checkpoint("train", {"old": True}, progress=80.0, produced={"ch": 2})
        latest = rs.create_checkpoint(
            "train",
            state,
            attachments={"model.bin": MODEL, "notes.txt": NOTES},
            progress=60.0,
            consumed={"in": 5},
            produced={"ch": 4},
        )
    dest = tmp_path / "restored"
    got = cli(*urls(config), "resume", op, "--worker", "w0", "--to", str(dest), "--json").json()
    assert got == {
        "operation_id": op,
        "checkpoint_id": latest,
        "mode": "last",
        "reason": "recovery line: latest checkpoint",
        "stage": "train",
        "progress": 60.0,
        "consumed": {"in": 5},
        "produced": {"ch": 4},
        "attachments": ["model.bin", "notes.txt"],
        "files": {
            "state": str(dest / "state.json"),
            "model.bin": str(dest / "model.bin"),
            "notes.txt": str(dest / "notes.txt"),
        },
    }
    assert json.loads((dest / "state.json").read_text(encoding="utf-8")) == state
    assert (dest / "model.bin").read_bytes() == MODEL
    assert (dest / "notes.txt").read_bytes() == NOTES
    assert sorted(p.name for p in dest.iterdir()) == ["model.bin", "notes.txt", "state.json"]
    # best: the highest progress; full: a clean start; both without --to write nothing.
    best_got = cli(*urls(config), "resume", op, "--worker", "w0", "--mode", "best", "--json")
    assert best_got.json()["checkpoint_id"] == best
    assert best_got.json()["reason"] == "recovery line: best checkpoint (score 80)"
    full = cli(*urls(config), "resume", op, "--worker", "w0", "--mode", "full", "--json").json()
    assert (full["checkpoint_id"], full["reason"], full["files"]) == (
        None,
        "full restart asked",
        {},
    )
    fresh = cli(*urls(config), "resume", op, "--worker", "w1", "--json").json()
    assert (fresh["checkpoint_id"], fresh["reason"]) == (None, "no checkpoint: initial state")


def test_resume_text_names_the_checkpoint_why_channels_and_each_file_written(
    make_config: MakeConfig, cli: Cli, tmp_path: Path
) -> None:
    config, op = make_config(), new_op()
    with ResumeSystem(config, "w0") as rs:
        rs.start_monitoring(op)
        cid = rs.create_checkpoint(
            "train", {"x": 1}, attachments={"notes.txt": NOTES}, produced={"ch": 4}
        )
    ran = cli(*urls(config), "resume", op, "--worker", "w0", "--to", str(tmp_path / "d"))
    assert ran.code == 0 and ran.err == ""
    lines = ran.out.splitlines()
    assert lines[0].split() == ["resume", "from", cid]
    assert "recovery line: latest checkpoint" in lines[1]
    assert "out: ch=4" in ran.out and "notes.txt" in lines[5]
    assert f"wrote state -> {tmp_path / 'd' / 'state.json'}" in lines
    assert f"wrote notes.txt -> {tmp_path / 'd' / 'notes.txt'}" in lines


# -- retention -----------------------------------------------------------------------------


def test_retention_dry_run_removes_nothing_and_the_real_run_removes_what_it_listed(
    make_config: MakeConfig, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, op = make_config(auto_cleanup=False), new_op()
    with ResumeSystem(config, "w0") as rs:
        rs.start_monitoring(op, workers=["w0", "w1"])
        for i in range(4):  # seqs 2..5
            rs.create_checkpoint("make", {"i": i}, produced={"ch": 2 * i})
    with ResumeSystem(config, "w1") as rs:
        rs.start_monitoring(op)
        # 3 consumed of w0's 6: in the recovery line. 9 consumed: past w0's cut.
        kept = rs.create_checkpoint("take", {"j": 1}, consumed={"ch": 3})
        rs.create_checkpoint("take", {"j": 2}, consumed={"ch": 9})
    monkeypatch.setenv("BBP_MAX_CHECKPOINTS", "1")
    before = snapshot(config)
    ran = cli(*urls(config), "retention", "--dry-run", "--json")
    assert ran.json() == {"dry_run": True, "removed": {op: {"w0": [2, 3, 4]}}}
    assert snapshot(config) == before  # a dry run changes nothing
    ran = cli(*urls(config), "retention", op, "--dry-run")
    assert ran.code == 0
    (row,) = [line for line in ran.out.splitlines() if line.startswith(f"│ {op}")]
    assert [c.strip() for c in row.strip("│ ").split("│")] == [op, "w0", "3", "2, 3, 4"]
    assert ran.out.splitlines()[-1] == "would remove 3 checkpoints"
    ran = cli(*urls(config), "retention", op, "--json")
    assert ran.json() == {"dry_run": False, "removed": {op: {"w0": [2, 3, 4]}}}
    assert record_seqs(config.store_url, op, "w0") == [1, 5]  # the takeover record stays
    assert 5 in index_seqs(config.coord_url, op, "w0")
    assert not {2, 3, 4} & set(index_seqs(config.coord_url, op, "w0"))
    # w1's older checkpoint is the recovery line's entry: never removed.
    assert kept.endswith("/2") and record_seqs(config.store_url, op, "w1") == [1, 2, 3]
    ran = cli(*urls(config), "retention")
    assert ran.code == 0 and ran.out.splitlines()[-1] == "removed 0 checkpoints"


# -- rebuild-index -------------------------------------------------------------------------


def test_rebuild_index_restores_the_index_and_fences_after_the_backend_lost_everything(
    make_config: MakeConfig, cli: Cli
) -> None:
    config, op = make_config(), new_op()
    made: dict[str, list[str]] = {}
    for worker in ("w0", "w1"):
        with ResumeSystem(config, worker) as rs:
            rs.start_monitoring(op, workers=["w0", "w1"])
            made[worker] = [rs.create_checkpoint("s", {"n": n}) for n in range(worker_n(worker))]
    indexed = {w: index_seqs(config.coord_url, op, w) for w in made}
    wipe_backend(config.coord_url)
    if config.coord_url.startswith("sqlite:"):
        # A deleted SQLite file is refused by a reader, as a mistyped path is: never re-made.
        refused = cli(*urls(config), "ops", "--json")
        assert refused.code == 1 and "rebuild-index restores a lost one" in refused.error_line()
        assert not Path(sqlite_path(config.coord_url)).exists()
    else:
        (lost,) = cli(*urls(config), "ops", "--json").json()
        assert (lost["operation_id"], lost["status"]) == (op, "unknown")  # the store knows
    ran = cli(*urls(config), "rebuild-index", "--json")
    assert ran.json() == {
        "operations": 1,
        "entries_added": sum(len(seqs) for seqs in indexed.values()),
        "fences": {f"{op}/w0": 1, f"{op}/w1": 1},
    }
    assert {w: index_seqs(config.coord_url, op, w) for w in made} == indexed
    points = cli(*urls(config), "checkpoints", op, "--json").json()
    assert sorted(p["checkpoint_id"] for p in points) == sorted(made["w0"] + made["w1"])
    (back,) = cli(*urls(config), "ops", "--json").json()
    assert back["status"] == "running"
    assert {w["worker_id"]: w["fence"] for w in back["workers"]} == {"w0": 1, "w1": 1}
    again = cli(*urls(config), "rebuild-index")  # safe to run again: nothing to add
    assert again.code == 0
    assert again.out.strip() == (
        "rebuilt 1 operations: 0 index entries added, "
        "2 fencing counters at or above every fence in the store"
    )


def worker_n(worker: str) -> int:
    return {"w0": 2, "w1": 3}[worker]


# -- keys --------------------------------------------------------------------------------------

# Raw 32-byte keys ("base64:"), not passphrases: the same key handling without the
# scrypt derivation each command would otherwise pay for.
SECRET_ONE = "base64:" + base64.b64encode(b"first secret of 32 bytes, exact!").decode()
SECRET_TWO = "base64:" + base64.b64encode(b"second secret, 32 bytes as well.").decode()
WRONG = "base64:" + base64.b64encode(b"a wrong secret of 32 bytes, too!").decode()


def keys_env(monkeypatch: pytest.MonkeyPatch, primary: str, *older: str) -> None:
    monkeypatch.setenv("BBP_ENABLE_ENCRYPTION", "true")
    monkeypatch.setenv("BBP_ENCRYPTION_KEY", primary)
    monkeypatch.setenv("BBP_DECRYPTION_KEYS", ",".join(older))


def no_secret(*runs: Ran) -> None:
    for ran in runs:
        for secret in (SECRET_ONE, SECRET_TWO, WRONG):
            assert secret not in ran.out + ran.err


def encrypted(config: CheckpointConfig, primary: str, *older: str) -> CheckpointConfig:
    return config.with_changes(
        enable_encryption=True, encryption_key=primary, decryption_keys=older
    )


def test_keys_init_add_list_and_rotation_keep_old_checkpoints_readable(
    make_config: MakeConfig, cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config, op = make_config(), new_op()
    args = urls(config)
    keys_env(monkeypatch, SECRET_ONE)
    init = cli(*args, "keys", "init", "--json")
    first = init.json()
    assert (first["opened_by"], first["writer"]) == (0, True)
    listed = cli(*args, "keys", "list", "--json")
    assert listed.json() == [first]
    with ResumeSystem(encrypted(config, SECRET_ONE), "w0") as rs:
        rs.start_monitoring(op)
        old = rs.create_checkpoint("s", {"written": "under one"}, attachments={"m": MODEL})
    # Rotation: a new primary secret, the old one kept for reading.
    keys_env(monkeypatch, SECRET_TWO, SECRET_ONE)
    added = cli(*args, "keys", "add", "--json")
    second = added.json()
    assert second["key_id"] != first["key_id"]
    assert (second["opened_by"], second["writer"]) == (0, True)
    rotated = cli(*args, "keys", "list", "--json").json()
    assert [(k["key_id"], k["opened_by"], k["writer"]) for k in rotated] == [
        (first["key_id"], 1, False),  # decryption_keys[0]
        (second["key_id"], 0, True),
    ]
    table = cli(*args, "keys", "list")
    rows = {line.split("│")[1].strip(): line for line in table.out.splitlines() if "│" in line}
    assert "decryption_keys[0]" in rows[first["key_id"]] and " no " in rows[first["key_id"]]
    assert "encryption_key" in rows[second["key_id"]] and " yes " in rows[second["key_id"]]
    with ResumeSystem(encrypted(config, SECRET_TWO, SECRET_ONE), "w0") as rs:
        rs.start_monitoring(op)
        new = rs.create_checkpoint("s", {"written": "under two"})
    assert cli(*args, "inspect", new, "--json").json()["encrypted"] is True
    # The old checkpoint opens with the old secret among the decryption keys ...
    out = tmp_path / "old"
    restored = cli(*args, "resume", old, "--worker", "w0", "--to", str(out), "--json")
    assert restored.json()["checkpoint_id"] == old
    assert json.loads((out / "state.json").read_text()) == {"written": "under one"}
    assert (out / "m").read_bytes() == MODEL
    # ... and a deep verification reads everything with the two secrets,
    assert cli(*args, "verify", op, "--deep").code == 0
    # but not with the new one alone: the old checkpoint's object is named.
    keys_env(monkeypatch, SECRET_TWO)
    alone = cli(*args, "verify", op, "--deep", "--json")
    assert alone.code == 3
    bad = {r["checkpoint_id"]: r for r in json.loads(alone.out) if not r["ok"]}
    assert list(bad) == [old]
    assert "no configured key opens" in bad[old]["problems"][0]
    no_secret(init, listed, added, table, restored, alone)


def test_keys_init_twice_and_add_with_a_wrong_secret_fail_and_change_nothing(
    make_config: MakeConfig, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config()
    args = urls(config)
    keys_env(monkeypatch, SECRET_ONE)
    init = cli(*args, "keys", "init")
    assert init.code == 0 and init.err == ""
    assert re.fullmatch(r"created data key [0-9a-f]{16} \(created \S+\)\n", init.out), init.out
    (only,) = cli(*args, "keys", "list", "--json").json()
    assert init.out.split()[3] == only["key_id"]
    before = snapshot(config)
    twice = cli(*args, "keys", "init")
    assert twice.code == 1
    assert twice.error_line() == "the store already has encryption keys: use 'keys add'"
    keys_env(monkeypatch, WRONG)
    wrong = cli(*args, "keys", "add")
    assert wrong.code == 1
    assert wrong.error_line() == "no configured encryption key opens any of the store's keys"
    monkeypatch.delenv("BBP_ENCRYPTION_KEY")
    monkeypatch.delenv("BBP_ENABLE_ENCRYPTION")
    unset = cli(*args, "keys", "add")  # no secret and no terminal to ask on
    assert unset.code == 1
    assert unset.error_line() == "no encryption_key configured: set BBP_ENCRYPTION_KEY"
    assert snapshot(config) == before
    no_secret(init, twice, wrong, unset)


# -- gc ----------------------------------------------------------------------------------------

GC_MARGIN_S = 4  # the least gc_safety_margin the config takes


def wait_until_older_than(store_url: str, keys: set[str], seconds: float) -> None:
    """Until the store says every key is older than ``seconds`` (its clock, not ours)."""
    store = open_store(store_url)
    try:
        deadline = time.monotonic() + seconds + 30
        while True:
            ages = [store.head(k) for k in keys]
            if all(i is not None and i.age is not None and i.age > seconds for i in ages):
                return
            assert time.monotonic() < deadline, f"objects did not age past {seconds} s"
            time.sleep(0.25)
    finally:
        store.close()


def test_gc_dry_run_deletes_nothing_and_gc_deletes_only_unreferenced_old_chunks(
    make_config: MakeConfig, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writers keep the default margin: nothing writes while this test collects.
    config, op = make_config(inline_threshold=0), new_op()
    with ResumeSystem(config, "w0") as rs:
        rs.start_monitoring(op)
        gone, gone_keys = checkpoint_with_own_chunks(rs, "a", {"blob": "x" * 5000})
        kept, kept_keys = checkpoint_with_own_chunks(rs, "b", {"blob": "y" * 5000})
        assert rs.delete_checkpoint(gone)
    monkeypatch.setenv("BBP_GC_SAFETY_MARGIN", str(GC_MARGIN_S))
    young = cli(*urls(config), "gc", "--json").json()  # nothing is old enough yet
    assert (young["candidates"], young["deleted"], young["margin"]) == (0, 0, GC_MARGIN_S)
    assert chunk_keys(config.store_url) == set(gone_keys) | set(kept_keys)
    wait_until_older_than(config.store_url, set(gone_keys) | set(kept_keys), GC_MARGIN_S + 1.5)
    before = snapshot(config)
    sizes = {k: len(before[0][k]) for k in gone_keys}
    dry = cli(*urls(config), "gc", "--dry-run", "--json").json()
    assert dry["dry_run"] is True
    assert (dry["deleted"], dry["bytes_freed"]) == (len(gone_keys), sum(sizes.values()))
    assert dry["chunks_seen"] == len(gone_keys) + len(kept_keys)
    assert dry["chunks_referenced"] == len(kept_keys)
    assert snapshot(config) == before
    ran = cli(*urls(config), "gc")
    assert ran.code == 0 and ran.err == ""
    assert f"deleted {len(gone_keys)} (" in ran.out
    assert chunk_keys(config.store_url) == set(kept_keys)
    assert cli(*urls(config), "verify", kept, "--deep").code == 0
    again = cli(*urls(config), "gc", "--json").json()
    assert (again["deleted"], again["chunks_seen"]) == (0, len(kept_keys))
