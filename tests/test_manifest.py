"""Commit records: canonical, strict, root-hashed."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbp_dist_resume.errors import InvalidCheckpoint, ManifestError
from bbp_dist_resume.repository import CheckpointMeta
from bbp_dist_resume.repository.manifest import ChunkRef, PartRef, parse_record, record_key

names = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)


def meta(**changes: object) -> CheckpointMeta:
    base: dict[str, object] = dict(
        operation_id="op", worker_id="w0", seq=3, owner_token="a" * 32, fence=2, stage="scan"
    )
    base.update(changes)
    return CheckpointMeta(**base)  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(
    progress=st.floats(min_value=0, max_value=100),
    custom=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4),
    offsets=st.dictionaries(names, st.integers(min_value=0, max_value=2**62), max_size=4),
    epoch=st.none() | st.integers(min_value=0, max_value=10**6),
    sizes=st.lists(st.integers(min_value=1, max_value=16 << 20), max_size=5),
)
def test_records_round_trip_through_their_canonical_bytes(
    progress: float,
    custom: dict[str, str],
    offsets: dict[str, int],
    epoch: int | None,
    sizes: list[int],
) -> None:
    chunks = tuple(ChunkRef(id=f"{i:064x}", size=s) for i, s in enumerate(sizes))
    parts = {"blob": PartRef(size=sum(sizes), chunks=chunks), "state": PartRef(size=0, inline="")}
    m = meta(
        progress=progress, custom_metadata=custom, consumed=offsets, produced=offsets, epoch=epoch
    ).manifest(parts, write_id="b" * 32)
    again = parse_record(m.to_bytes(), record_key("op", "w0", 3))
    assert again == m and again.root == m.root


def test_the_root_changes_with_any_field() -> None:
    parts = {"s": PartRef(size=0, inline="")}
    a = meta().manifest(parts, write_id="b" * 32)
    b = meta(progress=1.0).manifest(parts, write_id="b" * 32)
    assert a.root != b.root


def mutate(**edit: object) -> bytes:
    m = meta().manifest({"s": PartRef(size=2, inline="aGk=")}, write_id="b" * 32)
    data = json.loads(m.to_bytes())
    data.update(edit)
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"not json", "not JSON"),
        (mutate(extra_field=1), "invalid commit record"),
        (mutate(version=2), "unsupported commit record version"),
        (mutate(kind="other"), "invalid commit record"),
        (mutate(seq=0), "invalid commit record"),
        (mutate(progress=50.0), "root hash"),
        (mutate(parts={"s": {"size": 5, "inline": "aGk="}}), "invalid commit record"),
        (mutate(parts={"s": {"size": -1, "chunks": []}}), "invalid commit record"),
        (
            mutate(parts={"s": {"size": 3, "chunks": [{"id": "a" * 64, "size": 4}]}}),
            "invalid commit record",
        ),
        (
            mutate(parts={"s": {"size": 20 << 20, "chunks": [{"id": "a" * 64, "size": 20 << 20}]}}),
            "invalid commit record",
        ),
        (mutate(parts={"../x": {"size": 0, "inline": ""}}), "invalid commit record"),
        (mutate(created_at="2026-01-01T00:00:00"), "invalid commit record"),
    ],
)
def test_malformed_records_are_manifest_errors(body: bytes, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        parse_record(body, record_key("op", "w0", 3))


def test_non_canonical_bytes_and_wrong_slots_are_refused() -> None:
    m = meta().manifest({"s": PartRef(size=0, inline="")}, write_id="b" * 32)
    pretty = json.dumps(json.loads(m.to_bytes()), indent=1).encode()
    with pytest.raises(ManifestError, match="canonical"):
        parse_record(pretty, m.store_key)
    with pytest.raises(ManifestError, match="another slot"):
        parse_record(m.to_bytes(), record_key("op", "w0", 4))


@pytest.mark.parametrize(
    "changes",
    [
        {"progress": 101.0},
        {"progress": float("nan")},
        {"memory_bytes": -1},
        {"fence": -1},
        {"owner_token": "short"},
        {"granularity": "huge"},
        {"custom_metadata": {"k": 1}},
        {"epoch": -1},
        {"consumed": {"c": -5}},
    ],
)
def test_bad_metadata_is_refused_when_described(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidCheckpoint):
        meta(**changes)
