"""A recon-shaped pipeline of several worker processes: the demo's, and the one the
end-to-end crash-recovery tests run (tests/test_e2e_recovery.py).

It is run as real processes, and imported for its pure functions (the reference output,
the exact checkpoint counts of an uncrashed run).

    python -m bbp_dist_resume.demo.pipeline worker --op OP --worker WID --config-json JSON
    python -m bbp_dist_resume.demo.pipeline coordinator --op OP --name NAME --config-json JSON

``JSON`` is a :class:`RunConfig`: the ``CheckpointConfig``, the pipeline's parameters and
a run directory where every process writes its own event log and stderr.

The pipeline (``Params.probers`` = k):

- ``expand`` turns a deterministic target list (``Params.hosts`` hosts from
  ``Params.seed``) into batches of ``Params.batch`` hosts; each checkpoint carries, per
  prober ``j``, the batch's hosts of partition ``j`` as attachment ``targets-j``, with
  ``produced={"targets-j": total so far}`` and the batch's first offset in
  ``custom_metadata["start.targets-j"]``. Its last checkpoint says ``done``.
- ``probe-j`` reads channel ``targets-j`` from ``expand``'s committed checkpoints (read
  committed: it never reads what is not in the store), one producer batch per
  checkpoint, and produces ``probes-j`` the same way (a port and a score per host, a
  sha256 function of the host). It is done once it consumed ``expand``'s done batch.
- ``rank`` reads every ``probes-j``, one producer batch per checkpoint, and, once every
  prober is done and consumed, writes the ranked CSV as attachment ``ranked.csv`` of
  its final checkpoint.

Every worker starts with ``start_monitoring`` (all workers named), resumes with
``resume_automatically``, checkpoints every batch, handles ``RollbackRequested`` by
resuming again, and ends with ``complete()``. Exit codes: 0 done, 3 lease lost, 4 the
lease was held by a live owner, 5 any other error (logged as an ``error`` event).

The coordinator runs ``ResumeSystemManager.run()`` with a command-template launcher that
starts replacement workers with this same command line (and the coordinator's
environment, so never with a ``BBP_FAULT`` a test gave to one first worker).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import random
import shlex
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bbp_dist_resume import (
    CheckpointConfig,
    CheckpointMetadata,
    CoordinationUnavailable,
    LeaseHeldError,
    LeaseLostError,
    ResumeSystem,
    ResumeSystemManager,
    RollbackRequested,
    StoreUnavailable,
)

MODULE = "bbp_dist_resume.demo.pipeline"
EXIT_DONE = 0
EXIT_LEASE_LOST = 3
EXIT_LEASE_HELD = 4
EXIT_ERROR = 5
EXPAND = "expand"
RANK = "rank"
CSV_NAME = "ranked.csv"
CSV_HEADER = "rank,host,port,score\n"
DONE = "done"
_TRANSIENT = (CoordinationUnavailable, StoreUnavailable)
_CHECKPOINT_TRIES = 3


# -- configuration -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Params:
    """The pipeline's input and pace."""

    seed: int = 7
    hosts: int = 400
    probers: int = 3
    batch: int = 20
    sleep_s: float = 0.05  # after every batch, so that crashes land mid-run
    poll_s: float = 0.05  # between polls of a consumer with nothing to read


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    """Everything a process of one run needs (its ``--config-json``)."""

    checkpoint: CheckpointConfig
    params: Params
    run_dir: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "checkpoint": json.loads(self.checkpoint.model_dump_json()),
                "params": asdict(self.params),
                "run_dir": self.run_dir,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        data = json.loads(text)
        return cls(
            checkpoint=CheckpointConfig(**data["checkpoint"]),
            params=Params(**data["params"]),
            run_dir=data["run_dir"],
        )


def probers(params: Params) -> list[str]:
    return [f"probe-{j}" for j in range(params.probers)]


def worker_ids(params: Params) -> list[str]:
    return [EXPAND, *probers(params), RANK]


def targets(j: int) -> str:
    return f"targets-{j}"


def probes(j: int) -> str:
    return f"probes-{j}"


# -- the pipeline's pure functions -------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def target_list(params: Params) -> list[str]:
    """The deterministic input: ``params.hosts`` host names from ``params.seed``."""
    rng = random.Random(params.seed)
    return [f"h{i:04d}-{rng.randrange(16**6):06x}.example.net" for i in range(params.hosts)]


def partition(host: str, k: int) -> int:
    return int(_digest(host)[:8], 16) % k


def probe(host: str) -> dict[str, Any]:
    """What probing a host finds: a port and a score, deterministic in the host."""
    h = _digest("probe:" + host)
    return {"host": host, "port": 1 + int(h[:4], 16) % 65535, "score": int(h[4:8], 16) % 1000}


