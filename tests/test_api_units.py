"""Pure units of the api layer: the state machine, utils, snapshots and statistics advice."""

from __future__ import annotations

import enum
import json
import math
import uuid
from collections import deque
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from assertions import raises_exactly
from hypothesis import given, settings
from hypothesis import strategies as st

from bbp_dist_resume.api import utils
from bbp_dist_resume.api.models import ResumeMode, ResumeState, ResumeStatistics
from bbp_dist_resume.api.snapshot import decode_state, encode_state, take_snapshot
from bbp_dist_resume.api.state import TRANSITIONS, StateMachine
from bbp_dist_resume.api.stats import recommendations
from bbp_dist_resume.config import CheckpointConfig, CheckpointStrategy
from bbp_dist_resume.errors import (
    ConfigError,
    InvalidCheckpoint,
    InvalidIdentifier,
    InvalidStateError,
)
from bbp_dist_resume.ids import check_id

S = ResumeState

# -- StateMachine -----------------------------------------------------------------------------


def machine_in(state: ResumeState) -> StateMachine:
    """A machine brought to ``state`` along allowed moves (breadth-first from IDLE)."""
    paths: dict[ResumeState, list[ResumeState]] = {S.IDLE: []}
    todo = deque([S.IDLE])
    while todo:
        here = todo.popleft()
        for nxt in sorted(TRANSITIONS[here]):
            if nxt not in paths:
                paths[nxt] = [*paths[here], nxt]
                todo.append(nxt)
    sm = StateMachine()
    for step in paths[state]:
        sm.move(step)
    assert sm.state is state
    return sm


PAIRS = [(a, b) for a in S for b in S]


@pytest.mark.parametrize(("source", "target"), PAIRS)
def test_a_move_succeeds_exactly_when_the_table_allows_it(
    source: ResumeState, target: ResumeState
) -> None:
    sm = machine_in(source)
    if target in TRANSITIONS[source]:
        sm.move(target)
        assert sm.state is target
    else:
        raises_exactly(InvalidStateError, lambda: sm.move(target))
        assert sm.state is source


SCRIPTS = {
    # name: (start state, "call>state after it ..."); started/finished are checkpoints.
    "in flight": (
        S.RUNNING,
        "started>checkpointing started>checkpointing finished>checkpointing finished>running"
        " finished>running started>checkpointing",  # one finish too many is ignored
    ),
    "outside running": (S.IDLE, "started>idle finished>idle"),
    "pause forgets": (
        S.RUNNING,
        "started>checkpointing started>checkpointing move>paused move>running"
        " started>checkpointing finished>running",
    ),
    "recover in checkpointing": (
        S.RUNNING,
        "started>checkpointing recovery_started>recovering recovery_finished>checkpointing"
        " finished>running",
    ),
    "finish without recovery": (S.PAUSED, "recovery_finished>paused"),
    **{
        f"recover from {s}": (s, f"recovery_started>recovering recovery_finished>{s}")
        for s in (S.IDLE, S.RUNNING, S.PAUSED, S.COMPLETED, S.FAILED)
    },
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_checkpoint_counting_and_recovery_return_to_the_right_state(name: str) -> None:
    start, script = SCRIPTS[name]
    sm = machine_in(start)
    calls = {
        "started": sm.checkpoint_started,
        "finished": sm.checkpoint_finished,
        "recovery_started": sm.recovery_started,
        "recovery_finished": sm.recovery_finished,
    }
    for step in script.split():
        call, after = step.split(">")
        if call == "move":
            sm.move(S(after))
        else:
            calls[call]()
        assert sm.state is S(after), step


def test_a_rejected_nested_recovery_leaves_the_machine_unchanged() -> None:
    # Regression (api/state.py, recovery_started): _before_recovery is overwritten (with
    # RUNNING, as RECOVERING is "monitored") before the move RECOVERING -> RECOVERING is
    # rejected, so the first recovery then returns to RUNNING instead of IDLE.
    sm = StateMachine()
    sm.recovery_started()
    raises_exactly(InvalidStateError, sm.recovery_started)
    sm.recovery_finished()
    assert sm.state is S.IDLE


def test_fail_moves_only_monitored_states_to_failed() -> None:
    for state in S:
        sm = machine_in(state)
        sm.fail()
        monitored = state in (S.RUNNING, S.CHECKPOINTING, S.RECOVERING)
        assert sm.state is (S.FAILED if monitored else state)


# -- parse_resume_context ---------------------------------------------------------------------


def request(op: str, mode: ResumeMode = ResumeMode.LAST_CHECKPOINT, cp: str | None = None) -> Any:
    return utils.ResumeRequest(operation_id=op, mode=mode, checkpoint_id=cp)


GOOD_ARGV = [
    ([], None),
    (["train.py", "--epochs", "3", "-v", "data.csv"], None),
    (["--resume-op", "op1"], None),  # no abbreviations
    (["--resume-operation", "op1"], request("op1")),
    *(
        (["--resume-operation=op1", "--resume-mode", m.value], request("op1", m))
        for m in ResumeMode
    ),
    (["--resume-checkpoint", "op/w/3"], request("op", cp="op/w/3")),
    (
        ["--resume-operation", "op", "--resume-checkpoint", "op/w/3", "--resume-mode", "best"],
        request("op", ResumeMode.BEST_CHECKPOINT, "op/w/3"),
    ),
    (
        ["train.py", "--lr", "0.1", "--resume-operation", "op1", "-v", "--resume", "x"],
        request("op1"),
    ),
]


@pytest.mark.parametrize(("argv", "expected"), GOOD_ARGV)
def test_resume_arguments_are_read_and_others_ignored(argv: list[str], expected: Any) -> None:
    assert utils.parse_resume_context(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["--resume-operation", "other", "--resume-checkpoint", "op/w/3"],
        ["--resume-operation", "op1", "--resume-mode", "sometimes"],
        ["--resume-mode", "last"],
        ["--resume-operation", "bad/op"],
        ["--resume-operation", ".hidden"],
        ["--resume-checkpoint", "op/w/x"],
        ["--resume-checkpoint", "op/w/0"],
        ["--resume-checkpoint", "op/w"],
        ["--resume-checkpoint", "op/w w/1"],
        ["--resume-operation"],
        ["--resume-mode"],
        ["--resume-checkpoint"],
        ["--resume-operation", "op1", "--resume-mode"],
    ],
)
def test_bad_resume_arguments_raise_config_error_never_system_exit(argv: list[str]) -> None:
    raises_exactly(ConfigError, lambda: utils.parse_resume_context(argv))


