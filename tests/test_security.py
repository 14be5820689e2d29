"""Security review: one test per claim of the README's security notes, each able to fail.

Secrets (the encryption passphrase, an old raw key, an S3 secret key, a Redis password)
never reach a repr, a log record, the CLI's output or an exception; ids that could escape
a key prefix or a folder are refused before anything is written; a local store is 0600
files in 0700 folders whatever the umask; an encrypted store shows no plaintext, no hash
of it and no attachment name; a wrong key is an error, never garbage; passphrases go
through scrypt at restic's strength or more; no module can unpickle or evaluate.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import stat
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Cli, cli_fixture, store_snapshot  # noqa: F401
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from resume_helpers import new_op, preprobe
from security_helpers import (
    ATTACHMENT,
    OLD_KEY,
    PASSPHRASE,
    REDIS_PASSWORD,
    S3_SECRET,
    WrongKey,
    assert_no_secret,
    banned_uses,
    checkpoint_and_resume,
    everything_written,
    leaks,
    sealed_config,
    secret_urls_fixture,  # noqa: F401
    with_password,
)

import bbp_dist_resume
from bbp_dist_resume import CheckpointConfig, ResumeSystem
from bbp_dist_resume.api.keyadmin import add_key
from bbp_dist_resume.blobstore import BlobStore, open_store
from bbp_dist_resume.coordination.url import open_coordination
from bbp_dist_resume.errors import (
    BBPError,
    ConfigError,
    CoordinationError,
    DecryptionError,
    InvalidIdentifier,
    ManifestError,
)
from bbp_dist_resume.repository.codec import decode, decode_plain, encode
from bbp_dist_resume.repository.open import open_repository
from bbp_dist_resume.repository.storeconfig import CONFIG_KEY

# -- secrets -----------------------------------------------------------------------------


def test_config_repr_and_str_mask_every_secret() -> None:
    config = CheckpointConfig(
        store_url=f"s3://bkt/p?endpoint_url=http://AKID:{S3_SECRET}@127.0.0.1:1",
        coord_url=with_password("redis://127.0.0.1:6379/0"),
        enable_encryption=True,
        encryption_key=PASSPHRASE,
        decryption_keys=(OLD_KEY,),
    )
    s3_creds = CheckpointConfig(store_url=f"s3://AKID:{S3_SECRET}@bkt/p")
    for text in (repr(config), str(config), repr([config]), repr(s3_creds), str(s3_creds)):
        assert "store_url" in text and "encryption_key" in text
        assert_no_secret(text, "a config's repr")
    assert "redis://***@127.0.0.1:6379/0" in repr(config)


def exception_text(fn: Callable[[], object], kind: type[BBPError] = BBPError) -> str:
    """The whole traceback (message, causes, context) of the ``kind`` ``fn`` raises."""
    with pytest.raises(kind) as info:
        fn()
    return "".join(traceback.format_exception(info.value))


def test_exceptions_carry_no_secret(redis_url: str, s3_endpoint: str) -> None:
    creds = f"//AKID:{S3_SECRET}@"
    texts = [
        exception_text(lambda: open_coordination(with_password("redis://[") + "/0"), ConfigError),
        exception_text(lambda: open_coordination(with_password("redis://127.0.0.1:1/0"))),
        exception_text(
            lambda: open_coordination(with_password(redis_url, "wrong")).get_operation("op"),
            CoordinationError,
        ),
        exception_text(lambda: open_store(f"s3://AKID:{S3_SECRET}@bkt/p"), ConfigError),
        # Credentials in the endpoint are refused too: botocore logs the endpoint.
        exception_text(
            lambda: open_store(f"s3://bkt/p?endpoint_url={s3_endpoint.replace('//', creds)}"),
            ConfigError,
        ),
        exception_text(lambda: CheckpointConfig(encryption_key=PASSPHRASE, lease_ttl="soon")),
        exception_text(lambda: CheckpointConfig(decryption_keys=(OLD_KEY, 3))),
        exception_text(lambda: CheckpointConfig(coord_url=f"ftp://u:{REDIS_PASSWORD}@h")),
    ]
    for text in texts:
        assert_no_secret(text, "an exception")


@pytest.mark.timeout(120)
def test_logs_of_a_checkpoint_and_resume_carry_no_secret(
    secret_urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    checkpoint_and_resume(sealed_config(secret_urls))
    ours = [r for r in caplog.records if r.name.startswith("bbp_dist_resume")]
    assert any(r.levelno == logging.DEBUG for r in ours), "no DEBUG record: nothing was checked"
    for record in caplog.records:  # botocore's and redis-py's too
        seen = record.getMessage() + repr(record.__dict__)
        if record.exc_info:
            seen += "".join(traceback.format_exception(record.exc_info[1]))
        assert_no_secret(seen, f"a log record of {record.name}")


def test_cli_output_and_errors_carry_no_secret(
    cli: Cli, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BBP_ENCRYPTION_KEY", PASSPHRASE)
    monkeypatch.setenv("BBP_DECRYPTION_KEYS", OLD_KEY)
    monkeypatch.setenv("BBP_ENABLE_ENCRYPTION", "true")
    coord = with_password(redis_url)  # no such user: every connection is refused
    store = f"s3://bkt/p?endpoint_url=http://AKID:{S3_SECRET}@127.0.0.1:1"
    runs = [
        cli("--store", store, "--coord", coord, "config", "show", *fmt) for fmt in ([], ["--json"])
    ]
    assert all(ran.code == 0 and "redis://***@" in ran.out for ran in runs), runs
    local = f"file:{tmp_path / 'store'}"
    for args in (["ops"], ["config", "validate", "--connect"], ["--debug", "ops"]):
        runs.append(cli("--store", local, "--coord", coord, *args))
        assert runs[-1].code != 0 and runs[-1].err, runs[-1]
    runs.append(cli("--store", f"s3://AKID:{S3_SECRET}@bkt/p", "ops"))
    assert runs[-1].code != 0
    for ran in runs:
        assert_no_secret(ran.out + ran.err, "the CLI's output")


# -- ids -----------------------------------------------------------------------------------

BAD_IDS = [
    *("", ".", "..", "../x", "x/..", "a/b", "/abs", "/etc/passwd", "a\\b", "..\\x", "C:\\x"),
    *("a\x00b", "a\nb", " a", "a b", "{a}", "a:b", "x" * 129, "x" * 5000, "\ud800"),
    # unicode look-alikes: fullwidth and leader dots, division and fraction slashes,
    # fullwidth and Cyrillic a, a combining accent, RTL override, zero width space, digits
    *("\uff0e\uff0e", "\u2024\u2024", "a\u2215b", "a\u2044b", "\uff41", "\u0430"),
    *("e\u0301", "a\u202eb", "a\u200bb", "\u0663"),
]
BAD_CHECKPOINT_IDS = [
    *BAD_IDS,
    *("op/w0/0", "op/w0/-1", "op/w0/1.0", "op/w0/\uff11", "op/w0/\u00b2", "op/w0/1/x"),
    *("op//1", "/op/w0/1", "op\\w0\\1", "../op/w0/1", "op/w0/1/../../x", "op/../1"),
    "op/w0/" + "9" * 11,
    *(f"{bad}/w0/1" for bad in BAD_IDS),
    *(f"op/{bad}/1" for bad in BAD_IDS),
]


def refused(fn: Callable[[], object]) -> None:
    with pytest.raises(InvalidIdentifier):
        fn()


def refuse_bad_ids(rs: ResumeSystem, config: CheckpointConfig) -> None:
    for bad in BAD_IDS:
        refused(lambda: ResumeSystem(config, bad))  # noqa: B023 - each runs at once
        for call in (
            rs.can_resume,
            rs.resume_automatically,
            rs.get_available_resume_points,
            ResumeSystem(config, "w9").start_monitoring,
        ):
            refused(lambda: call(bad))  # noqa: B023
        if bad:  # list_checkpoints("") lists every operation
            refused(lambda: rs.list_checkpoints(bad))  # noqa: B023
        refused(lambda: rs.create_checkpoint("scan", {"n": 2}, attachments={bad: b"x"}))  # noqa: B023
        refused(lambda: rs.create_checkpoint(bad, {"n": 2}))  # noqa: B023
    refused(lambda: rs.create_checkpoint("scan", {}, attachments={"x" * 125: b"x"}))


@pytest.mark.timeout(120)
def test_ids_that_could_escape_are_refused_and_nothing_is_written(
    secret_urls: tuple[str, str], tmp_path: Path
) -> None:
    config = sealed_config(secret_urls, detailed_logging=False)
    op = new_op()
    with ResumeSystem(config, "w0") as rs:
        rs.start_monitoring(op)
        rs.create_checkpoint("scan", {"n": 1})
        before = everything_written(config, tmp_path)
        refuse_bad_ids(rs, config)
        for bad in BAD_CHECKPOINT_IDS:
            for call in (
                rs.open_checkpoint,
                rs.verify_checkpoint,
                rs.delete_checkpoint,
                rs.resume_from_checkpoint,
            ):
                refused(lambda: call(bad.replace("op", op, 1)))  # noqa: B023
        assert everything_written(config, tmp_path) == before
        assert rs.list_checkpoints(op) == [f"{op}/w0/2"]


# -- the local store's permissions --------------------------------------------------------


def test_local_store_files_are_0600_and_folders_0700_whatever_the_umask(tmp_path: Path) -> None:
    data = tmp_path / "data"
    urls = (f"file:{data / 'store'}", f"sqlite:{data / 'coord' / 'c.db'}")
    old = os.umask(0o022)
    try:
        config = sealed_config(urls, max_checkpoints=2)
        checkpoint_and_resume(config)
        with ResumeSystem(config, "w1") as rs:  # retention deletes; attachments spooled
            rs.start_monitoring(new_op())
            for n in range(4):
                attachment = {"a": bytes([n]) * 50_000}
                rs.create_checkpoint("s", {"n": n}, attachments=attachment, blocking=False)
            rs.wait_until_finished()
    finally:
        os.umask(old)
    paths = [data / "store", *data.rglob("*")]
    assert len([p for p in paths if "chunks" in p.parts and p.is_file()]) > 5
    assert any(p.name.startswith("c.db") for p in paths) and any("keys" in p.parts for p in paths)
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path} is {mode:o}"


# -- an encrypted store --------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_an_encrypted_store_reveals_no_plaintext_hash_or_attachment_name(
    backend_urls: tuple[str, str],
) -> None:
    # No compression: encryption alone must hide it all.
    sealed = sealed_config(backend_urls, enable_compression=False)
    assert leaks(sealed, checkpoint_and_resume(sealed)) == set()
    # The same scan finds all of it in a store without encryption.
    elsewhere = sealed.store_url.replace("/t-", "/plain-t-").replace("/store", "/plain")
    plain = sealed.with_changes(
        enable_encryption=False, encryption_key=None, decryption_keys=(), store_url=elsewhere
    )
    preprobe(plain.store_url, plain)
    assert {"marker", "attachment name", "blake3"} <= leaks(plain, checkpoint_and_resume(plain))


# -- wrong keys ----------------------------------------------------------------------------


def test_a_wrong_key_gives_decryption_error_never_garbage(tmp_path: Path) -> None:
    urls = (f"file:{tmp_path / 'store'}", f"sqlite:{tmp_path / 'coord.db'}")
    config = sealed_config(urls, detailed_logging=False)
    op = checkpoint_and_resume(config)
    objects = store_snapshot(config.store_url)
    sealed = {k: v for k, v in objects.items() if k.startswith(("chunks/", "checkpoints/"))}
    assert len(sealed) > 5
    for key, blob in sealed.items():  # a key of the right id and the wrong bytes
        with pytest.raises(DecryptionError, match="authentication failed"):
            decode(blob, store_key=key, max_size=1 << 26, keys=WrongKey(), require_encrypted=True)
    # Rotated to a new secret without keeping the old one: the old checkpoint's objects
    # name a data key that no configured secret opens.
    newer = config.with_changes(encryption_key=OLD_KEY, decryption_keys=(PASSPHRASE,))
    add_key(newer)
    with ResumeSystem(newer.with_changes(decryption_keys=()), "w0") as rs:
        with pytest.raises(DecryptionError, match="no configured key opens"):
            rs.open_checkpoint(f"{op}/w0/2")
        assert rs.verify_checkpoint(f"{op}/w0/2", deep=True) is False
    with ResumeSystem(newer, "w0") as rs:  # with it, the same checkpoint opens
        assert rs.open_checkpoint(f"{op}/w0/2").attachment(ATTACHMENT)


# -- scrypt --------------------------------------------------------------------------------

RESTIC = {"n": 1 << 15, "r": 8, "p": 1}


def read_json(store: BlobStore, key: str) -> Any:
    return json.loads(decode_plain(store.get(key), store_key=key, max_size=1 << 16))


def test_passphrases_use_scrypt_at_least_as_strong_as_restic(tmp_path: Path) -> None:
    urls = (f"file:{tmp_path / 'store'}", f"sqlite:{tmp_path / 'coord.db'}")
    config = sealed_config(urls, decryption_keys=(), detailed_logging=False)
    open_repository(None, config).close()
    store = open_store(config.store_url)
    kdf = read_json(store, CONFIG_KEY)["kdf"]
    n, r, p = kdf["n"], kdf["r"], kdf["p"]
    assert kdf["name"] == "scrypt" and n >= RESTIC["n"] and r >= RESTIC["r"] and p >= RESTIC["p"]
    salt = base64.b64decode(kdf["salt"])
    assert len(salt) >= 16
    # The data key opens with the KEK that hashlib's own scrypt derives from the
    # passphrase with those parameters: they are the ones really used.
    [info] = list(store.list("keys/"))
    key_obj = read_json(store, info.key)
    kek = hashlib.scrypt(PASSPHRASE.encode(), salt=salt, n=n, r=r, p=p, maxmem=1 << 30, dklen=32)
    wrapped = base64.b64decode(key_obj["wrapped"])
    aad = f"bbp key {key_obj['key_id']}".encode()
    assert len(AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], aad)) == 32
    # A store config claiming weaker parameters is refused, and nothing is written.
    for weaker in ({"n": 1 << 14}, {"r": 4}, {"p": 0}, {"n": 1 << 10, "r": 1}):
        doc = read_json(store, CONFIG_KEY)
        doc["kdf"] = kdf | weaker
        body = json.dumps(doc).encode()
        store.put(CONFIG_KEY, encode(body, store_key=CONFIG_KEY, level=None, seal=None))
        before = store_snapshot(config.store_url)
        with pytest.raises(ManifestError, match="malformed store config"):
            open_repository(None, config)
        assert store_snapshot(config.store_url) == before
    store.close()


# -- no unpickling, no evaluation ---------------------------------------------------------


def test_no_module_can_unpickle_or_evaluate() -> None:
    # The scanner finds each banned use of a sample, so finding none means something.
    sample = (
        "import pickle\nfrom marshal import loads\nimport shelve\neval('1')\nexec('x')\n"
        "import yaml as y\ny.load(s)\nfrom yaml import unsafe_load\nbuiltins.eval('1')\n"
        "__import__('os')\nimportlib.import_module('pickle')\ny.safe_load(s)\nimport json\n"
    )
    assert len(banned_uses(sample)) == 10, banned_uses(sample)
    root = Path(bbp_dist_resume.__file__).parent
    modules = sorted(root.rglob("*.py"))
    assert len(modules) > 50
    found = {str(p.relative_to(root)): banned_uses(p.read_text()) for p in modules}
    assert {p: uses for p, uses in found.items() if uses} == {}
