"""The repository: checkpoints as content-addressed objects in a blob store.

Nouns:
    part: one named payload of a checkpoint (the JSON state, an attachment).
    chunk: a content-defined piece of a part, stored once under ``chunks/<id>``.
    chunk id: BLAKE3 of the chunk's plaintext (keyed when the store is encrypted).
    object encoding: header | zstd? | AES-256-GCM? (``codec``).
    manifest: a checkpoint's commit record: ids, metadata, and each part's chunk list.
    commit record: the create-only object ``checkpoints/<op>/<worker>/<seq>``; a
        checkpoint record (a manifest) or a takeover record.
    data key: a random key wrapped under a passphrase-derived KEK in ``keys/``.
    garbage: chunks no commit record names; ``gc`` frees those older than the safety
        margin, and writers keep their side of its rule (``evidence``, ``freshness``).
"""

from bbp_dist_resume.repository.chunkid import ChunkId
from bbp_dist_resume.repository.gc import GcReport, MarkCache, collect_garbage
from bbp_dist_resume.repository.manifest import (
    CheckpointRecord,
    ChunkRef,
    Manifest,
    PartRef,
    TakeoverRecord,
    record_key,
)
from bbp_dist_resume.repository.meta import CheckpointMeta
from bbp_dist_resume.repository.open import open_on_store, open_repository
from bbp_dist_resume.repository.repository import Repository
from bbp_dist_resume.repository.stats import RepositoryStats
from bbp_dist_resume.repository.verify import VerifyReport

__all__ = [
    "CheckpointMeta",
    "CheckpointRecord",
    "ChunkId",
    "ChunkRef",
    "GcReport",
    "Manifest",
    "MarkCache",
    "PartRef",
    "Repository",
    "RepositoryStats",
    "TakeoverRecord",
    "VerifyReport",
    "collect_garbage",
    "open_on_store",
    "open_repository",
    "record_key",
]
