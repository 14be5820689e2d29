"""Benchmark the coordination backends on a real redis-server and on a SQLite file.

One run measures, on Redis (a standalone redis-server started here, no persistence) and on
SQLite (a file in a temporary directory):

1. commit latency: p50/p99 of ``coord.record(lease, summary)`` (the index write of
   DESIGN.md commit step 5), a new seq every call, against a plain redis-py ``SET`` of a
   value as long as the summary JSON on the same server with the same client settings,
   the two interleaved call by call (SQLite has no baseline);
2. heartbeats: 1,000 leases (125 operations x 8 workers) renewed as fast as possible from
   a few threads (renewals/s), and the redis-server's CPU while the 1,000 are renewed at
   1 Hz each, spread over the second (psutil cpu_times of the server process);
3. crash scan: 10,000 operations x 8 workers, every slot acquired once, about 1% with a
   1 ms ttl (expired) and the rest live; ``coord.crashed_workers()`` timed (median of 5)
   and its result checked against the expired slots.

It prints a table with the issue's targets (for information, never asserted) and writes
the results as JSON, with the date, the machine and the versions.

    .venv/bin/python benchmarks/bench_coordination.py [--threads 4] [--ops 10000]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import importlib.metadata
import itertools
import json
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import redis
from common import machine, table
from redis.backoff import NoBackoff
from redis.retry import Retry

from bbp_dist_resume.coordination import CheckpointSummary, Coordination, Lease, open_coordination

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "coordination.json"
VERSIONED = ("bbp-dist-resume", "redis", "hiredis", "psutil", "pydantic")
TIMEOUT_S = 5.0  # the socket timeouts connect() gives its client (its default timeout_s)
LONG_TTL_MS = 600_000  # live leases stay live for the whole run
HEARTBEAT_TTL_MS = 30_000
EXPIRED_TTL_MS = 1
REDIS_READY_S = 20.0
# The targets, shown as information (never asserted).
RECORD_TARGET = 2.0  # record() p50 as a multiple of SET p50
CPU_TARGET = 10.0  # % of one core, redis-server, 1,000 workers at 1 Hz
SCAN_TARGET_MS = 250.0


# --- results -----------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table; ``data`` goes to the JSON only."""

    backend: str
    name: str
    value: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    passed: bool | None = None
    data: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # printed under the table

    def verdict(self) -> str:
        return {None: "", True: "PASS", False: "FAIL"}[self.passed]


def pct(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of samples, linear between closest ranks."""
    ordered = sorted(samples)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def latency_json(samples_us: Sequence[float]) -> dict[str, float | int]:
    return {
        "n": len(samples_us),
        "p50_us": round(pct(samples_us, 50), 1),
        "p90_us": round(pct(samples_us, 90), 1),
        "p99_us": round(pct(samples_us, 99), 1),
        "p999_us": round(pct(samples_us, 99.9), 1),
        "max_us": round(max(samples_us), 1),
        "mean_us": round(statistics.fmean(samples_us), 1),
    }


def log(msg: str) -> None:
    print(msg, flush=True)


# --- the redis-server --------------------------------------------------------------------


@dataclass(frozen=True)
class RedisServer:
    pid: int
    port: int
    url: str
    version: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if this script dies (PR_SET_PDEATHSIG). Runs
    before the benchmark starts any thread, where preexec_fn is safe."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def raw_client(url: str) -> redis.Redis:
    """A redis-py client with the settings ``redis_backend.connect`` gives its own."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=TIMEOUT_S,
        socket_connect_timeout=TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[RedisServer]:
    """A standalone redis-server on a free loopback port, without persistence."""
    binary = os.environ.get("REDIS_SERVER") or "redis-server"
    data = tmp / "redis"
    data.mkdir()
    for _ in range(3):
        port = _free_port()
        logfile = data / f"redis-{port}.log"
        argv = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(data),
            "--logfile", str(logfile),
            "--protected-mode", "yes",
        ]  # fmt: skip
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
        url = f"redis://127.0.0.1:{port}/0"
        if _await_redis(proc, url):
            break
        proc.kill()
        proc.wait()
    else:
        tail = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
        raise SystemExit(f"redis-server did not start (is it installed?)\n{tail}")
    client = raw_client(url)
    info = client.info("server")
    client.close()
    try:
        yield RedisServer(pid=proc.pid, port=port, url=url, version=str(info["redis_version"]))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _await_redis(proc: subprocess.Popen[bytes], url: str) -> bool:
    client = raw_client(url)
    deadline = time.monotonic() + REDIS_READY_S
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                if client.ping():
                    return True
            time.sleep(0.05)
        return False
    finally:
        client.close()


