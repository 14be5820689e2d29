"""``Heartbeat``: a daemon thread that keeps one lease alive, and says at once when it
cannot.

It renews every ``interval`` seconds (default ``ttl/3``), carrying the worker's latest
progress (``set_progress``) with each renewal, and runs ``on_beat`` after each one (the
worker API watches for new resume plans there). The moment a renewal is
refused, or the lease's local deadline passes without a confirmed renewal (the backend
is unreachable), ``lost`` is set and stays set: the owner must stop, because its slot
may already belong to someone else. ``check()`` is the cheap test for every call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from bbp_dist_resume.coordination.base import Coordination
from bbp_dist_resume.coordination.models import Lease
from bbp_dist_resume.errors import CoordinationUnavailable, LeaseLostError
from bbp_dist_resume.logs import get_logger, in_context, log_context

log = get_logger(__name__)


class Heartbeat:
    """Renews ``lease`` on ``coord`` until stopped or lost."""

    def __init__(
        self,
        coord: Coordination,
        lease: Lease,
        *,
        interval: float | None = None,
        on_lost: Callable[[Lease], None] | None = None,
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        self._coord = coord
        self._lease = lease
        self._interval = interval if interval is not None else lease.ttl_ms / 3000
        self._on_lost = on_lost
        self._on_beat = on_beat
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._progress: float | None = None
        self._lost_marked = False
        self.lost = threading.Event()
        self._main = self._run
        self._thread = threading.Thread(
            target=self._thread_main, name=f"bbp-heartbeat-{lease.worker_id}", daemon=True
        )

    @property
    def lease(self) -> Lease:
        """The lease as last confirmed by the backend."""
        with self._lock:
            return self._lease

    def set_progress(self, percent: float) -> None:
        """Report ``percent`` with the next renewal (no round trip of its own)."""
        with self._lock:
            self._progress = percent

    def start(self) -> Heartbeat:
        # The thread logs with the log fields of whoever started it (operation, worker).
        self._main = in_context(self._run)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop renewing (the lease itself is left to expire or be released)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def check(self) -> Lease:
        """The current lease; raises ``LeaseLostError`` once it is lost, with no round trip
        (a monotonic local deadline, which never outlives the backend's)."""
        lease = self.lease
        if self.lost.is_set() or time.monotonic() >= lease.local_deadline:
            self._mark_lost("deadline passed")
            raise LeaseLostError(lease.operation_id, lease.worker_id, "heartbeat lost it")
        return lease

    def _thread_main(self) -> None:
        lease = self._lease
        with log_context(operation=lease.operation_id, worker=lease.worker_id):
            self._main()

    def _run(self) -> None:
        while True:
            # Wake at the next renewal, or at the local deadline if that comes first, so
            # that ``lost`` is set the moment the deadline passes unrenewed.
            until_deadline = self.lease.local_deadline - time.monotonic()
            if self._stop.wait(max(0.0, min(self._interval, until_deadline))):
                return
            if time.monotonic() >= self.lease.local_deadline:
                self._mark_lost("deadline passed without a confirmed renewal")
                return
            if not self._beat():
                return

    def _beat(self) -> bool:
        with self._lock:
            lease, progress = self._lease, self._progress
        try:
            renewed = self._coord.renew(lease, progress=progress)
        except LeaseLostError:
            self._mark_lost("renewal refused")
            return False
        except CoordinationUnavailable as exc:
            # Keep trying until the local deadline; past it the lease may be gone.
            if time.monotonic() >= lease.local_deadline:
                self._mark_lost(f"backend unreachable past the deadline: {exc}")
                return False
            return True
        with self._lock:
            self._lease = renewed
        if self._on_beat is not None:
            try:
                self._on_beat()
            except Exception:  # the lease matters more than what rides along with it
                log.exception("heartbeat hook failed")
        return True

    def _mark_lost(self, why: str) -> None:
        with self._lock:
            if self._lost_marked:
                return
            self._lost_marked = True
            lease = self._lease
        log.warning("lease %s/%s lost: %s", lease.operation_id, lease.worker_id, why)
        # The callback runs before ``lost`` is set: whoever waits on the event finds
        # the callback's work done.
        if self._on_lost is not None:
            self._on_lost(lease)
        self.lost.set()