def expand_batches(params: Params) -> list[list[str]]:
    """``expand``'s batches, in order."""
    hosts = target_list(params)
    return [hosts[i : i + params.batch] for i in range(0, len(hosts), params.batch)]


def split(batch: list[str], k: int) -> list[list[str]]:
    parts: list[list[str]] = [[] for _ in range(k)]
    for host in batch:
        parts[partition(host, k)].append(host)
    return parts


def rank_csv(records: list[dict[str, Any]]) -> bytes:
    """The final output: every probe record, best score first (ties by host)."""
    ordered = sorted(records, key=lambda r: (-r["score"], r["host"]))
    rows = [f"{i},{r['host']},{r['port']},{r['score']}\n" for i, r in enumerate(ordered, 1)]
    return (CSV_HEADER + "".join(rows)).encode()


def reference_csv(params: Params) -> bytes:
    """The output of an uncrashed run, computed in-process with the pipeline's functions
    (expand's batches, split by partition, probed, ranked)."""
    records = [
        probe(host)
        for batch in expand_batches(params)
        for part in split(batch, params.probers)
        for host in part
    ]
    return rank_csv(records)


def exact_checkpoints(params: Params) -> dict[str, int]:
    """How many checkpoints each worker commits in an uncrashed run."""
    batches = [split(b, params.probers) for b in expand_batches(params)]
    out = {EXPAND: max(len(batches), 1)}
    fed = 0
    for j, worker in enumerate(probers(params)):
        nonempty = sum(1 for parts in batches if parts[j])
        fed += nonempty
        last_has_records = bool(batches and batches[-1][j])
        out[worker] = nonempty + (0 if last_has_records else 1)
    out[RANK] = fed + 1
    return out


def partition_sizes(params: Params) -> list[int]:
    sizes = [0] * params.probers
    for host in target_list(params):
        sizes[partition(host, params.probers)] += 1
    return sizes


def encode_lines(items: list[Any]) -> bytes:
    return b"".join(json.dumps(i, sort_keys=True).encode() + b"\n" for i in items)


def decode_lines(data: bytes) -> list[Any]:
    return [json.loads(line) for line in data.splitlines() if line]


# -- events: what each process did, for the tests ----------------------------------------


class Events:
    """One process's event log, ``run_dir/events/<name>.<pid>.jsonl`` (one JSON object a
    line, appended with O_APPEND and flushed at once, so a kill loses nothing written)."""

    def __init__(self, run_dir: str, name: str) -> None:
        directory = Path(run_dir) / "events"
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}.{os.getpid()}.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def log(self, event: str, **fields: Any) -> None:
        line = json.dumps({"t": time.time(), "event": event, **fields}, sort_keys=True)
        with self._lock:
            os.write(self._fd, line.encode() + b"\n")


def redirect_stderr(run_dir: str, name: str) -> None:
    """This process's stderr (fault-point messages, logs) to ``run_dir/logs``."""
    directory = Path(run_dir) / "logs"
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / f"{name}.{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 2)
    os.close(fd)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s {name}[%(process)d] %(threadName)s %(name)s: %(message)s",
    )


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
    """The producer's committed batches of ``channel``, by seq (every lineage: a
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


def final_total(batches: list[Batch]) -> int | None:
    """The producer's total on the channel once its done checkpoint is committed."""
    done = [b.end for b in batches if b.done]
    return done[0] if done else None


# -- workers -----------------------------------------------------------------------------