# --- backends ----------------------------------------------------------------------------


@dataclass
class Backend:
    """How to get an empty coordination of one kind."""

    name: str
    url_of: Callable[[], str]
    reset: Callable[[], None]
    setup_threads: int
    server_pid: int | None = None
    raw_url: str | None = None

    def fresh(self) -> Coordination:
        self.reset()
        return open_coordination(self.url_of(), timeout_s=TIMEOUT_S)


def redis_backend(server: RedisServer, setup_threads: int) -> Backend:
    def reset() -> None:
        client = raw_client(server.url)
        client.flushall()
        client.close()

    return Backend(
        name="redis",
        url_of=lambda: server.url,
        reset=reset,
        setup_threads=setup_threads,
        server_pid=server.pid,
        raw_url=server.url,
    )


def sqlite_backend(folder: Path) -> Backend:
    """A new database file for every phase. One setup thread: SQLite has one writer, and
    threads waiting for the write lock only sleep in its busy handler."""
    folder.mkdir(parents=True, exist_ok=True)
    counter = itertools.count(1)
    current: list[Path] = []

    def reset() -> None:
        current[:] = [folder / f"coord-{next(counter)}.db"]

    return Backend(
        name="sqlite",
        url_of=lambda: f"sqlite:///{current[0]}",
        reset=reset,
        setup_threads=1,
    )


# --- 1. commit latency -------------------------------------------------------------------


def make_summary(seq: int, lease: Lease) -> CheckpointSummary:
    """A realistic index entry: a checkpoint with a few counters."""
    return CheckpointSummary(
        seq=seq,
        kind="checkpoint",
        owner_token=lease.owner_token,
        fence=lease.fence,
        created_at=datetime.now(UTC).isoformat(),
        root=f"{seq:064x}",
        stage="train",
        progress=min(1.0, seq / 100_000),
        epoch=seq // 1000,
        consumed={"shard-000": 1_048_576 + seq, "shard-001": 524_288},
        produced={"model": seq, "metrics": 3 * seq},
        size=268_435_456,
    )


