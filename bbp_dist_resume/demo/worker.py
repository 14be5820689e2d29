"""A demo worker's calls to the library: read a producer's committed batches, checkpoint
a batch, wait. The roles of ``pipeline.py`` are written against :class:`Worker`.

Read committed: a consumer finds its input in the producer's checkpoints, never in the
producer itself. Each producer checkpoint of a channel holds one batch of records,
offsets ``[custom_metadata["start.<channel>"], produced[channel])``, as the attachment
named after the channel; :func:`covering` picks the one holding the consumer's next
offset and :meth:`Worker.read` reads it with ``open_checkpoint`` (every chunk verified).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bbp_dist_resume.api import CheckpointMetadata, ResumeSystem
from bbp_dist_resume.demo.plumbing import Events
from bbp_dist_resume.demo.recon import DONE, Params, decode_lines
from bbp_dist_resume.errors import (
    CheckpointFailed,
    CoordinationUnavailable,
    IntegrityError,
    LeaseLostError,
    RollbackRequested,
    StoreUnavailable,
)

_TRANSIENT = (CoordinationUnavailable, StoreUnavailable)
_CHECKPOINT_TRIES = 3


# -- reading a producer's committed batches ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Batch:
    """One producer checkpoint's records of one channel: offsets ``[start, end)``."""

    checkpoint_id: str
    seq: int
    start: int
    end: int
    done: bool


def batches_of(points: list[CheckpointMetadata], producer: str, channel: str) -> list[Batch]:
    """The producer's committed batches of ``channel``, by seq (of every lineage: a
    deterministic producer writes the same records at the same offsets in each)."""
    out = []
    for p in points:
        start = p.custom_metadata.get(f"start.{channel}")
        if p.worker_id != producer or start is None or channel not in p.produced:
            continue
        done = p.custom_metadata.get(DONE) == "1"
        out.append(Batch(p.checkpoint_id, p.seq, int(start), p.produced[channel], done))
    return sorted(out, key=lambda b: b.seq)


def covering(batches: list[Batch], offset: int) -> Batch | None:
    """The newest batch holding record ``offset``."""
    found = [b for b in batches if b.start <= offset < b.end]
    return max(found, key=lambda b: b.seq) if found else None


def drained(batches: list[Batch], offset: int) -> bool:
    """The producer committed its last batch and ``offset`` is past all it produced."""
    done = [b.end for b in batches if b.done]
    return bool(done) and offset >= done[0]


# -- a worker's calls --------------------------------------------------------------------


class Worker:
    """One worker process's view: its system, the run's parameters, its event log."""

    def __init__(self, rs: ResumeSystem, op: str, params: Params, events: Events) -> None:
        self.rs = rs
        self.op = op
        self.params = params
        self.events = events

    def points(self) -> list[CheckpointMetadata]:
        """Every committed checkpoint of the operation (tried again while a backend is
        briefly unreachable; a lost lease surfaces here too)."""
        while True:
            self.rs.ensure_lease()
            try:
                return self.rs.get_available_resume_points(self.op)
            except _TRANSIENT as exc:
                self.events.log("transient", where="list", error=repr(exc))
                time.sleep(self.params.poll_s)

    def read(self, batch: Batch, channel: str, offset: int) -> list[Any]:
        """The records of ``batch`` from ``offset`` on (read committed, verified)."""
        while True:
            self.rs.ensure_lease()
            try:
                data = self.rs.open_checkpoint(batch.checkpoint_id).attachment(channel)
                break
            except _TRANSIENT as exc:
                self.events.log("transient", where="read", error=repr(exc))
                time.sleep(self.params.poll_s)
        records = decode_lines(data)
        if len(records) != batch.end - batch.start:
            raise IntegrityError(f"{batch.checkpoint_id} holds {len(records)} records of {batch}")
        self.events.log("read", checkpoint=batch.checkpoint_id, channel=channel, offset=offset)
        return records[offset - batch.start :]

    def checkpoint(
        self,
        stage: str,
        state: Mapping[str, Any],
        custom: Mapping[str, str] | None = None,
        *,
        progress: float,
        attachments: Mapping[str, bytes] | None = None,
        consumed: Mapping[str, int] | None = None,
        produced: Mapping[str, int] | None = None,
    ) -> str:
        """A blocking checkpoint, tried again after a transient failure (the state is
        unchanged, so the retry is the same checkpoint); logs it with the bytes this
        process has uploaded so far."""
        for attempt in range(1, _CHECKPOINT_TRIES + 1):
            try:
                cid = self.rs.create_checkpoint(
                    stage,
                    state,
                    custom,
                    attachments=attachments,
                    progress=progress,
                    consumed=consumed,
                    produced=produced,
                )
            except (LeaseLostError, RollbackRequested):
                raise
            except Exception as exc:
                if attempt == _CHECKPOINT_TRIES:
                    raise
                cid = ""
                self.events.log("checkpoint_retry", error=repr(exc))
            if cid:
                uploaded = self.rs.get_statistics().uploaded_bytes
                self.events.log("committed", checkpoint=cid, uploaded=uploaded)
                return cid
            time.sleep(self.params.poll_s)
        raise CheckpointFailed(stage, f"{_CHECKPOINT_TRIES} tries failed")

    def idle(self) -> None:
        """Nothing to read yet: wait a little (still holding the lease)."""
        self.rs.ensure_lease()
        time.sleep(self.params.poll_s)
