"""What ``redis_wait_replicas`` costs: lease and checkpoint operations with WAIT 0 and
WAIT 1 on a real Redis primary with one replica, beside raw redis-py doing the same
commands on the same servers in the same run.

The script starts a primary and a replica (``infra/dev/services.py`` ``start_redis_node``,
no persistence, loopback) and, interleaved call by call so that every variant sees the
same machine:

1. acquire: ``coord.acquire`` of a fresh slot (released again, untimed), with WAIT 0 and
   WAIT 1, against raw redis-py sending the commands ``acquire`` sends (ZADD NX, EVALSHA
   of the ACQUIRE script, ZADD of the deadline), and with WAIT 1 the EVALSHA and a
   ``WAIT 1 timeout`` in one pipeline, as the library does;
2. publish_plan (waited too, a warning when short) against raw EVALSHA [+ WAIT];
3. record (the index write of every checkpoint) and renew (every heartbeat): not
   waited, so WAIT 1 must cost nothing there; raw EVALSHA (+ ZADD for renew) beside;
4. end to end, ``ResumeSystem`` on a local-directory store and the Redis pair:
   ``start_monitoring`` + ``stop_monitoring`` (acquire, takeover record, index) and a
   blocking ``create_checkpoint`` of a small state, WAIT 0 against WAIT 1;
5. the replica unreachable (pointed at a port where nothing listens): how long an
   acquisition with WAIT 1 takes to fail (``redis_wait_timeout_ms`` 100 and 500).

Nothing is asserted. It prints a table and writes the samples' percentiles as JSON with
the date, the machine, the load average and the versions.

    .venv/bin/python benchmarks/bench_redis_wait.py            # ~1 min
    .venv/bin/python benchmarks/bench_redis_wait.py --calls 500 --checkpoints 100  # quick
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from common import import_services, machine, table
from redis.backoff import NoBackoff
from redis.retry import Retry

from bbp_dist_resume import CheckpointConfig, ResumeSystem
from bbp_dist_resume.coordination import CheckpointSummary, Coordination, open_coordination
from bbp_dist_resume.coordination import keys as K
from bbp_dist_resume.coordination import scripts as S
from bbp_dist_resume.errors import CoordinationUnavailable

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "redis_wait.json"
TIMEOUT_S = 5.0  # the socket timeout open_coordination gives its client
WAIT_MS = 1000  # redis_wait_timeout_ms of the WAIT 1 runs (the default)
TTL_MS = 600_000
VARIANTS = ("wait0", "wait1", "raw0", "raw1")


def log(msg: str) -> None:
    print(msg, flush=True)


def pct(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def stats(samples_us: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(samples_us),
        "p50_us": round(pct(samples_us, 50), 1),
        "p90_us": round(pct(samples_us, 90), 1),
        "p99_us": round(pct(samples_us, 99), 1),
        "max_us": round(max(samples_us), 1),
        "mean_us": round(statistics.fmean(samples_us), 1),
    }


def timed(fn: Callable[[], Any]) -> float:
    began = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - began) / 1000


def interleave(calls: dict[str, Callable[[], Any]], n: int, warmup: int) -> dict[str, list[float]]:
    """Each call ``warmup + n`` times, one round of all of them at a time, the order
    rotating each round; the warm-up rounds are dropped."""
    names = list(calls)
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(warmup + n):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            took = timed(calls[name])
            if i >= warmup:
                out[name].append(took)
    return out


# --- servers and clients -----------------------------------------------------------------


@contextlib.contextmanager
def primary_and_replica(root: Path) -> Iterator[tuple[Any, Any]]:
    services = import_services()
    primary = services.start_redis_node(root, "primary", die_with_parent=True)
    try:
        replica = services.start_redis_node(
            root, "replica", replica_of=primary.port, die_with_parent=True
        )
        try:
            yield primary, replica
        finally:
            services.kill_redis_node(replica)
    finally:
        services.kill_redis_node(primary)


def raw_client(url: str) -> redis.Redis:
    """redis-py with the settings ``redis_client.connect_client`` gives the library's."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=TIMEOUT_S + WAIT_MS / 1000,
        socket_connect_timeout=TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )


def detach(replica_port: int) -> None:
    """Point the replica at a port where nothing listens: it acknowledges nothing more."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nowhere = sock.getsockname()[1]
    with contextlib.closing(redis.Redis(port=replica_port)) as replica:
        replica.execute_command("REPLICAOF", "127.0.0.1", nowhere)


class Raw:
    """The library's commands sent by hand: EVALSHA of its scripts, and WAIT in the same
    pipeline when ``replicas`` > 0."""

    def __init__(self, client: redis.Redis, replicas: int) -> None:
        self.r = client
        self.replicas = replicas
        self.sha = {name: client.script_load(getattr(S, name)) for name in self.NAMES}

    NAMES = ("ACQUIRE", "RELEASE", "RENEW", "RECORD", "PUBLISH_PLAN")

    def script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        if not self.replicas:
            return self.r.evalsha(self.sha[name], len(keys), *keys, *args)
        pipe = self.r.pipeline(transaction=False)
        pipe.evalsha(self.sha[name], len(keys), *keys, *args)
        pipe.execute_command("WAIT", self.replicas, WAIT_MS)
        result, acks = pipe.execute()
        if int(acks) < self.replicas:
            raise SystemExit(f"raw WAIT: {acks} of {self.replicas} replicas acknowledged")
        return result

    def acquire(self, op: str, worker: str) -> tuple[str, int]:
        """What ``RedisCoordination.acquire`` sends: ZADD NX, the script, ZADD."""
        member = K.slot_member(op, worker)
        self.r.zadd(K.ALL_DEADLINES, {member: 0}, nx=True)
        token = uuid.uuid4().hex
        keys = [
            K.meta(op),
            K.lease(op, worker),
            K.fence(op, worker),
            K.deadlines(op),
            K.owner(op, worker),
            K.done(op),
        ]
        fence, deadline = self.script("ACQUIRE", keys, [worker, token, TTL_MS])
        self.r.zadd(K.ALL_DEADLINES, {member: int(deadline)})
        return token, int(fence)

    def release(self, op: str, worker: str, token: str) -> None:
        keys = [K.lease(op, worker), K.deadlines(op)]
        self.r.evalsha(self.sha["RELEASE"], 2, *keys, token, worker)
        self.r.zadd(K.ALL_DEADLINES, {K.slot_member(op, worker): 0})

    def renew(self, op: str, worker: str, token: str) -> None:
        keys = [K.lease(op, worker), K.deadlines(op), K.meta(op)]
        deadline = self.r.evalsha(self.sha["RENEW"], 3, *keys, token, TTL_MS, worker, "")
        self.r.zadd(K.ALL_DEADLINES, {K.slot_member(op, worker): int(deadline)})

    def record(self, op: str, worker: str, token: str, fence: int, summary: str, seq: int) -> None:
        keys = [K.fence(op, worker), K.owner(op, worker), K.index(op, worker)]
        self.r.evalsha(self.sha["RECORD"], 3, *keys, token, fence, seq, summary)

    def publish(self, op: str, body: str) -> None:
        self.script("PUBLISH_PLAN", [K.meta(op), K.plan(op)], [uuid.uuid4().hex, body])


def summary(seq: int, token: str, fence: int) -> CheckpointSummary:
    return CheckpointSummary(
        seq=seq,
        kind="checkpoint",
        owner_token=token,
        fence=fence,
        created_at=datetime.now(UTC).isoformat(),
        root=f"{seq:064x}",
        stage="train",
        progress=0.5,
        consumed={"shard-000": 1_048_576 + seq},
        produced={"model": seq},
        size=1 << 20,
    )


PLAN_BODY = {
    "entries": {f"w{i}": {"seq": 10 + i, "checkpoint_id": f"op/w{i}/{10 + i}"} for i in range(8)}
}


# --- 1-3. coordination calls -------------------------------------------------------------


def coordination_calls(url: str, args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    coords = {
        "wait0": open_coordination(url, timeout_s=TIMEOUT_S),
        "wait1": open_coordination(
            url, timeout_s=TIMEOUT_S, wait_replicas=1, wait_timeout_ms=WAIT_MS
        ),
    }
    raws = {"raw0": Raw(raw_client(url), 0), "raw1": Raw(raw_client(url), 1)}
    try:
        for name in VARIANTS:
            coords["wait0"].create_operation(name, workers=[f"w{i}" for i in range(4)])
        return {
            "acquire": acquire_calls(coords, raws, args),
            "publish_plan": publish_calls(coords, raws, args),
            "record": record_calls(coords, raws, args),
            "renew": renew_calls(coords, raws, args),
        }
    finally:
        for coord in coords.values():
            coord.close()
        for raw in raws.values():
            raw.r.close()


def acquire_calls(
    coords: dict[str, Coordination], raws: dict[str, Raw], args: argparse.Namespace
) -> dict[str, list[float]]:
    """Acquire w0 of the variant's operation; the release happens after the timing."""

    def lib(name: str) -> Callable[[], Any]:
        def call() -> None:
            began = time.perf_counter_ns()
            lease = coords[name].acquire(name, "w0", ttl_ms=TTL_MS)
            took.append((name, (time.perf_counter_ns() - began) / 1000))
            coords[name].release(lease)

        return call

    def raw(name: str) -> Callable[[], Any]:
        def call() -> None:
            began = time.perf_counter_ns()
            token, _ = raws[name].acquire(name, "w0")
            took.append((name, (time.perf_counter_ns() - began) / 1000))
            raws[name].release(name, "w0", token)

        return call

    took: list[tuple[str, float]] = []
    calls = {"wait0": lib("wait0"), "wait1": lib("wait1"), "raw0": raw("raw0"), "raw1": raw("raw1")}
    interleave(calls, args.calls, args.warmup)
    out: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for name, us in took:
        out[name].append(us)
    return {name: samples[args.warmup :] for name, samples in out.items()}