def commit_latency(backend: Backend, args: argparse.Namespace) -> list[Row]:
    coord = backend.fresh()
    raw = raw_client(backend.raw_url) if backend.raw_url else None
    try:
        coord.create_operation("commit", workers=["w0"])
        lease = coord.acquire("commit", "w0", ttl_ms=LONG_TTL_MS)
        total = args.warmup + args.commit_calls
        # Built before timing: the caller of record() already holds its summary.
        summaries = [make_summary(seq, lease) for seq in range(1, total + 1)]
        payload_len = len(summaries[-1].to_json())
        payload = "x" * payload_len
        rec: list[float] = []
        sets: list[float] = []
        clock = time.perf_counter_ns

        def one_record(s: CheckpointSummary) -> float:
            began = clock()
            coord.record(lease, s)
            return (clock() - began) / 1000

        def one_set(i: int) -> float:
            assert raw is not None
            key = f"bench:set:{i}"
            began = clock()
            raw.set(key, payload)
            return (clock() - began) / 1000

        for i, s in enumerate(summaries):
            # Interleaved call by call, the order alternating, so both see the same server.
            if raw is not None and i % 2:
                sets.append(one_set(i))
                rec.append(one_record(s))
            else:
                rec.append(one_record(s))
                if raw is not None:
                    sets.append(one_set(i))
        rec, sets = rec[args.warmup :], sets[args.warmup :]
        entries = len(coord.index("commit", "w0"))
        if entries != total:
            raise SystemExit(f"{backend.name}: the index holds {entries} entries, not {total}")
    finally:
        coord.close()
        if raw is not None:
            raw.close()
    data: dict[str, Any] = {
        "calls": len(rec),
        "warmup": args.warmup,
        "payload_bytes": payload_len,
        "record": latency_json(rec),
    }
    p50, p99 = pct(rec, 50), pct(rec, 99)
    if not sets:
        data["baseline"] = "none (SQLite has no server round trip to compare with)"
        return [
            Row(backend.name, "commit record() p50", f"{p50:8.1f} us", "no baseline", data=data),
            Row(backend.name, "commit record() p99", f"{p99:8.1f} us", "no baseline"),
        ]
    data["set"] = latency_json(sets)
    s50, s99 = pct(sets, 50), pct(sets, 99)
    return [
        Row(
            backend.name,
            "commit record() p50",
            f"{p50:8.1f} us",
            f"SET {s50:6.1f} us",
            f"{p50 / s50:4.2f}x",
            f"<= {RECORD_TARGET:.0f}x SET",
            p50 / s50 <= RECORD_TARGET,
            data,
        ),
        Row(
            backend.name,
            "commit record() p99",
            f"{p99:8.1f} us",
            f"SET {s99:6.1f} us",
            f"{p99 / s99:4.2f}x",
        ),
    ]


# --- 2. heartbeats -----------------------------------------------------------------------


def heartbeat_leases(coord: Coordination, ops: int, workers: int) -> list[Lease]:
    names = [f"w{j}" for j in range(workers)]
    leases = []
    for i in range(ops):
        op = f"hb-{i:04d}"
        coord.create_operation(op, workers=names)
        leases += [coord.acquire(op, w, ttl_ms=HEARTBEAT_TTL_MS) for w in names]
    return leases


