"""A producer process for tests/test_read_committed.py (not a test module itself).

Run as ``python tests/_channel_producer.py CONFIG_JSON OPERATION CHANNEL_FILE TOTAL EVERY``.
As worker ``prod`` of OPERATION (workers ``prod`` and ``cons``) it resumes automatically
(the plan's entry, else the recovery line), cuts CHANNEL_FILE back to the offset it
restored (records past it belong to a dead incarnation) and prints ``START <offset>``.
Then it appends random records (16 hex digits and a newline; fsynced) until TOTAL,
checkpointing ``{"n": n}`` with ``produced={"ch": n}`` every EVERY records and printing
``COMMITTED <n>`` after each; at the end it completes and prints ``DONE``. Random records
make a replaced record differ from the one it replaces.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path

from bbp_dist_resume import CheckpointConfig, ResumeContext, ResumeSystem

RECORD = 17  # bytes per record: 16 hex digits and a newline
STEP_S = 0.02  # between records, so that a kill lands between commits


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def append(path: Path, record: bytes) -> None:
    with path.open("ab") as out:
        out.write(record)
        out.flush()
        os.fsync(out.fileno())


def cut_back(path: Path, ctx: ResumeContext | None) -> None:
    """``on_restored``: drop every record past what the restored checkpoint produced
    (they were never committed)."""
    records = int(ctx.state["n"]) if ctx is not None else 0
    path.touch()
    size = path.stat().st_size
    if size < records * RECORD:
        sys.exit(f"the channel holds {size} bytes, less than its committed {records} records")
    os.truncate(path, records * RECORD)


def produce(rs: ResumeSystem, path: Path, n: int, total: int, every: int) -> None:
    while n < total:
        rs.ensure_lease()  # an effect outside the store: only while the slot is ours
        append(path, secrets.token_hex(8).encode() + b"\n")
        n += 1
        if n % every == 0 or n == total:
            rs.create_checkpoint("produce", {"n": n}, produced={"ch": n})
            say(f"COMMITTED {n}")
        time.sleep(STEP_S)


def main(argv: list[str]) -> int:
    config_json, op, channel, total, every = argv
    rs = ResumeSystem(CheckpointConfig.model_validate_json(config_json), "prod")
    try:
        rs.start_monitoring(op, workers=["prod", "cons"])
        # Cut the channel back before the plan's other workers are told it restored.
        ctx = rs.resume_automatically(op, on_restored=lambda c: cut_back(Path(channel), c))
        n = int(ctx.state["n"]) if ctx is not None else 0
        say(f"START {n}")
        produce(rs, Path(channel), n, int(total), int(every))
        rs.complete()
        say("DONE")
        return 0
    finally:
        rs.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
