"""Fixtures and helpers shared by the ``ResumeSystem`` test modules (test_resume_*.py).

A fixture defined here reaches a test module only when the module imports it by name:
every test_resume_*.py imports ``probed_s3_prefix`` (autouse) and the fixtures it uses.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bbp_dist_resume import CheckpointConfig, LeaseHeldError, ResumeSystem, StoreUnavailable
from bbp_dist_resume.blobstore import BlobStore, open_store
from bbp_dist_resume.coordination import OperationStatus, open_coordination
from bbp_dist_resume.errors import CoordinationUnavailable
from bbp_dist_resume.repository import open_on_store
from bbp_dist_resume.repository.storeconfig import CONFIG_KEY

MakeConfig = Callable[..., CheckpointConfig]
Systems = Callable[..., ResumeSystem]
Damaging = Callable[[ResumeSystem], "Damage"]
LOGGER = "bbp_dist_resume"


# -- fixtures ----------------------------------------------------------------------------

_STORE_CONFIG: dict[str, bytes] = {}


@pytest.fixture(autouse=True)
def probed_s3_prefix(backend_urls: tuple[str, str]) -> None:
    """Give each test's fresh S3 prefix the store ``config`` object of a prefix already
    probed, so that opening it skips the create-only probe (seconds on SeaweedFS, which
    serialises conditional writes to one key). The probe itself is tested elsewhere."""
    preprobe(backend_urls[0])


def preprobe(store_url: str, config: CheckpointConfig | None = None) -> None:
    """Copy a probed store's ``config`` object into a fresh S3 prefix (see above), one
    probed per chunking of ``config`` (the store's config fixes the chunk sizes)."""
    if not store_url.startswith("s3:"):
        return
    config = (config or CheckpointConfig()).with_changes(store_url=store_url)
    chunking = f"{config.chunk_min_size}/{config.chunk_avg_size}/{config.chunk_max_size}"
    store = open_store(store_url)
    try:
        if chunking in _STORE_CONFIG:
            store.put(CONFIG_KEY, _STORE_CONFIG[chunking])
        else:
            open_on_store(store, config)  # closed with the store below
            _STORE_CONFIG[chunking] = store.get(CONFIG_KEY)
    finally:
        store.close()


@pytest.fixture(name="systems")
def systems_fixture() -> Iterator[Systems]:
    """``systems(config, worker_id="w0")``: an initialized ``ResumeSystem``, shut down at
    the end of the test."""
    made: list[ResumeSystem] = []

    def make(config: CheckpointConfig, worker_id: str = "w0") -> ResumeSystem:
        rs = ResumeSystem(config, worker_id)
        rs.initialize()
        made.append(rs)
        return rs

    yield make
    for rs in reversed(made):
        rs.shutdown()


@pytest.fixture(name="package_logger_level")
def package_logger_level_fixture() -> Iterator[None]:
    """Puts the package logger's level back as it was."""
    logger = logging.getLogger(LOGGER)
    level = logger.level
    yield
    logger.setLevel(level)


class Damage:
    """Checkpoints whose chunks can then be deleted or overwritten in the store."""

    def __init__(self, rs: ResumeSystem, store: BlobStore) -> None:
        self._rs = rs
        self._store = store
        self._chunks: dict[str, list[str]] = {}

    def _chunk_keys(self) -> set[str]:
        return {info.key for info in self._store.list("chunks/")}

    def checkpoint(self, stage: str, state: dict[str, Any], **kwargs: Any) -> str:
        """A checkpoint whose chunks are its own (its state must be unique)."""
        before = self._chunk_keys()
        cid = self._rs.create_checkpoint(stage, state, **kwargs)
        assert isinstance(cid, str) and cid
        self._chunks[cid] = sorted(self._chunk_keys() - before)
        assert self._chunks[cid], "the state was inlined: set inline_threshold=0"
        return cid

    def delete(self, cid: str) -> None:
        self._store.delete_many(self._chunks[cid][:1])

    def overwrite(self, cid: str) -> None:
        self._store.put(self._chunks[cid][0], b"garbage that is not the chunk")


@pytest.fixture(name="damage")
def damage_fixture(backend_urls: tuple[str, str]) -> Iterator[Damaging]:
    """``damage(rs)``: a ``Damage`` over the test's store."""
    store = open_store(backend_urls[0])
    yield lambda rs: Damage(rs, store)
    store.close()


# -- helpers -----------------------------------------------------------------------------


def new_op() -> str:
    return f"op-{uuid.uuid4().hex[:12]}"


def monitored(systems: Systems, config: CheckpointConfig, op: str, **kwargs: Any) -> ResumeSystem:
    rs = systems(config, kwargs.pop("worker_id", "w0"))
    rs.start_monitoring(op, **kwargs)
    return rs


def three_checkpoints(rs: ResumeSystem, progress: tuple[float, float, float]) -> list[str]:
    """Checkpoints of stages a, b, c with these progress values (seqs 2, 3, 4)."""
    return [
        rs.create_checkpoint(stage, {"at": stage}, {"stage": stage}, progress=p)
        for stage, p in zip("abc", progress, strict=True)
    ]


def store_keys(store_url: str, prefix: str = "") -> set[str]:
    store = open_store(store_url)
    try:
        return {info.key for info in store.list(prefix)}
    finally:
        store.close()


def record_seqs(store_url: str, op: str, worker: str) -> list[int]:
    prefix = f"checkpoints/{op}/{worker}/"
    return sorted(int(k[len(prefix) :]) for k in store_keys(store_url, prefix))


def index_seqs(coord_url: str, op: str, worker: str) -> list[int]:
    coord = open_coordination(coord_url)
    try:
        return [s.seq for s in coord.index(op, worker)]
    finally:
        coord.close()


def operation_status(coord_url: str, op: str) -> OperationStatus:
    coord = open_coordination(coord_url)
    try:
        return coord.get_operation(op).status
    finally:
        coord.close()


def seq_of(checkpoint_id: str) -> int:
    return int(checkpoint_id.rsplit("/", 1)[1])


def repo_store(rs: ResumeSystem) -> BlobStore:
    """The blob store under an open system's repository (to inject store failures)."""
    repo = rs._repo
    assert repo is not None
    return repo.store


def fail_store_writes(monkeypatch: pytest.MonkeyPatch, rs: ResumeSystem) -> None:
    """Every create-only write of ``rs``'s store raises ``StoreUnavailable`` from now on."""

    def refuse(key: str, data: bytes) -> bool:
        raise StoreUnavailable("injected outage", key=key)

    monkeypatch.setattr(repo_store(rs), "put_if_absent", refuse)


def cut_heartbeat(monkeypatch: pytest.MonkeyPatch, rs: ResumeSystem) -> None:
    """``rs``'s renewals stop reaching the backend (as if it were partitioned away)."""
    coord = rs._coord
    assert coord is not None

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise CoordinationUnavailable("injected partition")

    monkeypatch.setattr(coord, "renew", unreachable)


def take_over(rs: ResumeSystem, op: str, timeout: float = 5.0) -> None:
    """Start monitoring ``op`` with ``rs`` as soon as the slot's lease has expired."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            rs.start_monitoring(op)
            return
        except LeaseHeldError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)