class CpuMeter:
    """CPU time of one process (user + system) over a wall-clock window, as % of a core."""

    def __init__(self, pid: int | None) -> None:
        self._proc = psutil.Process(pid) if pid is not None else psutil.Process()
        self._cpu = 0.0
        self._wall = 0.0

    def _cpu_now(self) -> float:
        t = self._proc.cpu_times()
        return float(t.user + t.system)

    def start(self) -> None:
        self._cpu, self._wall = self._cpu_now(), time.perf_counter()

    def stop(self) -> dict[str, float]:
        cpu, wall = self._cpu_now() - self._cpu, time.perf_counter() - self._wall
        return {"cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "pct": 100 * cpu / wall}


def run_threads(count: int, target: Callable[[int], None]) -> None:
    with ThreadPoolExecutor(max_workers=count) as pool:
        for f in [pool.submit(target, t) for t in range(count)]:
            f.result()


def renew_flat_out(
    coord: Coordination, leases: list[Lease], threads: int, seconds: float
) -> tuple[int, float]:
    """Every thread renews its share of the leases round-robin until the time is up."""
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    end = [0.0]

    def work(t: int) -> None:
        mine = leases[t::threads]
        start.wait()
        n = 0
        for lease in itertools.cycle(mine):
            coord.renew(lease)
            n += 1
            if n % 16 == 0 and time.perf_counter() >= end[0]:
                break
        counts[t] = n

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    began = time.perf_counter()
    end[0] = began + seconds
    start.wait()
    for w in workers:
        w.join()
    return sum(counts), time.perf_counter() - began


def renew_at_rate(
    coord: Coordination, leases: list[Lease], threads: int, seconds: int
) -> dict[str, Any]:
    """Each lease renewed once a second, lease i at offset i/len(leases) of the second."""
    n = len(leases)
    lags: list[list[float]] = [[] for _ in range(threads)]
    t0 = time.perf_counter() + 0.2

    def work(t: int) -> None:
        for k in range(seconds):
            for i in range(t, n, threads):
                due = t0 + k + i / n
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                coord.renew(leases[i])
                lags[t].append(time.perf_counter() - due)

    run_threads(threads, work)
    flat = [x * 1000 for xs in lags for x in xs]
    return {
        "renewals": len(flat),
        "lag_p50_ms": round(pct(flat, 50), 2),
        "lag_p99_ms": round(pct(flat, 99), 2),
        "lag_max_ms": round(max(flat), 2),
    }


def heartbeats(backend: Backend, args: argparse.Namespace) -> list[Row]:
    coord = backend.fresh()
    rows = []
    try:
        leases = heartbeat_leases(coord, args.hb_ops, args.hb_workers)
        n = len(leases)
        server = CpuMeter(backend.server_pid) if backend.server_pid else None
        if server:
            server.start()
            time.sleep(1.0)
            idle = server.stop()
            server.start()
        total, took = renew_flat_out(coord, leases, args.threads, args.hb_seconds)
        rate = total / took
        flat: dict[str, Any] = {
            "leases": n,
            "threads": args.threads,
            "renewals": total,
            "seconds": round(took, 3),
            "per_s": round(rate),
        }
        if server:
            flat["server_cpu"] = server.stop()
        rows.append(
            Row(
                backend.name,
                f"renewals/s, {n} leases, {args.threads} threads",
                f"{rate:8.0f} /s",
                f"{rate / n:5.1f} Hz/lease",
                data=flat,
            )
        )
        if server is None:
            return rows
        me = CpuMeter(None)
        raw = raw_client(backend.raw_url) if backend.raw_url else None
        if raw is not None:
            raw.config_resetstat()
        server.start()
        me.start()
        paced = renew_at_rate(coord, leases, args.threads, args.hz_seconds)
        paced["server_cpu"] = server.stop()
        paced["client_cpu"] = me.stop()
        if raw is not None:
            paced["commandstats"] = command_stats(raw)
            raw.close()
        paced["server_cpu_idle"] = idle
        paced["threads"] = args.threads
        cpu = paced["server_cpu"]["pct"]
        rows.append(
            Row(
                backend.name,
                f"redis-server CPU, {n} workers at 1 Hz, {args.hz_seconds} s",
                f"{cpu:6.2f}% core",
                f"idle {idle['pct']:4.2f}%",
                target=f"< {CPU_TARGET:.0f}% core",
                passed=cpu < CPU_TARGET,
                data=paced,
                note=paced_note(paced),
            )
        )
    finally:
        coord.close()
    return rows


def command_stats(raw: redis.Redis) -> dict[str, dict[str, float]]:
    """Calls and execution time per command since CONFIG RESETSTAT (time spent reading
    and writing sockets is not in it)."""
    stats: dict[str, Any] = raw.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): {
            "calls": int(v["calls"]),
            "usec": int(v["usec"]),
            "usec_per_call": float(v["usec_per_call"]),
        }
        for name, v in stats.items()
    }


def paced_note(paced: dict[str, Any]) -> str:
    cpu = paced["server_cpu"]
    stats = paced.get("commandstats", {})
    busy = sum(v["usec"] for v in stats.values()) / 1e6
    top = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:3]
    parts = ", ".join(f"{k} {v['calls']} x {v['usec_per_call']:.1f} us" for k, v in top)
    return (
        f"1 Hz heartbeats: {paced['renewals']} renewals, lag p99 {paced['lag_p99_ms']:.1f} ms; "
        f"redis-server used {cpu['cpu_s']:.2f} s CPU, of which {busy:.2f} s executing "
        f"commands ({parts}), the rest socket I/O and the event loop; this client process "
        f"used {paced['client_cpu']['pct']:.0f}% of a core."
    )


# --- 3. crash scan -----------------------------------------------------------------------


