"""Damaged objects in a multi-worker history, seen from the whole system, on both backend
pairs (issue 7, "Corruption").

Each case builds the same history: a producer and a consumer of one channel, three
checkpoints each, taken in turns, so the consumer's newest checkpoint has consumed past
what the producer's previous one had produced. The case damages the newest checkpoint of
one worker (a chunk, or its commit record) with a raw store client, then checks that

(a) ``verify_checkpoint`` quick and deep, and ``bbp-resume verify OP [--deep] --json``,
    name the damaged checkpoint and the object, each level seeing exactly what it can
    (a quick check only lists objects: it cannot see a bit flip or a truncation);
(b) ``resume_automatically`` of fresh systems (the consumer first, so it cannot learn of
    the damage from the producer's failed restore) gives every worker its place in the
    latest intact consistent cut, computed here independently of the library;
(c) nothing comes from a bad object: the restored state and attachment are byte for byte
    those of the intact checkpoint, and the damaged one cannot be opened;
(d) nothing else changed: every object of the store and everything in the backend is as it
    was after the damage (the damaged marks live in the systems' memory only).

The repository-level checks of each kind of damage (every header field, every record
field, decompression bombs) are in tests/test_bad_input.py.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from assertions import raises_exactly
from cli_helpers import Cli, snapshot, urls
from resume_helpers import LOGGER, MakeConfig, new_op, preprobe

from bbp_dist_resume import (
    BBPError,
    CheckpointConfig,
    DecryptionError,
    IntegrityError,
    ManifestError,
    ResumeSystem,
    open_repository,
)
from bbp_dist_resume.blobstore import BlobStore, open_store
from bbp_dist_resume.coordination import CheckpointSummary, open_coordination
from bbp_dist_resume.repository import ChunkId, Manifest, Repository
from bbp_dist_resume.repository.codec import encode
from bbp_dist_resume.repository.manifest import ChunkRef, PartRef, record_key

# isort: split
# Fixtures reach a test module by being imported into it (autouse ones included).
from cli_helpers import cli_fixture  # noqa: F401
from resume_helpers import probed_s3_prefix  # noqa: F401

PRODUCER, CONSUMER, CHANNEL = "prod", "cons", "rows"
ATTACHMENT, STATE, ATTACHMENT_PART = "table.csv", "state", "att.table.csv"
# Taken in turns P1 C1 P2 C2 P3 C3: C3 has consumed past what P2 produced.
OFFSETS = {PRODUCER: (10, 20, 30), CONSUMER: (5, 15, 25)}
# Raw 32-byte keys: the same key handling without scrypt at every open.
KEY = "base64:" + base64.b64encode(b"the store's key, 32 bytes long!!").decode()
OTHER_KEY = "base64:" + base64.b64encode(b"another store's key, 32 bytes.!!").decode()


@dataclass(frozen=True, slots=True)
class Kept:
    """One checkpoint as it was written: what restoring it must give back."""

    cid: str
    worker: str
    seq: int
    state: dict[str, Any]
    attachment: bytes
    offset: int


@dataclass
class Scene:
    """One test's history, with raw access to its store."""

    config: CheckpointConfig
    op: str
    kept: dict[str, list[Kept]]
    store: BlobStore
    repo: Repository
    tmp: Path
    victim: Kept = field(init=False)

    def manifest(self, kept: Kept) -> Manifest:
        record = self.repo.load_record(self.op, kept.worker, kept.seq)
        assert isinstance(record, Manifest)
        return record

    def chunk(self, part: str) -> str:
        """The id of the victim's one chunk of ``part``."""
        (ref,) = self.manifest(self.victim).parts[part].chunks
        return ref.id

    def record_key(self, kept: Kept | None = None) -> str:
        kept = kept or self.victim
        return record_key(self.op, kept.worker, kept.seq)


def write_history(config: CheckpointConfig, op: str) -> dict[str, list[Kept]]:
    """Three checkpoints of each worker, in turns, every chunk of its own (random data)."""
    systems = {w: ResumeSystem(config, w) for w in (PRODUCER, CONSUMER)}
    kept: dict[str, list[Kept]] = {PRODUCER: [], CONSUMER: []}
    try:
        for rs in systems.values():
            rs.start_monitoring(op, workers=[PRODUCER, CONSUMER])
        for turn in range(3):
            for worker, rs in systems.items():
                kept[worker].append(checkpoint(rs, worker, OFFSETS[worker][turn]))
    finally:
        for rs in systems.values():
            rs.shutdown()
    return kept