def publish_calls(
    coords: dict[str, Coordination], raws: dict[str, Raw], args: argparse.Namespace
) -> dict[str, list[float]]:
    body = json.dumps(PLAN_BODY, sort_keys=True)
    calls = {
        "wait0": lambda: coords["wait0"].publish_plan("wait0", PLAN_BODY),
        "wait1": lambda: coords["wait1"].publish_plan("wait1", PLAN_BODY),
        "raw0": lambda: raws["raw0"].publish("raw0", body),
        "raw1": lambda: raws["raw1"].publish("raw1", body),
    }
    return interleave(calls, args.calls // 2, args.warmup)


def record_calls(
    coords: dict[str, Coordination], raws: dict[str, Raw], args: argparse.Namespace
) -> dict[str, list[float]]:
    leases = {name: coords[name].acquire(name, "w1", ttl_ms=TTL_MS) for name in coords}
    held = {name: raws[name].acquire(name, "w1") for name in raws}
    total = args.warmup + args.calls
    prepared = {  # built before timing: a committer holds its summary already
        name: iter([summary(seq, lease.owner_token, lease.fence) for seq in range(1, total + 1)])
        for name, lease in leases.items()
    }
    texts = {
        name: iter([(seq, summary(seq, token, fence).to_json()) for seq in range(1, total + 1)])
        for name, (token, fence) in held.items()
    }

    def raw(name: str) -> Callable[[], Any]:
        token, fence = held[name]

        def call() -> None:
            seq, text = next(texts[name])
            raws[name].record(name, "w1", token, fence, text, seq)

        return call

    calls = {
        "wait0": lambda: coords["wait0"].record(leases["wait0"], next(prepared["wait0"])),
        "wait1": lambda: coords["wait1"].record(leases["wait1"], next(prepared["wait1"])),
        "raw0": raw("raw0"),
        "raw1": raw("raw1"),
    }
    return interleave(calls, args.calls, args.warmup)


def renew_calls(
    coords: dict[str, Coordination], raws: dict[str, Raw], args: argparse.Namespace
) -> dict[str, list[float]]:
    leases = {name: coords[name].acquire(name, "w2", ttl_ms=TTL_MS) for name in coords}
    held = {name: raws[name].acquire(name, "w2")[0] for name in raws}
    calls = {
        "wait0": lambda: coords["wait0"].renew(leases["wait0"]),
        "wait1": lambda: coords["wait1"].renew(leases["wait1"]),
        "raw0": lambda: raws["raw0"].renew("raw0", "w2", held["raw0"]),
        "raw1": lambda: raws["raw1"].renew("raw1", "w2", held["raw1"]),
    }
    return interleave(calls, args.calls, args.warmup)


# --- 4. end to end -----------------------------------------------------------------------


def end_to_end(url: str, tmp: Path, args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    systems = {}
    for name, replicas in (("wait0", 0), ("wait1", 1)):
        config = CheckpointConfig(
            store_url=f"file:{tmp / name}",
            coord_url=url,
            redis_wait_replicas=replicas,
            redis_wait_timeout_ms=WAIT_MS,
            auto_cleanup=False,
        )
        systems[name] = ResumeSystem(config, "w0")
    state = {"rows": list(range(200)), "cursor": "x" * 64}
    try:
        cycles = interleave(
            {
                name: lambda rs=rs, name=name: cycle(rs, f"e2e-{name}")
                for name, rs in systems.items()
            },
            args.cycles,
            3,
        )
        for name, rs in systems.items():
            rs.start_monitoring(f"ckpt-{name}")
        checkpoints = interleave(
            {
                name: lambda rs=rs: rs.create_checkpoint("loop", state)
                for name, rs in systems.items()
            },
            args.checkpoints,
            args.warmup // 10,
        )
        for rs in systems.values():
            rs.stop_monitoring()
    finally:
        for rs in systems.values():
            rs.shutdown()
    return {"start_stop_monitoring": cycles, "create_checkpoint": checkpoints}


def cycle(rs: ResumeSystem, op: str) -> None:
    rs.start_monitoring(op)
    rs.stop_monitoring()


# --- 5. replica unreachable --------------------------------------------------------------


def unreachable(url: str, replica_port: int, repeats: int) -> dict[str, list[float]]:
    detach(replica_port)
    out: dict[str, list[float]] = {}
    for timeout_ms in (100, 500):
        coord = open_coordination(url, wait_replicas=1, wait_timeout_ms=timeout_ms)
        try:
            coord.create_operation(f"down-{timeout_ms}", workers=["w0"])
            samples = []
            for _ in range(repeats):
                began = time.perf_counter_ns()
                with contextlib.suppress(CoordinationUnavailable):
                    coord.acquire(f"down-{timeout_ms}", "w0", ttl_ms=TTL_MS)
                    raise SystemExit("an acquisition no replica acknowledged succeeded")
                samples.append((time.perf_counter_ns() - began) / 1000)
            out[f"timeout {timeout_ms} ms"] = samples
        finally:
            coord.close()
    return out


# --- report ------------------------------------------------------------------------------


def ms(us: float) -> str:
    return f"{us / 1000:.3f} ms"


def render(results: dict[str, dict[str, list[float]]], down: dict[str, list[float]]) -> str:
    head = ("operation", "WAIT", "library p50", "p99", "raw p50", "p99", "lib/raw", "WAIT 1 adds")
    cells = []
    for op, by in results.items():
        base = statistics.median(by["wait0"])
        for n in (0, 1):
            lib = by[f"wait{n}"]
            raw = by.get(f"raw{n}")
            adds = "" if n == 0 else f"{(statistics.median(lib) - base) / 1000:+.3f} ms"
            cells.append(
                (
                    op,
                    str(n),
                    ms(pct(lib, 50)),
                    ms(pct(lib, 99)),
                    ms(pct(raw, 50)) if raw else "-",
                    ms(pct(raw, 99)) if raw else "-",
                    f"{pct(lib, 50) / pct(raw, 50):.2f}x" if raw else "-",
                    adds,
                )
            )
    for name, samples in down.items():
        cells.append(
            (
                "acquire, replica unreachable",
                f"1, {name}",
                ms(pct(samples, 50)),
                ms(pct(samples, 99)),
                "-",
                "-",
                "-",
                "fails: CoordinationUnavailable",
            )
        )
    return table(head, cells, left=2)


def versions(url: str) -> dict[str, str]:
    out = {}
    for dist in ("bbp-dist-resume", "redis", "hiredis"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    with contextlib.closing(raw_client(url)) as client:
        out["redis-server"] = str(client.info("server")["redis_version"])
    return out


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    started = time.monotonic()
    load_before = [round(x, 2) for x in os.getloadavg()]
    with primary_and_replica(tmp / "redis") as (primary, replica):
        url = primary.url
        log(f"primary {url}, replica on port {replica.port}")
        log("coordination calls ...")
        results = coordination_calls(url, args)
        log("end to end ...")
        results |= end_to_end(url, tmp, args)
        log("replica unreachable ...")
        down = unreachable(url, replica.port, args.down_repeats)
        found = versions(url)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_redis_wait.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "versions": found,
        "params": {
            "calls": args.calls,
            "warmup": args.warmup,
            "cycles": args.cycles,
            "checkpoints": args.checkpoints,
            "wait_timeout_ms": WAIT_MS,
            "servers": "redis-server primary + one replica (--replicaof), loopback, no persistence",
            "end_to_end_store": "local directory (file:), so only Redis differs",
            "raw": "redis-py EVALSHA of the library's scripts (+ WAIT in one pipeline), "
            "same client settings",
        },
        "elapsed_s": round(time.monotonic() - started, 1),
        "load_average_1_5_15": {
            "before": load_before,
            "after": [round(x, 2) for x in os.getloadavg()],
        },
        "results": {op: {v: stats(s) for v, s in by.items()} for op, by in results.items()},
        "replica_unreachable": {k: stats(s) for k, s in down.items()},
        "table": render(results, down),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per variant")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=100, help="start/stop_monitoring cycles")
    parser.add_argument("--checkpoints", type=int, default=300)
    parser.add_argument("--down-repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--tmp-dir", type=Path, default=None)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="bbp-bench-wait-", dir=args.tmp_dir) as name:
        report = run(args, Path(name))
    m, v = report["machine"], report["versions"]
    print()
    print(f"{report['date']}  {m['platform']}  {m['cpu']}  {m['cores_logical']} cores")
    print("  ".join(f"{k} {x}" for k, x in v.items()))
    load = report["load_average_1_5_15"]
    print(f"load average before {load['before']}, after {load['after']}")
    print()
    print(report["table"])
    print(
        "\nWAIT 1 is sent after acquire (and a fence restart) and publish_plan only; record"
        " and renew\nshow it costs nothing elsewhere. 'raw' sends the same commands with"
        " redis-py directly."
    )
    print(f"\ntotal {report['elapsed_s']:.0f} s; JSON in {args.json}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