def populate(
    backend: Backend, coord: Coordination, ops: int, workers: int, expired: set[tuple[str, str]]
) -> float:
    """Create the operations and acquire every slot once; return the seconds it took."""
    names = [f"w{j}" for j in range(workers)]
    threads = backend.setup_threads
    began = time.perf_counter()

    def work(t: int) -> None:
        for i in range(t, ops, threads):
            op = f"op-{i:05d}"
            coord.create_operation(op, workers=names)
            for w in names:
                ttl = EXPIRED_TTL_MS if (op, w) in expired else LONG_TTL_MS
                coord.acquire(op, w, ttl_ms=ttl)

    run_threads(threads, work)
    return time.perf_counter() - began


def crash_scan(backend: Backend, args: argparse.Namespace) -> list[Row]:
    coord = backend.fresh()
    slots = args.ops * args.workers
    count = max(1, round(slots * args.expired_pct / 100))
    rng = random.Random(42)
    picked = rng.sample(range(slots), count)
    expired = {(f"op-{k // args.workers:05d}", f"w{k % args.workers}") for k in picked}
    want = sorted(expired)
    try:
        setup = populate(backend, coord, args.ops, args.workers, expired)
        log(f"  {backend.name}: {slots} slots acquired in {setup:.1f} s ({slots / setup:.0f}/s)")
        time.sleep(0.05)  # the 1 ms leases are long gone
        timings, sizes = [], []
        for _ in range(args.scan_repeats + 1):  # the first one warms up, and is not counted
            began = time.perf_counter()
            got = coord.crashed_workers()
            timings.append((time.perf_counter() - began) * 1000)
            sizes.append(len(got))
            if got != want:
                missing, extra = len(set(want) - set(got)), len(set(got) - set(want))
                raise SystemExit(
                    f"{backend.name}: crashed_workers() returned {len(got)} slots, want "
                    f"{len(want)} ({missing} missing, {extra} unexpected)"
                )
        timings = timings[1:]
    finally:
        coord.close()
    median = statistics.median(timings)
    data: dict[str, Any] = {
        "operations": args.ops,
        "workers": args.workers,
        "slots": slots,
        "expired": count,
        "setup_s": round(setup, 2),
        "setup_threads": backend.setup_threads,
        "setup_per_s": round(slots / setup),
        "scan_ms": [round(x, 2) for x in timings],
        "median_ms": round(median, 2),
        "found": sizes[1:],
    }
    return [
        Row(
            backend.name,
            f"crash scan, {slots} slots, {count} expired",
            f"{median:6.1f} ms",
            f"found {sizes[-1]}/{count}",
            target=f"< {SCAN_TARGET_MS:.0f} ms",
            passed=median < SCAN_TARGET_MS and sizes[-1] == count,
            data=data,
        ),
        Row(
            backend.name,
            f"  setup through the API, {backend.setup_threads} thread(s)",
            f"{setup:6.1f} s",
            f"{slots / setup:.0f} slots/s",
        ),
    ]


# --- report ------------------------------------------------------------------------------


def versions(server: RedisServer | None) -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    if server is not None:
        out["redis-server"] = server.version
    out["sqlite"] = sqlite3.sqlite_version
    return out


def render(rows: list[Row]) -> str:
    return table(
        ("backend", "measure", "value", "baseline", "ratio", "target", ""),
        [(r.backend, r.name, r.value, r.baseline, r.ratio, r.target, r.verdict()) for r in rows],
        left=2,
    )