def checkpoint(rs: ResumeSystem, worker: str, offset: int) -> Kept:
    state = {"worker": worker, "offset": offset, "rows": [os.urandom(16).hex() for _ in range(40)]}
    blob = os.urandom(3000)
    mine = {CHANNEL: offset}
    cid = rs.create_checkpoint(
        "step",
        state,
        attachments={ATTACHMENT: blob},
        produced=mine if worker == PRODUCER else None,
        consumed=mine if worker == CONSUMER else None,
    )
    return Kept(cid, worker, int(cid.rsplit("/", 1)[1]), state, blob, offset)


# -- the damage ----------------------------------------------------------------------------
# Each returns the objects a verification must name: chunk ids, or the record's key.


def flip(data: bytes, at: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[at] ^= mask
    return bytes(out)


def rewrite_chunk(s: Scene, change: Callable[[bytes], bytes]) -> tuple[str, ...]:
    cid = s.chunk(STATE)
    key = ChunkId.parse(cid).store_key
    s.store.put(key, change(s.store.get(key)))
    return (cid,)


def flip_body(s: Scene) -> tuple[str, ...]:
    return rewrite_chunk(s, lambda b: flip(b, (26 + len(b)) // 2))


def flip_header(s: Scene) -> tuple[str, ...]:
    return rewrite_chunk(s, lambda b: flip(b, 5))  # the flags byte: "compressed" toggled


def truncate(s: Scene) -> tuple[str, ...]:
    return rewrite_chunk(s, lambda b: b[: len(b) // 2])


def swap_pair(s: Scene) -> tuple[str, ...]:
    a, b = s.chunk(STATE), s.chunk(ATTACHMENT_PART)
    ka, kb = ChunkId.parse(a).store_key, ChunkId.parse(b).store_key
    blob_a, blob_b = s.store.get(ka), s.store.get(kb)
    s.store.put(ka, blob_b)
    s.store.put(kb, blob_a)
    return (a, b)


def move_chunk(s: Scene) -> tuple[str, ...]:
    """The attachment's chunk put under the state chunk's id (encrypted: the AEAD binds
    each object to its key)."""
    source = ChunkId.parse(s.chunk(ATTACHMENT_PART)).store_key
    return rewrite_chunk(s, lambda _: s.store.get(source))


def delete_chunk(s: Scene) -> tuple[str, ...]:
    cid = s.chunk(STATE)
    s.store.delete_many([ChunkId.parse(cid).store_key])
    return (cid,)


def replace_record(s: Scene, blob: bytes) -> tuple[str, ...]:
    s.store.put(s.record_key(), blob)
    return (s.record_key(),)


def foreign_record(s: Scene, config: CheckpointConfig, op: str, *, chunks: bool = False) -> bytes:
    """The record of the victim's slot (worker, seq) in another history: of another store
    or operation (``config``, ``op``). ``chunks``: copy its chunks into this store too."""
    write_history(config, op)
    other = open_store(config.store_url)
    try:
        blob = other.get(record_key(op, s.victim.worker, s.victim.seq))
        if chunks:
            for info in other.list("chunks/"):
                s.store.put(info.key, other.get(info.key))
    finally:
        other.close()
    return blob


def other_store(s: Scene, *, encrypted: bool = False, chunks: bool = False) -> CheckpointConfig:
    secret = {"enable_encryption": True, "encryption_key": OTHER_KEY} if encrypted else {}
    return s.config.with_changes(
        store_url=f"file:{s.tmp / 'other-store'}",
        coord_url=f"sqlite:{s.tmp / 'other.db'}",
        **secret,
    )


def record_of_another_store(s: Scene) -> tuple[str, ...]:
    return replace_record(s, foreign_record(s, other_store(s), s.op))


def record_and_chunks_of_another_store(s: Scene) -> tuple[str, ...]:
    return replace_record(s, foreign_record(s, other_store(s), s.op, chunks=True))


def record_under_another_key(s: Scene) -> tuple[str, ...]:
    return replace_record(s, foreign_record(s, other_store(s, encrypted=True), s.op))


def record_of_another_operation(s: Scene) -> tuple[str, ...]:
    return replace_record(s, foreign_record(s, s.config, new_op()))


def record_of_another_worker(s: Scene) -> tuple[str, ...]:
    other = s.kept[CONSUMER][-1]
    assert other.seq == s.victim.seq
    return replace_record(s, s.store.get(s.record_key(other)))


def record_of_another_seq(s: Scene) -> tuple[str, ...]:
    return replace_record(s, s.store.get(s.record_key(s.kept[s.victim.worker][-2])))


def record_pointing_nowhere(s: Scene) -> tuple[str, ...]:
    """A well-formed record of the slot whose chunks do not exist, and an index that
    agrees with it (as after a rebuild of the backend from the store)."""
    manifest = s.manifest(s.victim)
    nowhere = {
        name: PartRef(
            size=part.size,
            chunks=tuple(ChunkRef(id=os.urandom(32).hex(), size=c.size) for c in part.chunks),
        )
        for name, part in manifest.parts.items()
    }
    record = manifest.model_copy(update={"parts": nowhere}).sealed()
    s.store.put(
        record.store_key,
        encode(record.to_bytes(), store_key=record.store_key, level=None, seal=None),
    )
    coord = open_coordination(s.config.coord_url)
    try:
        coord.delete_entries(s.op, s.victim.worker, [s.victim.seq])
        coord.repair(s.op, s.victim.worker, [CheckpointSummary.of(record)])
    finally:
        coord.close()
    return tuple(sorted(c.id for p in nowhere.values() for c in p.chunks))


# -- the table -------------------------------------------------------------------------------

OK, MISSING, CORRUPT, RECORD = "ok", "missing", "corrupt", "record"


@dataclass(frozen=True, slots=True)
class Case:
    """A kind of damage; what a quick and a deep verification see (``OK``: nothing, or the
    objects as ``MISSING`` or ``CORRUPT`` chunks, or an unreadable ``RECORD``); what
    opening the damaged checkpoint raises (a missing chunk too is ``IntegrityError``: the
    checkpoint exists but is damaged; ``ObjectNotFound`` means there is no such checkpoint)."""

    damage: Callable[[Scene], tuple[str, ...]]
    quick: str
    deep: str
    error: type[BBPError]
    victim: str = PRODUCER
    encrypted: bool = False
    why: str = ""  # a word on what reading finds


CASES = {
    "bit flip in a chunk body": Case(flip_body, OK, CORRUPT, IntegrityError),
    "bit flip in a chunk header": Case(flip_header, OK, CORRUPT, IntegrityError),
    "truncated chunk": Case(truncate, OK, CORRUPT, IntegrityError),
    "swapped pair of chunks": Case(swap_pair, OK, CORRUPT, IntegrityError),
    "deleted chunk": Case(delete_chunk, MISSING, MISSING, IntegrityError),
    "deleted chunk of the consumer": Case(
        delete_chunk, MISSING, MISSING, IntegrityError, victim=CONSUMER
    ),
    "record of another store": Case(record_of_another_store, RECORD, RECORD, ManifestError),
    "record and chunks of another store": Case(
        record_and_chunks_of_another_store, RECORD, RECORD, ManifestError
    ),
    "record of another operation": Case(record_of_another_operation, RECORD, RECORD, ManifestError),
    "record of another worker": Case(record_of_another_worker, RECORD, RECORD, ManifestError),
    "record of another seq": Case(record_of_another_seq, RECORD, RECORD, ManifestError),
    "record pointing nowhere": Case(record_pointing_nowhere, MISSING, MISSING, IntegrityError),
    "encrypted: record under another key": Case(
        record_under_another_key, RECORD, RECORD, DecryptionError, encrypted=True
    ),
    "encrypted: chunk moved under another id": Case(
        move_chunk, OK, CORRUPT, DecryptionError, encrypted=True, why="authentication failed"
    ),
}


@pytest.fixture
def scene(make_config: MakeConfig, tmp_path: Path, case: Case) -> Iterator[Scene]:
    secret = {"enable_encryption": True, "encryption_key": KEY} if case.encrypted else {}
    config = make_config(inline_threshold=0, **secret)
    preprobe(config.store_url, config)
    op = new_op()
    kept = write_history(config, op)
    store, repo = open_store(config.store_url), open_repository(config.store_url, config)
    s = Scene(config, op, kept, store, repo, tmp_path)
    s.victim = kept[case.victim][-1]
    try:
        yield s
    finally:
        repo.close()
        store.close()


def expected_cut(kept: dict[str, list[Kept]], damaged: set[str]) -> dict[str, Kept | None]:
    """The latest consistent cut of intact checkpoints, worked out for this history: the
    producer's newest intact one, the consumer's newest intact one within it."""
    intact = {w: [k for k in ks if k.cid not in damaged] for w, ks in kept.items()}
    producer = intact[PRODUCER][-1] if intact[PRODUCER] else None
    limit = producer.offset if producer is not None else 0
    within = [k for k in intact[CONSUMER] if k.offset <= limit]
    return {PRODUCER: producer, CONSUMER: within[-1] if within else None}


# -- the checks ------------------------------------------------------------------------------


def check_report(report: dict[str, Any], seen: str, objects: tuple[str, ...], why: str) -> None:
    """A verification report (as ``--json`` prints it) names exactly ``objects``."""
    named = {
        MISSING: sorted(report["missing"]),
        CORRUPT: sorted(cid for cid, _ in report["corrupt"]),
        RECORD: sorted(objects) if any(objects[0] in p for p in report["problems"]) else [],
    }
    assert report["ok"] is (seen == OK), report
    for kind, found in named.items():
        assert found == (sorted(objects) if kind == seen else []), (kind, report)
    if seen == RECORD:
        assert len(report["problems"]) == 1 and report["chunks_checked"] == 0, report
    else:
        assert report["problems"] == [], report
    assert all(why in reason for _, reason in report["corrupt"]), report


def check_verification(
    s: Scene, case: Case, objects: tuple[str, ...], cli: Cli, caplog: pytest.LogCaptureFixture
) -> None:
    """(a): each level names the checkpoint and the object, or sees nothing (OK)."""
    auditor = ResumeSystem(s.config, "auditor")
    try:
        for deep, seen in ((False, case.quick), (True, case.deep)):
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger=LOGGER):
                assert auditor.verify_checkpoint(s.victim.cid, deep=deep) is (seen == OK)
            if seen != OK:
                (line,) = [r.getMessage() for r in caplog.records if s.victim.cid in r.getMessage()]
                # The warning names the first bad object the library met (of two swapped
                # chunks, or of a record's missing chunks, either one).
                assert any(o in line for o in objects), line
    finally:
        auditor.shutdown()
    everything = {k.cid for kept in s.kept.values() for k in kept}
    for flags, seen in (((), case.quick), (("--deep",), case.deep)):
        ran = cli(*urls(s.config), "verify", s.op, *flags, "--json")
        assert ran.code == (0 if seen == OK else 3), ran
        reports = {r["checkpoint_id"]: r for r in json.loads(ran.out)}
        assert set(reports) == everything
        assert [c for c, r in reports.items() if not r["ok"]] == (
            [] if seen == OK else [s.victim.cid]
        )
        check_report(reports[s.victim.cid], seen, objects, case.why)


def check_resume(s: Scene, case: Case) -> None:
    """(b) and (c): fresh systems resume into the expected cut, with its exact bytes."""
    expected = expected_cut(s.kept, {s.victim.cid})
    for worker in (CONSUMER, PRODUCER):  # the consumer first: it learns nothing from the other
        want = expected[worker]
        assert want is not None
        with ResumeSystem(s.config, worker) as rs:
            resume_into(s, case, rs, want)


def resume_into(s: Scene, case: Case, rs: ResumeSystem, want: Kept) -> None:
    seen: list[tuple[str, bool]] = []
    rs.set_recovery_callback(lambda cid, ok: seen.append((cid, ok)))
    ctx = rs.resume_automatically(s.op)
    assert ctx is not None and ctx.checkpoint_id == want.cid, (rs.worker_id, ctx)
    failed = [(s.victim.cid, False)] if want.worker == s.victim.worker else []
    assert seen == [*failed, (want.cid, True)]
    assert ctx.state == want.state
    assert ctx.attachment(ATTACHMENT) == want.attachment
    path = ctx.restore_attachment(ATTACHMENT, s.tmp / f"{want.worker}.csv")
    assert path.read_bytes() == want.attachment
    offsets = ctx.produced if want.worker == PRODUCER else ctx.consumed
    assert dict(offsets) == {CHANNEL: want.offset}
    raises_exactly(case.error, lambda: rs.open_checkpoint(s.victim.cid))
    assert rs.resume_from_checkpoint(s.victim.cid) is None


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_damaged_newest_checkpoint_is_named_passed_over_and_never_restored(
    case: Case,
    scene: Scene,
    cli: Cli,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if case.encrypted:
        monkeypatch.setenv("BBP_ENABLE_ENCRYPTION", "true")
        monkeypatch.setenv("BBP_ENCRYPTION_KEY", KEY)
    objects = case.damage(scene)
    before = snapshot(scene.config)
    check_verification(scene, case, objects, cli, caplog)
    check_resume(scene, case)
    assert snapshot(scene.config) == before  # (d)
