"""``RedisCoordination``: the coordination protocol on Redis, standalone or Cluster.

Every read-check-write is one Lua script of ``scripts`` over the keys of ``keys`` (one
``{op}`` slot each), so the same code runs on a Cluster. Lease expiry is Redis' own (PX).
Only idempotent calls are retried on connection errors (``_retry``); the client itself
never retries, so a release or a queue push is sent at most once.

The checkpoint index (``redis_index``) and the plans, reclaim queue and leader lease
(``redis_recovery``) are mixins in modules of their own; pure helpers are in
``redis_helpers``.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from bbp_dist_resume.coordination import keys as K
from bbp_dist_resume.coordination.checks import check_progress, check_ttl, check_workers
from bbp_dist_resume.coordination.models import Lease, OperationInfo, OperationStatus, SlotState
from bbp_dist_resume.coordination.redis_client import RedisCalls, connect_client
from bbp_dist_resume.coordination.redis_helpers import (
    _check_member,
    _crashed,
    _info,
    _refused,
    _shown,
    _slot_keys,
)
from bbp_dist_resume.coordination.redis_index import RedisIndex
from bbp_dist_resume.coordination.redis_queue import ReclaimQueue
from bbp_dist_resume.coordination.redis_recovery import RedisRecovery
from bbp_dist_resume.coordination.redis_wait import ReplicaWait
from bbp_dist_resume.errors import CoordinationError, LeaseLostError, UnknownOperation
from bbp_dist_resume.ids import check_id


class RedisCoordination(RedisIndex, RedisRecovery):
    """The ``Coordination`` protocol over a redis-py client (``Redis`` or ``RedisCluster``);
    ``wait_replicas`` > 0 sends WAIT after the writes of ``redis_wait`` (standalone only)."""

    def __init__(self, client: Any, *, wait_replicas: int = 0, wait_timeout_ms: int = 1000) -> None:
        self._c = RedisCalls(client)
        self._wait = ReplicaWait(self._c, replicas=wait_replicas, timeout_ms=wait_timeout_ms)
        self._r = client
        self._queue = ReclaimQueue(self._c)
        self._retry = self._c.retry
        self._call = self._c.call
        self._script = self._c.script
        self._marker_keys = self._retry(self._c.marker_keys)
        self._markers = self._retry(lambda: self._read_markers(uuid.uuid4().hex))

    def _read_markers(self, fresh: str, *, overwrite: bool = False) -> dict[str, str | None]:
        """Write ``fresh`` where no marker is (or everywhere), read back what is there."""
        pipe = self._r.pipeline(transaction=False)
        for key in self._marker_keys:
            pipe.set(key, fresh, nx=not overwrite)
        for key in self._marker_keys:
            pipe.get(key)
        got = pipe.execute()[len(self._marker_keys) :]
        return dict(zip(self._marker_keys, got, strict=True))

    # -- operations ----------------------------------------------------------------------

    def create_operation(
        self,
        operation_id: str,
        *,
        workers: Sequence[str],
        stages: Sequence[str] = (),
        config_path: str = "",
    ) -> OperationInfo:
        meta = K.meta(operation_id)
        ws = check_workers(workers)
        ss = [check_id(s, "stage name") for s in stages]
        self._retry(
            lambda: self._script(
                "CREATE_OPERATION", [meta], [config_path, json.dumps(ws), json.dumps(ss)]
            )
        )
        info = self.get_operation(operation_id)
        # Always (NX): a retried create whose first try landed still lists the operation.
        at = int(info.created_at * 1000)
        self._retry(lambda: self._r.zadd(K.OPS, {operation_id: at}, nx=True))
        return info

    def get_operation(self, operation_id: str) -> OperationInfo:
        info = self._read_operations([check_id(operation_id, "operation id")])[0]
        if info is None:
            raise UnknownOperation(operation_id)
        return info

    def _read_operations(self, ops: Sequence[str]) -> list[OperationInfo | None]:
        """Every operation's meta and done set in one round trip (None: not there)."""

        def read() -> list[Any]:
            pipe = self._r.pipeline(transaction=False)
            for op in ops:
                pipe.hgetall(K.meta(op))
                pipe.smembers(K.done(op))
            return list(pipe.execute())

        got = self._retry(read) if ops else []
        return [
            _info(op, got[2 * i], got[2 * i + 1]) if got[2 * i] else None
            for i, op in enumerate(ops)
        ]

    def set_status(self, operation_id: str, status: OperationStatus) -> None:
        meta = K.meta(operation_id)
        status = OperationStatus(status)
        # HSET only if the hash exists: never create a half operation.
        script = (
            "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end "
            "redis.call('HSET', KEYS[1], 'status', ARGV[1]) return 1"
        )
        if not self._retry(lambda: self._r.eval(script, 1, meta, status.value)):
            raise UnknownOperation(operation_id)

    def list_operations(
        self, statuses: Iterable[OperationStatus] | None = None
    ) -> list[OperationInfo]:
        wanted = None if statuses is None else {OperationStatus(s) for s in statuses}
        ops = self._retry(lambda: self._r.zrange(K.OPS, 0, -1))
        return [
            info
            for info in self._read_operations(ops)
            if info is not None and (wanted is None or info.status in wanted)
        ]

    # -- leases --------------------------------------------------------------------------

    def acquire(self, operation_id: str, worker_id: str, *, ttl_ms: int) -> Lease:
        slot = _slot_keys(operation_id, worker_id)
        token = uuid.uuid4().hex
        # Listed before the acquire can land, so that an owner dying right after it is
        # still found by the crash scan (which checks the fence, so never-acquired slots
        # are not reported).
        member = K.slot_member(operation_id, worker_id)
        self._retry(lambda: self._r.zadd(K.ALL_DEADLINES, {member: 0}, nx=True))
        started = time.monotonic()
        keys = [slot[k] for k in ("meta", "lease", "fence", "deadlines", "owner", "done")]
        args = [worker_id, token, check_ttl(ttl_ms)]
        result, acks = self._retry(lambda: self._wait.script("ACQUIRE", keys, args))
        code = int(result[0])
        _refused(code, operation_id, worker_id)
        lease = Lease(
            operation_id=operation_id,
            worker_id=worker_id,
            owner_token=token,
            fence=code,
            ttl_ms=ttl_ms,
            renewed_at=started,
        )
        if self._wait.short(acks):
            with contextlib.suppress(CoordinationError):  # else it blocks the slot for a TTL
                self.release(lease)
            self._wait.required(f"acquiring {operation_id}/{worker_id} (fence {code})", acks)
        self._mirror_deadline(operation_id, worker_id, int(result[1]))
        return lease

    def _mirror_deadline(self, op: str, worker: str, deadline: int) -> None:
        # The global zset only points the crash scan at candidates; the per-op lease key
        # is the truth, so a lost update here can delay nothing but a scan hit.
        self._retry(lambda: self._r.zadd(K.ALL_DEADLINES, {K.slot_member(op, worker): deadline}))

    def renew(self, lease: Lease, *, progress: float | None = None) -> Lease:
        shown = _shown(check_progress(progress))
        slot = _slot_keys(lease.operation_id, lease.worker_id)
        started = time.monotonic()
        deadline = self._retry(
            lambda: self._script(
                "RENEW",
                [slot["lease"], slot["deadlines"], slot["meta"]],
                [lease.owner_token, check_ttl(lease.ttl_ms), lease.worker_id, shown],
            )
        )
        if not deadline:
            raise LeaseLostError(lease.operation_id, lease.worker_id, "expired or taken over")
        self._mirror_deadline(lease.operation_id, lease.worker_id, int(deadline))
        return replace(lease, renewed_at=started)

    def release(self, lease: Lease) -> None:
        slot = _slot_keys(lease.operation_id, lease.worker_id)
        released = self._call(
            lambda: self._script(
                "RELEASE", [slot["lease"], slot["deadlines"]], [lease.owner_token, lease.worker_id]
            )
        )
        if not released:
            raise LeaseLostError(lease.operation_id, lease.worker_id, "not held by this owner")
        self._mirror_deadline(lease.operation_id, lease.worker_id, 0)

    def mark_worker_done(self, lease: Lease) -> OperationInfo:
        slot = _slot_keys(lease.operation_id, lease.worker_id)
        status, acks = self._retry(
            lambda: self._wait.script(
                "MARK_DONE",
                [slot["meta"], slot["lease"], slot["done"], slot["owner"]],
                [lease.owner_token, lease.worker_id],
            )
        )
        if not status:
            raise LeaseLostError(lease.operation_id, lease.worker_id, "not held by this owner")
        self._wait.advised(f"{lease.operation_id}/{lease.worker_id} done", acks)
        member = K.slot_member(lease.operation_id, lease.worker_id)
        self._retry(lambda: self._r.zrem(K.ALL_DEADLINES, member))
        return self.get_operation(lease.operation_id)

    def crashed_workers(self) -> list[tuple[str, str]]:
        now = self._c.now_ms()
        members = self._retry(lambda: self._r.zrangebyscore(K.ALL_DEADLINES, "-inf", now))
        slots = [tuple(m.split("/", 1)) for m in members if m.count("/") == 1]
        if not slots:
            return []

        def check() -> list[Any]:
            pipe = self._r.pipeline(transaction=False)
            for op, worker in slots:
                pipe.hget(K.meta(op), "status")
                pipe.sismember(K.done(op), worker)
                pipe.exists(K.lease(op, worker))
                pipe.exists(K.fence(op, worker))
            return list(pipe.execute())

        got = self._retry(check)
        facts = [got[4 * i : 4 * i + 4] for i in range(len(slots))]
        # Slots of deleted operations and finished workers never crash again: drop them,
        # so the candidates of a scan do not grow with the history.
        gone = [
            K.slot_member(op, w)
            for (op, w), f in zip(slots, facts, strict=True)
            if f[0] is None or f[1]
        ]
        if gone:
            self._retry(lambda: self._r.zrem(K.ALL_DEADLINES, *gone))
        return sorted(slot for slot, f in zip(slots, facts, strict=True) if _crashed(f))

    def slot_states(self, operation_id: str) -> list[SlotState]:
        info = self.get_operation(operation_id)
        op, workers = info.operation_id, info.workers

        def read() -> list[Any]:
            pipe = self._r.pipeline(transaction=False)
            for worker in workers:
                pipe.pttl(K.lease(op, worker))
                pipe.get(K.fence(op, worker))
            return list(pipe.execute())

        got = self._retry(read) if workers else []
        return [
            SlotState(
                worker_id=w,
                fence=int(got[2 * i + 1] or 0),
                # PTTL: -2 no key, -1 no expiry (never set so by this library).
                lease_ms=int(got[2 * i]) if int(got[2 * i]) > 0 else None,
                done=w in info.done_workers,
            )
            for i, w in enumerate(workers)
        ]

    def fence_of(self, operation_id: str, worker_id: str) -> int:
        self._require_worker(operation_id, worker_id)
        key = K.fence(operation_id, worker_id)
        return int(self._retry(lambda: self._r.get(key)) or 0)

    def _require(self, operation_id: str) -> None:
        meta = K.meta(operation_id)
        if not self._retry(lambda: self._r.exists(meta)):
            raise UnknownOperation(operation_id)

    def _require_worker(self, operation_id: str, worker_id: str) -> None:
        """UnknownOperation, or InvalidIdentifier for a worker that is not one of its own:
        nothing may be read or written for a slot the operation does not have."""
        check_id(worker_id, "worker id")
        meta = K.meta(operation_id)
        _check_member(operation_id, worker_id, self._retry(lambda: self._r.hget(meta, "workers")))

    # -- data loss -----------------------------------------------------------------------

    def instance_ok(self) -> bool:
        def read() -> list[Any]:
            pipe = self._r.pipeline(transaction=False)
            for key in self._marker_keys:
                pipe.get(key)
            return list(pipe.execute())

        return self._retry(read) == [self._markers[k] for k in self._marker_keys]

    def reset_instance(self) -> None:
        fresh = uuid.uuid4().hex
        self._markers = self._retry(lambda: self._read_markers(fresh, overwrite=True))

    def restart_fences(self, operation_id: str, worker_id: str, above: int) -> None:
        self._require_worker(operation_id, worker_id)
        slot = _slot_keys(operation_id, worker_id)
        _, acks = self._retry(
            lambda: self._wait.script(
                "RESTART_FENCE",
                [slot["fence"], slot["lease"], slot["deadlines"]],
                [int(above), worker_id],
            )
        )
        self._wait.required(f"the fence restart of {operation_id}/{worker_id}", acks)
        if not self._retry(lambda: self._r.exists(slot["lease"])):
            self._mirror_deadline(operation_id, worker_id, 0)

    def close(self) -> None:
        self._r.close()


def connect(
    url: str, *, timeout_s: float = 5.0, wait_replicas: int = 0, wait_timeout_ms: int = 1000
) -> RedisCoordination:
    """Open ``redis://``, ``rediss://`` (TLS) or ``redis+cluster://`` (a Cluster seed);
    ``wait_replicas`` and ``wait_timeout_ms``: see ``redis_wait`` (not on a Cluster)."""
    wait_s = wait_timeout_ms / 1000 if wait_replicas else 0.0
    client = connect_client(url, timeout_s=timeout_s, wait_s=wait_s)
    try:
        return RedisCoordination(
            client, wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms
        )
    except BaseException:
        client.close()
        raise
