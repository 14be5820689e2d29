"""A worker process for tests/test_disk_full.py (not a test module itself).

Run as ``python tests/_disk_full_child.py CONFIG_JSON OPERATION WORKER``, with the
``CheckpointConfig`` as JSON (``model_dump_json()``). The process ignores SIGXFSZ, so a
write past its file-size limit (``RLIMIT_FSIZE``, what ``ulimit -f`` sets) fails with
EFBIG instead of killing it. It talks one line at a time on stdout and reads commands
from stdin:

- at start: start monitoring and print ``READY``;
- ``checkpoint STAGE PATH``: a checkpoint of ``{"stage": STAGE}`` with the file at PATH as
  the attachment ``blob``; prints ``COMMITTED <id>`` or ``FAILED <json>``;
- ``limited WHERE LIMIT STAGE PATH``: the same with the soft file-size limit lowered to
  LIMIT bytes, from the call's start (``WHERE`` = ``chunks``) or from the first write of a
  commit record (``WHERE`` = ``record``: the chunks are stored by then), and raised again
  once the call returned. ``FAILED`` carries what was raised, its cause, and what the
  error callback got;
- ``quit``: shut down and exit.

The limit is lowered only around the one call so that nothing else of the process (the
SQLite coordination file the heartbeat writes) meets it: the test is about the store.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bbp_dist_resume import CheckpointConfig, ResumeSystem
from bbp_dist_resume.blobstore import LocalBlobStore
from bbp_dist_resume.repository.manifest import CHECKPOINTS_PREFIX


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def set_soft_limit(limit: int | None) -> None:
    """The soft file-size limit; None: lifted (as high as the hard limit allows)."""
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard if limit is None else limit, hard))


@contextmanager
def file_size_limit(where: str, limit: int) -> Iterator[None]:
    """``limit`` in force during the block (``record``: from the first commit record
    write on), the hard limit again after it."""
    original = LocalBlobStore.put_if_absent
    if where == "record":

        def limited(self: LocalBlobStore, key: str, data: bytes) -> bool:
            if key.startswith(CHECKPOINTS_PREFIX):
                set_soft_limit(limit)
            return original(self, key, data)

        LocalBlobStore.put_if_absent = limited  # type: ignore[method-assign]
    else:
        set_soft_limit(limit)
    try:
        yield
    finally:
        LocalBlobStore.put_if_absent = original  # type: ignore[method-assign]
        set_soft_limit(None)


def name(exc: BaseException | None) -> str | None:
    return None if exc is None else f"{type(exc).__module__}.{type(exc).__qualname__}"


def describe(exc: BaseException, seen: list[BaseException]) -> dict[str, Any]:
    cause = exc.__cause__
    return {
        "raised": name(exc),
        "cause": name(cause),
        "cause_mro": [f"{k.__module__}.{k.__qualname__}" for k in type(cause).__mro__]
        if cause is not None
        else [],
        "message": str(cause if cause is not None else exc),
        "callback": [name(e) for e in seen],
        "callback_is_cause": len(seen) == 1 and seen[0] is cause,
    }


def checkpoint(rs: ResumeSystem, stage: str, path: str, seen: list[BaseException]) -> None:
    seen.clear()
    try:
        cid = rs.create_checkpoint(stage, {"stage": stage}, attachments={"blob": Path(path)})
    except Exception as exc:
        say(f"FAILED {json.dumps(describe(exc, seen))}")
    else:
        say(f"COMMITTED {cid}")


def serve(rs: ResumeSystem, seen: list[BaseException]) -> None:
    for line in sys.stdin:
        words = line.split()
        if words == ["quit"]:
            return
        if words[:1] == ["checkpoint"] and len(words) == 3:
            checkpoint(rs, words[1], words[2], seen)
        elif words[:1] == ["limited"] and len(words) == 5:
            with file_size_limit(words[1], int(words[2])):
                checkpoint(rs, words[3], words[4], seen)
        else:
            say(f"ERROR unknown command {line.strip()!r}")


def main(argv: list[str]) -> int:
    config_json, op, worker = argv
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not death, past the limit
    rs = ResumeSystem(CheckpointConfig.model_validate_json(config_json), worker)
    seen: list[BaseException] = []
    rs.set_error_callback(lambda _stage, exc: seen.append(exc))
    try:
        rs.start_monitoring(op)
        say("READY")
        serve(rs, seen)
        return 0
    finally:
        rs.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
