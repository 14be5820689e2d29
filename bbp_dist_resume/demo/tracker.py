"""``Tracker``: what the demo's processes did, from their event logs, told as
:class:`DemoEvent` lines while they do it.

It reads only; the runner decides (when to kill, when the run is over) from what it knows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bbp_dist_resume.demo.plumbing import LoggedEvent
from bbp_dist_resume.demo.recon import CSV_NAME, RANK
from bbp_dist_resume.demo.report import DemoEvent, DemoEventKind

Emit = Callable[[DemoEventKind, str, float], None]  # kind, message, wall-clock time
_COORDINATOR = "coordinator-"


@dataclass(slots=True)
class Crash:
    """The injected crash and how the run recovered from it (wall-clock times)."""

    worker: str
    pid: int
    killed_at: float
    commits_before: int
    detected_at: float | None = None
    generation: int | None = None
    plan_entry: str | None = None
    replacement: int | None = None
    resumed_at: float | None = None
    resumed_from: str | None = None
    recommitted_at: float | None = None

    def missing(self) -> list[str]:
        """The steps of the recovery not seen (yet)."""
        steps = (
            ("the coordinator's plan", self.detected_at),
            ("the replacement's resume", self.resumed_at),
            ("the replacement's first checkpoint", self.recommitted_at),
        )
        return [what for what, at in steps if at is None]


@dataclass(slots=True)
class Tracker:
    """Folds the run's events into counts and the crash's timeline, and tells them."""

    workers: list[str]
    emit: Emit
    first_pid: dict[str, int] = field(default_factory=dict)
    monitoring: set[str] = field(default_factory=set)
    commits: Counter[str] = field(default_factory=Counter)
    uploaded: dict[tuple[str, int], int] = field(default_factory=dict)
    last_commit: dict[str, str] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    output_checkpoint: str | None = None
    crash: Crash | None = None
    leader: bool = False

    # -- reading -------------------------------------------------------------------------

    def feed(self, event: LoggedEvent) -> None:
        """Take one event into account (events come oldest first)."""
        if event.name.startswith(_COORDINATOR):
            self._coordinator(event)
            return
        handler = _WORKER_EVENTS.get(event.kind)
        if handler is not None:
            handler(self, event)

    def uploaded_bytes(self) -> int:
        """What every worker process reported it uploaded, its last report each."""
        return sum(self.uploaded.values())

    def killed(self, worker: str, pid: int, at: float) -> Crash:
        """The runner killed ``worker``'s process ``pid`` at wall-clock ``at``."""
        self.crash = Crash(worker, pid, at, self.commits[worker])
        return self.crash

    # -- coordinator ---------------------------------------------------------------------

    def _coordinator(self, e: LoggedEvent) -> None:
        name = e.name.removeprefix(_COORDINATOR)
        if e.kind == "leader" and not self.leader:
            self.leader = True
            self.emit(DemoEventKind.START, f"coordinator {name} leads (pid {e.pid})", e.t)
        elif e.kind == "recovery":
            self._plan(e)
        elif e.kind == "data_loss_recovered":
            self.emit(DemoEventKind.WARNING, "coordinator rebuilt a lost index from the store", e.t)

    def _plan(self, e: LoggedEvent) -> None:
        entries: Mapping[str, Any] = e.fields.get("entries", {})
        generation = e.fields.get("generation")
        moves = ", ".join(f"{w} -> {cid or 'its initial state'}" for w, cid in entries.items())
        lapsed = ", ".join(entries) or "a worker"
        rollback = list(e.fields.get("rollback", []))
        rolls = f"; it rolls back {', '.join(rollback)}" if rollback else ""
        self.emit(
            DemoEventKind.DETECT,
            f"coordinator: lease of {lapsed} expired, plan generation {generation} "
            f"published ({moves}){rolls}",
            e.t,
        )
        crash = self.crash
        if crash is not None and crash.detected_at is None and crash.worker in entries:
            crash.detected_at = e.t
            crash.generation = int(generation) if generation is not None else None
            crash.plan_entry = entries[crash.worker]

    # -- workers -------------------------------------------------------------------------

    def _monitoring(self, e: LoggedEvent) -> None:
        if e.name not in self.first_pid:
            self.first_pid[e.name] = e.pid
            self.monitoring.add(e.name)
            if self.monitoring == set(self.workers):
                names = ", ".join(self.workers)
                self.emit(
                    DemoEventKind.START,
                    f"{len(self.workers)} workers hold their leases: {names}",
                    e.t,
                )
        elif self._is_replacement(e):
            fence = e.fields.get("fence")
            self.emit(
                DemoEventKind.RESUME,
                f"{e.name} relaunched by the coordinator (pid {e.pid}, fence {fence})",
                e.t,
            )

    def _is_replacement(self, e: LoggedEvent) -> bool:
        crash = self.crash
        return crash is not None and e.name == crash.worker and e.pid != crash.pid

    def _resumed(self, e: LoggedEvent) -> None:
        crash = self.crash
        if not self._is_replacement(e) or crash is None or crash.resumed_at is not None:
            return
        cid = e.fields.get("checkpoint")
        crash.replacement, crash.resumed_at, crash.resumed_from = e.pid, e.t, cid
        after = e.t - crash.killed_at
        self.emit(
            DemoEventKind.RESUME,
            f"{e.name} resumed from {cid or 'its initial state'} ({after:.1f} s after the kill)",
            e.t,
        )

    def _committed(self, e: LoggedEvent) -> None:
        self.commits[e.name] += 1
        self.last_commit[e.name] = str(e.fields.get("checkpoint"))
        uploaded = e.fields.get("uploaded")
        if isinstance(uploaded, int):
            self.uploaded[(e.name, e.pid)] = uploaded
        crash = self.crash
        if crash is not None and self._is_replacement(e) and crash.recommitted_at is None:
            crash.recommitted_at = e.t
            after = e.t - crash.killed_at
            self.emit(
                DemoEventKind.RECOVER,
                f"{e.name} committed {self.last_commit[e.name]}, its first checkpoint since the "
                f"crash ({after:.1f} s after the kill)",
                e.t,
            )

    def _done(self, e: LoggedEvent) -> None:
        self.done.add(e.name)
        if e.name == RANK:
            self.output_checkpoint = self.last_commit.get(RANK)
            self.emit(
                DemoEventKind.OUTPUT, f"rank wrote {CSV_NAME} in {self.output_checkpoint}", e.t
            )
        else:
            self.emit(
                DemoEventKind.PROGRESS, f"{e.name} done ({self.commits[e.name]} checkpoints)", e.t
            )

    def _rollback(self, e: LoggedEvent) -> None:
        self.rolled_back.append(e.name)
        target = e.fields.get("checkpoint") or "its initial state"
        generation = e.fields.get("generation")
        self.emit(
            DemoEventKind.RESUME,
            f"{e.name} rolled back to {target} by plan generation {generation}",
            e.t,
        )

    def _lost(self, e: LoggedEvent) -> None:
        why = "lost its lease" if e.kind == "lease_lost" else "found its lease held"
        self.emit(DemoEventKind.WARNING, f"{e.name} (pid {e.pid}) {why} and exited", e.t)

    def _error(self, e: LoggedEvent) -> None:
        self.errors.append(f"{e.name} (pid {e.pid}) failed: {e.fields.get('error')}")


