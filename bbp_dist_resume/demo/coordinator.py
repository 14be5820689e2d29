"""The demo pipeline's coordinator process: ``ResumeSystemManager.run()``, logging what it
detects and repairs to its event log.

It scans for workers whose lease expired while the operation runs, publishes a recovery
plan (each worker's checkpoint on the best global consistent cut) and relaunches each
crashed slot with the pipeline's own worker command line (a launcher template; the
replacement inherits this process's environment, so it never gets a ``BBP_FAULT`` a test
gave to a first worker).
"""

from __future__ import annotations

import signal
import threading

from bbp_dist_resume.api import ResumeSystemManager
from bbp_dist_resume.demo.plumbing import Events, RunConfig

_WATCH_S = 0.05


class LoggedManager(ResumeSystemManager):
    """The coordinator, logging each plan it publishes and each data-loss repair."""

    def __init__(self, coordinator_id: str, events: Events) -> None:
        super().__init__(coordinator_id)
        self.events = events

    def recover_from_data_loss(self) -> bool:
        """See :meth:`ResumeSystemManager.recover_from_data_loss`; logs a repair."""
        repaired = super().recover_from_data_loss()
        if repaired:
            self.events.log("data_loss_recovered")
        return repaired

    def _recover(self, operation_id: str, crashed: list[str]) -> bool:
        # The hook of every recovery, the run loop's scans and attempt_automatic_recovery
        # alike; logs the plan: its generation, each relaunched worker's entry, and the
        # survivors it rolls back.
        published = super()._recover(operation_id, crashed)
        plan = self.current_plan(operation_id) if published else None
        if plan is not None:
            entries = plan.entries
            relaunched = [w for w in plan.relaunched if w in entries]
            self.events.log(
                "recovery",
                crashed=relaunched,
                generation=plan.generation,
                entries={w: entries[w].checkpoint_id for w in relaunched},
                rollback=sorted(
                    w for w, e in entries.items() if e.rollback and w not in relaunched
                ),
            )
        return published


def _watch_leadership(manager: ResumeSystemManager, events: Events, stop: threading.Event) -> None:
    leader = False
    while not stop.wait(_WATCH_S):
        if manager.is_leader != leader:
            leader = manager.is_leader
            events.log("leader" if leader else "standby")


def run_coordinator(rc: RunConfig, operation_id: str, name: str, launcher: str) -> int:
    """Run the coordinator loop until SIGTERM or SIGINT; returns the exit code (0).

    Args:
        rc: the run's settings. operation_id: the pipeline's operation (its launcher is
            registered for it only). name: this coordinator's name (several may run; one
            leads). launcher: the command template that relaunches a crashed slot.
    """
    events = Events(rc.run_dir, f"coordinator-{name}")
    events.log("start")
    manager = LoggedManager(f"coord-{name}", events)
    manager.initialize(rc.checkpoint)
    manager.register_pipeline(operation_id, launcher)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    watcher = threading.Thread(target=_watch_leadership, args=(manager, events, stop), daemon=True)
    watcher.start()
    try:
        manager.run(stop=stop)
    finally:
        stop.set()
        watcher.join(timeout=5)
        manager.shutdown()
        events.log("exit")
    return 0
