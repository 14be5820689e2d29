"""The catalog's check that a commit record is the one the index holds for its slot
(``Catalog._check_indexed``) reuses the index entries a listing already read: listing N
checkpoints costs no extra index lookup, and a record the index does not hold is still
listed as unverified."""

from __future__ import annotations

from typing import Any

import pytest
from resume_helpers import MakeConfig, Systems, new_op, seq_of

from bbp_dist_resume.coordination.models import CheckpointSummary

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from resume_helpers import probed_s3_prefix, systems_fixture  # noqa: F401


def count_lookups(monkeypatch: pytest.MonkeyPatch, rs: Any) -> list[int]:
    coord = rs._coord
    calls: list[int] = []
    real = coord.lookup

    def counted(*args: Any, **kwargs: Any) -> CheckpointSummary | None:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(coord, "lookup", counted)
    return calls


def test_listing_resume_points_makes_no_index_lookup_per_record(
    make_config: MakeConfig, systems: Systems, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, op = make_config(), new_op()
    writer = systems(config, "w0")
    writer.start_monitoring(op)
    made = [writer.create_checkpoint("scan", {"n": n}) for n in range(4)]
    reader = systems(config, "reader")  # its catalog has read no record yet
    reader.initialize()
    lookups = count_lookups(monkeypatch, reader)
    points = reader.get_available_resume_points(op)
    assert [p.checkpoint_id for p in points] == made
    assert all(p.is_verified for p in points)
    assert lookups == []
    # Opening one by id, with no index entry at hand, still checks it against the index.
    other = systems(config, "other")
    other.initialize()
    lookups = count_lookups(monkeypatch, other)
    assert other.open_checkpoint(made[1]).state == {"n": 1}
    assert lookups == [1]


def test_a_record_whose_root_is_not_the_indexs_is_listed_unverified(
    make_config: MakeConfig, systems: Systems, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, op = make_config(), new_op()
    writer = systems(config, "w0")
    writer.start_monitoring(op)
    first = writer.create_checkpoint("scan", {"n": 1})
    second = writer.create_checkpoint("scan", {"n": 2})
    reader = systems(config, "reader")
    reader.initialize()
    coord = reader._coord
    assert coord is not None
    index_all = coord.index_all

    # The index says another root for the first (as after a record copied over it).
    def lying(o: str) -> dict[str, list[CheckpointSummary]]:
        return {
            w: [s.model_copy(update={"root": "0" * 64}) if s.seq == seq_of(first) else s for s in h]
            for w, h in index_all(o).items()
        }

    monkeypatch.setattr(coord, "index_all", lying)
    points = {p.checkpoint_id: p.is_verified for p in reader.get_available_resume_points(op)}
    assert points == {first: False, second: True}
