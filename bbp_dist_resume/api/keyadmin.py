"""Operator actions on a store's encryption keys: list, initialise, add (rotate).

Secrets come from the config (``encryption_key`` first, then ``decryption_keys``); no
function here returns or logs a secret or a data key's bytes.
"""

from __future__ import annotations

from bbp_dist_resume.blobstore import BlobStore, open_store
from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.errors import EncryptionKeyError, InvalidStateError
from bbp_dist_resume.repository.keys import KEYS_PREFIX, KeyInfo, KeyRing
from bbp_dist_resume.repository.manifest import CHECKPOINTS_PREFIX
from bbp_dist_resume.repository.open import open_on_store
from bbp_dist_resume.repository.storeconfig import load_existing


def _secrets(config: CheckpointConfig) -> list[str]:
    primary = config.secret_key()
    if primary is None:
        raise EncryptionKeyError("no encryption_key configured (set BBP_ENCRYPTION_KEY)")
    return [primary] + [k.get_secret_value() for k in config.decryption_keys]


def _encrypted(config: CheckpointConfig) -> CheckpointConfig:
    return config.with_changes(enable_encryption=True)


def list_keys(config: CheckpointConfig) -> list[KeyInfo]:
    """The store's data keys; which configured secret opens each (none configured: ids
    only). Creates nothing.

    Raises:
        InvalidStateError: the store was never written to. BucketNotFound: no such
            bucket or local folder.
    """
    store = open_store(config.store_url, concurrency=config.upload_concurrency, create=False)
    try:
        store_config = load_existing(store)
        if store_config is None:
            raise InvalidStateError(f"no checkpoint store at {config.store_url}")
        secrets = _secrets(config) if config.encryption_key is not None else []
        if not secrets:
            # A KeyRing needs a secret; an impossible one opens nothing and shows ids.
            secrets = ["\x00 no configured secret"]
        ring = KeyRing(store, store_config.kdf, secrets)
        ring.reload()  # which key writes is known only once the keys are opened
        return ring.describe()
    finally:
        store.close()


def init_keys(config: CheckpointConfig) -> KeyInfo:
    """Make the store encrypted: its config and a first data key under ``encryption_key``.

    Raises:
        InvalidStateError: the store already has keys, or holds unencrypted checkpoints
            (they would stay readable by anyone with the bucket).
        EncryptionKeyError: no encryption_key configured.
    """
    _secrets(config)
    store = open_store(config.store_url, concurrency=config.upload_concurrency)
    try:
        if _has(store, KEYS_PREFIX):
            raise InvalidStateError("the store already has encryption keys: use 'keys add'")
        if _has(store, CHECKPOINTS_PREFIX):
            raise InvalidStateError(
                "the store already holds unencrypted checkpoints: start a new store or prefix"
            )
        open_on_store(store, _encrypted(config)).close()
        return _writer(list_keys(config))
    finally:
        store.close()


def add_key(config: CheckpointConfig) -> KeyInfo:
    """Add a data key under ``encryption_key`` and make it the writer (rotation). A
    configured secret must open one of the store's keys already.

    Raises:
        EncryptionKeyError: no configured secret opens the store's keys.
        InvalidStateError: the store has no keys yet (use ``init_keys``).
        BucketNotFound: no such bucket or local folder (it had no keys either).
    """
    secrets = _secrets(config)
    store = open_store(config.store_url, concurrency=config.upload_concurrency, create=False)
    try:
        store_config = load_existing(store)
        if store_config is None or not _has(store, KEYS_PREFIX):
            raise InvalidStateError("the store has no encryption keys: use 'keys init'")
        ring = KeyRing(store, store_config.kdf, secrets)
        ring.reload()
        if not ring.key_ids():
            raise EncryptionKeyError("no configured encryption key opens any of the store's keys")
        added = ring.add_key()
        return next(k for k in ring.describe() if k.key_id == added.key_id)
    finally:
        store.close()


def _has(store: BlobStore, prefix: str) -> bool:
    return next(iter(store.list(prefix)), None) is not None


def _writer(keys: list[KeyInfo]) -> KeyInfo:
    return next(k for k in keys if k.writer)
