"""``bbp-resume ops``, ``checkpoints``, ``inspect``, ``verify`` and ``plan`` on both backend
pairs, over checkpoints made with ``ResumeSystem``: the human output names the right facts
and ``--json`` parses back to the exact values."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from cli_helpers import Cli, checkpoint_with_own_chunks, urls
from resume_helpers import MakeConfig, Systems, new_op, wait_for

from bbp_dist_resume import CheckpointConfig, ResumeSystem
from bbp_dist_resume.blobstore import open_store
from bbp_dist_resume.repository import ChunkId

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from cli_helpers import cli_fixture  # noqa: F401
from resume_helpers import probed_s3_prefix, systems_fixture  # noqa: F401

WORKERS = ["w0", "w1", "w2", "w3"]
MODEL = bytes(range(256)) * 40  # an attachment of 10,240 bytes
LEASE_S = 20


def state_size(state: dict[str, Any]) -> int:
    return len(json.dumps(state, separators=(",", ":")))


@dataclass
class Scene:
    """An operation of four workers: w0 done (two checkpoints, the first with an
    attachment), w1 holding its lease (one checkpoint, still running), w2 stopped
    without finishing (its lease released: expired), w3 never started."""

    config: CheckpointConfig
    op: str
    w0: list[str]
    w1: str
    w2: str
    live: ResumeSystem

    def args(self, *rest: str) -> list[str]:
        return [*urls(self.config), *rest]


@pytest.fixture
def scene(make_config: MakeConfig, systems: Systems) -> Scene:
    # A long lease: w1 must stay "held" on a loaded machine whatever its heartbeats do.
    config, op = make_config(lease_ttl=LEASE_S, heartbeat_interval=0.5), new_op()
    with ResumeSystem(config, "w0") as rs:
        rs.start_monitoring(op, workers=WORKERS)
        first = rs.create_checkpoint(
            "scan",
            {"n": 1},
            {"note": "first"},
            attachments={"model.bin": MODEL},
            progress=25.0,
            produced={"rows": 3},
        )
        second = rs.create_checkpoint("scan", {"n": 2}, progress=50.0, produced={"rows": 7})
        rs.complete()
    with ResumeSystem(config, "w2") as rs:
        rs.start_monitoring(op)
        stopped = rs.create_checkpoint("sink", {"k": 9}, progress=5.0, consumed={"rows": 7})
    live = systems(config, "w1")
    live.start_monitoring(op)
    held = live.create_checkpoint("eat", {"m": 1}, progress=40.0, consumed={"rows": 3})
    return Scene(config, op, [first, second], held, stopped, live)


# -- ops -----------------------------------------------------------------------------------


def test_ops_gives_each_workers_lease_health_fence_progress_and_latest_checkpoint(
    scene: Scene, cli: Cli
) -> None:
    # The held worker's progress reaches the backend with its next heartbeat.
    def reported() -> bool:
        (view,) = cli(*scene.args("ops", scene.op, "--json")).json()
        return bool(view["workers"][1]["progress"] == 40.0)

    wait_for(reported, timeout=10.0)
    listed = cli(*scene.args("ops", "--json")).json()
    assert [v["operation_id"] for v in listed] == [scene.op]
    (view,) = listed
    workers = {w["worker_id"]: w for w in view["workers"]}
    assert list(workers) == WORKERS
    assert {w: v["lease"] for w, v in workers.items()} == {
        "w0": "done",
        "w1": "held",
        "w2": "expired",
        "w3": "never",
    }
    assert 0 < workers["w1"]["lease_ms"] <= LEASE_S * 1000
    assert [workers[w]["lease_ms"] for w in ("w0", "w2", "w3")] == [None, None, None]
    assert {w: v["fence"] for w, v in workers.items()} == {"w0": 1, "w1": 1, "w2": 1, "w3": 0}
    assert {w: v["checkpoints"] for w, v in workers.items()} == {"w0": 2, "w1": 1, "w2": 1, "w3": 0}
    assert {w: v["latest"] for w, v in workers.items()} == {
        "w0": scene.w0[1],
        "w1": scene.w1,
        "w2": scene.w2,
        "w3": None,
    }
    assert view["status"] == "running"
    assert view["checkpoints"] == 4
    assert view["progress"] == pytest.approx((100.0 + 40.0) / 4)  # done counts 100
    sizes = len(MODEL) + sum(state_size(s) for s in ({"n": 1}, {"n": 2}, {"k": 9}, {"m": 1}))
    assert view["logical_bytes"] == sizes
    # The same facts for people: one row for the operation, one per worker.
    ran = cli(*scene.args("ops"))
    assert ran.code == 0 and ran.err == ""
    (row,) = [line for line in ran.out.splitlines() if scene.op in line]
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:4] == [scene.op, "running", "1/4 done", "1 done, 1 expired, 1 held, 1 never"]
    assert cells[5] == "4"
    ran = cli(*scene.args("ops", scene.op))
    assert ran.code == 0
    rows = {
        cells[0]: cells
        for line in ran.out.splitlines()
        if line.startswith("│")
        for cells in [[c.strip() for c in line.strip("│ ").split("│")]]
    }
    assert [rows[w][1] for w in WORKERS] == ["done", "held", "expired", "never"]
    assert rows["w1"][2].endswith(" s") and rows["w0"][2] == "-"  # expires in, held only
    assert [rows[w][6] for w in WORKERS] == [scene.w0[1], scene.w1, scene.w2, "-"]


# -- checkpoints -----------------------------------------------------------------------------


def test_checkpoints_lists_every_resume_point_with_seq_size_and_channels_all_verified(
    scene: Scene, cli: Cli
) -> None:
    points = cli(*scene.args("checkpoints", scene.op, "--json")).json()
    assert [p["checkpoint_id"] for p in points] == [*scene.w0, scene.w2, scene.w1]
    assert [(p["worker_id"], p["seq"]) for p in points] == [
        ("w0", 2),
        ("w0", 3),
        ("w2", 2),  # seq 1 of every slot is its takeover record
        ("w1", 2),
    ]
    assert [p["stage_name"] for p in points] == ["scan", "scan", "sink", "eat"]
    assert [p["progress_percentage"] for p in points] == [25.0, 50.0, 5.0, 40.0]
    assert [p["logical_size"] for p in points] == [
        len(MODEL) + state_size({"n": 1}),
        state_size({"n": 2}),
        state_size({"k": 9}),
        state_size({"m": 1}),
    ]
    assert [(p["consumed"], p["produced"]) for p in points] == [
        ({}, {"rows": 3}),
        ({}, {"rows": 7}),
        ({"rows": 7}, {}),
        ({"rows": 3}, {}),
    ]
    assert [p["attachments"] for p in points] == [["model.bin"], [], [], []]
    assert points[0]["custom_metadata"] == {"note": "first"}
    assert all(p["is_verified"] for p in points)
    only = cli(*scene.args("checkpoints", scene.op, "--worker", "w0", "--json")).json()
    assert [p["checkpoint_id"] for p in only] == scene.w0
    assert cli(*scene.args("checkpoints", scene.op, "--worker", "w3", "--json")).json() == []

    # The same for people.
    ran = cli(*scene.args("checkpoints", scene.op, "--worker", "w0"))
    assert ran.code == 0 and ran.err == ""
    first, second = (
        [c.strip() for c in line.strip("│ ").split("│")]
        for line in ran.out.splitlines()
        if line.startswith(f"│ {scene.op}/")
    )
    assert first[:4] == [scene.w0[0], "scan", "25%", "10.0 KiB"]  # 10,247 bytes
    assert (first[5], first[6]) == ("yes", "out: rows=3")
    assert second[:4] == [scene.w0[1], "scan", "50%", "7 B"]
    # Every resume point listed is intact: a quick verification finds them all.
    reports = cli(*scene.args("verify", scene.op, "--json")).json()
    assert [r["checkpoint_id"] for r in reports] == [*scene.w0, scene.w2, scene.w1]
    assert all(r["ok"] and not r["deep"] for r in reports)
    # Only the model has a chunk: the small states are inline in their manifests.
    assert [r["chunks_checked"] for r in reports] == [1, 0, 0, 0]
    deep = cli(*scene.args("verify", scene.w0[0], "--deep", "--json")).json()
    assert [(r["checkpoint_id"], r["ok"], r["deep"]) for r in deep] == [(scene.w0[0], True, True)]
    ran = cli(*scene.args("verify", scene.op))
    assert ran.code == 0 and ran.err == ""
    assert sum(" ok " in line for line in ran.out.splitlines()) == 4


# -- inspect -----------------------------------------------------------------------------------


def test_inspect_gives_parts_chunks_dedup_owner_and_the_previous_checkpoint(
    scene: Scene, cli: Cli
) -> None:
    first = cli(*scene.args("inspect", scene.w0[0], "--json")).json()
    meta = first["metadata"]
    assert (meta["checkpoint_id"], meta["worker_id"], meta["seq"]) == (scene.w0[0], "w0", 2)
    assert meta["custom_metadata"] == {"note": "first"} and meta["produced"] == {"rows": 3}
    parts = {p["name"]: p for p in first["parts"]}
    assert parts["model.bin"]["size"] == len(MODEL)
    assert parts["state"]["size"] == state_size({"n": 1})
    assert parts["model.bin"]["new_bytes"] == len(MODEL)  # nothing before it
    assert first["previous"] is None and first["base"] is None
    assert first["encrypted"] is False and first["fence"] == 1
    assert meta["logical_size"] == len(MODEL) + state_size({"n": 1})
    # The small state is kept inline in the manifest: only the model has a chunk.
    assert (parts["state"]["inline"], parts["state"]["chunks"]) == (True, 0)
    assert (parts["model.bin"]["inline"], parts["model.bin"]["chunks"]) == (False, 1)
    assert (first["unique_chunks"], first["unique_bytes"]) == (1, len(MODEL))
    assert first["dedup_ratio"] == pytest.approx(meta["logical_size"] / len(MODEL))
    assert 0 < first["stored_bytes"] < len(MODEL)  # compressed: the model repeats itself
    second = cli(*scene.args("inspect", scene.w0[1], "--json")).json()
    assert second["previous"] == scene.w0[0]
    assert [p["name"] for p in second["parts"]] == ["state"]
    # The same for people.
    ran = cli(*scene.args("inspect", scene.w0[0]))
    assert ran.code == 0 and ran.err == ""
    lines = {
        name.strip(): value.strip()
        for line in ran.out.splitlines()
        if "  " in line and not line.startswith(("┃", "│", "┏", "┡", "└", "parts"))
        for name, value in [line.split("  ", 1)]
    }
    assert lines["checkpoint"] == scene.w0[0]
    assert lines["stage"] == "scan (medium)"
    assert lines["progress"] == "25.0%"
    assert lines["channels"] == "out: rows=3"
    assert lines["encrypted"] == "no"
    assert lines["metadata"] == "{'note': 'first'}"
    assert lines["owner / fence"].endswith(" / 1")
    parts = [line for line in ran.out.splitlines() if line.startswith("│ ")]
    assert [p.split("│")[1].strip() for p in parts] == ["model.bin", "state"]


# -- verify ------------------------------------------------------------------------------------


def test_verify_deep_exits_3_naming_each_damaged_checkpoint_and_object(
    make_config: MakeConfig, systems: Systems, cli: Cli
) -> None:
    config, op = make_config(inline_threshold=0), new_op()
    rs = systems(config)
    rs.start_monitoring(op)
    good, _ = checkpoint_with_own_chunks(rs, "a", {"v": "intact"})
    corrupt, corrupt_keys = checkpoint_with_own_chunks(rs, "b", {"v": "to be overwritten"})
    missing, missing_keys = checkpoint_with_own_chunks(rs, "c", {"v": "to be deleted"})
    store = open_store(config.store_url)
    store.put(corrupt_keys[0], b"garbage that is not the chunk")
    store.delete_many(missing_keys[:1])
    store.close()
    ran = cli(*urls(config), "verify", op, "--deep", "--json")
    assert ran.code == 3
    assert ran.error_line() == "2 of 3 checkpoints damaged"
    reports = {r["checkpoint_id"]: r for r in json.loads(ran.out)}
    assert {cid: r["ok"] for cid, r in reports.items()} == {
        good: True,
        corrupt: False,
        missing: False,
    }
    (bad_chunk, why) = reports[corrupt]["corrupt"][0]
    assert ChunkId.parse(bad_chunk).store_key == corrupt_keys[0] and why
    (gone,) = reports[missing]["missing"]
    assert ChunkId.parse(gone).store_key == missing_keys[0]
    # A quick check sees the deleted chunk, not the overwritten one (it does not read).
    quick = cli(*urls(config), "verify", op, "--json")
    assert quick.code == 3
    assert {r["checkpoint_id"]: r["ok"] for r in json.loads(quick.out)}[corrupt] is True
    # People get the checkpoint and the object in the table, and the same error line.
    for cid, chunk, kind in ((corrupt, bad_chunk, "corrupt"), (missing, gone, "missing")):
        ran = cli(*urls(config), "verify", cid, "--deep")
        assert ran.code == 3 and ran.error_line() == "1 of 1 checkpoints damaged"
        (row,) = [line for line in ran.out.splitlines() if line.startswith(f"│ {cid}")]
        assert "DAMAGED" in row and chunk in row and kind in row
    assert cli(*urls(config), "verify", good, "--deep").code == 0


# -- plan --------------------------------------------------------------------------------------


def test_plan_gives_each_worker_its_checkpoint_reason_rollback_and_replay_offsets(
    make_config: MakeConfig, cli: Cli
) -> None:
    config, op = make_config(), new_op()
    with ResumeSystem(config, "w0") as rs:
        rs.start_monitoring(op, workers=["w0", "w1", "w2"])
        rs.create_checkpoint("make", {"i": 1}, progress=20.0, produced={"ch": 4})
        latest = rs.create_checkpoint("make", {"i": 2}, progress=60.0, produced={"ch": 6})
    with ResumeSystem(config, "w1") as rs:
        rs.start_monitoring(op)
        behind = rs.create_checkpoint("take", {"j": 1}, progress=30.0, consumed={"ch": 3})
        rs.create_checkpoint("take", {"j": 2}, progress=90.0, consumed={"ch": 9})
    body = cli(*urls(config), "plan", op, "--json").json()
    assert body["mode"] == "last" and body["published_generation"] == 0
    entries = body["entries"]
    assert entries["w0"] == {
        "checkpoint_id": latest,
        "seq": 3,
        "reason": "latest checkpoint",
        "rollback": False,
        "replay_from": {},
    }
    # w1 consumed 9 records of ch, but w0's cut has produced only 6: w1 rolls back.
    assert entries["w1"]["checkpoint_id"] == behind and entries["w1"]["rollback"] is True
    assert entries["w1"]["reason"] == (
        "rolled back: had consumed 9 of 'ch', but 'w0' has produced 6 at its cut"
    )
    assert entries["w1"]["replay_from"] == {"ch": 3}
    assert entries["w2"]["checkpoint_id"] is None
    assert entries["w2"]["reason"] == "no checkpoint: initial state"
    assert body["channels"] == {"ch": ["w0", 6]}
    best = cli(*urls(config), "plan", op, "--mode", "best", "--json").json()
    assert best["mode"] == "best"
    assert best["entries"]["w0"]["reason"] == "best checkpoint (score 60)"
    ran = cli(*urls(config), "plan", op)
    assert ran.code == 0
    rows = {
        cells[0]: cells
        for line in ran.out.splitlines()
        if line.startswith("│")
        for cells in [[c.strip() for c in line.strip("│ ").split("│")]]
    }
    assert rows["w1"] == [
        "w1",
        behind,
        "rolled back: had consumed 9 of 'ch', but 'w0' has produced 6 at its cut",
        "yes",
    ]
    assert rows["w2"][1:3] == ["initial state", "no checkpoint: initial state"]
