"""The reclaim queue on a Redis stream with a consumer group (``XAUTOCLAIM`` takes over
entries whose claimant died without acknowledging them)."""

from __future__ import annotations

from typing import Any

from bbp_dist_resume.coordination import keys as K
from bbp_dist_resume.coordination.models import ReclaimClaim
from bbp_dist_resume.coordination.redis_client import RedisCalls
from bbp_dist_resume.errors import CoordinationError
from bbp_dist_resume.ids import check_id


class ReclaimQueue:
    """Crashed slots waiting for a worker process."""

    def __init__(self, calls: RedisCalls) -> None:
        self._c = calls

    def push(self, operation_id: str, worker_id: str) -> None:
        check_id(operation_id, "operation id")
        check_id(worker_id, "worker id")
        self._ensure_group()
        fields = {"op": operation_id, "worker": worker_id}
        self._c.call(lambda: self._c.r.xadd(K.RECLAIM, fields))

    def _ensure_group(self) -> None:
        try:
            self._c.retry(
                lambda: self._c.r.xgroup_create(K.RECLAIM, K.RECLAIM_GROUP, id="0", mkstream=True)
            )
        except CoordinationError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def claim(self, consumer: str, *, stale_after_ms: int) -> ReclaimClaim | None:
        check_id(consumer, "consumer id")
        self._ensure_group()
        # Entries whose claimant did not acknowledge in time (it died) come first.
        _, stale, *_ = self._c.call(
            lambda: self._c.r.xautoclaim(
                K.RECLAIM,
                K.RECLAIM_GROUP,
                consumer,
                min_idle_time=stale_after_ms,
                start_id="0-0",
                count=1,
            )
        )
        entries = stale or self._fresh(consumer)
        if not entries:
            return None
        entry_id, fields = entries[0]
        return ReclaimClaim(
            entry_id=entry_id,
            operation_id=fields["op"],
            worker_id=fields["worker"],
            consumer=consumer,
        )

    def _fresh(self, consumer: str) -> list[Any]:
        got = self._c.call(
            lambda: self._c.r.xreadgroup(K.RECLAIM_GROUP, consumer, {K.RECLAIM: ">"}, count=1)
        )
        return list(got[0][1]) if got else []

    def ack(self, claim: ReclaimClaim) -> None:
        def ack() -> None:
            pending = self._c.r.xpending_range(
                K.RECLAIM, K.RECLAIM_GROUP, min=claim.entry_id, max=claim.entry_id, count=1
            )
            if pending and pending[0]["consumer"] == claim.consumer:
                self._c.r.xack(K.RECLAIM, K.RECLAIM_GROUP, claim.entry_id)
                self._c.r.xdel(K.RECLAIM, claim.entry_id)

        self._c.retry(ack)
