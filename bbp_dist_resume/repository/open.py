"""``open_repository``: a store URL and a config in, a ready ``Repository`` out."""

from __future__ import annotations

from bbp_dist_resume.blobstore import BlobStore, S3BlobStore, open_store
from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.errors import EncryptionKeyError
from bbp_dist_resume.logs import get_logger
from bbp_dist_resume.repository.evidence import Clock
from bbp_dist_resume.repository.keys import KEYS_PREFIX, KeyRing
from bbp_dist_resume.repository.objects import ObjectCodec
from bbp_dist_resume.repository.repository import Repository, RepositoryOptions
from bbp_dist_resume.repository.storeconfig import load_or_create

log = get_logger(__name__)


def open_repository(store_url: str | None, config: CheckpointConfig) -> Repository:
    """Open (creating if new) the repository at ``store_url`` (default: the config's).

    Checks the bucket, races the create-only probe, reads or writes the store's
    ``config`` object, and opens the encryption keys when encryption is on.

    Raises:
        ConfigError: a malformed URL. BucketNotFound: no such bucket or directory.
        StoreAccessDenied: credentials refused. StoreUnsafeError: create-only writes
        do not hold. EncryptionKeyError: the key opens none of the store's keys.
    """
    store = open_store(store_url or config.store_url, concurrency=config.upload_concurrency)
    try:
        return open_on_store(store, config)
    except BaseException:
        store.close()
        raise


def open_on_store(
    store: BlobStore, config: CheckpointConfig, *, clock: Clock | None = None
) -> Repository:
    """Like :func:`open_repository`, over an already opened ``BlobStore`` (and, for
    tests, a monotonic ``clock`` of its own)."""
    if isinstance(store, S3BlobStore):
        store.check_bucket()
    store_config = load_or_create(store, config)
    chunker = store_config.chunker
    if (chunker.min_size, chunker.avg_size, chunker.max_size) != (
        config.chunk_min_size,
        config.chunk_avg_size,
        config.chunk_max_size,
    ):
        log.info("using the store's chunk sizes %s, not the configured ones", chunker)
    keyring = None
    if not config.enable_encryption and next(iter(store.list(KEYS_PREFIX)), None):
        # Refused here, not at the first read: writing plaintext into it would leak.
        raise EncryptionKeyError(
            "the store is encrypted: set enable_encryption and encryption_key to open it"
        )
    if config.enable_encryption:
        secrets = [config.secret_key() or ""] + [
            k.get_secret_value() for k in config.decryption_keys
        ]
        keyring = KeyRing.open(store, store_config.kdf, secrets)
    codec = ObjectCodec(
        store,
        level=config.compression_level if config.enable_compression else None,
        keyring=keyring,
    )
    options = RepositoryOptions(
        concurrency=config.upload_concurrency,
        chunker=chunker.params(),
        inline_threshold=config.inline_threshold,
        gc_safety_margin=config.gc_safety_margin.total_seconds(),
    )
    return Repository(store, codec, options, clock=clock)


__all__ = ["open_on_store", "open_repository"]
