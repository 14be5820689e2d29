"""The library's exceptions, all rooted at :class:`BBPError`.

::

    BBPError
    ├── ConfigError (ValueError)             a configuration or URL that cannot be used
    ├── InvalidIdentifier (ValueError)       an operation/worker/stage/channel id or a store key
    ├── InvalidCheckpoint (ValueError)       checkpoint data or metadata that cannot be stored
    ├── StoreError                           the store failed; see ``retryable``
    │   ├── ObjectNotFound (LookupError)     no object under that key
    │   ├── BucketNotFound                   the bucket or root directory does not exist
    │   ├── StoreAccessDenied (PermissionError)   credentials refused
    │   ├── StoreUnavailable                 transient: timeouts, 5xx and throttling after retries
    │   ├── CommitTooLate                    a write too slow to commit safely (GC): write again
    │   └── StoreUnsafeError                 create-only writes do not hold under concurrency
    ├── GarbageCollectionAborted             the GC stopped: a commit record it cannot read
    ├── GarbageCollectionLocked              another GC holds the store's GC lock
    ├── IntegrityError                       stored bytes are not what was written
    │   ├── DecryptionError                  wrong key, missing key, or tampered ciphertext
    │   └── ManifestError                    a commit record that is malformed or inconsistent
    ├── EncryptionKeyError                   no configured key opens the store's data keys
    ├── CommitConflict (FileExistsError)     a commit record's slot is taken by another writer
    ├── InvalidStateError                    the call does not fit the system's current state
    ├── InteractiveUnavailable               interactive resume with no terminal and no chooser
    ├── CheckpointFailed                     a checkpoint could not be taken (strict mode)
    ├── RollbackRequested                    a new resume plan rolls this worker back
    ├── DemoFailed                           the multi-worker demo did not run to its end
    └── CoordinationError                    the coordination backend (Redis, SQLite)
        ├── UnknownOperation (LookupError)   no operation with that id
        ├── LeaseHeldError                   a live owner holds the lease
        │   └── WorkerFinished               the worker completed: its slot is closed for good
        ├── LeaseLostError                   the caller no longer owns its lease
        ├── FencedError                      a write carried a stale owner token or fence
        ├── RecoveryTimeout                  the recovery barrier did not close in time
        ├── CoordinationNotFound             a reader's SQLite database does not exist
        └── CoordinationUnavailable          transient: the backend did not answer

Only ``blobstore/`` and ``coordination/`` see botocore or redis exceptions; they translate
them into these. Messages never contain secrets.
"""

from __future__ import annotations

from collections.abc import Sequence


class BBPError(Exception):
    """Root of every error the library raises on purpose."""


class ConfigError(BBPError, ValueError):
    """A configuration that cannot be used.

    Attributes:
        problems: ``(field, reason)`` for every bad field, so a caller can show all at once.
    """

    def __init__(self, problems: list[tuple[str, str]] | str) -> None:
        if isinstance(problems, str):
            problems = [("", problems)]
        self.problems = problems
        text = "; ".join(f"{f}: {why}" if f else why for f, why in problems)
        super().__init__(f"invalid configuration: {text}")


class InvalidIdentifier(BBPError, ValueError):
    """An identifier or key that must not reach a store key, a path or a Redis key."""

    def __init__(self, kind: str, value: object, reason: str) -> None:
        self.kind = kind
        self.value = value
        super().__init__(f"invalid {kind} {value!r}: {reason}")


class InvalidCheckpoint(BBPError, ValueError):
    """Checkpoint data or metadata that cannot be stored (bad sizes, values, types)."""


class StoreError(BBPError):
    """The blob store failed.

    Attributes:
        key: the object key involved, when there is one.
        retryable: True when the same call may succeed later (transient failures).
    """

    retryable: bool = False

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        super().__init__(message if key is None else f"{message} (key {key!r})")


class ObjectNotFound(StoreError, LookupError):
    """No object exists under the key."""


class BucketNotFound(StoreError):
    """The bucket (S3) or the root directory (local store) does not exist."""


class StoreAccessDenied(StoreError, PermissionError):
    """The store refused the credentials or the permission."""


class StoreUnavailable(StoreError):
    """A transient failure that outlived the retries (timeouts, throttling, 5xx)."""

    retryable = True


class CommitTooLate(StoreError):
    """A write's commit came too long after its first chunk dedup decision (over a quarter
    of ``gc_safety_margin``), or its refreshed chunks kept vanishing: a garbage collection
    may free chunks it relies on. Nothing was committed; write the checkpoint again.
    """

    retryable = True


class StoreUnsafeError(StoreError):
    """The store's create-only writes let more than one concurrent writer win."""


class GarbageCollectionAborted(BBPError):
    """Garbage collection stopped before deleting anything: a commit record could not be
    read (corrupt, or encrypted with a key this config lacks), so the chunks it names are
    unknown. ``key`` names the record; the cause is chained."""

    def __init__(self, message: str, *, key: str) -> None:
        self.key = key
        super().__init__(f"{message} (key {key!r})")


class GarbageCollectionLocked(BBPError):
    """Another garbage collection holds the store's lock (``locks/gc``), or one died
    holding it: break it (``bbp-resume gc --break-lock``) only when none runs."""

    def __init__(self, holder: str) -> None:
        super().__init__(
            f"{holder}; if no garbage collection runs any more, run gc with --break-lock"
        )


