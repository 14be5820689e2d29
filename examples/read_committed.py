"""Two ways to read a channel whose producer may crash: read committed, and optimistic.

Run it (no server needed)::

    python examples/read_committed.py [FOLDER]

``FOLDER`` (default: a new temporary directory, removed at the end) holds, per style, the
``file:`` store, the ``sqlite:`` coordination database and the channel file.

In both runs a coordinator (``ResumeSystemManager.run()``, in a thread) relaunches a
producer process (this script with ``--producer OP CHANNEL``) that appends random records
to a channel file and checkpoints ``produced={"records": n}`` every 8 records. Restored,
it cuts the file back to what its checkpoint produced (in ``on_restored``): the records
after it were never committed, and it writes different ones. After its second
checkpoint, once the consumer is 3 records past what is committed, it is killed with
SIGKILL. Both consumers fold what they read into a chained sha256; each run must end with
the fold of the final channel file (exit 0 when both do).

- **Read committed** (``read_committed=True``): read only below
  ``rs.committed_offset("records")``. A crash never replaces what it read, so it is never
  rolled back. An eager reader beside it counts the records it would have read and lost.
  Cost: records become visible only at the producer's checkpoints.
- **Optimistic**: read every record at once. When a plan restarts the producer, the next
  call raises ``RollbackRequested``; ``resume_automatically`` waits until the producer has
  restored (the recovery barrier) and returns the consumer's checkpoint, from which it
  reads again. Cost: work redone after each producer crash, and effects since the last
  checkpoint must be idempotent or fenced.
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
from collections.abc import Callable
from pathlib import Path

from bbp_dist_resume import (
    CheckpointConfig,
    CheckpointStrategy,
    ResumeContext,
    ResumeSystem,
    ResumeSystemManager,
    RollbackRequested,
    utils,
)

WORKERS = ["producer", "consumer"]
CHANNEL = "records"
TOTAL = 160  # records the producer writes in all
EVERY = 8  # both checkpoint every 8 records
RECORD = 17  # bytes: 16 hex digits and a newline
STEP_S = 0.02  # between two records, so that the kill lands between two checkpoints
SEED = "0" * 64  # the fold of no record


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


def fold(agg: str, items: list[bytes]) -> str:
    """A chained sha256 over ``items``, from ``agg``: order and content both count."""
    for item in items:
        agg = hashlib.sha256(agg.encode() + item).hexdigest()
    return agg


# -- the producer ------------------------------------------------------------------------------


def cut_back(channel: Path, ctx: ResumeContext | None) -> None:
    """``on_restored``: drop the records past what the restored checkpoint produced."""
    n = int(ctx.produced.get(CHANNEL, 0)) if ctx is not None else 0
    where = ctx.checkpoint_id if ctx is not None else "a clean start"
    print(f"  [producer pid {os.getpid()}] resumed from {where} at record {n}", flush=True)
    channel.touch()
    os.truncate(channel, n * RECORD)


def run_producer(config: CheckpointConfig, op: str, channel: Path) -> None:
    """Resume (cutting the channel back), append records until TOTAL, complete."""
    with ResumeSystem(config, worker_id="producer") as rs:
        rs.start_monitoring(op, workers=WORKERS)
        ctx = rs.resume_automatically(op, on_restored=lambda c: cut_back(channel, c))
        n = int(ctx.produced.get(CHANNEL, 0)) if ctx is not None else 0
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


# -- the consumers -----------------------------------------------------------------------------


class EagerReader(threading.Thread):
    """Reads every record as soon as it is in the file; ``seen[i]`` is the first version
    of record ``i`` it read."""

    def __init__(self, channel: Path) -> None:
        super().__init__(name="eager-reader", daemon=True)
        self.channel = channel
        self.seen: list[bytes] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            self.seen += records(self.channel)[len(self.seen) :]


class Consumer:
    """Where a consumer is (``read`` records, folded into ``agg``) and how it got there."""

    def __init__(self, rs: ResumeSystem, channel: Path) -> None:
        self.rs, self.channel = rs, channel
        self.read, self.agg, self.rollbacks, self.reread = 0, SEED, 0, 0

    def take(self, upto: int) -> None:
        """Fold the records up to ``upto``; checkpoint every EVERY records."""
        for record in records(self.channel)[self.read : upto]:
            self.agg, self.read = fold(self.agg, [record]), self.read + 1
            if self.read % EVERY == 0:
                state = {"read": self.read, "agg": self.agg}
                self.rs.create_checkpoint("consume", state, consumed={CHANNEL: self.read})

    def read_committed(self) -> None:
        while self.read < TOTAL:
            watermark = self.rs.committed_offset(CHANNEL)  # what no crash can take back
            if watermark > self.read:
                self.take(watermark)
            else:
                time.sleep(0.01)

    def read_optimistic(self, op: str) -> None:
        while True:
            try:
                self.rs.ensure_lease()  # any call raises RollbackRequested after a plan
                if self.read == TOTAL and self.rs.committed_offset(CHANNEL) == TOTAL:
                    return  # all read, and the producer will not write them again
                self.take(TOTAL)
                time.sleep(0.01)
            except RollbackRequested:
                self.restore(self.rs.resume_automatically(op))

    def restore(self, ctx: ResumeContext | None) -> None:
        before = self.read
        self.read = int(ctx.state["read"]) if ctx is not None else 0
        self.agg = str(ctx.state["agg"]) if ctx is not None else SEED
        self.rollbacks, self.reread = self.rollbacks + 1, self.reread + before - self.read


def crash_producer(
    rs: ResumeSystem, producer: subprocess.Popen[bytes], at: Callable[[], int]
) -> None:
    """SIGKILL the producer after its second checkpoint, once ``at()`` (how far a reader
    is) is 3 records past what is committed."""
    while rs.committed_offset(CHANNEL) < 2 * EVERY or at() < rs.committed_offset(CHANNEL) + 3:
        time.sleep(0.005)
    producer.send_signal(signal.SIGKILL)
    producer.wait()
    committed = rs.committed_offset(CHANNEL)
    print(f"killed the producer with SIGKILL at record {at()} (committed {committed})")


def demonstrate(folder: Path, style: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    config, op = make_config(folder), utils.generate_operation_id(style)
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
    eager = EagerReader(channel)
    try:
        committed = style == "read-committed"
        with ResumeSystem(config.with_changes(read_committed=committed), "consumer") as rs:
            rs.start_monitoring(op, workers=WORKERS)
            consumer = Consumer(rs, channel)
            eager.start()
            at = (lambda: len(eager.seen)) if committed else (lambda: consumer.read)
            killer = threading.Thread(target=crash_producer, args=(rs, children[0], at))
            killer.start()
            if committed:
                consumer.read_committed()
            else:
                consumer.read_optimistic(op)
            killer.join()
            rs.complete()
        for child in children:
            child.wait(timeout=60)
    finally:
        eager.stop.set()
        for child in children:  # only on a failure is one still running
            if child.poll() is None:
                child.kill()
                child.wait()
        manager.stop()
        loop.join()
        manager.shutdown()
    return report(style, consumer, records(channel), eager.seen, len(children) - 1)


def report(
    style: str, consumer: Consumer, final: list[bytes], eager: list[bytes], relaunches: int
) -> bool:
    """Whether the consumer ends with the final channel's fold."""
    replaced = sum(1 for i, r in enumerate(eager[: len(final)]) if r != final[i])
    print(f"{style}: the coordinator relaunched the producer {relaunches} time(s)")
    print(f"{style}: an eager reader read {replaced} records that the crash then replaced")
    print(
        f"{style}: rolled back {consumer.rollbacks} time(s), read {consumer.reread} records again"
    )
    print(f"{style}: consumer {consumer.read} records, fold {consumer.agg[:16]}")
    print(f"{style}: channel  {len(final)} records, fold {fold(SEED, final)[:16]}")
    return consumer.agg == fold(SEED, final) and len(final) == TOTAL and relaunches >= 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("folder", nargs="?", help="where the stores, databases, channels go")
    parser.add_argument("--producer", metavar="OP", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.producer:
        folder = Path(args.folder).resolve()
        run_producer(make_config(folder), args.producer, folder / "channel.txt")
        return 0
    if args.folder is not None:
        return both(Path(args.folder).resolve())
    with tempfile.TemporaryDirectory(prefix="bbp-channels-") as tmp:
        return both(Path(tmp))


def both(root: Path) -> int:
    """Each style in its own sub-folder; 0 when both consumers read the final channel."""
    ok = all([demonstrate(root / style, style) for style in ("read-committed", "optimistic")])
    print("OK: both consumers end with the final channel's fold" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
