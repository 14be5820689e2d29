"""Building the operator's views (``admin_models``) from index entries, slot states and
manifests, and writing a restored checkpoint out: the pure and file-level helpers of
``Admin``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from bbp_dist_resume.api.admin_models import LeaseHealth, OperationView, PartView, WorkerView
from bbp_dist_resume.api.models import ResumeContext
from bbp_dist_resume.api.snapshot import ATTACHMENT_PREFIX
from bbp_dist_resume.coordination import CheckpointSummary, SlotState
from bbp_dist_resume.errors import InvalidStateError
from bbp_dist_resume.repository import ChunkId, Manifest, PartRef, Repository

STATE_FILE = "state.json"


def write_out(
    context: ResumeContext, dest: Path, on_file: Callable[[str, Path], None] | None
) -> dict[str, Path]:
    names = [STATE_FILE, *context.attachment_names]
    clash = [n for n in names if (dest / n).exists()]
    if clash:
        raise InvalidStateError(f"{dest / clash[0]} exists: restore into an empty folder")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = {"state": dest / STATE_FILE}
    text = json.dumps(dict(context.state), indent=2, sort_keys=True, default=str)
    fd = os.open(files["state"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text + "\n")
    if on_file is not None:
        on_file("state", files["state"])
    for name in context.attachment_names:
        files[name] = context.restore_attachment(name, dest / name)
        if on_file is not None:
            on_file(name, files[name])
    return files


def worker_view(
    operation_id: str, slot: SlotState, progress: float | None, history: list[CheckpointSummary]
) -> WorkerView:
    checkpoints = [s for s in history if s.kind == "checkpoint"]
    latest = checkpoints[-1] if checkpoints else None
    return WorkerView(
        worker_id=slot.worker_id,
        lease=health(slot),
        lease_ms=slot.lease_ms,
        fence=slot.fence,
        progress=progress,
        checkpoints=len(checkpoints),
        latest=None if latest is None else f"{operation_id}/{slot.worker_id}/{latest.seq}",
        latest_at=None if latest is None else datetime.fromisoformat(latest.created_at),
    )


def health(slot: SlotState) -> LeaseHealth:
    if slot.done:
        return LeaseHealth.DONE
    if slot.lease_ms is not None:
        return LeaseHealth.HELD
    return LeaseHealth.EXPIRED if slot.fence else LeaseHealth.NEVER


def store_only(operation_id: str, histories: dict[str, list[CheckpointSummary]]) -> OperationView:
    """An operation the backend does not know (lost, or another backend's): the store's view."""
    workers = tuple(
        worker_view(operation_id, stored_slot(w, h), None, h) for w, h in sorted(histories.items())
    )
    return OperationView(
        operation_id=operation_id,
        status="unknown",
        created_at=None,
        generation=0,
        workers=workers,
        logical_bytes=logical(histories),
    )


def stored_slot(worker: str, history: list[CheckpointSummary]) -> SlotState:
    fence = max((s.fence for s in history), default=0)
    return SlotState(worker_id=worker, fence=fence, lease_ms=None, done=False)


def logical(histories: dict[str, list[CheckpointSummary]]) -> int:
    return sum(s.size for h in histories.values() for s in h if s.kind == "checkpoint")


def chunk_ids(manifest: Manifest) -> set[str]:
    return {c.id for part in manifest.parts.values() for c in part.chunks}


def chunk_sizes(manifest: Manifest) -> dict[str, int]:
    return {c.id: c.size for part in manifest.parts.values() for c in part.chunks}


def part_view(name: str, part: PartRef, old: set[str]) -> PartView:
    seen: set[str] = set()
    new = 0
    for c in part.chunks:
        if c.id not in old and c.id not in seen:
            new += c.size
        seen.add(c.id)
    return PartView(
        name=name.removeprefix(ATTACHMENT_PREFIX),
        size=part.size,
        chunks=len(part.chunks),
        inline=part.inline is not None,
        new_bytes=new,
    )


def stored_bytes(repo: Repository, ids: list[str]) -> int:
    """Encoded bytes of the chunks in the store (a missing chunk counts 0)."""

    def size(cid: str) -> int:
        info = repo.store.head(ChunkId.parse(cid).store_key)
        return info.size if info is not None else 0

    with ThreadPoolExecutor(8, thread_name_prefix="bbp-admin") as pool:
        return sum(pool.map(size, ids))
