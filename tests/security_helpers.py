"""Secrets, workloads and scanners of tests/test_security.py.

A fixture defined here reaches a test module only when the module imports it by name.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import os
import sqlite3
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import blake3
import pytest
import redis
from cli_helpers import store_snapshot
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from resume_helpers import new_op, preprobe

from bbp_dist_resume import CheckpointConfig, ResumeSystem
from bbp_dist_resume.repository.codec import KeyLookup, SealKey
from bbp_dist_resume.repository.manifest import CheckpointRecord
from bbp_dist_resume.repository.open import open_repository

PASSPHRASE = "pass-Phrase-7e1f0c"
OLD_RAW = b"old-data-key-for-rotation-32byte"
OLD_KEY = "base64:" + base64.b64encode(OLD_RAW).decode()
REDIS_USER, REDIS_PASSWORD = "bbp-sec", "redis-Pw-93d2b"
S3_SECRET = "s3-Secret-4b8e2a"
ATTACHMENT = "payroll-q3-export"
MARKER = "plain-Marker-c41d"


# -- secrets -----------------------------------------------------------------------------


def secrets_of() -> list[str]:
    """Every secret string the tests put into play, the session's S3 secret key too."""
    out = [PASSPHRASE, OLD_KEY.removeprefix("base64:"), OLD_RAW.decode(), REDIS_PASSWORD]
    return [s for s in [*out, S3_SECRET, os.environ.get("AWS_SECRET_ACCESS_KEY")] if s]


def assert_no_secret(text: str, where: str) -> None:
    for secret in secrets_of():
        assert secret not in text, f"a secret appears in {where}: {text[:3000]}"


def with_password(redis_url: str, password: str = REDIS_PASSWORD) -> str:
    return redis_url.replace("redis://", f"redis://{REDIS_USER}:{password}@", 1)


@pytest.fixture(name="secret_urls")
def secret_urls_fixture(backend_urls: tuple[str, str]) -> Iterator[tuple[str, str]]:
    """``backend_urls``, with Redis behind an ACL user whose password is in the URL."""
    store_url, coord_url = backend_urls
    if not coord_url.startswith("redis://"):
        yield store_url, coord_url
        return
    client = redis.Redis.from_url(coord_url)
    client.acl_setuser(
        REDIS_USER,
        enabled=True,
        reset=True,
        passwords=[f"+{REDIS_PASSWORD}"],
        keys=["*"],
        channels=["*"],
        categories=["+@all"],
    )
    yield store_url, with_password(coord_url)
    client.acl_deluser(REDIS_USER)
    client.close()


# -- a workload --------------------------------------------------------------------------


def sealed_config(urls: tuple[str, str], **changes: Any) -> CheckpointConfig:
    """An encrypting config (passphrase, and an old raw key for reading) with small
    chunks, nothing inlined and DEBUG logs; an S3 prefix is pre-probed."""
    base: dict[str, Any] = {
        "store_url": urls[0],
        "coord_url": urls[1],
        "lease_ttl": 2,
        "heartbeat_interval": 0.5,
        "enable_encryption": True,
        "encryption_key": PASSPHRASE,
        "decryption_keys": (OLD_KEY,),
        "chunk_min_size": 1024,
        "chunk_avg_size": 4096,
        "chunk_max_size": 16384,
        "inline_threshold": 0,
        "detailed_logging": True,
    }
    config = CheckpointConfig(**(base | changes))
    preprobe(config.store_url, config)
    return config


def workload() -> tuple[dict[str, Any], bytes]:
    """A state and an attachment that are easy to spot, several chunks long."""
    lines = [
        f"{MARKER} row {i} {ATTACHMENT} {hashlib.sha256(bytes(i)).hexdigest()}\n"
        for i in range(900)
    ]
    return {"note": MARKER, "rows": 900}, "".join(lines).encode()


def checkpoint_and_resume(config: CheckpointConfig) -> str:
    """A worker checkpoints twice (with an attachment, then without blocking) and stops;
    its successor resumes, reads the attachment, verifies deeply and completes. Returns
    the operation id; the attachment's checkpoint is ``{op}/w0/2``."""
    op, (state, data) = new_op(), workload()
    with ResumeSystem(config, "w0") as rs:
        rs.start_monitoring(op)
        rs.create_checkpoint("scan", state, {"meta": MARKER}, attachments={ATTACHMENT: data})
        future = rs.create_checkpoint("scan", state | {"n": 2}, blocking=False)
        assert isinstance(future, Future) and future.result()
        rs.stop_monitoring()
    with ResumeSystem(config, "w0") as rs:
        rs.start_monitoring(op)
        context = rs.resume_automatically(op)
        assert context is not None and context.state == state | {"n": 2}
        assert rs.open_checkpoint(f"{op}/w0/2").attachment(ATTACHMENT) == data
        assert rs.verify_checkpoint(f"{op}/w0/2", deep=True)
        rs.complete()
    return op


