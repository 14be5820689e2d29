"""Content-defined chunking, chunk ids and identifiers: pure logic, property-tested."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbp_dist_resume.errors import InvalidIdentifier
from bbp_dist_resume.ids import check_id, checkpoint_id, parse_checkpoint_id
from bbp_dist_resume.repository.chunker import ChunkerParams, chunks_of_bytes, chunks_of_file
from bbp_dist_resume.repository.chunkid import ChunkId

SMALL = ChunkerParams(min_size=2048, avg_size=8192, max_size=32768, seed=7)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=0, max_size=200_000))
def test_chunks_reassemble_and_respect_the_bounds(data: bytes) -> None:
    chunks = [bytes(c) for c in chunks_of_bytes(data, SMALL)]
    assert b"".join(chunks) == data
    assert all(len(c) <= SMALL.max_size for c in chunks)
    assert all(len(c) >= SMALL.min_size for c in chunks[:-1])


def test_file_and_bytes_chunking_cut_at_the_same_points(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    path = tmp_path / "f"
    path.write_bytes(data)
    # A file chunk's view lives only until the next chunk: copy each one out.
    from_file = [bytes(c) for c in chunks_of_file(path, SMALL)]
    assert from_file == [bytes(c) for c in chunks_of_bytes(data, SMALL)]


def test_a_small_edit_changes_only_nearby_chunks() -> None:
    rng = random.Random(1)
    data = bytearray(rng.randbytes(1_000_000))
    before = {ChunkId.of(c) for c in chunks_of_bytes(bytes(data), SMALL)}
    data[500_000:500_010] = b"0123456789"
    after = [ChunkId.of(c) for c in chunks_of_bytes(bytes(data), SMALL)]
    assert sum(1 for c in after if c not in before) <= 3


def test_another_seed_cuts_elsewhere() -> None:
    data = random.Random(2).randbytes(300_000)
    other = ChunkerParams(min_size=2048, avg_size=8192, max_size=32768, seed=8)
    assert [len(c) for c in chunks_of_bytes(data, SMALL)] != [
        len(c) for c in chunks_of_bytes(data, other)
    ]


def test_keyed_chunk_ids_differ_from_plain_ones_and_parse_back() -> None:
    plain = ChunkId.of(b"data")
    keyed = ChunkId.of(b"data", b"k" * 32)
    assert plain != keyed and ChunkId.parse(keyed.hex) == keyed
    assert plain.store_key == f"chunks/{plain.hex[:2]}/{plain.hex}"
    assert len(plain.short) == 12
    for bad in ["", "A" * 64, "g" * 64, "a" * 63]:
        with pytest.raises(InvalidIdentifier):
            ChunkId.parse(bad)


@given(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", fullmatch=True),
    st.integers(min_value=1, max_value=10**10 - 1),
)
def test_checkpoint_ids_round_trip(op: str, worker: str, seq: int) -> None:
    assert parse_checkpoint_id(checkpoint_id(op, worker, seq)) == (op, worker, seq)


@pytest.mark.parametrize("bad", ["", "a/b", "{op}", ".x", "-x", "a b", "x" * 129, "é", 5, None])
def test_bad_identifiers_are_refused(bad: object) -> None:
    with pytest.raises(InvalidIdentifier):
        check_id(bad, "worker id")


@pytest.mark.parametrize("bad", ["a/b", "a/b/0", "a/b/-1", "a/b/c", "a/b/1/2", "a/b/\u0661"])
def test_bad_checkpoint_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidIdentifier):
        parse_checkpoint_id(bad)
