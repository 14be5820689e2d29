"""``ResumeSystemManager``: the coordinator (BB-Pipeline ``ResumeSystemManager``).

It finds crashed workers (leases that expired while their operation runs), publishes a
resume plan of the best global consistent checkpoint, and gets each crashed slot running
again: it pushes the slot to the reclaim queue (idle workers ``claim`` it) and runs the
pipeline's launcher when one is registered. ``run()`` is the coordinator loop: any number
may run, the one holding the leader lease acts, a standby takes over when it lapses.

Poison checkpoints (a restore that keeps crashing its worker) are counted and
quarantined by ``api/restores.py``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from typing import ClassVar

from bbp_dist_resume.api.catalog import Catalog, Histories
from bbp_dist_resume.api.claims import ClaimedSlot, claim_slot
from bbp_dist_resume.api.globalstats import global_statistics
from bbp_dist_resume.api.launch import Launcher, Launches, check_launcher
from bbp_dist_resume.api.metrics import recorder, start_configured_exporter
from bbp_dist_resume.api.models import ResumeMode, ResumeStatistics
from bbp_dist_resume.api.restores import Restores, count_failed_restores
from bbp_dist_resume.api.resume_system import ResumeSystem
from bbp_dist_resume.api.runtime import open_resources
from bbp_dist_resume.api.session import repair_index
from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.coordination import Coordination
from bbp_dist_resume.coordination.rebuild import rebuild_from_store
from bbp_dist_resume.errors import BBPError, InvalidStateError, UnknownOperation
from bbp_dist_resume.ids import check_id
from bbp_dist_resume.logs import get_logger, log_context
from bbp_dist_resume.policy import ResumeSelection
from bbp_dist_resume.policy.plan import RecoveryPlan, build_plan
from bbp_dist_resume.repository import Repository

log = get_logger(__name__)
_ANY = "*"  # register_pipeline("*", ...): the launcher of every operation
_RELAUNCH_TTLS = 3  # a pushed slot nobody took within 3 lease TTLs is pushed again


class ResumeSystemManager:
    """Coordinator of every operation in one store and coordination backend."""

    _instance: ClassVar[ResumeSystemManager | None] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, coordinator_id: str | None = None) -> None:
        self.coordinator_id = check_id(coordinator_id or f"coord-{uuid.uuid4().hex[:12]}")
        self._config = CheckpointConfig()
        self._lock = threading.RLock()
        self._repo: Repository | None = None
        self._coord: Coordination | None = None
        self._catalog: Catalog | None = None
        self._systems: dict[str, ResumeSystem] = {}
        self._launchers: dict[str, Launcher] = {}
        self._launches = Launches()
        # (op, worker) -> (fence when handled, monotonic time): one push per crash.
        self._handled: dict[tuple[str, str], tuple[int, float]] = {}
        self._stop = threading.Event()
        self._checked_store = False
        self.is_leader = False

    @classmethod
    def get_instance(cls) -> ResumeSystemManager:
        """The process-wide manager."""
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    # -- life cycle ----------------------------------------------------------------------

    def initialize(
        self,
        config: CheckpointConfig | None = None,
        *,
        create_store: bool = True,
        create_backend: bool = True,
    ) -> bool:
        """Open the store and the coordination backend of ``config`` (idempotent). A
        manager used only to read passes False for both: a missing store (BucketNotFound,
        InvalidStateError) or SQLite database (CoordinationNotFound) is then refused,
        never made (``runtime.open_resources``)."""
        with self._lock:
            if self._repo is not None:
                return True
            self._stop.clear()
            self._config = config or self._config
            start_configured_exporter(self._config)
            self._repo, self._coord = open_resources(
                self._config, create_store=create_store, create_backend=create_backend
            )
            self._catalog = Catalog(self._repo, self._coord)
            return True

    def shutdown(self) -> None:
        """Stop ``run``, give up leadership, close every system and connection."""
        self._stop.set()
        with self._lock:
            for rs in self._systems.values():
                rs.shutdown()
            self._systems.clear()
            if self._coord is not None:
                if self.is_leader:
                    self._coord.release_leader(self.coordinator_id)
                    recorder().leadership(self.coordinator_id, False)
                self._coord.close()
            if self._catalog is not None:
                self._catalog.close()
            if self._repo is not None:
                self._repo.close()
            self._repo = self._coord = self._catalog = None
            self._launches.close()
            self.is_leader = False

    def get_resume_system(self, worker_id: str = "w0") -> ResumeSystem:
        """This process's ``ResumeSystem`` for ``worker_id`` (made on first use)."""
        check_id(worker_id, "worker id")
        with self._lock:
            if worker_id not in self._systems:
                self._systems[worker_id] = ResumeSystem(self._config, worker_id)
            return self._systems[worker_id]

    def register_pipeline(self, pipeline_id: str, launcher: Launcher) -> bool:
        """Run ``launcher`` for crashed slots of operation ``pipeline_id`` ("*": of all)."""
        if pipeline_id != _ANY:
            check_id(pipeline_id, "pipeline id")
        self._launchers[pipeline_id] = check_launcher(launcher)
        return True

    def unregister_pipeline(self, pipeline_id: str) -> None:
        self._launchers.pop(pipeline_id, None)

    # -- detection and planning ----------------------------------------------------------

    def detect_crashed_operations(self) -> list[str]:
        """Operations with at least one crashed worker, sorted."""
        return sorted({op for op, _ in self._coordination().crashed_workers()})

    def plan_recovery(
        self, operation_id: str, mode: ResumeMode = ResumeMode.LAST_CHECKPOINT
    ) -> RecoveryPlan:
        """The recovery plan the operation would get now (not published)."""
        check_id(operation_id, "operation id")
        previous = self.current_plan(operation_id)
        return self._plan(operation_id, mode, Restores.of(previous), previous=previous)

    def _plan(
        self,
        operation_id: str,
        mode: ResumeMode,
        restores: Restores,
        *,
        relaunched: Mapping[str, int] | None = None,
        histories: Histories | None = None,
        previous: RecoveryPlan | None = None,
    ) -> RecoveryPlan:
        selection = (
            ResumeSelection.BEST if mode is ResumeMode.BEST_CHECKPOINT else ResumeSelection.LAST
        )
        histories = histories if histories is not None else self._cat().histories(operation_id)
        for worker in self._workers(operation_id):
            histories.setdefault(worker, [])
        if not histories:
            raise UnknownOperation(operation_id)
        return build_plan(
            operation_id,
            histories,
            selection=selection,
            quarantined=restores.quarantined,
            attempts=restores.attempts,
            counted=restores.counted,
            relaunched=list(relaunched or {}),
            deterministic=self._config.deterministic_producers,
            previous=previous,
            replaced=relaunched,
        )

    def current_plan(self, operation_id: str) -> RecoveryPlan | None:
        """The published plan, or None."""
        try:
            plan = self._coordination().read_plan(operation_id)
        except UnknownOperation:
            return None
        return RecoveryPlan.from_body(operation_id, plan.generation, plan.body) if plan else None

    def _workers(self, operation_id: str) -> tuple[str, ...]:
        try:
            return self._coordination().get_operation(operation_id).workers
        except UnknownOperation:
            return ()

    # -- recovery ------------------------------------------------------------------------

    def attempt_automatic_recovery(self, operation_id: str) -> bool:
        """Publish a new plan for the operation and relaunch its crashed slots; True when
        a plan was published (there was something to recover)."""
        check_id(operation_id, "operation id")
        crashed = [w for op, w in self._coordination().crashed_workers() if op == operation_id]
        with log_context(operation=operation_id):
            return self._recover(operation_id, crashed)

    def _recover(self, operation_id: str, crashed: list[str]) -> bool:
        coord = self._coordination()
        due = [w for w in crashed if self._due(coord, operation_id, w)]
        if not due:
            return False
        # Fences first, then the crash again: a replacement that took a slot over since the
        # scan is live (not recovered twice), one that takes it later is above its fence.
        replaced = {w: coord.fence_of(operation_id, w) for w in due}
        still = {w for op, w in coord.crashed_workers() if op == operation_id}
        due = [w for w in due if w in still]
        replaced = {w: f for w, f in replaced.items() if w in still}
        if not due:
            return False
        assert self._repo is not None
        for worker in due:
            # A worker that died between its commit record and the index step (DESIGN.md
            # step 5) has a checkpoint only the store knows: plan from it too.
            repair_index(self._repo, coord, operation_id, worker)
        previous = self.current_plan(operation_id)
        histories = self._cat().histories(operation_id)  # read once for both uses
        restores = count_failed_restores(due, previous, histories, self._config.quarantine_after)
        plan = self._plan(
            operation_id,
            ResumeMode.LAST_CHECKPOINT,
            restores,
            relaunched=replaced,
            histories=histories,
            previous=previous,
        )
        published = coord.publish_plan(operation_id, plan.to_body())
        recorder().plan_published(operation_id)
        log.info("plan %s of %s published for crashed %s", published.generation, operation_id, due)
        for worker in due:
            with log_context(worker=worker):
                self._relaunch(coord, operation_id, worker)
        return True

    def _due(self, coord: Coordination, op: str, worker: str) -> bool:
        """Whether to recover the crashed slot now: a crash not handled yet (counted in
        the metrics), or one whose relaunch nobody took up within 3 TTLs."""
        handled = self._handled.get((op, worker))
        if handled is None or coord.fence_of(op, worker) != handled[0]:
            recorder().crash_detected(op)
            return True
        ttl = self._config.lease_ttl.total_seconds()
        return time.monotonic() - handled[1] > _RELAUNCH_TTLS * ttl

    def _relaunch(self, coord: Coordination, op: str, worker: str) -> None:
        self._handled[(op, worker)] = (coord.fence_of(op, worker), time.monotonic())
        coord.reclaim_push(op, worker)
        recorder().relaunched(op)
        launcher = self._launchers.get(op) or self._launchers.get(_ANY)
        if launcher is None:
            return
        try:
            self._launches.launch(launcher, op, worker)
        except Exception:  # a user's launcher: its failure must not stop the other slots
            log.exception("launcher for %s/%s failed", op, worker)

    def recover_from_data_loss(self) -> bool:
        """If the backend lost its data: rebuild the index from the store and fence every
        slot (their workers see their leases gone and stop; the scan reclaims them)."""
        coord = self._coordination()
        if coord.instance_ok() and not self._lost_before_start():
            return False
        assert self._repo is not None
        report = rebuild_from_store(coord, self._repo)
        self._handled.clear()
        recorder().data_loss_repaired()
        log.warning("backend data loss: rebuilt %s operations from the store", report.operations)
        return True

    def _lost_before_start(self) -> bool:
        """Once per manager: a backend that knows none of the operations the store has
        lost its data before this coordinator first connected (no marker to miss)."""
        if self._checked_store:
            return False
        self._checked_store = True
        assert self._repo is not None
        stored = set(self._repo.slots())
        known = {o.operation_id for o in self._coordination().list_operations()}
        return bool(stored) and not stored & known

    # -- workers that claim slots --------------------------------------------------------

    def claim(self, consumer: str | None = None) -> ClaimedSlot | None:
        """Claim a crashed slot from the reclaim queue, take its lease and resume it from
        the plan; None when there is nothing to claim. The caller runs the worker."""
        return claim_slot(self._coordination(), self._config, consumer or self.coordinator_id)

    # -- statistics and the loop ---------------------------------------------------------

    def get_global_statistics(self) -> ResumeStatistics:
        """Statistics over every operation in the store."""
        return global_statistics(self._cat())

    def run(self, *, stop: threading.Event | None = None, max_scans: int | None = None) -> None:
        """The coordinator loop: hold or wait for the leader lease; as leader, repair data
        loss, detect crashes and recover, every ``scan_interval``."""
        stopped = (stop or self._stop).is_set
        ttl_ms = int(self._config.lease_ttl.total_seconds() * 1000)
        interval = min(self._config.scan_interval.total_seconds(), ttl_ms / 3000)
        scans = 0
        # Either event ends the loop: the caller's, or shutdown()'s own.
        while not (stopped() or self._stop.is_set()) and (max_scans is None or scans < max_scans):
            scans += 1
            self._scan_once(ttl_ms)
            deadline = time.monotonic() + interval
            while time.monotonic() < deadline and not (stopped() or self._stop.is_set()):
                self._stop.wait(min(0.05, interval))

    def _scan_once(self, ttl_ms: int) -> None:
        started = time.monotonic()
        try:
            self._scan(ttl_ms)
        except BBPError as exc:
            log.warning("coordinator scan failed: %s", exc)
        except Exception:  # the loop outlives any one bad scan
            log.exception("coordinator scan failed")
        recorder().scanned(self.coordinator_id, time.monotonic() - started)

    def _scan(self, ttl_ms: int) -> None:
        coord = self._coordination()
        was_leader = self.is_leader
        self.is_leader = coord.acquire_leader(self.coordinator_id, ttl_ms=ttl_ms)
        if self.is_leader != was_leader:
            recorder().leadership(self.coordinator_id, self.is_leader)
        if not self.is_leader:
            return
        self.recover_from_data_loss()
        crashed: dict[str, list[str]] = {}
        for op, worker in coord.crashed_workers():
            crashed.setdefault(op, []).append(worker)
        for op, workers in sorted(crashed.items()):
            with log_context(operation=op):
                self._recover(op, workers)

    def stop(self) -> None:
        self._stop.set()

    # -- internals -----------------------------------------------------------------------

    def _coordination(self) -> Coordination:
        if self._coord is None:
            if self._stop.is_set():
                raise InvalidStateError("the manager is shut down: initialize() it again")
            self.initialize()
        assert self._coord is not None
        return self._coord

    def _cat(self) -> Catalog:
        self._coordination()
        assert self._catalog is not None
        return self._catalog
