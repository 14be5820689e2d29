"""``Runtime``: what an initialised ``ResumeSystem`` holds open — the repository, the
coordination backend, and the helpers built on them — opened and closed together."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from bbp_dist_resume.api.catalog import Catalog
from bbp_dist_resume.api.checkpointer import Checkpointer, Plumbing
from bbp_dist_resume.api.committer import Committer
from bbp_dist_resume.api.maintenance import Maintenance
from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.coordination import Coordination, open_coordination
from bbp_dist_resume.errors import (
    BBPError,
    BucketNotFound,
    CoordinationNotFound,
    InvalidStateError,
)
from bbp_dist_resume.repository import Repository, open_repository


def open_resources(
    config: CheckpointConfig, *, create_store: bool = True, create_backend: bool = True
) -> tuple[Repository, Coordination]:
    """Open the store and the coordination backend of ``config``, the store first.

    Args:
        config: the settings.
        create_store: False for a reader: the store must have been written to already;
            nothing is written to open it (``open_repository``).
        create_backend: False for a reader: a SQLite database must exist already.

    Raises:
        BucketNotFound, InvalidStateError: see ``open_repository``.
        CoordinationNotFound: see ``open_coordination``.
    """
    repo = open_repository(None, config, create=create_store)
    try:
        coord = open_coordination(
            config.coord_url,
            timeout_s=config.coord_timeout.total_seconds(),
            wait_replicas=config.redis_wait_replicas,
            wait_timeout_ms=config.redis_wait_timeout_ms,
            create=create_backend,
        )
    except BaseException:
        repo.close()
        raise
    return repo, coord


class _Closing(Protocol):
    def close(self) -> None: ...


def not_made_yet(config: CheckpointConfig) -> list[str]:
    """Open the store, then the backend, as a reader and close them: what a first worker
    has not created yet (a store never written to, a local store folder or a SQLite file
    that does not exist), each as the error's message. Nothing is created.

    Raises:
        BBPError: anything else (a missing bucket, a file that is not a coordination
            database, credentials, an unreachable server).
    """
    openers: list[Callable[[], _Closing]] = [
        lambda: open_repository(None, config, create=False),
        lambda: open_coordination(
            config.coord_url, timeout_s=config.coord_timeout.total_seconds(), create=False
        ),
    ]
    notes = []
    for opener in openers:
        try:
            opener().close()
        except BBPError as exc:
            if not _made_by_a_worker(exc, config):
                raise
            notes.append(str(exc))
    return notes


def _made_by_a_worker(exc: BBPError, config: CheckpointConfig) -> bool:
    if isinstance(exc, CoordinationNotFound):
        return not Path(exc.path).exists()
    if isinstance(exc, BucketNotFound):
        return config.store_url.startswith("file:")  # a bucket is never made
    return isinstance(exc, InvalidStateError)


class Runtime:
    """The open resources of one ``ResumeSystem``."""

    def __init__(self, config: CheckpointConfig, plumbing: Plumbing) -> None:
        self.repo, self.coord = open_resources(config)
        self.catalog = Catalog(self.repo, self.coord)
        self.maintenance = Maintenance(
            self.repo, self.coord, self.catalog, config.deterministic_producers
        )
        self.committer = Committer(config.max_pending_checkpoints)
        # Non-blocking checkpoints copy file attachments here (mode 0700).
        self.spool = Path(tempfile.mkdtemp(prefix="bbp-spool-"))
        self.checkpointer = Checkpointer(plumbing, self.committer, self.spool)

    def close(self) -> None:
        """Finish queued checkpoints, then close everything. Idempotent."""
        self.committer.close()
        self.catalog.close()
        self.repo.close()
        self.coord.close()
        shutil.rmtree(self.spool, ignore_errors=True)
