"""Read committed: a consumer that reads a channel only up to ``committed_offset`` never
reads a record that a crash of its producer replaces, so it is never rolled back.

Run it (no server needed)::

    python examples/read_committed.py [FOLDER]

``FOLDER`` (default: a new temporary directory, removed at the end) holds the ``file:``
store, the ``sqlite:`` coordination database and the channel file.

What it does:

1. A coordinator (``ResumeSystemManager.run()``, in a thread) with a launcher that starts
   a producer process again when its slot crashes.
2. The producer (this script with ``--producer OP``) appends random records to
   ``FOLDER/channel.txt`` and checkpoints ``produced={"records": n}`` every 8 records.
   Restarted, it cuts the file back to the offset it restored: the records after it were
   never committed, and it writes different ones.
3. The consumer (this process, ``read_committed=True``) reads only below
   ``rs.committed_offset("records")`` and folds what it reads into a sha256. Beside it, an
   eager reader reads every record as soon as it is in the file.
4. After the producer's second checkpoint, once the eager reader is past the watermark,
   the producer is killed with SIGKILL; the coordinator relaunches it.
5. Exit 0 when the consumer's fold equals the fold of the final channel file. The eager
   reader's count of records that the crash replaced shows what reading early costs.

The other style, optimistic: read at once and accept rollbacks. A consumer that reads
records before they are committed gets ``RollbackRequested`` when a plan restarts its
producer, resumes (``resume_automatically`` waits at the recovery barrier until the
producer has restored) and reads again from its restored offset. It sees records sooner;
it pays with redone work after every producer crash, and its own effects must be
idempotent or fenced. See the README, "Reading channels: optimistic or read committed".
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bbp_dist_resume import (
    CheckpointConfig,
    CheckpointStrategy,
    ResumeSystem,
    ResumeSystemManager,
    utils,
)

WORKERS = ["producer", "consumer"]
CHANNEL = "records"
TOTAL = 160  # records the producer writes in all
EVERY = 8  # it checkpoints every 8 records
RECORD = 17  # bytes: 16 hex digits and a newline
STEP_S = 0.02  # between two records, so that the kill lands between two checkpoints


def make_config(folder: Path) -> CheckpointConfig:
    """The embedded default in ``folder``, explicit checkpoints only, short leases."""
    return CheckpointConfig(
        store_url=f"file:{folder / 'store'}",
        coord_url=f"sqlite:{folder / 'coord.db'}",
        strategy=CheckpointStrategy.MANUAL,
        lease_ttl=2,  # a crash is seen within lease_ttl + scan_interval (defaults: 30 s, 1 s)
        heartbeat_interval=0.5,
        scan_interval=0.2,
    )


def records(path: Path) -> list[bytes]:
    """The complete records of the channel file."""
    data = path.read_bytes() if path.exists() else b""
    return [data[i : i + RECORD] for i in range(0, len(data) - len(data) % RECORD, RECORD)]


def fold(items: list[bytes]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(item)
    return digest.hexdigest()


# -- the producer ------------------------------------------------------------------------------


def run_producer(config: CheckpointConfig, op: str, channel: Path) -> None:
    """Resume, cut the channel back to what was committed, append records until TOTAL."""
    with ResumeSystem(config, worker_id="producer") as rs:
        rs.start_monitoring(op, workers=WORKERS)
        ctx = rs.resume_automatically(op)
        n = int(ctx.state["n"]) if ctx is not None else 0
        where = ctx.checkpoint_id if ctx is not None else "a clean start"
        print(f"  [producer pid {os.getpid()}] resumed from {where} at record {n}", flush=True)
        channel.touch()
        os.truncate(channel, n * RECORD)  # records past n were never committed
        while n < TOTAL:
            rs.ensure_lease()  # an effect outside the store: only while the slot is ours
            with channel.open("ab") as out:
                out.write(secrets.token_hex(8).encode() + b"\n")  # random: never the same
                out.flush()
                os.fsync(out.fileno())
            n += 1
            if n % EVERY == 0 or n == TOTAL:
                rs.create_checkpoint("produce", {"n": n}, produced={CHANNEL: n})
            time.sleep(STEP_S)
        rs.complete()


def spawn_producer(folder: Path, op: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, str(folder), "--producer", op])


# -- the readers -------------------------------------------------------------------------------


class EagerReader(threading.Thread):
    """Reads every record as soon as it is in the file (what a consumer that reads before
    commits sees); ``seen[i]`` is the first version of record ``i`` it read."""

    def __init__(self, channel: Path) -> None:
        super().__init__(name="eager-reader", daemon=True)
        self.channel = channel
        self.seen: list[bytes] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            self.seen += records(self.channel)[len(self.seen) :]


def consume(rs: ResumeSystem, channel: Path, kill: threading.Event) -> list[bytes]:
    """Read committed records only, checkpointing how far; ``kill`` is set after the
    producer's second checkpoint (the main loop then crashes it)."""
    read: list[bytes] = []
    while len(read) < TOTAL:
        watermark = rs.committed_offset(CHANNEL)  # the producer's committed offset
        if watermark >= 2 * EVERY:
            kill.set()
        if watermark <= len(read):
            time.sleep(0.01)
            continue
        read += records(channel)[len(read) : watermark]
        rs.create_checkpoint("consume", {"fold": fold(read)}, consumed={CHANNEL: len(read)})
    return read


