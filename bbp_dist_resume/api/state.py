"""The ``ResumeState`` machine of one ``ResumeSystem``.

::

    IDLE --start_monitoring--> RUNNING <--> CHECKPOINTING   (while checkpoints are in flight)
    RUNNING --resume--> RECOVERING --done/failed--> RUNNING
    RUNNING --stop_monitoring--> PAUSED --start_monitoring--> RUNNING
    RUNNING --complete--> COMPLETED
    any monitored state --lease lost--> FAILED   (a strict checkpoint failure only raises)
    any state --shutdown--> IDLE

A resume may also run before monitoring (IDLE -> RECOVERING -> IDLE), while paused, or
after completion, and goes back to where it started.
"""

from __future__ import annotations

import threading

from bbp_dist_resume.api.models import ResumeState
from bbp_dist_resume.errors import InvalidStateError

S = ResumeState
_MONITORED = frozenset({S.RUNNING, S.CHECKPOINTING, S.RECOVERING})

TRANSITIONS: dict[ResumeState, frozenset[ResumeState]] = {
    S.IDLE: frozenset({S.RUNNING, S.RECOVERING, S.IDLE}),
    S.RUNNING: frozenset({S.CHECKPOINTING, S.RECOVERING, S.PAUSED, S.COMPLETED, S.FAILED, S.IDLE}),
    S.CHECKPOINTING: frozenset({S.RUNNING, S.RECOVERING, S.PAUSED, S.COMPLETED, S.FAILED, S.IDLE}),
    S.RECOVERING: frozenset({S.RUNNING, S.CHECKPOINTING, S.IDLE, S.PAUSED, S.FAILED, S.COMPLETED}),
    S.PAUSED: frozenset({S.RUNNING, S.RECOVERING, S.IDLE}),
    S.FAILED: frozenset({S.RUNNING, S.IDLE, S.RECOVERING}),
    S.COMPLETED: frozenset({S.RUNNING, S.IDLE, S.RECOVERING}),
}


class StateMachine:
    """The current state, changed only along ``TRANSITIONS``. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = S.IDLE
        self._checkpointing = 0
        self._before_recovery = S.IDLE

    @property
    def state(self) -> ResumeState:
        with self._lock:
            return self._state

    def move(self, target: ResumeState) -> None:
        """Go to ``target``; raises ``InvalidStateError`` for a move not in the table."""
        with self._lock:
            self._move(target)

    def _move(self, target: ResumeState) -> None:
        if target not in TRANSITIONS[self._state]:
            raise InvalidStateError(f"cannot go from {self._state} to {target}")
        self._state = target
        if target in (S.IDLE, S.FAILED, S.COMPLETED, S.PAUSED):
            self._checkpointing = 0

    def checkpoint_started(self) -> None:
        with self._lock:
            self._checkpointing += 1
            if self._state is S.RUNNING:
                self._move(S.CHECKPOINTING)

    def checkpoint_finished(self) -> None:
        with self._lock:
            self._checkpointing = max(0, self._checkpointing - 1)
            if self._checkpointing == 0 and self._state is S.CHECKPOINTING:
                self._move(S.RUNNING)

    def recovery_started(self) -> None:
        with self._lock:
            before = S.RUNNING if self._state in _MONITORED else self._state
            self._move(S.RECOVERING)
            self._before_recovery = before

    def recovery_finished(self) -> None:
        with self._lock:
            if self._state is S.RECOVERING:
                back = self._before_recovery
                if back is S.RUNNING and self._checkpointing:
                    back = S.CHECKPOINTING
                self._move(back)

    def fail(self) -> None:
        with self._lock:
            if self._state in _MONITORED:
                self._move(S.FAILED)
