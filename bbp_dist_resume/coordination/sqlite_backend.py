"""``SQLiteCoordination``: the coordination contract in one SQLite file (``sqlite://`` URLs).

For several processes (and threads) of ONE machine sharing one database file. Each thread
has its own connection in autocommit mode, and every read-check-write is one
``BEGIN IMMEDIATE`` transaction: it takes the database's single write lock before its
first read, so two processes can never both see a lease free and both take it. WAL lets
readers run beside the writer. A lock not granted within ``timeout_s`` (SQLite's busy
timeout) is ``CoordinationUnavailable``.

Clock: SQLite has no server clock, but all processes of one host share its wall clock,
so deadlines are epoch milliseconds of ``time.time_ns()`` and a lease is live while
``deadline_ms > now_ms``. Not ``time.monotonic()``: the file outlives a reboot, which
restarts that clock. A wall-clock step can shorten or stretch a lease; a writer that
outlived its lease is still refused by the store's create-only commit (DESIGN.md).

A slot keeps its last owner's token after a release (as Redis keeps its ``owner`` key),
so that owner can still index a checkpoint it committed, and a retried
``mark_worker_done`` finds its own effect.

The plans, reclaim queue and leader lease are a mixin (``sqlite_recovery``); the
helpers over rows and ids are in ``sqlite_helpers``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from bbp_dist_resume.coordination.checks import check_progress, check_ttl, check_workers
from bbp_dist_resume.coordination.models import (
    CheckpointSummary,
    Lease,
    OperationInfo,
    OperationStatus,
    SlotState,
)
from bbp_dist_resume.coordination.sqlite_db import ThreadConnections, now_ms, transaction
from bbp_dist_resume.coordination.sqlite_helpers import (
    _id_list,
    _info,
    _key,
    _live,
    _member_slot,
    _non_negative,
    _not_a_worker,
    _op_row,
    _op_worker,
    _owned,
    _slot,
    _slot_state,
    _status,
    _summary,
    _summary_json,
)
from bbp_dist_resume.coordination.sqlite_recovery import SQLiteRecovery
from bbp_dist_resume.errors import (
    FencedError,
    InvalidCheckpoint,
    InvalidIdentifier,
    LeaseHeldError,
    UnknownOperation,
    WorkerFinished,
)
from bbp_dist_resume.ids import check_id, check_seq

_INDEX = "SELECT summary FROM index_entries WHERE op = ? AND worker = ? ORDER BY seq"
_LATEST = "SELECT summary FROM index_entries WHERE op = ? AND worker = ? ORDER BY seq DESC LIMIT 1"
_LOOKUP = "SELECT summary FROM index_entries WHERE op = ? AND worker = ? AND seq = ?"
_ADD_ENTRY = "INSERT OR IGNORE INTO index_entries VALUES (?, ?, ?, ?)"
_CRASHED = (
    "SELECT s.op, s.worker FROM slots s JOIN operations o ON o.op = s.op "
    "WHERE o.status = ? AND s.done = 0 AND s.deadline_ms <= ? ORDER BY s.op, s.worker"
)
_RESTART_FENCE = (
    "UPDATE slots SET fence = MAX(fence, ?), deadline_ms = CASE WHEN owner_token IS NOT NULL "
    "AND deadline_ms > ? THEN deadline_ms ELSE 0 END WHERE op = ? AND worker = ?"
)


class SQLiteCoordination(SQLiteRecovery):
    """The ``Coordination`` protocol over one SQLite database file."""

    def __init__(
        self, path: str | os.PathLike[str], *, timeout_s: float = 10.0, create: bool = True
    ) -> None:
        self._path = Path(path).absolute()
        self._timeout_s = float(_non_negative(timeout_s, "timeout_s"))
        self._conns = ThreadConnections(self._path, self._timeout_s, create=create)
        self._marker = self._conns.connect()

    @property
    def path(self) -> Path:
        return self._path

    def __enter__(self) -> SQLiteCoordination:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self, *, write: bool = True) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return transaction(self._conns.db(), write=write, path=self._path)

    def close(self) -> None:
        """Close this thread's connection (another thread's closes when that thread ends,
        with its thread-local). Idempotent; a later call opens a new one."""
        self._conns.close()

    # -- operations ----------------------------------------------------------------------

    def create_operation(
        self,
        operation_id: str,
        *,
        workers: Sequence[str],
        stages: Sequence[str] = (),
        config_path: str = "",
    ) -> OperationInfo:
        op = check_id(operation_id, "operation id")
        ws, ss = check_workers(workers), _id_list(stages, "stage name")
        if not isinstance(config_path, str):
            raise InvalidIdentifier("config path", config_path, "must be a string")
        row = (op, OperationStatus.RUNNING.value, time.time(), config_path)
        with self._tx() as db:
            if _op_row(db, op, missing_ok=True) is None:
                sql = "INSERT INTO operations VALUES (?, ?, ?, ?, ?, ?, 0)"
                db.execute(sql, (*row, json.dumps(ws), json.dumps(ss)))
                db.executemany(
                    "INSERT INTO slots (op, worker) VALUES (?, ?)", [(op, w) for w in ws]
                )
            return _info(db, op)

    def get_operation(self, operation_id: str) -> OperationInfo:
        op = check_id(operation_id, "operation id")
        with self._tx(write=False) as db:
            return _info(db, op)

    def set_status(self, operation_id: str, status: OperationStatus) -> None:
        op, value = check_id(operation_id, "operation id"), _status(status).value
        with self._tx() as db:
            cur = db.execute("UPDATE operations SET status = ? WHERE op = ?", (value, op))
            if cur.rowcount == 0:
                raise UnknownOperation(op)

    def list_operations(
        self, statuses: Iterable[OperationStatus] | None = None
    ) -> list[OperationInfo]:
        wanted = None if statuses is None else {_status(s).value for s in statuses}
        with self._tx(write=False) as db:
            rows = db.execute("SELECT op, status FROM operations ORDER BY created_at, rowid")
            ops = [op for op, status in rows.fetchall() if wanted is None or status in wanted]
            return [_info(db, op) for op in ops]

    # -- leases --------------------------------------------------------------------------

    def acquire(self, operation_id: str, worker_id: str, *, ttl_ms: int) -> Lease:
        op, worker = _op_worker(operation_id, worker_id)
        ttl = check_ttl(ttl_ms)
        started = time.monotonic()  # before the transaction: never later than the file's
        token = uuid.uuid4().hex
        with self._tx() as db:
            now = now_ms()
            slot = _member_slot(db, op, worker)
            if slot["done"]:
                raise WorkerFinished(op, worker)
            if _live(slot, now):
                raise LeaseHeldError(op, worker)
            fence = int(slot["fence"]) + 1
            db.execute(
                "UPDATE slots SET owner_token = ?, fence = ?, deadline_ms = ? "
                "WHERE op = ? AND worker = ?",
                (token, fence, now + ttl, op, worker),
            )
        return Lease(
            operation_id=op,
            worker_id=worker,
            owner_token=token,
            fence=fence,
            ttl_ms=ttl,
            renewed_at=started,
        )

    def renew(self, lease: Lease, *, progress: float | None = None) -> Lease:
        ttl, shown = check_ttl(lease.ttl_ms), check_progress(progress)
        started = time.monotonic()
        with self._tx() as db:
            now = _owned(db, lease, "renew")
            sql = (
                "UPDATE slots SET deadline_ms = ?, progress = COALESCE(?, progress)"
                " WHERE op = ? AND worker = ?"
            )
            db.execute(sql, (now + ttl, shown, *_key(lease)))
        return dataclasses.replace(lease, renewed_at=started)

    def release(self, lease: Lease) -> None:
        with self._tx() as db:
            _owned(db, lease, "release")
            db.execute("UPDATE slots SET deadline_ms = 0 WHERE op = ? AND worker = ?", _key(lease))

    def mark_worker_done(self, lease: Lease) -> OperationInfo:
        with self._tx() as db:
            slot = _slot(db, *_key(lease))
            again = slot is not None and slot["done"] and slot["owner_token"] == lease.owner_token
            if not again:  # a retry whose first try landed returns the same answer
                _owned(db, lease, "mark done")
            sql = "UPDATE slots SET done = 1, deadline_ms = 0 WHERE op = ? AND worker = ?"
            db.execute(sql, _key(lease))
            db.execute(
                "UPDATE operations SET status = ? WHERE op = ? AND NOT EXISTS "
                "(SELECT 1 FROM slots WHERE op = operations.op AND done = 0)",
                (OperationStatus.COMPLETED.value, lease.operation_id),
            )
            return _info(db, lease.operation_id)

    def crashed_workers(self) -> list[tuple[str, str]]:
        with self._tx(write=False) as db:
            rows = db.execute(_CRASHED, (OperationStatus.RUNNING.value, now_ms())).fetchall()
        return [(str(op), str(worker)) for op, worker in rows]

    def slot_states(self, operation_id: str) -> list[SlotState]:
        op = check_id(operation_id, "operation id")
        with self._tx(write=False) as db:
            workers = _info(db, op).workers
            rows = {
                r["worker"]: r
                for r in db.execute(
                    "SELECT worker, owner_token, fence, deadline_ms, done FROM slots WHERE op = ?",
                    (op,),
                )
            }
        now = now_ms()
        return [_slot_state(w, rows.get(w), now) for w in workers]

    def fence_of(self, operation_id: str, worker_id: str) -> int:
        op, worker = _op_worker(operation_id, worker_id)
        with self._tx(write=False) as db:
            return int(_member_slot(db, op, worker)["fence"])

    # -- checkpoint index ----------------------------------------------------------------

    def record(self, lease: Lease, summary: CheckpointSummary) -> None:
        """No liveness check: the store commit already happened, so only the owner token
        and fence must still be the slot's. A seq already indexed keeps its first entry
        (the store's create-only write makes a second summary of one seq impossible)."""
        op, worker = _op_worker(lease.operation_id, lease.worker_id)
        text = _summary_json(summary)
        with self._tx() as db:
            slot = _slot(db, op, worker)
            token_ok = slot is not None and slot["owner_token"] == lease.owner_token
            if not token_ok or slot["fence"] != lease.fence:
                raise FencedError(op, worker, lease.fence)
            db.execute(_ADD_ENTRY, (op, worker, summary.seq, text))

    def index(self, operation_id: str, worker_id: str) -> list[CheckpointSummary]:
        return self._entries(operation_id, worker_id, _INDEX)

    def index_all(self, operation_id: str) -> dict[str, list[CheckpointSummary]]:
        op = check_id(operation_id, "operation id")
        with self._tx(write=False) as db:
            out: dict[str, list[CheckpointSummary]] = {
                w: [] for w in json.loads(_op_row(db, op)["workers"])
            }
            sql = "SELECT worker, summary FROM index_entries WHERE op = ? ORDER BY worker, seq"
            for worker, text in db.execute(sql, (op,)).fetchall():
                out.setdefault(worker, []).append(_summary(text))
        return out

    def latest(self, operation_id: str, worker_id: str) -> CheckpointSummary | None:
        found = self._entries(operation_id, worker_id, _LATEST)
        return found[0] if found else None

    def lookup(self, operation_id: str, worker_id: str, seq: int) -> CheckpointSummary | None:
        found = self._entries(operation_id, worker_id, _LOOKUP, check_seq(seq))
        return found[0] if found else None

    def _entries(self, op: str, worker: str, sql: str, *args: int) -> list[CheckpointSummary]:
        op, worker = _op_worker(op, worker)
        with self._tx(write=False) as db:
            _member_slot(db, op, worker)
            rows = db.execute(sql, (op, worker, *args)).fetchall()
        return [_summary(text) for (text,) in rows]

    def delete_entries(self, operation_id: str, worker_id: str, seqs: Iterable[int]) -> None:
        op, worker = _op_worker(operation_id, worker_id)
        doomed = [(op, worker, check_seq(s)) for s in seqs]
        with self._tx() as db:
            _member_slot(db, op, worker)
            sql = "DELETE FROM index_entries WHERE op = ? AND worker = ? AND seq = ?"
            db.executemany(sql, doomed)

    def repair(
        self, operation_id: str, worker_id: str, summaries: Iterable[CheckpointSummary]
    ) -> int:
        op, worker = _op_worker(operation_id, worker_id)
        rows = [(op, worker, s.seq, _summary_json(s)) for s in summaries]
        with self._tx() as db:
            _member_slot(db, op, worker)
            # executemany sums the rows changed; INSERT OR IGNORE changes none for a seq
            # that is already there.
            return max(db.executemany(_ADD_ENTRY, rows).rowcount, 0)

    # -- data loss -----------------------------------------------------------------------

    def instance_ok(self) -> bool:
        with self._tx(write=False) as db:
            found = db.execute("SELECT 1 FROM instance WHERE marker = ?", (self._marker,))
            return found.fetchone() is not None

    def reset_instance(self) -> None:
        marker = uuid.uuid4().hex
        with self._tx() as db:
            db.execute("DELETE FROM instance")
            db.execute("INSERT INTO instance VALUES (?)", (marker,))
        self._marker = marker

    def restart_fences(self, operation_id: str, worker_id: str, above: int) -> None:
        """A slot row that is missing is created again, for a worker of the operation."""
        op, worker = _op_worker(operation_id, worker_id)
        if isinstance(above, bool) or not isinstance(above, int) or above < 0:
            raise InvalidCheckpoint(f"a fence floor must be an integer >= 0, not {above!r}")
        with self._tx() as db:
            if worker not in json.loads(_op_row(db, op)["workers"]):
                raise _not_a_worker(op, worker)
            db.execute("INSERT OR IGNORE INTO slots (op, worker) VALUES (?, ?)", (op, worker))
            db.execute(_RESTART_FENCE, (above, now_ms(), op, worker))
