"""``Committer``: runs checkpoint jobs one at a time, in submission order, on one thread.

Order matters: seqs are given out at commit time, so jobs must commit in the order their
snapshots were taken. ``submit`` blocks while ``limit`` jobs are queued or running: that
is the back-pressure that bounds the memory held by snapshots in flight.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from bbp_dist_resume.errors import InvalidStateError
from bbp_dist_resume.logs import in_context

T = TypeVar("T")
_Job = tuple[Callable[[], object], "Future[object]"]


class Committer:
    """A single worker thread with a bounded backlog."""

    def __init__(self, limit: int, name: str = "bbp-committer") -> None:
        self._slots = threading.BoundedSemaphore(limit)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._order = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._closed = False

    def submit(self, job: Callable[[], T]) -> Future[T]:
        """Queue ``job``; blocks while the backlog is full. Returns its future."""
        self._slots.acquire()
        fut: Future[T] = Future()
        with self._order:
            if self._closed:
                self._slots.release()
                raise InvalidStateError("the resume system is shut down")
            # The job runs with the submitter's log fields (operation, worker).
            self._jobs.put((in_context(job), fut))  # type: ignore[arg-type]
        return fut

    def flush(self) -> None:
        """Wait until every job submitted so far has finished."""
        self.submit(lambda: None).result()

    def close(self) -> None:
        """Finish the queued jobs, then stop the thread. Idempotent."""
        with self._order:
            if self._closed:
                return
            self._closed = True
            self._jobs.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, fut = item
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(job())
                except BaseException as exc:  # the caller sees it through the future
                    fut.set_exception(exc)
            self._slots.release()
