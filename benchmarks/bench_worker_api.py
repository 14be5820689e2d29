"""Benchmark the worker API (``ResumeSystem``) on SeaweedFS S3 + redis-server.

It starts its own redis and SeaweedFS with ``infra/dev/services.py`` in a temporary
directory (stopped at the end) and measures, in one run:

1. caller blocking: ``create_checkpoint(..., blocking=False)`` against ``blocking=True``
   for a 64 MiB checkpoint, new data every time (no dedup), in two shapes: a small JSON
   state with a 64 MiB binary attachment, and a 64 MiB JSON state (450k records). The
   baseline is the same bytes sent raw: one boto3 ``put_object`` plus one Redis ``SET``.
   Target: non-blocking blocks the caller for <= 10% of a blocking checkpoint.
2. checkpoint overhead: a pipeline loop of CPU-bound steps that changes ~1% of a 16 MiB
   JSON state per step and calls ``create_automatic_checkpoint`` every step under the
   DEFAULT config (hybrid: 5 min or 10 progress points, compression on). The library's
   ``checkpoint_overhead_percentage`` is shown beside the measured slowdown against the
   same loop run without checkpoints in the same run. Target: < 3% (CheckFreq: 3.5%).

Targets are printed as PASS/FAIL for information, never asserted. Results go to
``benchmarks/results/worker_api.json`` with the date, machine and versions.

    .venv/bin/python benchmarks/bench_worker_api.py [--repeats 3] [--loop-seconds 60]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import random
import statistics
import string
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import redis
from common import import_services, machine, table

from bbp_dist_resume import CheckpointConfig, ResumeSystem

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "worker_api.json"
VERSIONED = ("bbp-dist-resume", "boto3", "redis", "orjson", "zstandard")
MIB = 1 << 20
ASYNC_TARGET = 10.0  # % of a blocking checkpoint
OVERHEAD_TARGET = 3.0  # % of the loop's wall time


def records(n: int, salt: str) -> list[dict[str, Any]]:
    """Recon-style records; ``salt`` makes every run's bytes new (no dedup)."""
    rnd = random.Random(salt)
    letters = string.ascii_letters
    return [
        {
            "id": i,
            "url": f"https://host{i % 977}.example.com/{salt}/{i}",
            "status": 200,
            "title": "".join(rnd.choices(letters, k=40)),
            "score": i * 0.5,
        }
        for i in range(n)
    ]


def shapes(size_mib: int) -> dict[str, Callable[[str], tuple[dict[str, Any], dict[str, bytes]]]]:
    n_records = size_mib * 7000  # ~150 bytes of JSON per record

    def attachment(salt: str) -> tuple[dict[str, Any], dict[str, bytes]]:
        return {"salt": salt, "stage": "scan"}, {"model": os.urandom(size_mib * MIB)}

    def json_state(salt: str) -> tuple[dict[str, Any], dict[str, bytes]]:
        return {"rows": records(n_records, salt)}, {}

    return {"attachment": attachment, "json": json_state}


def blocking_vs_async(rs: ResumeSystem, args: argparse.Namespace, raw: Any) -> list[dict[str, Any]]:
    out = []
    for shape, make in shapes(args.size_mib).items():
        blocking, nonblocking, baseline = [], [], []
        for _ in range(args.repeats):
            state, att = make(uuid.uuid4().hex)
            t = time.perf_counter()
            rs.create_checkpoint("scan", state, attachments=att)
            blocking.append(time.perf_counter() - t)
            state, att = make(uuid.uuid4().hex)
            t = time.perf_counter()
            fut = rs.create_checkpoint("scan", state, attachments=att, blocking=False)
            nonblocking.append(time.perf_counter() - t)
            fut.result()
            baseline.append(raw(state, att))
        out.append(
            {
                "shape": shape,
                "blocking_s": blocking,
                "nonblocking_s": nonblocking,
                "raw_put_s": baseline,
            }
        )
    return out


def raw_baseline(s3: Any, bucket: str, r: redis.Redis) -> Callable[..., float]:
    """One put_object of the same bytes (JSON state + attachments) and one Redis SET."""

    def run(state: dict[str, Any], att: dict[str, bytes]) -> float:
        t = time.perf_counter()
        body = json.dumps(state).encode() + b"".join(att.values())
        s3.put_object(Bucket=bucket, Key=f"raw/{uuid.uuid4().hex}", Body=body)
        r.set(f"raw:{uuid.uuid4().hex}", hashlib.sha256(body[:4096]).hexdigest())
        return time.perf_counter() - t

    return run


def busy(seconds: float) -> None:
    """CPU-bound work for ``seconds`` (a pipeline's step)."""
    end = time.perf_counter() + seconds
    h = hashlib.sha256()
    while time.perf_counter() < end:
        h.update(b"x" * 4096)


def loop(rs: ResumeSystem | None, args: argparse.Namespace) -> float:
    """The pipeline loop: 100 steps, each processing the next 1% batch of a 16 MiB state
    (its records' scores change), as a scan over a target list does."""
    rows = records(args.state_mib * 7000, "loop")
    step_s = args.loop_seconds / 100
    batch = len(rows) // 100
    t = time.perf_counter()
    for step in range(1, 101):
        busy(step_s)
        for row in rows[(step - 1) * batch : step * batch]:
            row["score"] += 1.0
            row["status"] = 301
        if rs is not None:
            rs.create_automatic_checkpoint("scan", {"rows": rows, "step": step}, float(step))
    return time.perf_counter() - t


