"""Benchmark garbage collection on SeaweedFS against a raw boto3 list + delete.

One run, in a fresh prefix of a SeaweedFS started here (or of ``--endpoint``):

1. writes ``--records`` checkpoints of ``--referenced`` chunks in all (kept), and
   ``--garbage`` chunks that no record names (written as raw chunk objects, 1 KiB);
2. waits until the store says every chunk is older than the margin (40 s: the least
   margin whose delete window G is the 1 s of the default 24 h);
3. times ``collect_garbage(dry_run=True)``, then ``collect_garbage`` (deleting the
   garbage), then a second run with the first run's record cache (nothing to delete);
4. writes the same garbage again and times the baseline: boto3 ``list_objects_v2`` over
   ``chunks/`` and ``delete_objects`` of the garbage keys in batches of 1,000 (what a
   GC with no safety rule and no mark would do).

    .venv/bin/python benchmarks/bench_gc.py [--garbage 5000] [--referenced 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

from bbp_dist_resume import CheckpointConfig, CheckpointMeta, Repository, open_repository
from bbp_dist_resume.repository.chunkid import ChunkId
from bbp_dist_resume.repository.gc import GcReport, MarkCache, collect_garbage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import import_services, machine, table

MARGIN = 40.0  # the least margin whose G is the default 1 s (M/40)


@contextlib.contextmanager
def services(args: argparse.Namespace, tmp: Path) -> Iterator[Any]:
    svc_mod = import_services()
    if args.services_dir:
        yield svc_mod.load(Path(args.services_dir))
        return
    svc = svc_mod.start(tmp / "services", die_with_parent=True)
    try:
        yield svc
    finally:
        svc_mod.stop(svc)


def write_garbage(repo: Repository, n: int) -> list[str]:
    keys = [ChunkId.of(f"garbage {i}".encode()).store_key for i in range(n)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: repo.store.put(k, os.urandom(1024)), keys))
    return keys


def write_records(repo: Repository, records: int, chunks: int) -> None:
    per = max(1, chunks // records)
    for r in range(records):
        parts = {f"p{i}": os.urandom(5000) for i in range(per)}
        meta = CheckpointMeta(
            operation_id="op", worker_id=f"w{r % 8}", seq=r // 8 + 1,
            owner_token="a" * 32, fence=1, stage="s",
        )  # fmt: skip
        repo.commit(repo.write(parts, meta))


def wait_old(repo: Repository) -> None:
    while not all(repo.gc_timing.collectable(i.age, 0) for i in repo.store.list("chunks/")):
        time.sleep(0.25)


def timed_gc(repo: Repository, **kw: Any) -> tuple[float, GcReport]:
    began = time.perf_counter()
    report = collect_garbage(repo, **kw)
    return time.perf_counter() - began, report


def baseline(svc: Any, bucket: str, prefix: str, garbage: set[str]) -> tuple[float, float, int]:
    client = boto3.client(
        "s3", endpoint_url=svc.s3_endpoint, region_name=svc.region,
        aws_access_key_id=svc.access_key, aws_secret_access_key=svc.secret_key,
    )  # fmt: skip
    began = time.perf_counter()
    listed = [
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{prefix}/chunks/"
        )
        for obj in page.get("Contents", [])
    ]
    listed_at = time.perf_counter()
    doomed = [k for k in listed if k[len(prefix) + 1 :] in garbage]
    for i in range(0, len(doomed), 1000):
        objects: Any = [{"Key": k} for k in doomed[i : i + 1000]]
        client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
    done = time.perf_counter()
    client.close()
    return listed_at - began, done - listed_at, len(listed)


def run(args: argparse.Namespace, svc: Any) -> dict[str, Any]:
    for var, value in (
        ("AWS_ACCESS_KEY_ID", svc.access_key),
        ("AWS_SECRET_ACCESS_KEY", svc.secret_key),
    ):
        os.environ[var] = value
    prefix = f"bench-gc-{uuid.uuid4().hex[:8]}"
    url = f"s3://{svc.bucket}/{prefix}?endpoint_url={svc.s3_endpoint}&region={svc.region}"
    cfg = CheckpointConfig(store_url=url, gc_safety_margin=MARGIN, enable_compression=False)
    rows: dict[str, float] = {}
    with open_repository(None, cfg) as repo:
        began = time.perf_counter()
        write_records(repo, args.records, args.referenced)
        garbage = write_garbage(repo, args.garbage)
        rows["populate"] = time.perf_counter() - began
        wait_old(repo)
        rows["gc_dry_run"], dry = timed_gc(repo, dry_run=True)
        cache = MarkCache()
        rows["gc"], real = timed_gc(repo, cache=cache)
        rows["gc_again_cached"], again = timed_gc(repo, cache=cache)
        assert dry.deleted == real.deleted == args.garbage and again.deleted == 0, (dry, real)
        write_garbage(repo, args.garbage)
        rows["raw_list"], rows["raw_delete"], listed = baseline(
            svc, svc.bucket, prefix, set(garbage)
        )
        rows["raw_total"] = rows["raw_list"] + rows["raw_delete"]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "params": {k: v for k, v in vars(args).items() if k in ("garbage", "referenced", "records")}
        | {"margin_s": MARGIN, "listed": listed},
        "seconds": rows,
        "reports": {"dry_run": repr(dry), "gc": repr(real), "again": repr(again)},
    }


def render(result: dict[str, Any], args: argparse.Namespace) -> str:
    s = result["seconds"]
    listed = result["params"]["listed"]
    rows = [
        ("GC dry run (list, mark, look again)", s["gc_dry_run"], args.garbage),
        ("GC (list, mark, look again, delete)", s["gc"], args.garbage),
        ("GC again: records cached, 0 to delete", s["gc_again_cached"], args.referenced),
        ("raw boto3: list chunks/", s["raw_list"], listed),
        ("raw boto3: delete_objects x1000", s["raw_delete"], args.garbage),
        ("raw boto3: list + delete", s["raw_total"], args.garbage),
    ]
    cells = [(name, f"{n:,}", f"{sec:.2f}", f"{n / sec:,.0f}") for name, sec, n in rows]
    return table(("step", "chunks", "seconds", "chunks/s"), cells)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--garbage", type=int, default=5000)
    p.add_argument("--referenced", type=int, default=1000)
    p.add_argument("--records", type=int, default=100)
    p.add_argument("--services-dir", help="reuse services started by infra/dev/services.py")
    p.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "gc.json")
    args = p.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bbp-bench-gc-") as name,
        services(args, Path(name)) as svc,
    ):
        result = run(args, svc)
    print(
        f"{result['date']}  {result['machine']['cores_logical']} cores  "
        f"{args.garbage} garbage + {args.referenced} referenced chunks in {args.records} records"
    )
    print(render(result, args))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
