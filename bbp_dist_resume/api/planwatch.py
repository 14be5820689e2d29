"""``PlanWatch``: a ``WorkerSession``'s watch for a resume plan that rolls it back.

The session's heartbeat (and ``complete``) reads the operation on every beat; when the
coordinator has published a newer plan, ``PlanWatch`` judges it once against the state
the worker is at (the seq of its checkpoint and the channel offsets it consumed) and,
when the plan puts the worker behind that state, turns it into a pending
``RollbackRequested`` that the session's ``check`` raises. The rule for a restarted
producer is the watermark's (``watermark.restarted_offset``), so a consumer that reads
only committed records is never rolled back by a plan.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from bbp_dist_resume.api.barrier import rolled_back
from bbp_dist_resume.api.metrics import recorder
from bbp_dist_resume.api.watermark import restarted_offset
from bbp_dist_resume.coordination import Coordination
from bbp_dist_resume.coordination.models import OperationInfo
from bbp_dist_resume.errors import RollbackRequested
from bbp_dist_resume.logs import get_logger

# The session's logger: the rollback warning keeps the logger name it always had.
log = get_logger("bbp_dist_resume.api.session")


class PlanWatch:
    """The state a session is at, the plan generation it has seen, a pending rollback."""

    def __init__(
        self,
        coord: Coordination,
        operation: OperationInfo,
        worker_id: str,
        *,
        state_seq: int = 0,
    ) -> None:
        self._coord = coord
        self.operation = operation
        self.worker_id = worker_id
        # The seq of this worker's checkpoint its state is at (0: none), and the plan
        # generation it has seen: a newer plan whose entry is behind it is a rollback.
        self._state_seq = state_seq
        self._generation = operation.generation
        self._rollback: RollbackRequested | None = None
        self._watch_lock = threading.Lock()
        self._consumed: dict[str, int] = {}  # channel offsets of the state it is at
        self.on_rollback: Callable[[RollbackRequested], None] | None = None
        # Producers whose records come out the same when produced again, and whether
        # this worker reads only committed records (config).
        self.deterministic: frozenset[str] = frozenset()
        self.read_committed = False

    @property
    def rollback(self) -> RollbackRequested | None:
        """The rollback a plan requested and no restore acknowledged yet (None: none)."""
        return self._rollback

    def at(self, seq: int, consumed: Mapping[str, int]) -> None:
        """The state is now at this worker's checkpoint ``seq``, which consumed ``consumed``."""
        self._state_seq = seq
        self._consumed = dict(consumed)

    def resumed(self, seq: int, consumed: Mapping[str, int], generation: int | None) -> None:
        """The state was restored from checkpoint ``seq`` (0: a clean start), following
        plan ``generation`` when given (which acknowledges its rollback)."""
        self.at(seq, consumed)
        if generation is not None:
            self._generation = max(self._generation, generation)
        self._rollback = None

    def _behind(self, body: Mapping[str, Any], entry: Mapping[str, Any], seq: int) -> bool:
        """Whether a plan that puts this worker at ``seq`` must roll it back.

        Yes when the planner moved it back. Else, for a plan entry older than its state:
        a survivor that committed after the plan was built is merely ahead of it, which
        is consistent, unless it holds records of a restarted producer that no commit of
        that producer's new incarnation covers (they will be produced again, maybe
        differently). And even at its latest checkpoint, a consumer that reads at once
        (not ``read_committed``) from a restarted producer that is not deterministic may
        hold, in memory, records that will be replaced: it goes back and reads again."""
        if entry.get("rollback") is True:
            return True
        for channel, producer, offset, since in self._restarted_channels(body):
            if channel not in self._consumed:
                continue
            if not self.read_committed and producer not in self.deterministic:
                return True
            held = self._consumed[channel]
            ahead = seq < self._state_seq and held > offset
            restarts = body.get("restarts")
            relaunch = restarts.get(producer) if isinstance(restarts, dict) else None
            relaunch = relaunch if type(relaunch) is int else None
            if ahead and held > self._recommitted(producer, channel, since, offset, relaunch):
                return True
        return False

    def _restarted_channels(self, body: Mapping[str, Any]) -> list[tuple[str, str, int, int]]:
        """(channel, producer, the plan's offset, the producer's entry seq) for every
        channel whose producer the plan relaunches or rolls back."""
        entries, restarted = body.get("entries", {}), rolled_back(body)
        out = []
        for channel, pair in body.get("channels", {}).items():
            if not (isinstance(pair, list) and len(pair) == 2):
                continue
            producer, offset = pair
            if producer != self.worker_id and producer in restarted:
                since = entries.get(producer, {}).get("seq") or 0
                out.append((channel, producer, int(offset), int(since)))
        return out

    def _recommitted(
        self, producer: str, channel: str, since: int, offset: int, relaunch: int | None
    ) -> int:
        """How far the producer's new incarnation (the one that resumed from ``since``)
        has committed ``channel``; ``offset`` when it has not yet."""
        history = self._coord.index(self.operation.operation_id, producer)
        return max(int(offset), restarted_offset(history, channel, since, relaunch))

    def watch_plan(self) -> None:
        """Heartbeat hook (and ``complete``): one read of the operation; the plan only
        when it is new. One caller at a time: each plan is judged once."""
        with self._watch_lock:
            self._watch_plan()

    def _watch_plan(self) -> None:
        op, worker = self.operation.operation_id, self.worker_id
        if self._coord.get_operation(op).generation <= self._generation:
            return
        plan = self._coord.read_plan(op)
        if plan is None or plan.generation <= self._generation:
            return
        entry = plan.body.get("entries", {}).get(worker)
        seq = entry.get("seq") or 0 if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not isinstance(seq, int):
            self._generation = plan.generation
            return
        if seq <= self._state_seq and self._behind(plan.body, entry, seq):
            self._generation = plan.generation
            rollback = RollbackRequested(op, plan.generation, entry.get("checkpoint_id"))
            self._rollback = rollback
            recorder().rolled_back(op, worker)
            log.warning("%s", rollback)
            if self.on_rollback is not None:
                self.on_rollback(rollback)
            return
        # Not rolled back: it is at (or past) its entry, which the barrier of a worker
        # waiting for it under this plan (a relaunch carried forward) needs to hear. An
        # acknowledgement that fails is tried again with the next beat.
        self._coord.ack_plan(op, worker, plan.generation)
        self._generation = plan.generation