def run(args: argparse.Namespace, svc: Any, tmp: Path) -> dict[str, Any]:
    os.environ["AWS_ACCESS_KEY_ID"] = svc.access_key
    os.environ["AWS_SECRET_ACCESS_KEY"] = svc.secret_key
    store = f"s3://{svc.bucket}/bench-{uuid.uuid4().hex}?endpoint_url={svc.s3_endpoint}&region={svc.region}"
    s3 = boto3.client("s3", endpoint_url=svc.s3_endpoint, region_name=svc.region)
    r = redis.Redis.from_url(svc.redis_url)
    began = time.perf_counter()
    config = CheckpointConfig(store_url=store, coord_url=svc.redis_url, max_checkpoints=100)
    with ResumeSystem(config, "w0") as rs:
        rs.start_monitoring("bench-async")
        pairs = blocking_vs_async(rs, args, raw_baseline(s3, svc.bucket, r))
        rs.complete()
    plain = loop(None, args)
    default = CheckpointConfig(store_url=store, coord_url=svc.redis_url)
    with ResumeSystem(default, "w0") as rs:
        rs.start_monitoring("bench-loop")
        with_ckpt = loop(rs, args)
        stats = rs.get_statistics()
        rs.complete()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": {p: importlib.metadata.version(p) for p in VERSIONED},
        "params": vars(args) | {"json": str(args.json)},
        "async": pairs,
        "loop": {
            "plain_s": plain,
            "with_checkpoints_s": with_ckpt,
            "overhead_reported_pct": stats.checkpoint_overhead_percentage,
            "checkpoints": stats.total_checkpoints_created,
            "logical_bytes": stats.logical_bytes,
            "stored_bytes": stats.stored_bytes,
            "uploaded_bytes": stats.uploaded_bytes,
            "dedup_ratio": stats.dedup_ratio,
            "recommendations": list(stats.recommendations),
        },
        "elapsed_s": time.perf_counter() - began,
    }


def render(report: dict[str, Any], args: argparse.Namespace) -> str:
    rows = []
    for p in report["async"]:
        b, n, raw = (statistics.median(p[k]) for k in ("blocking_s", "nonblocking_s", "raw_put_s"))
        pct = 100 * n / b
        verdict = "PASS" if pct <= ASYNC_TARGET else "FAIL"
        rows.append(
            (
                f"{args.size_mib} MiB {p['shape']}: blocking",
                f"{b:.3f} s",
                f"raw put {raw:.3f} s",
                "",
            )
        )
        rows.append(
            (
                f"{args.size_mib} MiB {p['shape']}: blocking=False",
                f"{n:.3f} s",
                f"{pct:.1f}% of blocking",
                f"<= {ASYNC_TARGET:.0f}% {verdict}",
            )
        )
    lp = report["loop"]
    slowdown = 100 * (lp["with_checkpoints_s"] - lp["plain_s"]) / lp["plain_s"]
    rep = lp["overhead_reported_pct"]
    rows.append(("loop without checkpoints", f"{lp['plain_s']:.2f} s", "baseline", ""))
    rows.append(
        (
            f"loop, {lp['checkpoints']} checkpoints of {args.state_mib} MiB",
            f"{lp['with_checkpoints_s']:.2f} s",
            f"slowdown {slowdown:.2f}%",
            "",
        )
    )
    verdict = "PASS" if rep < OVERHEAD_TARGET else "FAIL"
    rows.append(
        ("checkpoint_overhead_percentage", f"{rep:.2f}%", "", f"< {OVERHEAD_TARGET:.0f}% {verdict}")
    )
    return table(("measure", "median", "ratio", "target"), rows)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size-mib", type=int, default=64)
    p.add_argument("--state-mib", type=int, default=16)
    p.add_argument("--loop-seconds", type=float, default=60.0)
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    services = import_services()
    with tempfile.TemporaryDirectory(prefix="bbp-bench-") as name:
        svc = services.start(Path(name) / "services", die_with_parent=True)
        try:
            report = run(args, svc, Path(name))
        finally:
            services.stop(svc)
    m = report["machine"]
    print(
        f"\n{report['date']}  {m['platform']}  {m['cores_logical']} cores  "
        f"{m['ram_bytes'] / (1 << 30):.1f} GiB RAM  median of {args.repeats}\n"
    )
    print(render(report, args))
    lp = report["loop"]
    print(
        f"\nloop: logical {lp['logical_bytes'] / MIB:.0f} MiB, "
        f"stored {lp['stored_bytes'] / MIB:.1f} MiB, "
        f"uploaded {lp['uploaded_bytes'] / MIB:.1f} MiB, dedup {lp['dedup_ratio']:.1f}x"
    )
    for line in lp["recommendations"]:
        print(f"recommendation: {line}")
    print(f"\ntotal {report['elapsed_s']:.0f} s; JSON in {args.json}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
