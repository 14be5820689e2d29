"""``open_repository``: a store URL and a config in, a ready ``Repository`` out."""

from __future__ import annotations

from bbp_dist_resume.blobstore import BlobStore, LocalBlobStore, S3BlobStore, open_store
from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.errors import EncryptionKeyError, InvalidStateError
from bbp_dist_resume.logs import get_logger
from bbp_dist_resume.repository.evidence import Clock
from bbp_dist_resume.repository.keys import KEYS_PREFIX, KdfParams, KeyRing
from bbp_dist_resume.repository.objects import ObjectCodec
from bbp_dist_resume.repository.repository import Repository, RepositoryOptions
from bbp_dist_resume.repository.storeconfig import (
    StoreConfig,
    check_probe,
    load_existing,
    load_or_create,
)

log = get_logger(__name__)


def open_repository(
    store_url: str | None, config: CheckpointConfig, *, create: bool = True
) -> Repository:
    """Open (creating if new) the repository at ``store_url`` (default: the config's).

    Checks the bucket, races the create-only probe, reads or writes the store's
    ``config`` object, and opens the encryption keys when encryption is on.

    Args:
        store_url: the store's URL; None for the config's.
        config: the settings.
        create: False for a reader: nothing is written (no folder, no ``config`` object
            or probe, no data key), and a store never written to is refused.

    Raises:
        ConfigError: a malformed URL. BucketNotFound: no such bucket or directory.
        StoreAccessDenied: credentials refused. StoreUnsafeError: create-only writes
        do not hold. EncryptionKeyError: the key opens none of the store's keys.
        InvalidStateError: ``create=False`` and nothing was ever written there.
    """
    url = store_url or config.store_url
    store = open_store(url, concurrency=config.upload_concurrency, create=create)
    try:
        return open_on_store(store, config, create=create)
    except BaseException:
        store.close()
        raise


def open_on_store(
    store: BlobStore,
    config: CheckpointConfig,
    *,
    clock: Clock | None = None,
    create: bool = True,
) -> Repository:
    """Like :func:`open_repository`, over an already opened ``BlobStore`` (and, for
    tests, a monotonic ``clock`` of its own)."""
    if isinstance(store, S3BlobStore):
        store.check_bucket()
    store_config = load_or_create(store, config) if create else _written_config(store, config)
    chunker = store_config.chunker
    if (chunker.min_size, chunker.avg_size, chunker.max_size) != (
        config.chunk_min_size,
        config.chunk_avg_size,
        config.chunk_max_size,
    ):
        log.info("using the store's chunk sizes %s, not the configured ones", chunker)
    codec = ObjectCodec(
        store,
        level=config.compression_level if config.enable_compression else None,
        keyring=_keyring(store, store_config.kdf, config, create),
    )
    options = RepositoryOptions(
        concurrency=config.upload_concurrency,
        chunker=chunker.params(),
        inline_threshold=config.inline_threshold,
        gc_safety_margin=config.gc_safety_margin.total_seconds(),
    )
    return Repository(store, codec, options, clock=clock)


def _written_config(store: BlobStore, config: CheckpointConfig) -> StoreConfig:
    """A reader's view of the store's config object: there must be one, and its probe
    must have passed (a GC, which relies on create-only writes, reads it this way too)."""
    found = load_existing(store)
    if found is None:
        raise InvalidStateError(
            f"no checkpoint store at {_where(store)!r}: nothing was ever written there "
            "(a reader creates nothing: the first worker creates it)"
        )
    check_probe(found.probe, store, config)
    return found


def _where(store: BlobStore) -> str:
    if isinstance(store, LocalBlobStore):
        return str(store.root)
    if isinstance(store, S3BlobStore):
        return f"s3://{store.settings.bucket}/{store.settings.prefix}"
    return store.properties.name


def _keyring(
    store: BlobStore, kdf: KdfParams, config: CheckpointConfig, create: bool
) -> KeyRing | None:
    if not config.enable_encryption:
        if next(iter(store.list(KEYS_PREFIX)), None):
            # Refused here, not at the first read: writing plaintext into it would leak.
            raise EncryptionKeyError(
                "the store is encrypted: set enable_encryption and encryption_key to open it"
            )
        return None
    secrets = [config.secret_key() or ""] + [k.get_secret_value() for k in config.decryption_keys]
    if create:
        return KeyRing.open(store, kdf, secrets)
    # A reader adds no key: KeyRing.open would make a first one, or one under a new
    # primary secret (rotation). Reading needs only the keys that are there.
    ring = KeyRing(store, kdf, secrets)
    if ring.reload() and not ring.key_ids():
        raise EncryptionKeyError("no configured encryption key opens any of the store's keys")
    return ring


__all__ = ["open_on_store", "open_repository"]