_WORKER_EVENTS: dict[str, Callable[[Tracker, LoggedEvent], None]] = {
    "monitoring": Tracker._monitoring,
    "resumed": Tracker._resumed,
    "committed": Tracker._committed,
    "done": Tracker._done,
    "rollback": Tracker._rollback,
    "lease_lost": Tracker._lost,
    "held": Tracker._lost,
    "error": Tracker._error,
}


def crash_fields(crash: Crash | None) -> dict[str, Any]:
    """The :class:`DemoReport` fields about the crash (times since the kill, seconds)."""

    def since(at: float | None) -> float | None:
        return None if crash is None or at is None else at - crash.killed_at

    return {
        "crashes_injected": 0 if crash is None else 1,
        "killed_worker": None if crash is None else crash.worker,
        "killed_pid": None if crash is None else crash.pid,
        "detection_time_s": since(crash.detected_at if crash else None),
        "recovery_time_s": since(crash.resumed_at if crash else None),
        "first_commit_time_s": since(crash.recommitted_at if crash else None),
        "resumed_from": None if crash is None else crash.resumed_from,
        "plan_generation": None if crash is None else crash.generation,
    }


def event(kind: DemoEventKind, message: str, elapsed_s: float) -> DemoEvent:
    """A :class:`DemoEvent` (never negative in time)."""
    return DemoEvent(elapsed_s=max(0.0, elapsed_s), kind=kind, message=message)