@pytest.mark.parametrize("argv", [["--resume-operation", ""], ["--resume-checkpoint", ""]])
def test_an_empty_resume_value_is_a_config_error(argv: list[str]) -> None:
    # Regression (api/utils.py, parse_resume_context): the "was a resume asked" test is on
    # truthiness, so an empty value (e.g. an unset "$OP") silently means "no resume".
    raises_exactly(ConfigError, lambda: utils.parse_resume_context(argv))


# -- generate_operation_id --------------------------------------------------------------------


def test_generated_ids_are_valid_and_unique() -> None:
    ids = [utils.generate_operation_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(check_id(i) == i and i.startswith("op-") for i in ids)
    assert check_id(utils.generate_operation_id("train.v2_x")).startswith("train.v2_x-")


def test_a_bad_prefix_is_rejected() -> None:
    raises_exactly(InvalidIdentifier, lambda: utils.generate_operation_id("bad/prefix"))


def test_a_long_prefix_never_yields_an_invalid_id() -> None:
    # Regression (api/utils.py, generate_operation_id): the prefix is checked alone; with
    # 88..128 characters the id (prefix + 41) is longer than 128 and fails check_id.
    try:
        made = utils.generate_operation_id("p" * 100)
    except InvalidIdentifier:
        return
    check_id(made, "operation id")


def test_ids_sort_by_creation_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock: list[datetime] = []
    monkeypatch.setattr(utils, "datetime", SimpleNamespace(now=lambda tz: clock[-1]))
    base = datetime(2024, 12, 31, 23, 59, 59, 998_000, tzinfo=UTC)
    times = [base + timedelta(milliseconds=ms) for ms in (0, 1, 2, 1_000, 60_000, 86_400_000)]
    times += [datetime(2025, 1, 1, 0, 0, 0, 9_999, tzinfo=UTC)]
    times.sort()
    made = []
    for t in times:
        clock.append(t)
        made.append(utils.generate_operation_id())
    assert made == sorted(made)
    assert made[0].startswith("op-20241231T235959998Z-")


# -- validate_config --------------------------------------------------------------------------


def test_a_valid_mapping_has_no_problems_and_a_bad_one_names_every_bad_field() -> None:
    problems = utils.validate_config(
        {"time_interval": -1, "max_checkpoints": 0, "bogus": 1, "heartbeat_interval": 29}
    )
    assert all(isinstance(p, str) for p in problems)
    assert utils.validate_config({}) == []
    assert utils.validate_config({"strategy": "time_based", "time_interval": 60}) == []
    for name in ("time_interval", "max_checkpoints", "bogus"):
        assert any(p.startswith(f"{name}: ") for p in problems), (name, problems)


def test_a_relation_problem_names_its_field() -> None:
    problems = utils.validate_config({"heartbeat_interval": 20, "lease_ttl": 30})
    assert problems
    assert problems[0].startswith("heartbeat_interval: ")


def test_a_config_object_gets_advice() -> None:
    assert utils.validate_config(CheckpointConfig()) == []
    advice = utils.validate_config(
        CheckpointConfig(
            strategy=CheckpointStrategy.ADAPTIVE,
            max_memory_threshold_mb=8,
            time_interval=3600,
            cleanup_age=60,
        )
    )
    assert len(advice) == 2
    assert advice[0].startswith("max_memory_threshold_mb: ")
    assert advice[1].startswith("cleanup_age: ")


def test_a_coord_timeout_that_outlasts_the_lease_margin_gets_advice() -> None:
    quick = CheckpointConfig(lease_ttl=2, heartbeat_interval=0.5)  # a 1.5 s margin
    assert [a.split(":")[0] for a in utils.validate_config(quick)] == ["coord_timeout"]
    # 4 attempts of 0.3 s and the backoff: 1.35 s.
    tight = CheckpointConfig(lease_ttl=2, heartbeat_interval=0.5, coord_timeout=0.3)
    assert utils.validate_config(tight) == []


def test_something_else_is_reported_not_raised() -> None:
    assert utils.validate_config(42) == [  # type: ignore[arg-type]
        "config: expected a CheckpointConfig or a mapping, not int"
    ]


# -- snapshots --------------------------------------------------------------------------------

CYCLE: dict[str, Any] = {}
CYCLE["self"] = CYCLE


@pytest.mark.parametrize(
    "state",
    [
        [1, 2],
        None,
        "text",
        {"s": {1, 2}},
        {"b": b"raw"},
        {"x": math.nan},
        {"x": math.inf},
        {"x": [-math.inf]},
        {"o": object()},
        {(1, 2): "tuple key"},
        CYCLE,
    ],
)
def test_encode_state_rejects_what_is_not_a_json_object(state: object) -> None:
    raises_exactly(InvalidCheckpoint, lambda: encode_state(state))


class _Colour(enum.Enum):
    RED = 1


@pytest.mark.parametrize(
    ("value", "stored"), [(uuid.UUID(int=5), str(uuid.UUID(int=5))), (_Colour.RED, 1)]
)
def test_uuid_and_enum_values_are_stored_as_their_json_value(value: object, stored: object) -> None:
    # Documented in encode_state: orjson's fast path stores these as their JSON value.
    assert decode_state(encode_state({"v": value})) == {"v": stored}


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**30, -(10**30)])
def test_integers_beyond_64_bits_round_trip_exactly(number: int) -> None:
    # encode_state falls back to json.dumps, which writes the exact integer; decode_state
    # must read it back as that integer.
    assert decode_state(encode_state({"n": number})) == {"n": number}
    assert type(decode_state(encode_state({"n": number}))["n"]) is int


