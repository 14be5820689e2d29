"""The SQLite backend's file, connections, schema and transactions."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from bbp_dist_resume.errors import (
    CoordinationError,
    CoordinationNotFound,
    CoordinationUnavailable,
)

SCHEMA_VERSION = 1

# slots.deadline_ms is NULL until the first acquisition: a worker that never started has
# no lease to expire, so the crash scan (deadline_ms <= now) skips it, as Redis does.
# A release, or restart_fences on a slot with no live owner, sets 0: reclaim the slot.
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS instance (marker TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS operations (op TEXT PRIMARY KEY, status TEXT NOT NULL,
        created_at REAL NOT NULL, config_path TEXT NOT NULL, workers TEXT NOT NULL,
        stages TEXT NOT NULL, generation INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS slots (op TEXT NOT NULL REFERENCES operations (op),
        worker TEXT NOT NULL, owner_token TEXT, fence INTEGER NOT NULL DEFAULT 0,
        deadline_ms INTEGER, done INTEGER NOT NULL DEFAULT 0, progress REAL,
        PRIMARY KEY (op, worker))""",
    "CREATE INDEX IF NOT EXISTS slots_deadline ON slots (deadline_ms) WHERE done = 0",
    """CREATE TABLE IF NOT EXISTS index_entries (op TEXT NOT NULL, worker TEXT NOT NULL,
        seq INTEGER NOT NULL, summary TEXT NOT NULL, PRIMARY KEY (op, worker, seq),
        FOREIGN KEY (op, worker) REFERENCES slots (op, worker))""",
    """CREATE TABLE IF NOT EXISTS plans (op TEXT PRIMARY KEY REFERENCES operations (op),
        generation INTEGER NOT NULL, body TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS plan_acks (op TEXT NOT NULL REFERENCES operations (op),
        worker TEXT NOT NULL, generation INTEGER NOT NULL, PRIMARY KEY (op, worker))""",
    """CREATE TABLE IF NOT EXISTS reclaim (id INTEGER PRIMARY KEY AUTOINCREMENT,
        op TEXT NOT NULL, worker TEXT NOT NULL, consumer TEXT, claimed_at_ms INTEGER)""",
    """CREATE TABLE IF NOT EXISTS leader (name TEXT PRIMARY KEY, holder TEXT NOT NULL,
        deadline_ms INTEGER NOT NULL)""",
)


@dataclasses.dataclass(frozen=True, slots=True)
class _ThreadDb:
    """One thread's connection, with the file (device, inode) and process it belongs to."""

    db: sqlite3.Connection
    ident: tuple[int, int] | None
    pid: int


class ThreadConnections:
    """One connection per thread (and per process: never one inherited through fork)."""

    def __init__(self, path: Path, timeout_s: float, *, create: bool = True) -> None:
        self._path = path
        self._timeout_s = timeout_s
        self._create = create
        self._local = threading.local()

    def connect(self) -> str:
        """Open this thread's connection, creating the schema; return the instance marker.
        A reader's (``create=False``) needs the database made already, at every connect:
        one deleted while it runs is refused, not made again empty."""
        if self._create:
            prepare_file(self._path)
        else:
            require_database(self._path, self._timeout_s)
        # stat before connect: if the file is swapped in between, the next call sees the
        # mismatch and reconnects, rather than going on with a deleted file.
        ident = file_ident(self._path)
        # mode=rw opens but never creates: a file deleted since the check stays deleted.
        target = str(self._path) if self._create else f"{self._path.as_uri()}?mode=rw"
        with translated(self._path):
            db = sqlite3.connect(
                target, timeout=self._timeout_s, isolation_level=None, uri=not self._create
            )
            try:
                configure(db, self._path, self._timeout_s)
                with transaction(db, write=True):
                    marker = ensure_schema(db, self._path)
            except BaseException:
                db.close()
                raise
        self._local.conn = _ThreadDb(db, ident, os.getpid())
        return marker

    def db(self) -> sqlite3.Connection:
        conn: _ThreadDb | None = getattr(self._local, "conn", None)
        if conn is not None and conn.pid == os.getpid():
            if conn.ident is not None and conn.ident == file_ident(self._path):
                return conn.db
            # The file was deleted or replaced (data loss): go on in the new file, where
            # instance_ok() will not find this client's marker. SQLite neither
            # checkpoints nor deletes a WAL when it closes a moved database.
            conn.db.close()
        # A connection inherited through fork() is neither used nor closed.
        self.connect()
        fresh: _ThreadDb = self._local.conn
        return fresh.db

    def close(self) -> None:
        """Close this thread's connection. Idempotent; a later call opens a new one."""
        conn: _ThreadDb | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None and conn.pid == os.getpid():
            conn.db.close()