class IntegrityError(BBPError):
    """Bytes read back are not the bytes that were written.

    Attributes:
        key: the object key involved, when there is one.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        super().__init__(message if key is None else f"{message} (key {key!r})")


class DecryptionError(IntegrityError):
    """An object could not be decrypted: wrong or missing key, or tampered ciphertext."""


class ManifestError(IntegrityError):
    """A commit record that is malformed, of an unknown version, or inconsistent."""


class EncryptionKeyError(BBPError):
    """No configured encryption key opens any data key of the store, or a key is malformed."""


class CommitConflict(BBPError, FileExistsError):
    """The commit record's slot (operation, worker, seq) was taken by another writer.

    Attributes:
        operation_id, worker_id, seq: the slot that was refused.
    """

    def __init__(self, operation_id: str, worker_id: str, seq: int) -> None:
        self.operation_id = operation_id
        self.worker_id = worker_id
        self.seq = seq
        BBPError.__init__(
            self, f"commit slot {operation_id}/{worker_id}/{seq} is taken by another writer"
        )


class InvalidStateError(BBPError):
    """The call does not fit the ``ResumeSystem``'s state (for example a checkpoint while
    not monitoring any operation, or a call after ``shutdown``)."""


class InteractiveUnavailable(BBPError):
    """INTERACTIVE resume was asked with no ``chooser`` and no terminal to prompt on."""


class CheckpointFailed(BBPError):
    """A checkpoint could not be taken; raised only with ``strict=True`` (the cause is
    chained). Without ``strict`` the failure is reported and the pipeline goes on.

    Attributes:
        stage_name: the stage the checkpoint was for.
    """

    def __init__(self, stage_name: str, reason: str) -> None:
        self.stage_name = stage_name
        super().__init__(f"checkpoint of stage {stage_name!r} failed: {reason}")


class RollbackRequested(BBPError):
    """A newly published resume plan puts this worker behind its current state: restore
    (``resume_automatically``) and go on from there.

    Attributes:
        generation: the plan's generation; checkpoint_id: the entry (None: initial state).
    """

    def __init__(self, operation_id: str, generation: int, checkpoint_id: str | None) -> None:
        self.operation_id = operation_id
        self.generation = generation
        self.checkpoint_id = checkpoint_id
        target = checkpoint_id or "its initial state"
        super().__init__(
            f"resume plan {generation} of {operation_id} rolls this worker back to {target}"
        )


class DemoFailed(BBPError):
    """The multi-worker demo (``bbp-resume demo``) did not run to its end: a process
    failed, the crash it injected was not recovered, or the run timed out.

    Attributes:
        run_dir: the run's folder of event logs and process output, when there is one.
    """

    def __init__(self, reason: str, run_dir: object | None = None) -> None:
        self.run_dir = None if run_dir is None else str(run_dir)
        where = f" (logs in {self.run_dir})" if self.run_dir else ""
        super().__init__(f"demo failed: {reason}{where}")


class CoordinationError(BBPError):
    """Root of the coordination layer's errors (leases, fencing, index)."""


class UnknownOperation(CoordinationError, LookupError):
    """No operation with that id is known to the coordination backend."""

    def __init__(self, operation_id: str) -> None:
        self.operation_id = operation_id
        super().__init__(f"unknown operation {operation_id!r}")


class LeaseHeldError(CoordinationError):
    """The lease of (operation, worker) is held by a live owner."""

    def __init__(self, operation_id: str, worker_id: str) -> None:
        self.operation_id = operation_id
        self.worker_id = worker_id
        super().__init__(f"lease {operation_id}/{worker_id} is held by a live owner")


class WorkerFinished(LeaseHeldError):
    """The worker of (operation, worker) already completed: its slot can never be taken
    again (a late relaunch must not redo finished work). Nothing is left to do."""

    def __init__(self, operation_id: str, worker_id: str) -> None:
        super().__init__(operation_id, worker_id)
        self.args = (f"worker {operation_id}/{worker_id} already finished",)


class LeaseLostError(CoordinationError):
    """The caller's lease expired or was taken over: it must stop making progress."""

    def __init__(self, operation_id: str, worker_id: str, reason: str = "") -> None:
        self.operation_id = operation_id
        self.worker_id = worker_id
        super().__init__(
            f"lease {operation_id}/{worker_id} is lost" + (f": {reason}" if reason else "")
        )


class FencedError(CoordinationError):
    """A write carried an owner token or fencing token older than the current one."""

    def __init__(self, operation_id: str, worker_id: str, fence: int) -> None:
        self.operation_id = operation_id
        self.worker_id = worker_id
        self.fence = fence
        super().__init__(f"write to {operation_id}/{worker_id} with stale fence {fence} refused")


class RecoveryTimeout(CoordinationError):
    """The recovery barrier did not close in time: some workers the resume plan rolls
    back had not restored their entries within ``recovery_timeout``.

    Attributes:
        operation_id; generation: the plan's; missing: the workers not restored.
    """

    def __init__(self, operation_id: str, generation: int, missing: Sequence[str]) -> None:
        self.operation_id = operation_id
        self.generation = generation
        self.missing = tuple(missing)
        super().__init__(
            f"resume plan {generation} of {operation_id}: {', '.join(self.missing)} "
            "did not restore within the recovery timeout"
        )


class CoordinationNotFound(CoordinationError):
    """A reader (``create=False``) named a SQLite database that does not exist, or a file
    that is not one: it is refused, never created empty as a mistyped path would be. A
    worker or the coordinator creates the database; ``rebuild-index`` restores a lost one.

    Attributes:
        path: the database file.
    """

    def __init__(self, path: str, reason: str = "does not exist") -> None:
        self.path = path
        super().__init__(
            f"SQLite database {path!r} {reason} (a reader creates nothing: a worker or "
            "the coordinator creates it, rebuild-index restores a lost one)"
        )


class CoordinationUnavailable(CoordinationError):
    """The backend did not answer (connection refused, timeout) after retries."""

    retryable = True