def test_a_lone_surrogate_is_refused_or_round_trips() -> None:
    # Regression (api/snapshot.py): json.dumps writes "\\ud800", which orjson.loads
    # refuses, so the checkpoint is written but can never be restored.
    try:
        data = encode_state({"s": "\ud800"})
    except InvalidCheckpoint:
        return
    assert decode_state(data) == {"s": "\ud800"}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_decode_state_inverts_encode_state(state: dict[str, Any]) -> None:
    data = encode_state(state)
    assert json.loads(data) == state
    assert decode_state(data) == state


@pytest.mark.parametrize(
    "data", [b"[1]", b"1", b"null", b'"s"', b"{", b"\xff\xfe\x00", b"[" * 100_000]
)
def test_decode_state_rejects_what_is_not_a_json_object(data: bytes) -> None:
    raises_exactly(InvalidCheckpoint, lambda: decode_state(data))


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "a b", "x{y}", "a" * 125, 7])
def test_take_snapshot_rejects_bad_attachment_names(name: object) -> None:
    attachments: Any = {name: b"x"}
    raises_exactly(InvalidIdentifier, lambda: take_snapshot({}, attachments, spool_dir=None))


def test_bytes_are_kept_and_mutable_buffers_copied() -> None:
    raw, buf = b"immutable", bytearray(b"mutable")
    view = memoryview(bytearray(b"view"))
    attachments: dict[str, Any] = {
        "raw": raw,
        "buf": buf,
        "view": view,
        "n" * 124: b"",
    }  # longest name
    snap = take_snapshot({"k": 1}, attachments, spool_dir=None)
    buf[:] = b"changed"
    view[:] = b"VIEW"
    assert snap.parts["att.raw"] is raw
    assert snap.parts["att.buf"] == b"mutable"
    assert snap.parts["att.view"] == b"view"
    assert decode_state(snap.parts["state"]) == {"k": 1}  # type: ignore[arg-type]
    assert snap.size == len(snap.parts["state"]) + len(b"immutablemutableview")  # type: ignore[arg-type]


