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
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bbp_dist_resume.coordination.checks import (
    check_generation,
    check_progress,
    check_ttl,
    check_workers,
)
from bbp_dist_resume.coordination.models import (
    CheckpointSummary,
    Lease,
    OperationInfo,
    OperationStatus,
    ReclaimClaim,
    ResumePlan,
    SlotState,
)
from bbp_dist_resume.coordination.sqlite_db import (
    ThreadConnections,
    now_ms,
    transaction,
)
from bbp_dist_resume.errors import (
    FencedError,
    InvalidCheckpoint,
    InvalidIdentifier,
    LeaseHeldError,
    LeaseLostError,
    UnknownOperation,
    WorkerFinished,
)
from bbp_dist_resume.ids import check_id, check_seq

_LEADER = "coordinator"
_POLL_S = 0.05
_SLOT = "SELECT owner_token, fence, deadline_ms, done FROM slots WHERE op = ? AND worker = ?"
_INDEX = "SELECT summary FROM index_entries WHERE op = ? AND worker = ? ORDER BY seq"
_LATEST = "SELECT summary FROM index_entries WHERE op = ? AND worker = ? ORDER BY seq DESC LIMIT 1"
_LOOKUP = "SELECT summary FROM index_entries WHERE op = ? AND worker = ? AND seq = ?"
_BUMP_GENERATION = (
    "UPDATE operations SET generation = generation + 1 WHERE op = ? RETURNING generation"
)
_ACK_PLAN = (
    "INSERT INTO plan_acks VALUES (?, ?, ?) ON CONFLICT (op, worker) "
    "DO UPDATE SET generation = MAX(generation, excluded.generation)"
)
_ADD_ENTRY = "INSERT OR IGNORE INTO index_entries VALUES (?, ?, ?, ?)"
_CRASHED = (
    "SELECT s.op, s.worker FROM slots s JOIN operations o ON o.op = s.op "
    "WHERE o.status = ? AND s.done = 0 AND s.deadline_ms <= ? ORDER BY s.op, s.worker"
)
_CLAIMABLE = (
    "SELECT id, op, worker FROM reclaim "
    "WHERE consumer IS NULL OR claimed_at_ms <= ? ORDER BY id LIMIT 1"
)
# Taken when free, expired or already ours (then renewed); otherwise left as it is.
_TAKE_LEADER = (
    "INSERT INTO leader VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
    "SET holder = excluded.holder, deadline_ms = excluded.deadline_ms "
    "WHERE leader.holder = excluded.holder OR leader.deadline_ms <= ?"
)
_RESTART_FENCE = (
    "UPDATE slots SET fence = MAX(fence, ?), deadline_ms = CASE WHEN owner_token IS NOT NULL "
    "AND deadline_ms > ? THEN deadline_ms ELSE 0 END WHERE op = ? AND worker = ?"
)


