"""Benchmark the checkpoint repository against raw boto3 on a real SeaweedFS S3 server.

One run measures, for a part of --size-mib MiB (random bytes, and CSV-like text):

1. write throughput of ``Repository.write`` + ``commit`` (part given as a file path),
   compression and encryption off and on, against boto3 ``upload_fileobj``;
2. an incremental write after changing 1% of the part (one region; and, for
   information, 10 scattered regions of 0.1%);
3. read throughput of ``Repository.read`` and ``restore_part`` against boto3
   ``download_fileobj`` (into memory, into a file);
4. peak RSS growth of a file-part write, measured in a subprocess.

It starts its own redis and SeaweedFS with infra/dev/services.py in a temporary directory
(or uses a running S3 endpoint with --endpoint/--bucket and AWS_* credentials), prints a
table with the issue's targets and writes the results as JSON.

    .venv/bin/python benchmarks/bench_repository.py [--size-mib 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.metadata
import importlib.util
import io
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import psutil
from common import import_services, machine, table

from bbp_dist_resume import CheckpointConfig, CheckpointMeta, Manifest, Repository, open_repository

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "repository.json"
MIB = 1 << 20
MB = 1_000_000
PASSPHRASE = "bench-passphrase"
OWNER = "0" * 32
VERSIONED = (
    "bbp-dist-resume",
    "boto3",
    "botocore",
    "s3transfer",
    "urllib3",
    "pyfastcdc",
    "blake3",
    "zstandard",
    "cryptography",
    "psutil",
    "pydantic",
)
# The targets, shown as information (never asserted).
WRITE_OFF_TARGET = 1.0  # x raw upload_fileobj, compression and encryption off
WRITE_ON_TARGET = 0.7  # x raw upload_fileobj, both on, random data
READ_TARGET = 1.0  # x raw download_fileobj
INC_BYTES_TARGET = 3.0  # % of the part uploaded by the incremental write
INC_TIME_TARGET = 15.0  # % of the first write's time
RSS_TARGET = 25.0  # % of the part size
CSV_PORTS = (21, 22, 25, 53, 80, 110, 143, 443, 445, 993, 3306, 5432, 6379, 8080, 8443, 9200)
CSV_PROTOS = ("http/1.1", "h2", "ssh", "smtp", "dns", "mysql", "redis", "tls", "ftp")
CSV_STATES = ("open", "open", "open", "filtered", "closed")


# --- where the S3 server is --------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str
    started_here: bool


@contextlib.contextmanager
def endpoint(args: argparse.Namespace, tmp: Path) -> Iterator[Endpoint]:
    """The S3 endpoint to benchmark: the one given, or a SeaweedFS started here."""
    if args.endpoint:
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            raise SystemExit("--endpoint needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        yield Endpoint(args.endpoint, args.bucket, key, secret, args.region, started_here=False)
        return
    services = import_services()
    began = time.perf_counter()
    svc = services.start(tmp / "services", die_with_parent=True)
    print(f"started redis + SeaweedFS in {time.perf_counter() - began:.1f} s: {svc.s3_endpoint}")
    try:
        yield Endpoint(
            svc.s3_endpoint, svc.bucket, svc.access_key, svc.secret_key, svc.region, True
        )
    finally:
        services.stop(svc)


def set_credentials(ep: Endpoint) -> None:
    """The library reads credentials from the boto3 chain: the environment."""
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION"):
        os.environ.pop(name, None)
    os.environ["AWS_ACCESS_KEY_ID"] = ep.access_key
    os.environ["AWS_SECRET_ACCESS_KEY"] = ep.secret_key


def raw_client(ep: Endpoint) -> S3Client:
    """The baseline: a default boto3 client with the same endpoint and credentials."""
    return boto3.client(
        "s3",
        endpoint_url=ep.url,
        aws_access_key_id=ep.access_key,
        aws_secret_access_key=ep.secret_key,
        region_name=ep.region,
    )


def store_url(ep: Endpoint, prefix: str) -> str:
    return f"s3://{ep.bucket}/{prefix}?endpoint_url={ep.url}&region={ep.region}"


def repo_options(args: argparse.Namespace) -> dict[str, int]:
    """Config fields from the command line (chunk sizes only take effect in a new store)."""
    opts = {"upload_concurrency": args.concurrency}
    if args.chunk_avg_kib:
        avg = args.chunk_avg_kib * 1024
        opts |= {"chunk_min_size": avg // 4, "chunk_avg_size": avg, "chunk_max_size": avg * 4}
    return opts


def open_repo(url: str, on: bool, opts: dict[str, int]) -> Repository:
    cfg = CheckpointConfig(
        store_url=url,
        enable_compression=on,
        enable_encryption=on,
        encryption_key=PASSPHRASE if on else None,
        **opts,
    )
    return open_repository(None, cfg)


def meta(seq: int) -> CheckpointMeta:
    return CheckpointMeta(
        operation_id="bench", worker_id="w0", seq=seq, owner_token=OWNER, fence=1, stage="bench"
    )


# --- data ----------------------------------------------------------------------------


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 16 * MIB)
            f.write(os.urandom(n))
            left -= n


def write_csv(path: Path, size: int, seed: int = 1) -> None:
    """Port-scan-like rows, each distinct (an id, a random host, port and hex tail)."""
    rng = random.Random(seed)
    bits, choice = rng.getrandbits, rng.choice
    row_id, left = 0, size
    with path.open("wb") as f:
        while left:
            block = "".join(
                f"{i},host-{bits(16)}.example.com,{choice(CSV_PORTS)},{choice(CSV_STATES)},"
                f"{choice(CSV_PROTOS)},{bits(64):016x}\n"
                for i in range(row_id, row_id + 20_000)
            ).encode()
            row_id += 20_000
            f.write(block[:left])
            left -= min(left, len(block))


def modified_copy(src: Path, dst: Path, regions: int, seed: int) -> int:
    """Copy src with 1% of its bytes overwritten by new random bytes, as ``regions``
    contiguous runs at random offsets (one per equal slice, so they never overlap).
    Returns the number of bytes changed."""
    shutil.copyfile(src, dst)
    size = src.stat().st_size
    run = max(1, size // 100 // regions)
    slot = size // regions
    rng = random.Random(seed)
    with dst.open("r+b") as f:
        for i in range(regions):
            f.seek(i * slot + rng.randrange(max(1, slot - run)))
            f.write(os.urandom(run))
    return run * regions


# --- measuring -------------------------------------------------------------------------


@dataclass
class Samples:
    """Seconds of each repeat; the best (shortest) is what the table shows."""

    seconds: list[float] = field(default_factory=list)

    def add(self, fn: Callable[[], object]) -> object:
        began = time.perf_counter()
        out = fn()
        self.seconds.append(time.perf_counter() - began)
        return out

    @property
    def best(self) -> float:
        return min(self.seconds)

    def mbps(self, size: int) -> float:
        return size / self.best / MB

    def json(self, size: int) -> dict[str, Any]:
        return {
            "seconds": [round(s, 4) for s in self.seconds],
            "best_s": round(self.best, 4),
            "median_s": round(statistics.median(self.seconds), 4),
            "best_mb_s": round(self.mbps(size), 1),
        }


@dataclass
class Row:
    """One line of the table."""

    kind: str  # write | read | incremental | rss
    name: str
    value: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    passed: bool | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def verdict(self) -> str:
        return "" if self.passed is None else ("PASS" if self.passed else "FAIL")


def upload_raw(client: S3Client, bucket: str, key: str, path: Path) -> None:
    with path.open("rb") as f:
        client.upload_fileobj(f, bucket, key)


def download_raw_memory(client: S3Client, bucket: str, key: str) -> int:
    buf = io.BytesIO()
    client.download_fileobj(bucket, key, buf)
    return buf.tell()


def download_raw_file(client: S3Client, bucket: str, key: str, path: Path) -> None:
    with path.open("wb") as f:
        client.download_fileobj(bucket, key, f)


def fsync_time(path: Path) -> float:
    began = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - began


@dataclass
class ConfigRun:
    """The measurements of one dataset x mode (compression+encryption off or on)."""

    dataset: str
    on: bool
    first: Samples = field(default_factory=Samples)
    inc: Samples = field(default_factory=Samples)
    inc_uploaded: list[int] = field(default_factory=list)
    scattered: Samples = field(default_factory=Samples)
    scattered_uploaded: list[int] = field(default_factory=list)
    inc_chunks: list[int] = field(default_factory=list)
    first_uploaded: list[int] = field(default_factory=list)
    chunks: int = 0
    prefix: str = ""
    manifest: Manifest | None = None

    @property
    def label(self) -> str:
        return f"{self.dataset:6} comp+enc {'on ' if self.on else 'off'}"


@dataclass
class Bench:
    args: argparse.Namespace
    ep: Endpoint
    tmp: Path
    run_id: str
    size: int
    client: S3Client
    rows: list[Row] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def opts(self) -> dict[str, int]:
        return repo_options(self.args)

    def prefix(self, name: str) -> str:
        return f"bench-{self.run_id}/{name}"

    def url(self, name: str) -> str:
        return store_url(self.ep, self.prefix(name))

    def log(self, text: str) -> None:
        print(text, flush=True)

    # -- writes ---------------------------------------------------------------------------

    def first_and_incremental(
        self, run: ConfigRun, path: Path, changed: tuple[Path, Path], r: int
    ) -> None:
        """A first write to a fresh store, then the 1%-changed part to the same store:
        once with the change in ``--inc-regions`` runs, once in ``--scattered-regions``."""
        name = f"{run.dataset}-{'on' if run.on else 'off'}-r{r}"
        repo = open_repo(self.url(name), run.on, self.opts)
        try:
            s0 = repo.stats()
            m = run.first.add(lambda: repo.commit(repo.write({"data": path}, meta(1))))
            s1 = repo.stats()
            run.inc.add(lambda: repo.commit(repo.write({"data": changed[0]}, meta(2))))
            s2 = repo.stats()
            run.scattered.add(lambda: repo.commit(repo.write({"data": changed[1]}, meta(3))))
            s3 = repo.stats()
        finally:
            repo.close()
        run.scattered_uploaded.append(s3.uploaded_bytes - s2.uploaded_bytes)
        run.first_uploaded.append(s1.uploaded_bytes - s0.uploaded_bytes)
        run.inc_uploaded.append(s2.uploaded_bytes - s1.uploaded_bytes)
        run.inc_chunks.append(s2.chunks_uploaded - s1.chunks_uploaded)
        run.chunks = s1.chunks - s0.chunks
        run.prefix, run.manifest = self.prefix(name), m  # type: ignore[assignment]

    def write_bytes(self, data: bytes, samples: Samples, r: int) -> None:
        repo = open_repo(self.url(f"random-off-bytes-r{r}"), False, self.opts)
        try:
            samples.add(lambda: repo.commit(repo.write({"data": data}, meta(1))))
        finally:
            repo.close()

    def reopened_incremental(self, run: ConfigRun, changed: Path) -> dict[str, Any]:
        """The changed part again, from a newly opened repository (as a restarted worker
        that has not read its last checkpoint back): what does dedup cost then?"""
        repo = open_repo(store_url(self.ep, run.prefix), run.on, self.opts)
        try:
            s0 = repo.stats()
            began = time.perf_counter()
            repo.commit(repo.write({"data": changed}, meta(4)))
            took = time.perf_counter() - began
            s1 = repo.stats()
        finally:
            repo.close()
        return {
            "seconds": round(took, 4),
            "uploaded_bytes": s1.uploaded_bytes - s0.uploaded_bytes,
            "chunks_uploaded": s1.chunks_uploaded - s0.chunks_uploaded,
            "chunks_created": s1.chunks_created - s0.chunks_created,
        }

    def dataset_writes(self, dataset: str, path: Path) -> list[ConfigRun]:
        changed = path.with_name(path.name + ".changed")
        changed_bytes = modified_copy(path, changed, self.args.inc_regions, seed=7)
        scattered = path.with_name(path.name + ".scattered")
        modified_copy(path, scattered, self.args.scattered_regions, seed=8)
        raw = Samples()
        runs = [ConfigRun(dataset, on=False), ConfigRun(dataset, on=True)]
        in_memory = Samples()
        data = path.read_bytes() if dataset == "random" and not self.args.no_bytes else None
        for r in range(self.args.repeats):
            # Interleaved, so that drift on the shared machine hits every configuration.
            raw.add(lambda: upload_raw(self.client, self.ep.bucket, self.raw_key(dataset), path))
            for run in runs:
                self.first_and_incremental(run, path, (changed, scattered), r)
            if data is not None:
                self.write_bytes(data, in_memory, r)
            self.log(
                f"  {dataset} repeat {r + 1}: raw {raw.seconds[-1]:.2f} s, "
                + ", ".join(
                    f"{'on' if x.on else 'off'} {x.first.seconds[-1]:.2f} s"
                    f" (+inc {x.inc.seconds[-1]:.2f} s)"
                    for x in runs
                )
                + (f", bytes {in_memory.seconds[-1]:.2f} s" if data is not None else "")
            )
        del data
        self.extra.setdefault("incremental_changed_bytes", {})[dataset] = changed_bytes
        if dataset == "random":
            self.extra["reopened_incremental"] = self.reopened_incremental(runs[0], changed)
        changed.unlink()
        scattered.unlink()
        self.write_rows(dataset, raw, runs, in_memory)
        return runs

    def raw_key(self, dataset: str) -> str:
        return self.prefix(f"raw/{dataset}")

    def write_rows(
        self, dataset: str, raw: Samples, runs: list[ConfigRun], in_memory: Samples
    ) -> None:
        base = raw.mbps(self.size)
        for run in runs:
            target = None
            if not run.on:
                target = WRITE_OFF_TARGET
            elif dataset == "random":
                target = WRITE_ON_TARGET
            self.rows.append(
                self.ratio_row(
                    f"write {run.label} (file)", run.first, raw, target, self.write_data(run)
                )
            )
            if not run.on and in_memory.seconds:
                self.rows.append(
                    self.ratio_row(f"write {run.label} (bytes)", in_memory, raw, None, {})
                )
        self.extra.setdefault("raw_upload", {})[dataset] = raw.json(self.size) | {
            "mb_s": round(base, 1)
        }

    def write_data(self, run: ConfigRun) -> dict[str, Any]:
        return {
            "uploaded_bytes": run.first_uploaded,
            "chunks": run.chunks,
        }

    def ratio_row(
        self,
        name: str,
        lib: Samples,
        raw: Samples,
        target: float | None,
        data: dict[str, Any],
    ) -> Row:
        ratio = lib.mbps(self.size) / raw.mbps(self.size)
        return Row(
            kind=name.split(maxsplit=1)[0],
            name=name,
            value=f"{lib.mbps(self.size):8.1f}",
            baseline=f"{raw.mbps(self.size):8.1f}",
            ratio=f"{ratio:5.2f}x",
            target="" if target is None else f">= {target:.1f}x",
            passed=None if target is None else ratio >= target,
            data=data | {"library": lib.json(self.size), "baseline": raw.json(self.size)},
        )

    def incremental_rows(self, runs: list[ConfigRun]) -> None:
        regions = self.args.scattered_regions
        for run in runs:
            pct = 100 * statistics.median(run.scattered_uploaded) / self.size
            self.rows.append(
                Row(
                    kind="incremental",
                    name=f"incremental {run.label} ({regions} regions)",
                    value=f"{pct:5.2f}% of bytes",
                    baseline=f"{100 * run.scattered.best / run.first.best:5.1f}% of time",
                    target="",
                    passed=None,
                    data={
                        "uploaded_bytes": run.scattered_uploaded,
                        "incremental": run.scattered.json(self.size),
                    },
                )
            )
        for run in runs:
            uploaded = statistics.median(run.inc_uploaded)
            pct_bytes = 100 * uploaded / self.size
            pct_time = 100 * run.inc.best / run.first.best
            ok = pct_bytes <= INC_BYTES_TARGET and pct_time <= INC_TIME_TARGET
            self.rows.append(
                Row(
                    kind="incremental",
                    name=f"incremental {run.label} ({self.args.inc_regions} region"
                    + ("s)" if self.args.inc_regions > 1 else ")"),
                    value=f"{pct_bytes:5.2f}% of bytes",
                    baseline=f"{pct_time:5.1f}% of time",
                    target=f"<= {INC_BYTES_TARGET:.0f}%, <= {INC_TIME_TARGET:.0f}%",
                    passed=ok,
                    data={
                        "uploaded_bytes": run.inc_uploaded,
                        "chunks_uploaded": run.inc_chunks,
                        "chunks_in_part": run.chunks,
                        "pct_bytes": round(pct_bytes, 3),
                        "pct_time": round(pct_time, 2),
                        "incremental": run.inc.json(self.size),
                        "first": run.first.json(self.size),
                    },
                )
            )

    # -- reads ----------------------------------------------------------------------------

    def reads(self, runs: list[ConfigRun], path: Path) -> None:
        dataset = runs[0].dataset
        expected = path.read_bytes()
        raw_mem, raw_file = Samples(), Samples()
        fsyncs: list[float] = []
        lib = {(run.on, kind): Samples() for run in runs for kind in ("read", "restore")}
        repos = {
            run.on: open_repo(store_url(self.ep, run.prefix), run.on, self.opts) for run in runs
        }
        out = self.tmp / "restored"
        key = self.raw_key(dataset)
        try:
            for r in range(self.args.repeats):
                raw_mem.add(lambda: download_raw_memory(self.client, self.ep.bucket, key))
                raw_file.add(lambda: download_raw_file(self.client, self.ep.bucket, key, out))
                fsyncs.append(fsync_time(out))
                out.unlink()
                for run in runs:
                    repo, m = repos[run.on], run.manifest
                    assert m is not None
                    got = lib[run.on, "read"].add(lambda: repo.read(m))  # noqa: B023
                    if r == 0 and got != {"data": expected}:
                        raise SystemExit(f"{run.label}: read returned different bytes")
                    del got
                    lib[run.on, "restore"].add(
                        lambda: repo.restore_part(m, "data", out)  # noqa: B023
                    )
                    if r == 0 and out.read_bytes() != expected:
                        raise SystemExit(f"{run.label}: restore_part wrote different bytes")
                    out.unlink()
                self.log(f"  {dataset} read repeat {r + 1} done")
        finally:
            for repo in repos.values():
                repo.close()
        # restore_part fsyncs the file it writes; the baseline does not. What that costs:
        self.extra.setdefault("fsync_of_restored_file_s", {})[dataset] = min(fsyncs)
        for run in runs:
            target = None if run.on else READ_TARGET
            for kind, raw in (("read", raw_mem), ("restore", raw_file)):
                call = "read()" if kind == "read" else "restore_part()"
                self.rows.append(
                    self.ratio_row(f"read  {run.label} {call}", lib[run.on, kind], raw, target, {})
                )

    # -- memory ---------------------------------------------------------------------------

    def rss(self, path: Path) -> None:
        for on in (False, True):
            results = []
            for r in range(self.args.repeats):
                job = {
                    "store_url": self.url(f"rss-{'on' if on else 'off'}-r{r}"),
                    "file": str(path),
                    "on": on,
                    "opts": self.opts,
                }
                proc = subprocess.run(
                    [sys.executable, __file__, "--rss-child", json.dumps(job)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if proc.returncode != 0:
                    raise SystemExit(f"RSS subprocess failed:\n{proc.stderr}")
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            worst = max(x["peak_growth"] for x in results)
            pct = 100 * worst / self.size
            self.rows.append(
                Row(
                    kind="rss",
                    name=f"peak RSS random comp+enc {'on ' if on else 'off'} (file)",
                    value=f"{worst / MIB:6.1f} MiB",
                    baseline=f"{pct:5.1f}% of part",
                    target=f"<= {RSS_TARGET:.0f}%",
                    passed=pct <= RSS_TARGET,
                    data={"runs": results, "worst_growth_bytes": worst, "pct": round(pct, 2)},
                )
            )
            self.log(f"  RSS {'on' if on else 'off'}: worst growth {worst / MIB:.1f} MiB")


def rss_child(job: dict[str, Any]) -> None:
    """In a fresh process: open, then write the file part while sampling RSS every 5 ms."""
    repo = open_repo(job["store_url"], job["on"], job["opts"])
    proc = psutil.Process()
    gc.collect()
    before = proc.memory_info().rss
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            done.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    repo.commit(repo.write({"data": Path(job["file"])}, meta(1)))
    took = time.perf_counter() - began
    done.set()
    sampler.join()
    peak = max(peak, proc.memory_info().rss)
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    repo.close()
    result = {
        "rss_before": before,
        "rss_peak": peak,
        "peak_growth": peak - before,
        "ru_maxrss_growth": max(0, maxrss_after - maxrss_before),
        "seconds": round(took, 4),
    }
    print(json.dumps(result))


# --- report ----------------------------------------------------------------------------


def versions(ep: Endpoint) -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    weed = Path(sys.executable).parent / "weed"
    weed_bin = str(weed) if weed.exists() else shutil.which("weed")
    if ep.started_here and weed_bin:
        proc = subprocess.run([weed_bin, "version"], capture_output=True, text=True, check=False)
        out["seaweedfs"] = (proc.stdout.strip().splitlines() or ["?"])[-1]
    return out


def render(rows: list[Row]) -> str:
    """The throughput table, then the incremental and RSS lines."""
    order = ("write", "read")
    speed = sorted((r for r in rows if r.kind in order), key=lambda r: order.index(r.kind))
    other = [r for r in rows if r.kind not in order]
    first = table(
        ("configuration", "MB/s", "baseline MB/s", "ratio", "target", ""),
        [(r.name, r.value, r.baseline, r.ratio, r.target, r.verdict()) for r in speed],
    )
    second = table(
        ("measure", "value", "relative", "target", ""),
        [(r.name, r.value, r.baseline, r.target, r.verdict()) for r in other],
    )
    return first + "\n\n" + second


def cleanup(client: S3Client, bucket: str, prefix: str) -> None:
    """Delete what this run wrote (only needed on an endpoint that outlives the run)."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})  # type: ignore[typeddict-item]


