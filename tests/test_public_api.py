"""The public names are those of ``__all__``, pinned here so a change is deliberate."""

from __future__ import annotations

import bbp_dist_resume
from bbp_dist_resume import (  # the import line of the worker API issue
    AutoCheckpointGuard,
    CheckpointConfig,
    CheckpointGranularity,
    CheckpointGuard,
    CheckpointMetadata,
    CheckpointStrategy,
    ResumeContext,
    ResumeMode,
    ResumeState,
    ResumeStatistics,
    ResumeSystem,
    errors,
    utils,
)

EXPECTED = {
    "BBPError",
    "CoordinationUnavailable",
    "FencedError",
    "GarbageCollectionAborted",
    "GarbageCollectionLocked",
    "LeaseHeldError",
    "LeaseLostError",
    "UnknownOperation",
    "WorkerFinished",
    "BucketNotFound",
    "CheckpointConfig",
    "CheckpointGranularity",
    "CheckpointMeta",
    "CheckpointStrategy",
    "CommitConflict",
    "ConfigError",
    "CommitTooLate",
    "CoordinationError",
    "CoordinationNotFound",
    "DecryptionError",
    "EncryptionKeyError",
    "IntegrityError",
    "InvalidCheckpoint",
    "InvalidIdentifier",
    "Manifest",
    "ManifestError",
    "ObjectNotFound",
    "Repository",
    "StoreAccessDenied",
    "StoreError",
    "StoreUnavailable",
    "StoreUnsafeError",
    "__version__",
    "create_default_config",
    "create_high_frequency_config",
    "create_low_overhead_config",
    "open_repository",
    # the worker API
    "AutoCheckpointGuard",
    "CheckpointFailed",
    "CheckpointGuard",
    "CheckpointMetadata",
    "InteractiveUnavailable",
    "InvalidStateError",
    "ResumeContext",
    "ResumeMode",
    "ResumeState",
    "ResumeStatistics",
    "ResumeSystem",
    "utils",
    # the coordinator
    "ClaimedSlot",
    "PlanEntry",
    "RecoveryPlan",
    "ResumeSystemManager",
    "RecoveryTimeout",
    "RollbackRequested",
}


def test_the_issue_import_line_works() -> None:
    assert AutoCheckpointGuard is CheckpointGuard
    assert callable(utils.parse_resume_context)
    names = (CheckpointConfig, CheckpointGranularity, CheckpointMetadata, CheckpointStrategy)
    names += (ResumeContext, ResumeMode, ResumeState, ResumeStatistics, ResumeSystem)
    assert all(n.__name__ in EXPECTED for n in names)


def test_exported_names_are_pinned() -> None:
    assert set(bbp_dist_resume.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(bbp_dist_resume, name), name


def test_every_library_exception_derives_from_bbp_error() -> None:
    classes = [
        v
        for v in vars(errors).values()
        if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == errors.__name__
    ]
    assert len(classes) >= 15
    assert all(issubclass(c, errors.BBPError) for c in classes)
    assert issubclass(errors.DecryptionError, errors.IntegrityError)
    assert issubclass(errors.ManifestError, errors.IntegrityError)
    assert issubclass(errors.ObjectNotFound, LookupError)
    assert issubclass(errors.CommitConflict, FileExistsError)
    assert errors.StoreUnavailable("x").retryable and not errors.StoreError("x").retryable
