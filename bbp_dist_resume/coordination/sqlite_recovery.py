"""``SQLiteRecovery``: the resume plans, plan acknowledgements, reclaim queue and leader
lease part of ``SQLiteCoordination`` (the protocol's contract is in ``base``)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import Any

from bbp_dist_resume.coordination.checks import check_generation, check_ttl
from bbp_dist_resume.coordination.models import ReclaimClaim, ResumePlan
from bbp_dist_resume.coordination.sqlite_db import now_ms
from bbp_dist_resume.coordination.sqlite_helpers import (
    _member_slot,
    _non_negative,
    _op_row,
    _op_worker,
    _plan_json,
)
from bbp_dist_resume.errors import InvalidIdentifier, UnknownOperation
from bbp_dist_resume.ids import check_id

_LEADER = "coordinator"
_POLL_S = 0.05
_BUMP_GENERATION = (
    "UPDATE operations SET generation = generation + 1 WHERE op = ? RETURNING generation"
)
_ACK_PLAN = (
    "INSERT INTO plan_acks VALUES (?, ?, ?) ON CONFLICT (op, worker) "
    "DO UPDATE SET generation = MAX(generation, excluded.generation)"
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


class SQLiteRecovery:
    """A mixin of ``SQLiteCoordination``, apart so that each module stays under 400 lines."""

    # Defined by SQLiteCoordination.
    _tx: Callable[..., contextlib.AbstractContextManager[sqlite3.Connection]]

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