@pytest.mark.parametrize("attachments", [{"a": None}, {"a": 3}, {"a": ["l"]}, [("a", b"x")]])
def test_attachments_map_names_to_bytes_or_paths(attachments: Any) -> None:
    raises_exactly(InvalidCheckpoint, lambda: take_snapshot({}, attachments, spool_dir=None))


def test_a_missing_file_a_directory_or_a_bad_state_spools_nothing(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_bytes(b"data")
    spool = tmp_path / "spool"
    spool.mkdir()
    for bad in (tmp_path / "missing", tmp_path):
        attachments: dict[str, Any] = {"good": good, "bad": bad}
        raises_exactly(InvalidCheckpoint, partial(take_snapshot, {}, attachments, spool_dir=spool))
    raises_exactly(InvalidCheckpoint, lambda: take_snapshot([1], {"g": good}, spool_dir=spool))
    assert list(spool.iterdir()) == []


def test_without_a_spool_dir_a_file_is_read_later_from_its_path(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    snap = take_snapshot({}, {"f": str(f)}, spool_dir=None)
    assert snap.parts["att.f"] == f
    assert snap.spooled == []


def test_a_spooled_copy_outlives_changes_and_discard_removes_it(tmp_path: Path) -> None:
    original = tmp_path / "model.bin"
    original.write_bytes(b"version 1")
    spool = tmp_path / "spool"
    spool.mkdir()
    snap = take_snapshot({}, {"model": original}, spool_dir=spool)
    copy = snap.parts["att.model"]
    assert isinstance(copy, Path)
    assert copy.parent == spool
    assert copy != original
    original.write_bytes(b"version 2, longer")
    assert copy.read_bytes() == b"version 1"
    assert snap.size == len(snap.parts["state"]) + len(b"version 1")  # type: ignore[arg-type]
    snap.discard()
    assert not copy.exists()
    assert list(spool.iterdir()) == []
    snap.discard()  # idempotent


# -- statistics advice ------------------------------------------------------------------------

CREATED = datetime(2024, 1, 1, tzinfo=UTC)


def stats(**kw: Any) -> ResumeStatistics:
    return ResumeStatistics(created_at=CREATED, **kw)


def test_high_overhead_is_reported_above_ten_percent() -> None:
    advice = recommendations(
        stats(total_checkpoints_created=5, checkpoint_overhead_percentage=25.0),
        avg_cost_s=1.0,
        interval_s=300.0,
        mtbf_s=None,
    )
    assert advice == (
        "Checkpoints cost 25% of the monitored time: raise time_interval or "
        "progress_threshold, or pass blocking=False.",
    )


@pytest.mark.parametrize(("made", "overhead"), [(5, 10.0), (5, 3.0), (0, 50.0)])
def test_overhead_is_not_reported_at_or_below_ten_percent_or_without_checkpoints(
    made: int, overhead: float
) -> None:
    s = stats(total_checkpoints_created=made, checkpoint_overhead_percentage=overhead)
    assert recommendations(s, avg_cost_s=1.0, interval_s=300.0, mtbf_s=None) == ()


@pytest.mark.parametrize(
    ("interval", "ending"),
    [
        (300.0, "is 2 min: lower time_interval (5 min)."),
        (30.0, "is 2 min: raise time_interval (30.0 s)."),
        (120.0, "is 2 min."),
    ],
)
def test_the_young_daly_interval_is_advised_when_the_mtbf_is_known(
    interval: float, ending: str
) -> None:
    # sqrt(2 x 2 s x 3600 s) = 120 s
    advice = recommendations(stats(), avg_cost_s=2.0, interval_s=interval, mtbf_s=3600.0)
    assert len(advice) == 1
    assert advice[0].startswith("The Young/Daly interval for the failure rate seen (MTBF 1.0 h")
    assert "checkpoint cost 2.00 s" in advice[0]
    assert advice[0].endswith(ending)


@pytest.mark.parametrize(("mtbf", "cost"), [(None, 2.0), (3600.0, 0.0)])
def test_no_young_daly_advice_without_an_mtbf_or_a_cost(mtbf: float | None, cost: float) -> None:
    assert recommendations(stats(), avg_cost_s=cost, interval_s=300.0, mtbf_s=mtbf) == ()
