"""The SQLite backend with several threads in one process and several processes.

Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's
included. A new thread's connection used to open and close the database file first: the
other threads' connections lost their locks, and another process closing its last
connection then believed itself the last user, checkpointed and deleted the WAL under
them; their later commits went to a deleted file ("disk I/O error", "database disk image
is malformed"). Found by examples/custom_launcher.py (a coordinator thread beside the
main thread, workers exiting)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from bbp_dist_resume.coordination import open_coordination

# Another process: open the database, write, close (its last connection).
WRITE_AND_CLOSE = """
import sys
from bbp_dist_resume.coordination import open_coordination
coord = open_coordination("sqlite:" + sys.argv[1])
coord.create_operation("op-other", workers=["w0"])
coord.close()
"""


def test_a_new_threads_connection_leaves_the_other_threads_locks_in_place(
    tmp_path: Path,
) -> None:
    db = tmp_path / "coord.db"
    coord = open_coordination(f"sqlite:{db}")
    try:
        coord.create_operation("op-main", workers=["w0"])
        thread = threading.Thread(target=coord.list_operations)  # a second connection
        thread.start()
        thread.join()
        subprocess.run([sys.executable, "-c", WRITE_AND_CLOSE, str(db)], check=True, timeout=60)
        # This process's connections are open: the other process must have left the WAL.
        assert Path(f"{db}-wal").exists()
        for i in range(20):
            coord.create_operation(f"op-{i}", workers=["w0"])
        assert len(coord.list_operations()) == 22
    finally:
        coord.close()
    check = sqlite3.connect(db)
    try:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert check.execute("SELECT COUNT(*) FROM operations").fetchone() == (22,)
    finally:
        check.close()


def test_threads_opening_a_new_database_at_once_all_get_it(tmp_path: Path) -> None:
    db = tmp_path / "new" / "coord.db"
    errors: list[BaseException] = []

    def open_and_write(n: int) -> None:
        try:
            coord = open_coordination(f"sqlite:{db}")
            coord.create_operation(f"op-{n}", workers=["w0"])
            coord.close()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=open_and_write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert (db.stat().st_mode & 0o777) == 0o600
    coord = open_coordination(f"sqlite:{db}")
    try:
        assert len(coord.list_operations()) == 8
    finally:
        coord.close()