def run(args: argparse.Namespace, ep: Endpoint, tmp: Path) -> dict[str, Any]:
    set_credentials(ep)
    size = args.size_mib * MIB
    client = raw_client(ep)
    bench = Bench(args, ep, tmp, uuid.uuid4().hex[:8], size, client)
    began = time.perf_counter()
    try:
        all_runs = []
        for dataset, make in (("random", write_random), ("csv", write_csv)):
            path = tmp / f"{dataset}.bin"
            make(path, size)
            bench.log(f"{dataset}: {size / MIB:.0f} MiB part at {path}")
            runs = bench.dataset_writes(dataset, path)
            bench.reads(runs, path)
            if dataset == "random" and not args.no_rss:
                bench.rss(path)
            all_runs.extend(runs)
            path.unlink()
        bench.incremental_rows(all_runs)
        if not ep.started_here:
            cleanup(client, ep.bucket, bench.prefix(""))
    finally:
        client.close()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "versions": versions(ep),
        "params": {
            "size_bytes": size,
            "repeats": args.repeats,
            "config": repo_options(args),
            "incremental_regions": args.inc_regions,
            "statistic": "best of repeats (all samples kept)",
            "endpoint": "SeaweedFS started by the script" if ep.started_here else ep.url,
            "write_timing": "write() + commit()",
            "baseline": "boto3.client('s3') defaults, TransferConfig defaults",
        },
        "elapsed_s": round(time.perf_counter() - began, 1),
        "rows": [dataclasses.asdict(r) for r in bench.rows],
        "extra": bench.extra,
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=256, help="part size (default 256)")
    p.add_argument("--repeats", type=int, default=3, help="runs per timing, best shown")
    p.add_argument("--concurrency", type=int, default=8, help="upload_concurrency")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    p.add_argument("--endpoint", help="use this running S3 endpoint (AWS_* credentials)")
    p.add_argument("--bucket", default="bbp-test", help="bucket on --endpoint")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--tmp-dir", type=Path, default=None, help="where part files go")
    p.add_argument("--no-rss", action="store_true", help="skip the RSS subprocesses")
    p.add_argument("--inc-regions", type=int, default=1, help="the 1%% change as this many runs")
    p.add_argument(
        "--scattered-regions",
        type=int,
        default=10,
        help="the second, informative 1%% change as this many runs",
    )
    p.add_argument(
        "--chunk-avg-kib", type=int, default=None, help="chunk size (min avg/4, max avg*4)"
    )
    p.add_argument("--no-bytes", action="store_true", help="skip the bytes-in-memory write")
    p.add_argument("--rss-child", help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    if args.rss_child:
        rss_child(json.loads(args.rss_child))
        return 0
    with tempfile.TemporaryDirectory(prefix="bbp-bench-", dir=args.tmp_dir) as name:
        tmp = Path(name)
        with endpoint(args, tmp) as ep:
            report = run(args, ep, tmp)
    rows = [Row(**r) for r in report["rows"]]
    m, v = report["machine"], report["versions"]
    print()
    print(
        f"{report['date']}  {m['platform']}  {m['cores_logical']} cores  "
        f"{m['ram_bytes'] / (1 << 30):.1f} GiB RAM  part {args.size_mib} MiB  "
        f"best of {args.repeats}"
    )
    print("  ".join(f"{k} {x}" for k, x in v.items()))
    print()
    print(render(rows))
    reo = report["extra"].get("reopened_incremental")
    if reo:
        pct = 100 * reo["uploaded_bytes"] / report["params"]["size_bytes"]
        print(
            f"\nincremental from a reopened repository (random, off): uploaded {pct:.1f}% "
            f"of the part in {reo['seconds']:.2f} s ({reo['chunks_uploaded']} chunks sent, "
            f"{reo['chunks_created']} new)"
        )
    fsync = report["extra"].get("fsync_of_restored_file_s", {})
    if fsync:
        print(
            "restore_part fsyncs the restored file, the download_fileobj baseline does not; "
            "fsync alone took " + ", ".join(f"{k} {v:.2f} s" for k, v in fsync.items())
        )
    print(f"\ntotal {report['elapsed_s']:.0f} s; JSON in {args.json}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
