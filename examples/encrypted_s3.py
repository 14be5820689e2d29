"""Encrypted checkpoints in S3: a passphrase from the environment, a binary attachment,
wrong keys refused, nothing readable in the bucket, and key rotation.

Run it::

    export BBP_STORE_URL='s3://my-bucket/encrypted-demo?endpoint_url=http://127.0.0.1:9000&region=us-east-1'
    export BBP_ENCRYPTION_KEY="$(cat /run/secrets/bbp-passphrase)"   # never in code
    export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...
    python examples/encrypted_s3.py

Environment (``BBP_*`` variables are ``CheckpointConfig`` fields, read by
``CheckpointConfig.load``):

- ``BBP_STORE_URL`` (required): ``s3://BUCKET/PREFIX?endpoint_url=URL&region=REGION``.
  Leave out ``endpoint_url`` for AWS itself; give it for MinIO, SeaweedFS and the like.
  Use a prefix of its own: the script lists and reads every object under it.
- ``BBP_ENCRYPTION_KEY`` (required): the passphrase. The script refuses to run without it.
- ``BBP_COORD_URL`` (optional): ``redis://[:password@]host:6379/0`` and the like; by default
  a SQLite database in a temporary directory.
- ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION`` (or a profile,
  or an instance role): credentials, found by boto3's usual chain, both by the library and
  by the listing below.

What it shows:

1. A worker checkpoints a state and a 256 KiB binary attachment, encrypted (AES-256-GCM
   under a data key wrapped by the passphrase).
2. A second system with a wrong passphrase cannot open the store (``EncryptionKeyError``).
3. The bucket, listed with boto3, holds no object key naming the attachment, and no object
   holding the state's or the attachment's plaintext.
4. Key rotation: the new passphrase as ``encryption_key``, the old one in
   ``decryption_keys``; the old checkpoint is still readable and new ones use a new data
   key. With the new passphrase alone, the old checkpoint no longer decrypts.
"""

from __future__ import annotations

import os
import random
import secrets
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import boto3

