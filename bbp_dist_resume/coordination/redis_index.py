"""``RedisIndex``: the checkpoint index part of ``RedisCoordination`` (the per-worker
sorted sets of ``keys.index``; the protocol's contract is in ``base``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from bbp_dist_resume.coordination import keys as K
from bbp_dist_resume.coordination.models import CheckpointSummary, Lease, OperationInfo
from bbp_dist_resume.coordination.redis_client import Retrying
from bbp_dist_resume.coordination.redis_helpers import _check_member, _slot_keys, _summaries
from bbp_dist_resume.errors import FencedError
from bbp_dist_resume.ids import check_seq


class RedisIndex:
    """A mixin of ``RedisCoordination``, apart so that each module stays under 400 lines."""

    # Set or defined by RedisCoordination.
    _r: Any
    _retry: Retrying
    _script: Callable[[str, list[str], list[Any]], Any]
    _require_worker: Callable[[str, str], None]
    get_operation: Callable[[str], OperationInfo]

    # -- checkpoint index ----------------------------------------------------------------

    def record(self, lease: Lease, summary: CheckpointSummary) -> None:
        slot = _slot_keys(lease.operation_id, lease.worker_id)
        ok = self._retry(
            lambda: self._script(
                "RECORD",
                [slot["fence"], slot["owner"], slot["index"]],
                [lease.owner_token, lease.fence, summary.seq, summary.to_json()],
            )
        )
        if not ok:
            raise FencedError(lease.operation_id, lease.worker_id, lease.fence)

    def index(self, operation_id: str, worker_id: str) -> list[CheckpointSummary]:
        return self._index_read(operation_id, worker_id, lambda p, key: p.zrange(key, 0, -1))

    def index_all(self, operation_id: str) -> dict[str, list[CheckpointSummary]]:
        workers = self.get_operation(operation_id).workers

        def read() -> list[Any]:
            pipe = self._r.pipeline(transaction=False)
            for w in workers:
                pipe.zrange(K.index(operation_id, w), 0, -1)
            return list(pipe.execute())

        return {w: _summaries(raw) for w, raw in zip(workers, self._retry(read), strict=True)}

    def latest(self, operation_id: str, worker_id: str) -> CheckpointSummary | None:
        got = self._index_read(operation_id, worker_id, lambda p, key: p.zrange(key, -1, -1))
        return got[0] if got else None

    def lookup(self, operation_id: str, worker_id: str, seq: int) -> CheckpointSummary | None:
        s = check_seq(seq)
        got = self._index_read(operation_id, worker_id, lambda p, key: p.zrangebyscore(key, s, s))
        return got[0] if got else None

    def _index_read(
        self, operation_id: str, worker_id: str, command: Callable[[Any, str], Any]
    ) -> list[CheckpointSummary]:
        """One round trip: the operation's workers (to refuse a stranger) and the read."""
        meta, key = K.meta(operation_id), K.index(operation_id, worker_id)

        def read() -> list[Any]:
            pipe = self._r.pipeline(transaction=False)
            pipe.hget(meta, "workers")
            command(pipe, key)
            return list(pipe.execute())

        workers, raw = self._retry(read)
        _check_member(operation_id, worker_id, workers)
        return _summaries(raw)

    def delete_entries(self, operation_id: str, worker_id: str, seqs: Iterable[int]) -> None:
        self._require_worker(operation_id, worker_id)
        key = K.index(operation_id, worker_id)
        chosen = [check_seq(x) for x in seqs]

        def delete() -> None:
            pipe = self._r.pipeline(transaction=False)
            for seq in chosen:
                pipe.zremrangebyscore(key, seq, seq)
            pipe.execute()

        self._retry(delete)

    def repair(
        self, operation_id: str, worker_id: str, summaries: Iterable[CheckpointSummary]
    ) -> int:
        self._require_worker(operation_id, worker_id)
        key = K.index(operation_id, worker_id)
        args: list[Any] = []
        for summary in summaries:
            args += [summary.seq, summary.to_json()]
        if not args:
            return 0
        return int(self._retry(lambda: self._script("REPAIR", [key], args)))