class Worker:
    """One worker process's view: its system, the run's parameters, its event log."""

    def __init__(self, rs: ResumeSystem, op: str, params: Params, events: Events) -> None:
        self.rs = rs
        self.op = op
        self.params = params
        self.events = events

    def points(self) -> list[CheckpointMetadata]:
        """Every committed checkpoint of the operation (retried while a backend is
        briefly unreachable; a lost lease surfaces here too)."""
        while True:
            self.rs.ensure_lease()
            try:
                return self.rs.get_available_resume_points(self.op)
            except _TRANSIENT as exc:
                self.events.log("transient", where="list", error=repr(exc))
                time.sleep(self.params.poll_s)

    def read(self, batch: Batch, channel: str, offset: int) -> list[Any]:
        """The records of ``batch`` from ``offset`` on."""
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
            raise AssertionError(f"{batch} holds {len(records)} records")
        self.events.log("read", checkpoint=batch.checkpoint_id, channel=channel, offset=offset)
        return records[offset - batch.start :]

    def checkpoint(
        self,
        stage: str,
        state: Mapping[str, Any],
        custom: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> str:
        """A blocking, strict checkpoint, tried again after a transient failure (the state
        is unchanged, so the retry is the same checkpoint)."""
        for attempt in range(_CHECKPOINT_TRIES):
            try:
                cid = self.rs.create_checkpoint(stage, state, custom, **kwargs)
            except Exception as exc:
                if isinstance(exc, LeaseLostError | RollbackRequested):
                    raise
                if attempt + 1 == _CHECKPOINT_TRIES:
                    raise
                self.events.log("checkpoint_retry", error=repr(exc))
                time.sleep(self.params.poll_s)
                continue
            assert isinstance(cid, str) and cid, cid
            self.events.log("committed", checkpoint=cid)
            return cid
        raise AssertionError("unreachable")

    def idle(self) -> None:
        self.rs.ensure_lease()
        time.sleep(self.params.poll_s)


def run_expand(w: Worker, state: Mapping[str, Any]) -> None:
    p = w.params
    batches = expand_batches(p)
    index = int(state.get("next_batch", 0))
    produced = {targets(j): 0 for j in range(p.probers)} | dict(state.get("produced", {}))
    if state.get(DONE):
        return
    while index < len(batches) or not batches:
        parts = split(batches[index], p.probers) if batches else [[] for _ in range(p.probers)]
        meta = {f"start.{targets(j)}": str(produced[targets(j)]) for j in range(p.probers)}
        attachments = {targets(j): encode_lines(part) for j, part in enumerate(parts) if part}
        for j, part in enumerate(parts):
            produced[targets(j)] += len(part)
        index += 1
        last = index >= len(batches)
        if last:
            meta[DONE] = "1"
        w.checkpoint(
            "expand",
            {"next_batch": index, "produced": produced, DONE: last},
            meta,
            attachments=attachments,
            progress=100.0 * index / max(len(batches), 1),
            produced=dict(produced),
        )
        time.sleep(p.sleep_s)
        if last:
            return


def run_probe(w: Worker, j: int, state: Mapping[str, Any]) -> None:
    p = w.params
    src, dst = targets(j), probes(j)
    consumed = int(state.get("consumed", 0))
    produced = int(state.get("produced", 0))
    if state.get(DONE):
        return
    while True:
        available = batches_of(w.points(), EXPAND, src)
        batch = covering(available, consumed)
        total = final_total(available)
        if batch is not None:
            hosts = w.read(batch, src, consumed)
            records = [probe(h) for h in hosts]
            done = batch.done
            w.checkpoint(
                "probe",
                {"consumed": batch.end, "produced": produced + len(records), DONE: done},
                {f"start.{dst}": str(produced)} | ({DONE: "1"} if done else {}),
                attachments={dst: encode_lines(records)},
                progress=100.0 * batch.end / max(partition_sizes(p)[j], 1),
                consumed={src: batch.end},
                produced={dst: produced + len(records)},
            )
            consumed, produced = batch.end, produced + len(records)
            time.sleep(p.sleep_s)
            if done:
                return
        elif total is not None and consumed >= total:
            # The partition's last records came before expand's last batch.
            w.checkpoint(
                "probe",
                {"consumed": consumed, "produced": produced, DONE: True},
                {f"start.{dst}": str(produced), DONE: "1"},
                progress=100.0,
                consumed={src: consumed},
                produced={dst: produced},
            )
            return
        else:
            w.idle()


def run_rank(w: Worker, state: Mapping[str, Any]) -> None:
    p = w.params
    channels = [probes(j) for j in range(p.probers)]
    consumed = {c: 0 for c in channels} | {
        c: int(n) for c, n in dict(state.get("consumed", {})).items()
    }
    records: list[dict[str, Any]] = list(state.get("records", []))
    if state.get(DONE):
        return
    expected = sum(partition_sizes(p))
    while True:
        points = w.points()
        progressed = False
        finished = True
        for j, channel in enumerate(channels):
            available = batches_of(points, f"probe-{j}", channel)
            batch = covering(available, consumed[channel])
            total = final_total(available)
            finished = finished and total is not None and consumed[channel] >= total
            if batch is None:
                continue
            records += w.read(batch, channel, consumed[channel])
            consumed[channel] = batch.end
            w.checkpoint(
                "rank",
                {"consumed": consumed, "records": records, DONE: False},
                progress=min(99.0, 100.0 * len(records) / max(expected, 1)),
                consumed=dict(consumed),
            )
            progressed = True
            time.sleep(p.sleep_s)
        if finished and not progressed:
            w.checkpoint(
                "rank",
                {"consumed": consumed, "records": records, DONE: True},
                {DONE: "1", "records": str(len(records))},
                attachments={CSV_NAME: rank_csv(records)},
                progress=100.0,
                consumed=dict(consumed),
            )
            return
        if not progressed:
            w.idle()


def role(worker_id: str) -> Callable[[Worker, Mapping[str, Any]], None]:
    if worker_id == EXPAND:
        return run_expand
    if worker_id == RANK:
        return run_rank
    j = int(worker_id.removeprefix("probe-"))
    return lambda w, state: run_probe(w, j, state)


def run_worker(rc: RunConfig, op: str, worker_id: str) -> int:
    events = Events(rc.run_dir, worker_id)
    events.log("start", argv=sys.argv[1:3], fault=os.environ.get("BBP_FAULT"), ppid=os.getppid())
    rs = ResumeSystem(rc.checkpoint, worker_id)
    try:
        try:
            rs.start_monitoring(op, workers=worker_ids(rc.params))
        except LeaseHeldError as exc:
            events.log("held", error=str(exc))
            return EXIT_LEASE_HELD
        events.log("monitoring", fence=rs.fencing_token)
        w = Worker(rs, op, rc.params, events)
        while True:
            try:
                ctx = rs.resume_automatically(op)
                events.log(
                    "resumed",
                    checkpoint=ctx.checkpoint_id if ctx else None,
                    reason=ctx.resume_reason if ctx else "clean start",
                )
                role(worker_id)(w, dict(ctx.state) if ctx else {})
                rs.complete()
                events.log("done")
                return EXIT_DONE
            except RollbackRequested as exc:
                events.log("rollback", generation=exc.generation, checkpoint=exc.checkpoint_id)
    except LeaseLostError as exc:
        events.log("lease_lost", error=str(exc))
        return EXIT_LEASE_LOST
    except Exception as exc:
        events.log("error", error=repr(exc), traceback=traceback.format_exc())
        return EXIT_ERROR
    finally:
        with contextlib.suppress(Exception):
            rs.shutdown()


# -- coordinator -------------------------------------------------------------------------


def launcher_template(rc: RunConfig) -> str:
    """This file's worker command line, as a launcher template (``{operation_id}`` and
    ``{worker_id}`` are the launcher's; the JSON's own braces are doubled for it)."""
    escaped = rc.to_json().replace("{", "{{").replace("}", "}}")
    words = [sys.executable, "-m", MODULE, "worker"]
    quoted = [shlex.quote(word) for word in words]
    tail = ["--op", "{operation_id}", "--worker", "{worker_id}", "--config-json"]
    return " ".join([*quoted, *tail, shlex.quote(escaped)])


class LoggedManager(ResumeSystemManager):
    """The coordinator, logging what it repairs."""

    events: Events

    def recover_from_data_loss(self) -> bool:
        repaired = super().recover_from_data_loss()
        if repaired:
            self.events.log("data_loss_recovered")
        return repaired

    def attempt_automatic_recovery(self, operation_id: str) -> bool:
        crashed = [w for o, w in self._coordination().crashed_workers() if o == operation_id]
        published = super().attempt_automatic_recovery(operation_id)
        if published:
            self.events.log("recovery", crashed=crashed)
        return published


def run_coordinator(rc: RunConfig, op: str, name: str) -> int:
    events = Events(rc.run_dir, f"coordinator-{name}")
    events.log("start")
    manager = LoggedManager(coordinator_id=f"coord-{name}")
    manager.events = events
    manager.initialize(rc.checkpoint)
    manager.register_pipeline(op, launcher_template(rc))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def watch() -> None:
        leader = False
        while not stop.wait(0.05):
            if manager.is_leader != leader:
                leader = manager.is_leader
                events.log("leader" if leader else "standby")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        manager.run(stop=stop)
    finally:
        stop.set()
        watcher.join(timeout=5)
        manager.shutdown()
        events.log("exit")
    return 0


# -- command line ------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    parser.add_argument("mode", choices=["worker", "coordinator"])
    parser.add_argument("--op", required=True)
    parser.add_argument("--worker")
    parser.add_argument("--name", default="c0")
    parser.add_argument("--config-json", required=True)
    args = parser.parse_args(argv)
    rc = RunConfig.from_json(args.config_json)
    if args.mode == "worker":
        if not args.worker:
            parser.error("worker needs --worker")
        redirect_stderr(rc.run_dir, args.worker)
        return run_worker(rc, args.op, args.worker)
    redirect_stderr(rc.run_dir, f"coordinator-{args.name}")
    return run_coordinator(rc, args.op, args.name)


def iter_events(run_dir: str | Path) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """``(name, pid, event)`` of every event every process of the run logged."""
    for path in sorted((Path(run_dir) / "events").glob("*.jsonl")):
        name, pid = path.stem.rsplit(".", 1)
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line torn by a kill
                yield name, int(pid), json.loads(line)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
