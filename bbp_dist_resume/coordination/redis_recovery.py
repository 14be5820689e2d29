"""``RedisRecovery``: the resume plans, plan acknowledgements, reclaim queue and leader
lease part of ``RedisCoordination`` (the protocol's contract is in ``base``)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from bbp_dist_resume.coordination import keys as K
from bbp_dist_resume.coordination.checks import check_generation, check_ttl
from bbp_dist_resume.coordination.models import ReclaimClaim, ResumePlan
from bbp_dist_resume.coordination.redis_client import Retrying
from bbp_dist_resume.coordination.redis_queue import ReclaimQueue
from bbp_dist_resume.coordination.redis_wait import ReplicaWait
from bbp_dist_resume.errors import InvalidCheckpoint, UnknownOperation
from bbp_dist_resume.ids import check_id

_POLL_S = 0.05


class RedisRecovery:
    """A mixin of ``RedisCoordination``, apart so that each module stays under 400 lines."""

    # Set or defined by RedisCoordination.
    _r: Any
    _wait: ReplicaWait
    _queue: ReclaimQueue
    _retry: Retrying
    _script: Callable[[str, list[str], list[Any]], Any]
    _require: Callable[[str], None]
    _require_worker: Callable[[str, str], None]

    # -- resume plans --------------------------------------------------------------------

    def publish_plan(self, operation_id: str, body: Mapping[str, Any]) -> ResumePlan:
        try:
            text = json.dumps(dict(body), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidCheckpoint(f"a resume plan must be plain JSON: {exc}") from None
        keys_ = [K.meta(operation_id), K.plan(operation_id)]
        plan_id = uuid.uuid4().hex  # makes a retried publish land once
        got, acks = self._retry(lambda: self._wait.script("PUBLISH_PLAN", keys_, [plan_id, text]))
        generation = int(got)
        if generation < 0:
            raise UnknownOperation(operation_id)
        self._wait.advised(f"plan {generation} of {operation_id}", acks)
        return ResumePlan(operation_id=operation_id, generation=generation, body=json.loads(text))

    def read_plan(self, operation_id: str) -> ResumePlan | None:
        self._require(operation_id)
        key = K.plan(operation_id)
        raw = self._retry(lambda: self._r.get(key))
        if raw is None:
            return None
        data = json.loads(raw)
        return ResumePlan(
            operation_id=operation_id, generation=int(data["generation"]), body=data["body"]
        )

    def wait_plan(self, operation_id: str, after: int, timeout: float) -> ResumePlan | None:
        end = time.monotonic() + timeout
        while True:
            plan = self.read_plan(operation_id)
            if plan is not None and plan.generation > after:
                return plan
            if time.monotonic() >= end:
                return None
            time.sleep(min(_POLL_S, max(0.0, end - time.monotonic())))

    def ack_plan(self, operation_id: str, worker_id: str, generation: int) -> None:
        check_id(worker_id, "worker id")
        keys_ = [K.meta(operation_id), K.acks(operation_id)]
        args = [worker_id, check_generation(generation)]
        if int(self._retry(lambda: self._script("ACK_PLAN", keys_, args))) < 0:
            raise UnknownOperation(operation_id)

    def plan_acks(self, operation_id: str) -> dict[str, int]:
        self._require(operation_id)
        key = K.acks(operation_id)
        raw = self._retry(lambda: self._r.hgetall(key))
        return {str(w): int(g) for w, g in raw.items()}

    # -- reclaim queue -------------------------------------------------------------------

    def reclaim_push(self, operation_id: str, worker_id: str) -> None:
        self._require_worker(operation_id, worker_id)
        self._queue.push(operation_id, worker_id)

    def reclaim_claim(self, consumer: str, *, stale_after_ms: int) -> ReclaimClaim | None:
        return self._queue.claim(consumer, stale_after_ms=stale_after_ms)

    def reclaim_ack(self, claim: ReclaimClaim) -> None:
        self._queue.ack(claim)

    # -- leader lease --------------------------------------------------------------------

    def acquire_leader(self, coordinator_id: str, *, ttl_ms: int) -> bool:
        check_id(coordinator_id, "coordinator id")
        return bool(
            self._retry(
                lambda: self._script("LEADER", [K.COORDINATOR], [coordinator_id, check_ttl(ttl_ms)])
            )
        )

    def release_leader(self, coordinator_id: str) -> None:
        check_id(coordinator_id, "coordinator id")
        self._retry(lambda: self._script("COMPARE_AND_DELETE", [K.COORDINATOR], [coordinator_id]))