class SQLiteCoordination:
    """The ``Coordination`` protocol over one SQLite database file."""

    def __init__(self, path: str | os.PathLike[str], *, timeout_s: float = 10.0) -> None:
        self._path = Path(path).absolute()
        self._timeout_s = float(_non_negative(timeout_s, "timeout_s"))
        self._conns = ThreadConnections(self._path, self._timeout_s)
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

    # -- resume plans --------------------------------------------------------------------

    def publish_plan(self, operation_id: str, body: Mapping[str, Any]) -> ResumePlan:
        op = check_id(operation_id, "operation id")
        text = _plan_json(body)
        with self._tx() as db:
            bumped = db.execute(_BUMP_GENERATION, (op,)).fetchall()
            if not bumped:
                raise UnknownOperation(op)
            generation = int(bumped[0][0])
            db.execute("INSERT OR REPLACE INTO plans VALUES (?, ?, ?)", (op, generation, text))
        return ResumePlan(operation_id=op, generation=generation, body=json.loads(text))

    def read_plan(self, operation_id: str) -> ResumePlan | None:
        op = check_id(operation_id, "operation id")
        with self._tx(write=False) as db:
            _op_row(db, op)
            row = db.execute("SELECT generation, body FROM plans WHERE op = ?", (op,)).fetchone()
        if row is None:
            return None
        return ResumePlan(operation_id=op, generation=int(row[0]), body=json.loads(row[1]))

    def wait_plan(self, operation_id: str, after: int, timeout: float) -> ResumePlan | None:
        _non_negative(after, "after")
        end = time.monotonic() + _non_negative(timeout, "timeout")
        while True:
            plan = self.read_plan(operation_id)
            if plan is not None and plan.generation > after:
                return plan
            left = end - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(_POLL_S, left))

    def ack_plan(self, operation_id: str, worker_id: str, generation: int) -> None:
        op, worker = _op_worker(operation_id, worker_id)
        generation = check_generation(generation)
        with self._tx() as db:
            _op_row(db, op)
            db.execute(_ACK_PLAN, (op, worker, generation))

    def plan_acks(self, operation_id: str) -> dict[str, int]:
        op = check_id(operation_id, "operation id")
        with self._tx(write=False) as db:
            _op_row(db, op)
            rows = db.execute("SELECT worker, generation FROM plan_acks WHERE op = ?", (op,))
            return {str(w): int(g) for w, g in rows.fetchall()}

    # -- reclaim queue -------------------------------------------------------------------

    def reclaim_push(self, operation_id: str, worker_id: str) -> None:
        op, worker = _op_worker(operation_id, worker_id)
        with self._tx() as db:
            _member_slot(db, op, worker)
            db.execute("INSERT INTO reclaim (op, worker) VALUES (?, ?)", (op, worker))

    def reclaim_claim(self, consumer: str, *, stale_after_ms: int) -> ReclaimClaim | None:
        who = check_id(consumer, "consumer id")
        stale = _non_negative(stale_after_ms, "stale_after_ms")
        with self._tx() as db:
            now = now_ms()
            row = db.execute(_CLAIMABLE, (now - stale,)).fetchone()
            if row is None:
                return None
            sql = "UPDATE reclaim SET consumer = ?, claimed_at_ms = ? WHERE id = ?"
            db.execute(sql, (who, now, row["id"]))
        return ReclaimClaim(
            entry_id=str(row["id"]), operation_id=row["op"], worker_id=row["worker"], consumer=who
        )

    def reclaim_ack(self, claim: ReclaimClaim) -> None:
        """Drop the entry only while ``claim.consumer`` holds it: a claim that went stale
        and was claimed again belongs to its new claimant."""
        who = check_id(claim.consumer, "consumer id")
        entry = claim.entry_id
        if not (isinstance(entry, str) and entry.isascii() and entry.isdigit()):
            raise InvalidIdentifier("reclaim entry id", entry, "must be a decimal number")
        with self._tx() as db:
            db.execute("DELETE FROM reclaim WHERE id = ? AND consumer = ?", (int(entry), who))

    # -- coordinator leader lease --------------------------------------------------------

    def acquire_leader(self, coordinator_id: str, *, ttl_ms: int) -> bool:
        who, ttl = check_id(coordinator_id, "coordinator id"), check_ttl(ttl_ms)
        with self._tx() as db:
            now = now_ms()
            return db.execute(_TAKE_LEADER, (_LEADER, who, now + ttl, now)).rowcount == 1

    def release_leader(self, coordinator_id: str) -> None:
        who = check_id(coordinator_id, "coordinator id")
        with self._tx() as db:
            db.execute("DELETE FROM leader WHERE name = ? AND holder = ?", (_LEADER, who))

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


# -- helpers ------------------------------------------------------------------------------


def _op_worker(operation_id: str, worker_id: str) -> tuple[str, str]:
    return check_id(operation_id, "operation id"), check_id(worker_id, "worker id")


def _key(lease: Lease) -> tuple[str, str]:
    return _op_worker(lease.operation_id, lease.worker_id)


