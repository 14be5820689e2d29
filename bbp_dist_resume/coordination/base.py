"""The coordination contract: operations, leases, the checkpoint index, resume plans, the
reclaim queue and the coordinator's leader lease.

Nouns:
    operation: one pipeline run, with a fixed set of workers (its *slots*).
    lease: the right of one process to act as one worker of one operation; it expires
        on the backend's clock unless renewed. Acquiring it bumps the slot's *fence*.
    index: per worker, the summaries of its committed checkpoints, by seq. It is a cache
        of the store's commit records (the store is the truth; DESIGN.md step 5).
    plan: the resume plan of an operation; every publish bumps its *generation*.
    reclaim queue: crashed slots waiting for a worker process to claim them.

Every implementation passes ``tests/test_coordination_conformance.py``. All methods
validate ids first (``InvalidIdentifier``), are safe from several threads and
processes, and raise ``CoordinationUnavailable`` when the backend does not answer.
State-changing calls are idempotent where the contract says so, so a retried call whose
first try landed changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from bbp_dist_resume.coordination.models import (
    CheckpointSummary,
    Lease,
    OperationInfo,
    OperationStatus,
    ReclaimClaim,
    ResumePlan,
    SlotState,
)


class Coordination(Protocol):
    """Leases, fencing and the checkpoint index for many operations."""

    # -- operations ----------------------------------------------------------------------

    def create_operation(
        self,
        operation_id: str,
        *,
        workers: Sequence[str],
        stages: Sequence[str] = (),
        config_path: str = "",
    ) -> OperationInfo:
        """Create the operation (status RUNNING), or return it unchanged if it exists."""
        ...

    def get_operation(self, operation_id: str) -> OperationInfo:
        """Raises ``UnknownOperation``."""
        ...

    def set_status(self, operation_id: str, status: OperationStatus) -> None:
        """Raises ``UnknownOperation``."""
        ...

    def list_operations(
        self, statuses: Iterable[OperationStatus] | None = None
    ) -> list[OperationInfo]:
        """Every operation, or those in ``statuses``, oldest first."""
        ...

    # -- leases --------------------------------------------------------------------------

    def acquire(self, operation_id: str, worker_id: str, *, ttl_ms: int) -> Lease:
        """Take the worker's lease with a new owner token and the next fence.

        Raises:
            UnknownOperation; InvalidIdentifier: the worker is not one of the operation's.
            LeaseHeldError: a live owner holds it (nothing changes, the fence included).
        """
        ...

    def renew(self, lease: Lease, *, progress: float | None = None) -> Lease:
        """Extend the lease by its ttl, and record the worker's ``progress`` (percent) in
        the same step when given. Raises ``LeaseLostError`` unless the caller still owns
        it (expired, or acquired by another owner); a lost lease is never revived."""
        ...

    def release(self, lease: Lease) -> None:
        """Give the lease up. Raises ``LeaseLostError`` if the caller does not own it
        (released twice, expired, or taken over). The owner's token and fence stay the
        slot's current ones until the next acquisition, so ``record`` still accepts a
        checkpoint it committed before releasing."""
        ...

    def mark_worker_done(self, lease: Lease) -> OperationInfo:
        """Record that the worker finished and release its lease; the operation becomes
        COMPLETED when all its workers are done. Raises ``LeaseLostError``."""
        ...

    def crashed_workers(self) -> list[tuple[str, str]]:
        """``(operation_id, worker_id)`` of every worker whose lease deadline passed while
        its operation is RUNNING and it is not done, over all operations. A worker that
        never took its lease is not crashed (its process may not have started yet); one
        that released it without finishing is."""
        ...

    def slot_states(self, operation_id: str) -> list[SlotState]:
        """Every worker slot of the operation, in the operation's worker order: fence,
        remaining lease time (backend clock) and done flag, read in one round trip.
        Raises ``UnknownOperation``."""
        ...

    def fence_of(self, operation_id: str, worker_id: str) -> int:
        """The slot's current fencing token (0 before the first acquisition)."""
        ...

    # -- checkpoint index ----------------------------------------------------------------

    def record(self, lease: Lease, summary: CheckpointSummary) -> None:
        """Add a committed checkpoint to the index (DESIGN.md commit step 5).

        Idempotent: recording the same summary again changes nothing.

        Raises:
            FencedError: the lease's owner token or fence is not the slot's current one.
        """
        ...

    def index(self, operation_id: str, worker_id: str) -> list[CheckpointSummary]:
        """The worker's index entries, by seq."""
        ...

    def index_all(self, operation_id: str) -> dict[str, list[CheckpointSummary]]:
        """Every worker's entries (workers with none map to ``[]``)."""
        ...

    def latest(self, operation_id: str, worker_id: str) -> CheckpointSummary | None:
        """The entry with the highest seq, or None."""
        ...

    def lookup(self, operation_id: str, worker_id: str, seq: int) -> CheckpointSummary | None:
        """The entry of one seq, or None."""
        ...

    def delete_entries(self, operation_id: str, worker_id: str, seqs: Iterable[int]) -> None:
        """Remove entries (retention); missing ones are not an error."""
        ...

    def repair(
        self, operation_id: str, worker_id: str, summaries: Iterable[CheckpointSummary]
    ) -> int:
        """Add the entries the store has and the index lacks (no owner check: they are
        read from the store, which is the truth); return how many were added."""
        ...

    # -- resume plans --------------------------------------------------------------------

    def publish_plan(self, operation_id: str, body: Mapping[str, Any]) -> ResumePlan:
        """Publish a plan under the next generation."""
        ...

    def read_plan(self, operation_id: str) -> ResumePlan | None:
        """The current plan, or None when none was published."""
        ...

    def wait_plan(self, operation_id: str, after: int, timeout: float) -> ResumePlan | None:
        """Block until a plan of generation > ``after`` exists (return it), or ``timeout``
        seconds pass (return None)."""
        ...

    def ack_plan(self, operation_id: str, worker_id: str, generation: int) -> None:
        """Record that the worker restored its entry of plan ``generation`` (the recovery
        barrier); an older generation never replaces a newer one."""
        ...

    def plan_acks(self, operation_id: str) -> dict[str, int]:
        """Per worker, the newest plan generation it acknowledged."""
        ...

    # -- reclaim queue -------------------------------------------------------------------

    def reclaim_push(self, operation_id: str, worker_id: str) -> None:
        """Queue a crashed slot for a worker process to claim."""
        ...

    def reclaim_claim(self, consumer: str, *, stale_after_ms: int) -> ReclaimClaim | None:
        """Claim the oldest unclaimed slot, or one whose claimant has not acknowledged it
        for ``stale_after_ms`` (it died); None when there is nothing to claim."""
        ...

    def reclaim_ack(self, claim: ReclaimClaim) -> None:
        """The claimed slot is resumed: drop it from the queue."""
        ...

    # -- coordinator leader lease --------------------------------------------------------

    def acquire_leader(self, coordinator_id: str, *, ttl_ms: int) -> bool:
        """Take or renew the leader lease; True while ``coordinator_id`` holds it."""
        ...

    def release_leader(self, coordinator_id: str) -> None:
        """Give the leader lease up if held by ``coordinator_id``."""
        ...

    # -- data loss -----------------------------------------------------------------------

    def instance_ok(self) -> bool:
        """False when the backend lost its data since this client first saw it (the
        instance marker it wrote is gone): every index must be rebuilt from the store."""
        ...

    def restart_fences(self, operation_id: str, worker_id: str, above: int) -> None:
        """Raise the slot's fencing counter to at least ``above`` (after data loss); a
        slot with no live owner is left expired, so the crash scan reports it."""
        ...

    def reset_instance(self) -> None:
        """Write a new instance marker, once the index is rebuilt: ``instance_ok`` is True
        again for this client."""
        ...

    def close(self) -> None:
        """Release connections. Idempotent."""
        ...
