"""``ReplicaWait``: WAIT after the Redis writes a worker acts on (``redis_wait_replicas``).

Redis replicates asynchronously: the primary answers a write before any replica has it,
so a failover to a replica can lose the last writes, a fence INCR among them. ``WAIT n
timeout`` blocks until ``n`` replicas have acknowledged the replication offset of the
connection's last write (so every earlier write of every connection too), or until the
timeout, and answers how many did. It is sent in one pipeline with the script, so it
covers that very write. It writes nothing to disk and promotes nothing: a failover that
promotes a replica which acknowledged keeps the write (Sentinel prefers the replica with
the highest offset); one that promotes another replica, or a replica that restarted
empty, can still lose it, and the store's create-only records still fence (DESIGN.md).

Which writes wait, and what too few acknowledgements mean:

- a lease acquisition (its fence INCR) and a fence restart: **required**. The worker acts
  on its fence at once (its takeover record, its commits); if the promoted replica lacked
  it, the next acquisition would hand the same fence out again. Too few: the lease is
  given back and ``CoordinationUnavailable`` raised, so the worker never proceeds.
- a resume plan and a worker's done mark: **advised** (a warning). Both have landed on the
  primary and raising would undo neither; a lost plan is published again by the next scan
  that finds the crash, a lost done mark makes the worker look crashed and its relaunch
  completes from its last checkpoint.
- not waited: renewals (one per heartbeat; a lost one only makes the lease expire early on
  the new primary, and the store refuses the old owner), releases, index records and
  repairs (a cache of the store, repaired at the next takeover), the reclaim queue.

Only on a standalone primary (``redis://``, ``rediss://``): redis-py sends WAIT on a
Cluster to every node over connections other than the write's, where it confirms nothing,
so ``open_coordination`` refuses the option there.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import NoScriptError

from bbp_dist_resume.coordination.redis_client import RedisCalls
from bbp_dist_resume.errors import CoordinationUnavailable
from bbp_dist_resume.logs import get_logger

log = get_logger(__name__)


class ReplicaWait:
    """Runs a script and, when ``replicas`` > 0, WAIT on the same connection."""

    def __init__(self, calls: RedisCalls, *, replicas: int = 0, timeout_ms: int = 1000) -> None:
        self._calls = calls
        self.replicas = replicas
        self.timeout_ms = timeout_ms

    def script(self, name: str, keys: list[str], args: list[Any]) -> tuple[Any, int]:
        """The script's result and how many replicas acknowledged it (0 when WAIT is off:
        nothing was asked, so nothing is short)."""
        if not self.replicas:
            return self._calls.script(name, keys, args), 0
        try:
            return self._pipelined(name, keys, args)
        except NoScriptError:  # a restarted or flushed server: load it, then once more
            self._calls.load(name)
            return self._pipelined(name, keys, args)

    def _pipelined(self, name: str, keys: list[str], args: list[Any]) -> tuple[Any, int]:
        # EVALSHA directly, not a Script on the pipeline: that asks SCRIPT EXISTS first,
        # one more round trip on every call.
        pipe = self._calls.r.pipeline(transaction=False)
        pipe.evalsha(self._calls.sha(name), len(keys), *keys, *args)
        pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
        result, acks = pipe.execute()
        return result, int(acks)

    def short(self, acks: int) -> bool:
        """Whether fewer replicas acknowledged than were asked for."""
        return acks < self.replicas

    def required(self, what: str, acks: int) -> None:
        """``CoordinationUnavailable`` when too few replicas acknowledged ``what``."""
        if self.short(acks):
            raise CoordinationUnavailable(self._shortfall(what, acks))

    def advised(self, what: str, acks: int) -> None:
        """A warning when too few replicas acknowledged ``what``."""
        if self.short(acks):
            log.warning("%s: a failover now could lose it", self._shortfall(what, acks))

    def _shortfall(self, what: str, acks: int) -> str:
        return (
            f"{acks} of {self.replicas} Redis replicas acknowledged {what} "
            f"within {self.timeout_ms} ms"
        )