def _id_list(values: Sequence[str], kind: str) -> list[str]:
    if isinstance(values, str | bytes):  # a str is a Sequence[str] of its letters
        raise InvalidIdentifier(kind + "s", values, "must be a list of ids, not a string")
    return [check_id(v, kind) for v in values]


def _status(value: str) -> OperationStatus:
    try:
        return OperationStatus(value)
    except ValueError:
        raise InvalidIdentifier("operation status", value, "not an OperationStatus") from None


def _non_negative(value: float, kind: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise InvalidCheckpoint(f"{kind} must be a number >= 0, not {value!r}")
    return value


def _op_row(db: sqlite3.Connection, op: str, *, missing_ok: bool = False) -> Any:
    row = db.execute("SELECT * FROM operations WHERE op = ?", (op,)).fetchone()
    if row is None and not missing_ok:
        raise UnknownOperation(op)
    return row


def _slot(db: sqlite3.Connection, op: str, worker: str) -> Any:
    return db.execute(_SLOT, (op, worker)).fetchone()


def _member_slot(db: sqlite3.Connection, op: str, worker: str) -> Any:
    """The slot; UnknownOperation for an unknown op, InvalidIdentifier for a stranger."""
    slot = _slot(db, op, worker)
    if slot is None:
        _op_row(db, op)
        raise _not_a_worker(op, worker)
    return slot


def _not_a_worker(op: str, worker: str) -> InvalidIdentifier:
    return InvalidIdentifier("worker id", worker, f"not a worker of operation {op!r}")


def _live(slot: Any, now_ms: int) -> bool:
    return slot["owner_token"] is not None and (slot["deadline_ms"] or 0) > now_ms


def _slot_state(worker: str, row: Any, now: int) -> SlotState:
    if row is None:
        return SlotState(worker_id=worker, fence=0, lease_ms=None, done=False)
    live = _live(row, now) and not row["done"]
    return SlotState(
        worker_id=worker,
        fence=int(row["fence"]),
        lease_ms=int(row["deadline_ms"]) - now if live else None,
        done=bool(row["done"]),
    )


def _owned(db: sqlite3.Connection, lease: Lease, action: str) -> int:
    """Now (ms) if ``lease`` is the slot's live owner, else ``LeaseLostError``; a slot
    that is gone (data loss) is a lost lease too: its holder must stop."""
    op, worker = _key(lease)
    now = now_ms()
    slot = _slot(db, op, worker)
    if slot is None or slot["owner_token"] != lease.owner_token or not _live(slot, now):
        raise LeaseLostError(op, worker, f"cannot {action}: expired, released or taken over")
    return now


def _info(db: sqlite3.Connection, op: str) -> OperationInfo:
    row = _op_row(db, op)
    done = db.execute("SELECT worker FROM slots WHERE op = ? AND done = 1", (op,)).fetchall()
    shown = db.execute(
        "SELECT worker, progress FROM slots WHERE op = ? AND progress IS NOT NULL", (op,)
    ).fetchall()
    return OperationInfo(
        operation_id=op,
        status=OperationStatus(row["status"]),
        created_at=float(row["created_at"]),
        config_path=row["config_path"],
        workers=tuple(json.loads(row["workers"])),
        stages=tuple(json.loads(row["stages"])),
        generation=int(row["generation"]),
        done_workers=frozenset(w for (w,) in done),
        progress={w: float(p) for w, p in shown},
    )


def _summary_json(summary: CheckpointSummary) -> str:
    if not isinstance(summary, CheckpointSummary):
        raise InvalidCheckpoint(f"expected a CheckpointSummary, got {type(summary).__name__}")
    return summary.model_dump_json()


def _summary(text: str) -> CheckpointSummary:
    return CheckpointSummary.model_validate_json(text)  # parsed, never eval'd or unpickled


def _plan_json(body: Mapping[str, Any]) -> str:
    try:
        if not isinstance(body, Mapping):
            raise TypeError(f"expected a mapping, got {type(body).__name__}")
        return json.dumps(dict(body), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidCheckpoint(f"a resume plan must be plain JSON: {exc}") from None