def everything_written(config: CheckpointConfig, root: Path) -> Any:
    """The store's objects, the files under ``root`` (names and sizes; the SQLite
    database's aside, heartbeats write it) and the backend's keys or row counts."""
    files = sorted(
        (str(p), p.stat().st_size) for p in root.rglob("*") if p.is_file() and ".db" not in p.name
    )
    if config.coord_url.startswith("redis"):
        client = redis.Redis.from_url(config.coord_url)
        backend: Any = sorted(client.keys("*"))
        client.close()
    else:
        db = sqlite3.connect(config.coord_url.removeprefix("sqlite:"))
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        backend = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone() for t in tables}
        db.close()
    return store_snapshot(config.store_url), files, backend


# -- what an encrypted store could give away ---------------------------------------------


def fingerprints(texts: list[bytes]) -> dict[str, bytes]:
    """What would give a plaintext away: the marker, the attachment name, and the hashes
    of each text (hex, raw and base64) by SHA-256, BLAKE3, SHA-1 and MD5."""
    out = {"marker": MARKER.encode(), "attachment name": ATTACHMENT.encode()}
    for i, text in enumerate(texts):
        digests = {
            "sha256": hashlib.sha256(text).digest(),
            "blake3": blake3.blake3(text).digest(),
            "sha1": hashlib.sha1(text).digest(),
            "md5": hashlib.md5(text).digest(),
        }
        for name, digest in digests.items():
            out[f"{name} of text {i} (hex)"] = digest.hex().encode()
            out[f"{name} of text {i} (raw)"] = digest
            out[f"{name} of text {i} (base64)"] = base64.b64encode(digest).rstrip(b"=")
    return out


def plaintexts(config: CheckpointConfig, op: str) -> list[bytes]:
    """Every part of worker w0's checkpoints and every chunk of them, as the library cut
    them (read back through the library, with the key)."""
    repo = open_repository(None, config)
    try:
        texts = []
        for record in repo.records(op, "w0"):
            if not isinstance(record, CheckpointRecord):
                continue  # a takeover record
            parts = repo.read(record)
            for name, ref in record.parts.items():
                texts.append(parts[name])
                at = 0
                for chunk in ref.chunks:
                    texts.append(parts[name][at : at + chunk.size])
                    at += chunk.size
        return texts
    finally:
        repo.close()


def leaks(config: CheckpointConfig, op: str) -> set[str]:
    """The kinds of fingerprint found in any key or object of the store."""
    found = set()
    everything = store_snapshot(config.store_url)
    for name, needle in fingerprints(plaintexts(config, op)).items():
        for key, blob in everything.items():
            if needle in key.encode() or needle in blob:
                found.add(name.split(" of ")[0])
    return found


class WrongKey(KeyLookup):
    """Answers every key id with a key of that id and other bytes."""

    def seal_key(self, key_id: bytes) -> SealKey | None:
        return SealKey(key_id, AESGCM(hashlib.sha256(b"not the key").digest()))


# -- unpickling and evaluation ---------------------------------------------------------

BANNED_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle"}
BANNED_CALLS = {"eval", "exec", "__import__"}
UNSAFE_YAML = {"load", "unsafe_load", "full_load", "load_all", "Loader", "UnsafeLoader"}


def banned_uses(source: str) -> list[str]:
    """Imports of unpickling modules (also by name in a string, as for importlib), the
    builtins eval, exec and ``__import__``, and yaml's unsafe loaders (under any alias)."""
    tree = ast.parse(source)
    yaml_names = {"yaml"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yaml_names |= {a.asname or a.name for a in node.names if a.name == "yaml"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            found += [module] if module.split(".")[0] in BANNED_MODULES else []
            if module == "yaml":
                found += [f"yaml.{a.name}" for a in node.names if a.name in UNSAFE_YAML]
        elif isinstance(node, ast.Name) and node.id in BANNED_CALLS:
            found.append(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            # builtins.eval, not a client's eval (Redis EVAL runs Lua on the server).
            builtin = node.value.id in ("builtins", "__builtins__") and node.attr in BANNED_CALLS
            unsafe = node.value.id in yaml_names and node.attr in UNSAFE_YAML
            found += [f"{node.value.id}.{node.attr}"] if builtin or unsafe else []
        elif isinstance(node, ast.Constant) and node.value in BANNED_MODULES:
            found.append(repr(node.value))
    return found