def crash_producer(
    producer: subprocess.Popen[bytes], rs: ResumeSystem, eager: EagerReader, kill: threading.Event
) -> None:
    """Once ``kill`` is set and the eager reader is 3 records past the watermark: SIGKILL."""
    kill.wait()
    while len(eager.seen) < rs.committed_offset(CHANNEL) + 3:
        time.sleep(0.005)
    producer.send_signal(signal.SIGKILL)
    producer.wait()
    committed = rs.committed_offset(CHANNEL)
    print(f"killed the producer with SIGKILL at record {len(eager.seen)} (committed {committed})")


def demonstrate(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    config, op = make_config(folder), utils.generate_operation_id("read-committed")
    channel = folder / "channel.txt"
    manager = ResumeSystemManager("coordinator")
    manager.initialize(config)
    children = [spawn_producer(folder, op)]

    def relaunch(operation_id: str, worker_id: str) -> None:
        """The launcher: a new producer, unless one still runs (a slot nobody took within
        3 lease TTLs is relaunched again: never run two copies)."""
        if children[-1].poll() is not None:
            children.append(spawn_producer(folder, operation_id))

    manager.register_pipeline(op, relaunch)
    loop = threading.Thread(target=manager.run, name="coordinator")
    loop.start()
    eager, kill = EagerReader(channel), threading.Event()
    try:
        with ResumeSystem(config.with_changes(read_committed=True), "consumer") as rs:
            rs.start_monitoring(op, workers=WORKERS)
            eager.start()
            killer = threading.Thread(target=crash_producer, args=(children[0], rs, eager, kill))
            killer.start()
            read = consume(rs, channel, kill)
            killer.join()
            rs.complete()
        for child in children:
            child.wait(timeout=60)
    finally:
        eager.stop.set()
        manager.stop()
        loop.join()
        manager.shutdown()
    return report(read, records(channel), eager.seen, len(children) - 1)


def report(read: list[bytes], final: list[bytes], eager: list[bytes], relaunches: int) -> int:
    """0 when the read-committed consumer read exactly the final channel."""
    replaced = sum(1 for i, r in enumerate(eager[: len(final)]) if r != final[i])
    print(f"the coordinator relaunched the producer {relaunches} time(s)")
    print(f"an eager reader read {replaced} records that the crash then replaced")
    print(f"read-committed consumer: {len(read)} records, fold {fold(read)[:16]}")
    print(f"the final channel:       {len(final)} records, fold {fold(final)[:16]}")
    ok = read == final and len(final) == TOTAL and relaunches >= 1
    print("OK: the consumer never read a record the crash replaced" if ok else "FAILED")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("folder", nargs="?", help="where the store, database and channel go")
    parser.add_argument("--producer", metavar="OP", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.folder is None:
        with tempfile.TemporaryDirectory(prefix="bbp-read-committed-") as tmp:
            return demonstrate(Path(tmp))
    folder = Path(args.folder).resolve()
    if args.producer:
        run_producer(make_config(folder), args.producer, folder / "channel.txt")
        return 0
    return demonstrate(folder)


if __name__ == "__main__":
    sys.exit(main())