PHASES: tuple[tuple[str, Callable[[Backend, argparse.Namespace], list[Row]]], ...] = (
    ("commit latency", commit_latency),
    ("heartbeats", heartbeats),
    ("crash scan", crash_scan),
)


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    began = time.perf_counter()
    # Other work on the machine shows in every number here (fsync latency above all).
    load_before = [round(x, 2) for x in psutil.getloadavg()]
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        server = None
        backends = []
        if not args.no_redis:
            server = stack.enter_context(redis_server(tmp))
            log(f"redis-server {server.version} on port {server.port} (pid {server.pid})")
            backends.append(redis_backend(server, args.setup_threads))
        if not args.no_sqlite:
            backends.append(sqlite_backend(args.sqlite_dir or tmp / "sqlite"))
        for backend in backends:
            for label, phase in PHASES:
                log(f"{backend.name}: {label}")
                rows += phase(backend, args)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "versions": versions(server),
        "params": {
            "commit_calls": args.commit_calls,
            "warmup": args.warmup,
            "threads": args.threads,
            "heartbeat_leases": args.hb_ops * args.hb_workers,
            "heartbeat_ttl_ms": HEARTBEAT_TTL_MS,
            "flat_out_seconds": args.hb_seconds,
            "paced_seconds": args.hz_seconds,
            "scan_operations": args.ops,
            "scan_workers": args.workers,
            "expired_pct": args.expired_pct,
            "scan_repeats": args.scan_repeats,
            "redis": "standalone redis-server started by the script, --save '' --appendonly no",
            "sqlite": "a new file per phase in " + str(args.sqlite_dir or "a temporary folder"),
            "baseline": "redis-py SET of a value as long as the summary JSON, same client "
            "settings as connect(), interleaved with record()",
        },
        "elapsed_s": round(time.perf_counter() - began, 1),
        "load_average_1_5_15": {
            "before": load_before,
            "after": [round(x, 2) for x in psutil.getloadavg()],
        },
        "rows": [dataclasses.asdict(r) for r in rows],
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    p.add_argument("--commit-calls", type=int, default=5000, help="timed record() calls")
    p.add_argument("--warmup", type=int, default=500, help="record() calls not counted")
    p.add_argument("--threads", type=int, default=4, help="heartbeat threads")
    p.add_argument("--hb-ops", type=int, default=125, help="heartbeat operations")
    p.add_argument("--hb-workers", type=int, default=8, help="workers per heartbeat operation")
    p.add_argument("--hb-seconds", type=float, default=5.0, help="flat-out renewal time")
    p.add_argument("--hz-seconds", type=int, default=10, help="seconds of 1 Hz heartbeats")
    p.add_argument("--ops", type=int, default=10_000, help="crash-scan operations")
    p.add_argument("--workers", type=int, default=8, help="workers per crash-scan operation")
    p.add_argument("--expired-pct", type=float, default=1.0, help="%% of slots expired")
    p.add_argument("--scan-repeats", type=int, default=5, help="timed crash scans")
    p.add_argument("--setup-threads", type=int, default=4, help="Redis crash-scan setup threads")
    p.add_argument("--sqlite-dir", type=Path, default=None, help="folder of the SQLite files")
    p.add_argument("--tmp-dir", type=Path, default=None, help="where the temporary folder goes")
    p.add_argument("--no-redis", action="store_true")
    p.add_argument("--no-sqlite", action="store_true")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    # SIGTERM runs the finally blocks too: the redis-server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="bbp-bench-coord-", dir=args.tmp_dir) as name:
        report = run(args, Path(name))
    rows = [Row(**r) for r in report["rows"]]
    m, v = report["machine"], report["versions"]
    print()
    print(
        f"{report['date']}  {m['platform']}  {m['cpu']}  {m['cores_logical']} cores  "
        f"{m['ram_bytes'] / (1 << 30):.1f} GiB RAM"
    )
    print("  ".join(f"{k} {x}" for k, x in v.items()))
    load = report["load_average_1_5_15"]
    print(f"load average before {load['before']}, after {load['after']}")
    print()
    print(render(rows))
    for r in rows:
        if r.note:
            print(f"\n{r.backend}: {r.note}")
    print(
        "\nSQLite has no server round trip, so its record() has no baseline; its CPU is the "
        "client's own. Targets are the issue's, for information."
    )
    print(f"\ntotal {report['elapsed_s']:.0f} s; JSON in {args.json}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
