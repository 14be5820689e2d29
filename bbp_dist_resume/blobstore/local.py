"""``LocalBlobStore``: a directory as a blob store (``file://`` URLs).

Every write goes to a temporary file in the target's folder, is fsynced, then renamed
(``put``) or hard-linked (``put_if_absent``: ``link`` fails if the name exists, which makes
create-only writes atomic across processes), and the folder is fsynced so the new name
survives a power cut. Files are 0600 and folders 0700: checkpoints may hold secrets.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from bbp_dist_resume.blobstore.base import ObjectInfo, StoreProperties, check_key, check_prefix
from bbp_dist_resume.errors import BucketNotFound, ObjectNotFound, StoreError

_TMP = ".tmp-"
_PROPS = StoreProperties(name="local", atomic_create=True, durable_put=True)


class LocalBlobStore:
    """Objects as files under ``root``; keys map to relative paths."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self._root = Path(root).absolute()
        if create:
            _makedirs(self._root)
        elif not self._root.is_dir():
            raise BucketNotFound(
                f"store directory {str(self._root)!r} does not exist "
                "(a reader creates nothing: the first worker creates it)"
            )

    @property
    def properties(self) -> StoreProperties:
        return _PROPS

    @property
    def root(self) -> Path:
        return self._root

    def _path(self, key: str) -> Path:
        return self._root.joinpath(*check_key(key).split("/"))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot create object: {exc.strerror}", key=key) from exc
        finally:
            _unlink_quietly(tmp)
        _fsync_dir(path.parent)
        return True

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise StoreError(f"cannot write object: {exc.strerror}", key=key) from exc
        _fsync_dir(path.parent)

    def _write_temp(self, path: Path, data: bytes) -> Path:
        # A store root that vanished is an error, never silently made again empty: the
        # store's config, keys and commit records would be gone with it.
        if not self._root.is_dir():
            raise BucketNotFound(f"store directory {str(self._root)!r} does not exist")
        _makedirs(path.parent)
        tmp = path.with_name(f"{_TMP}{secrets.token_hex(8)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            _unlink_quietly(tmp)
            raise StoreError(f"cannot write temporary file: {exc.strerror}", key=str(path)) from exc
        return tmp

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound("no such object", key=key) from exc
        except OSError as exc:
            raise StoreError(f"cannot read object: {exc.strerror}", key=key) from exc

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise StoreError("range start and length must be >= 0", key=key)
        try:
            with self._path(key).open("rb") as f:
                f.seek(start)
                return f.read(length)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound("no such object", key=key) from exc
        except OSError as exc:
            raise StoreError(f"cannot read object: {exc.strerror}", key=key) from exc

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        # This host's clock is the store's clock; a clock stepped back is not a negative age.
        return ObjectInfo(key=key, size=st.st_size, age=max(0.0, time.time() - st.st_mtime))

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        # Walk only the deepest folder the prefix names, not the whole tree.
        base, _, _ = prefix.rpartition("/")
        top = self._root.joinpath(*base.split("/")) if base else self._root
        for key in sorted(self._walk(top, base)):
            if key.startswith(prefix) and (start_after is None or key > start_after):
                info = self.head(key)
                if info is not None:
                    yield info

    def _walk(self, top: Path, base: str) -> Iterator[str]:
        if not top.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self._root).as_posix()
            for name in filenames:
                if not name.startswith("."):
                    yield name if rel == "." else f"{rel}/{name}"

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            try:
                self._path(key).unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StoreError(f"cannot delete object: {exc.strerror}", key=key) from exc

    def close(self) -> None:
        return None


def _makedirs(path: Path) -> None:
    # mkdir(parents=True) gives the parents default permissions: create each level 0700.
    if path.is_dir():
        return
    missing = [p for p in (path, *path.parents) if not p.exists()]
    try:
        for p in reversed(missing):
            p.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create folder {str(path)!r}: {exc.strerror}") from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