from bbp_dist_resume import (
    CheckpointConfig,
    DecryptionError,
    EncryptionKeyError,
    ResumeSystem,
    utils,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ATTACHMENT = "model-weights.bin"
# Plaintext we look for in the bucket afterwards: it must be found nowhere.
PLAIN_NOTE = "quarterly numbers: revenue 4.2M, do not leak"
WEIGHTS = random.Random(7).randbytes(256 * 1024)


def load_config(tmp: Path) -> CheckpointConfig:
    """The config from ``BBP_*`` variables, with encryption on. Exits when they are not
    usable: no passphrase, or a store that is not S3."""
    if not os.environ.get("BBP_ENCRYPTION_KEY"):
        sys.exit("refusing to run: set BBP_ENCRYPTION_KEY to the store's passphrase")
    if not os.environ.get("BBP_STORE_URL", "").startswith("s3://"):
        sys.exit("refusing to run: set BBP_STORE_URL to s3://BUCKET/PREFIX?endpoint_url=...")
    overrides: dict[str, Any] = {"enable_encryption": True}
    if not os.environ.get("BBP_COORD_URL"):
        overrides["coord_url"] = f"sqlite:{tmp}/coord.db"
    # load(): BBP_STORE_URL, BBP_ENCRYPTION_KEY, BBP_COORD_URL... from the environment.
    return CheckpointConfig.load(**overrides)


def checkpoint_something(config: CheckpointConfig, op: str) -> str:
    """Worker w0 checkpoints a state and a binary attachment; returns the checkpoint id."""
    with ResumeSystem(config, worker_id="w0") as rs:
        rs.start_monitoring(op, workers=["w0"], stages=["train"])
        cid = rs.create_checkpoint(
            "train",
            {"epoch": 1, "note": PLAIN_NOTE},
            {"model": "demo"},
            attachments={ATTACHMENT: WEIGHTS},  # bytes or a file path
        )
        if not cid:
            sys.exit("the checkpoint failed (see the warning above)")
        print(f"checkpoint {cid} written, encrypted, with attachment {ATTACHMENT}")
    # Leaving the block shut the system down and released the lease (w0 is not complete).
    return cid


def wrong_passphrase_is_refused(config: CheckpointConfig) -> bool:
    """True when a system with a wrong passphrase can neither open nor read the store."""
    wrong = config.with_changes(encryption_key=secrets.token_urlsafe(24))
    try:
        with ResumeSystem(wrong, worker_id="w0") as rs:
            rs.list_checkpoints()
    except (EncryptionKeyError, DecryptionError) as exc:
        print(f"a wrong passphrase is refused: {type(exc).__name__}: {exc}")
        return True
    print("PROBLEM: a wrong passphrase opened the store")
    return False


def s3_client_and_prefix(store_url: str) -> tuple[S3Client, str, str]:
    """A boto3 client for the store URL's endpoint, its bucket and its key prefix."""
    url = urlsplit(store_url)
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    client = boto3.client(
        "s3", endpoint_url=query.get("endpoint_url"), region_name=query.get("region")
    )
    prefix = url.path.strip("/")
    return client, url.netloc, f"{prefix}/" if prefix else ""


def bucket_reveals_nothing(store_url: str) -> bool:
    """True when no object key names the attachment and no object holds plaintext."""
    client, bucket, prefix = s3_client_and_prefix(store_url)
    needles = [PLAIN_NOTE.encode(), WEIGHTS[:32], WEIGHTS[100_000:100_032], b'"epoch"']
    leaks = []
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    for key in keys:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        if ATTACHMENT in key or any(needle in body for needle in needles):
            leaks.append(key)
    client.close()
    print(f"{len(keys)} objects under s3://{bucket}/{prefix}:")
    for key in keys:
        print(f"  {key.removeprefix(prefix)}")
    if leaks:
        print(f"PROBLEM: these objects reveal plaintext: {leaks}")
        return False
    print("no object key names the attachment and no object holds the plaintext")
    return True


def rotate(config: CheckpointConfig, op: str, old_cid: str) -> CheckpointConfig:
    """Rotate to a new passphrase; the old checkpoint stays readable. Returns the config
    that holds only the new passphrase."""
    # In production the new passphrase comes from your secret manager, like the old one.
    new_key = secrets.token_urlsafe(32)
    old_key = config.secret_key()
    assert old_key is not None
    rotated = config.with_changes(encryption_key=new_key, decryption_keys=(old_key,))
    with ResumeSystem(rotated, worker_id="w0") as rs:
        rs.start_monitoring(op)
        ctx = rs.resume_automatically(op)  # reads the checkpoint the old key sealed
        if ctx is None or ctx.checkpoint_id != old_cid or ctx.attachment(ATTACHMENT) != WEIGHTS:
            sys.exit(f"PROBLEM: after rotation the old checkpoint did not restore: {ctx}")
        print(f"after rotation {old_cid} still restores (state and attachment intact)")
        new_cid = rs.create_checkpoint("train", {"epoch": 2, "note": PLAIN_NOTE})
        print(f"checkpoint {new_cid} written under the new passphrase's data key")
        rs.complete()
    return config.with_changes(encryption_key=new_key)


def old_key_still_needed(new_only: CheckpointConfig, op: str, old_cid: str) -> bool:
    """True when the new passphrase alone reads new checkpoints but not the old one."""
    with ResumeSystem(new_only, worker_id="w0") as rs:
        newest = rs.list_checkpoints(op)[-1]
        rs.open_checkpoint(newest)
        try:
            rs.open_checkpoint(old_cid)
        except DecryptionError as exc:
            print(f"with the new passphrase alone {newest} opens, {old_cid} does not: {exc}")
            print("so keep the old passphrase in decryption_keys while such checkpoints exist")
            return True
    print(f"PROBLEM: {old_cid} decrypted without the old passphrase")
    return False


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bbp-encrypted-") as tmp:
        config = load_config(Path(tmp))
        op = utils.generate_operation_id("encrypted")
        cid = checkpoint_something(config, op)
        ok = wrong_passphrase_is_refused(config)
        ok = bucket_reveals_nothing(config.store_url) and ok
        new_only = rotate(config, op, cid)
        ok = old_key_still_needed(new_only, op, cid) and ok
    print("OK: encryption, refusal of a wrong passphrase and rotation all work" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