def now_ms() -> int:
    """The host's wall clock in epoch ms: the one clock every process here shares."""
    return time.time_ns() // 1_000_000


@contextlib.contextmanager
def transaction(
    db: sqlite3.Connection, *, write: bool, path: Path | None = None
) -> Iterator[sqlite3.Connection]:
    """IMMEDIATE takes the write lock before the first read, so no other process can
    change what a read-check-write has checked; a plain BEGIN gives reads one snapshot."""
    try:
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        yield db
        db.execute("COMMIT")
    except BaseException as exc:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        if path is not None and isinstance(exc, sqlite3.Error):
            raise translate(exc, path) from exc
        raise


@contextlib.contextmanager
def translated(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise translate(exc, path) from exc


def busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def translate(exc: sqlite3.Error, path: Path) -> CoordinationError:
    if busy(exc):
        return CoordinationUnavailable(f"SQLite database {str(path)!r} stayed locked: {exc}")
    return CoordinationError(f"SQLite database {str(path)!r} failed: {exc}")


def configure(db: sqlite3.Connection, path: Path, timeout_s: float) -> None:
    mode = enable_wal(db, timeout_s)
    if str(mode).lower() != "wal":
        raise CoordinationError(f"SQLite database {str(path)!r} cannot use WAL (got {mode!r})")
    # FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on a power cut, and a
    # lost fence increment would give a later owner the fence an earlier one already
    # wrote into the store. It costs one WAL fsync per write; reads pay nothing.
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    db.row_factory = sqlite3.Row


def enable_wal(db: sqlite3.Connection, timeout_s: float) -> str:
    """Switch to WAL, retrying while busy: SQLite does not call the busy handler for this
    lock upgrade (it could deadlock), so processes opening a new file at once collide."""
    end = time.monotonic() + timeout_s
    while True:
        try:
            return str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if not busy(exc) or time.monotonic() >= end:
                raise
        time.sleep(0.01)


def ensure_schema(db: sqlite3.Connection, path: Path) -> str:
    """Create what is missing (idempotent); return the instance marker."""
    for statement in SCHEMA:
        db.execute(statement)
    sql = "INSERT INTO {0} SELECT ? WHERE NOT EXISTS (SELECT 1 FROM {0})"
    db.execute(sql.format("schema_version"), (SCHEMA_VERSION,))
    version = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        raise CoordinationError(
            f"SQLite database {str(path)!r} has schema version {version}; "
            f"this library reads version {SCHEMA_VERSION}"
        )
    db.execute(sql.format("instance"), (uuid.uuid4().hex,))
    return str(db.execute("SELECT marker FROM instance LIMIT 1").fetchone()[0])


# Held while this process creates a database file: no thread of it can connect to the
# new file before its descriptor is closed (see prepare_file).
_CREATE_LOCK = threading.Lock()


def prepare_file(path: Path) -> None:
    """Folders 0700 and the file 0600: the index names what the store holds. SQLite
    gives its -wal and -shm files the database file's mode."""
    try:
        missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
        for folder in reversed(missing):
            folder.mkdir(mode=0o700, exist_ok=True)
        # Never open (and so close) a file that may be in use: closing any descriptor
        # of a file drops every POSIX lock the process holds on it, SQLite's included
        # (sqlite.org/howtocorrupt.html, 2.2), and another process that then closes its
        # last connection believes itself the last user and deletes the WAL under ours.
        with _CREATE_LOCK, contextlib.suppress(FileExistsError):
            if not path.exists():
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        msg = f"cannot create SQLite database {str(path)!r}: {exc.strerror}"
        raise CoordinationError(msg) from exc


def require_database(path: Path, timeout_s: float) -> None:
    """A reader's check that ``path`` is a coordination database already, over a
    connection that never creates the file (``mode=rw``; not ``ro``, which could not
    remove the -wal and -shm files it opens), so a mistyped path leaves nothing behind
    and another program's database gets none of our tables.

    Raises:
        CoordinationNotFound: no such file, or a file without this library's schema.
        CoordinationError: the file cannot be read.
    """
    if not path.is_file():
        raise CoordinationNotFound(str(path))
    with translated(path):
        # SQLite's own file handling, not os.open: closing a descriptor of a file in use
        # would drop this process's locks on it (see prepare_file).
        db = sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, timeout=timeout_s)
        try:
            found = db.execute(_HAS_SCHEMA).fetchone()
        finally:
            db.close()
    if found is None:
        raise CoordinationNotFound(str(path), "is not a coordination database")


_HAS_SCHEMA = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"


def file_ident(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)
