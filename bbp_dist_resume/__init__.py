"""bbp-dist-resume: distributed checkpoint and resume for multi-worker pipelines.

Workers write checkpoints to S3-compatible storage (or a local directory) under
content-addressed keys; a coordination backend (Redis or SQLite) holds leases and indexes.
"""

from bbp_dist_resume.config import (
    CheckpointConfig,
    CheckpointGranularity,
    CheckpointStrategy,
    create_default_config,
    create_high_frequency_config,
    create_low_overhead_config,
)
from bbp_dist_resume.errors import (
    BBPError,
    BucketNotFound,
    CommitConflict,
    ConfigError,
    CoordinationError,
    CoordinationUnavailable,
    DecryptionError,
    EncryptionKeyError,
    FencedError,
    IntegrityError,
    InvalidCheckpoint,
    InvalidIdentifier,
    LeaseHeldError,
    LeaseLostError,
    ManifestError,
    ObjectNotFound,
    StoreAccessDenied,
    StoreError,
    StoreUnavailable,
    StoreUnsafeError,
    UnknownOperation,
)
from bbp_dist_resume.repository import CheckpointMeta, Manifest, Repository, open_repository

__version__ = "0.1.0"

__all__ = [
    "BBPError",
    "BucketNotFound",
    "CheckpointConfig",
    "CheckpointGranularity",
    "CheckpointMeta",
    "CheckpointStrategy",
    "CommitConflict",
    "ConfigError",
    "CoordinationError",
    "CoordinationUnavailable",
    "DecryptionError",
    "EncryptionKeyError",
    "FencedError",
    "IntegrityError",
    "InvalidCheckpoint",
    "InvalidIdentifier",
    "LeaseHeldError",
    "LeaseLostError",
    "Manifest",
    "ManifestError",
    "ObjectNotFound",
    "Repository",
    "StoreAccessDenied",
    "StoreError",
    "StoreUnavailable",
    "StoreUnsafeError",
    "UnknownOperation",
    "__version__",
    "create_default_config",
    "create_high_frequency_config",
    "create_low_overhead_config",
    "open_repository",
]
