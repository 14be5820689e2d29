"""What only the local store promises: permissions, atomic files, no leftovers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bbp_dist_resume.blobstore import LocalBlobStore
from bbp_dist_resume.errors import BucketNotFound


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_0600_and_folders_0700(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "root")
    store.put("chunks/ab/abcd", b"secret")
    store.put_if_absent("checkpoints/op/w/0000000001", b"record")
    assert mode(tmp_path / "root") == 0o700
    for rel in ["chunks", "chunks/ab", "checkpoints", "checkpoints/op", "checkpoints/op/w"]:
        assert mode(tmp_path / "root" / rel) == 0o700, rel
    assert mode(tmp_path / "root/chunks/ab/abcd") == 0o600
    assert mode(tmp_path / "root/checkpoints/op/w/0000000001") == 0o600


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.put_if_absent("a/b", b"1")
    store.put_if_absent("a/b", b"2")
    store.put("a/b", b"3")
    assert sorted(os.listdir(tmp_path / "a")) == ["b"]


def test_hidden_and_temporary_files_are_not_listed(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.put("a/b", b"1")
    (tmp_path / "a" / ".tmp-123").write_bytes(b"half written")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x").write_bytes(b"x")
    assert [i.key for i in store.list()] == ["a/b"]


def test_a_missing_root_is_refused_when_not_creating(tmp_path: Path) -> None:
    with pytest.raises(BucketNotFound):
        LocalBlobStore(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()


def test_a_folder_is_not_an_object(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.put("dir/file", b"1")
    assert store.head("dir") is None
