"""What metrics cost a worker: a loop of small blocking checkpoints with metrics off and
on, and the recorder calls of one checkpoint on their own.

1. end to end: ``--checkpoints`` blocking checkpoints of a tiny state on a local
   directory + SQLite (the cheapest backend pair, where a fixed cost shows most), each
   run in a fresh interpreter, metrics off and on alternating, ``--rounds`` times each.
   "on" starts the Prometheus exporter (``metrics_port``) as a user would.
2. the calls alone: what the checkpoint path adds per checkpoint (two
   ``Repository.stats()`` reads and the ``blocked`` and ``checkpoint`` reports), with the
   no-op recorder and with the Prometheus one, timed with ``timeit``.

Nothing is asserted; the figures are printed.

    .venv/bin/python benchmarks/bench_metrics.py [--checkpoints 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import functools
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import timeit

from bbp_dist_resume.api import metrics_prometheus
from bbp_dist_resume.api.metrics import NoRecorder, Recorder, written_between
from bbp_dist_resume.repository.stats import StatsCounter

LOOP = """
import json, sys, time
from bbp_dist_resume import CheckpointConfig, ResumeSystem
root, n, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
config = CheckpointConfig(store_url=f"file:{root}/store", coord_url=f"sqlite:{root}/c.db",
                          metrics_port=int(port) if port != "off" else None)
with ResumeSystem(config) as rs:
    rs.start_monitoring("bench")
    for i in range(20):  # warm up
        rs.create_checkpoint("warm", {"i": i})
    started = time.perf_counter()
    for i in range(n):
        rs.create_checkpoint("loop", {"i": i})
    seconds = time.perf_counter() - started
    rs.complete()
print(json.dumps({"per_checkpoint_us": seconds / n * 1e6}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_run(metrics: bool, checkpoints: int) -> float:
    with tempfile.TemporaryDirectory() as root:
        port = str(free_port()) if metrics else "off"
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(LOOP), root, str(checkpoints), port],
            capture_output=True,
            text=True,
            check=True,
        )
    return float(json.loads(out.stdout.splitlines()[-1])["per_checkpoint_us"])


def end_to_end(checkpoints: int, rounds: int) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        runs["off"].append(one_run(False, checkpoints))
        runs["on"].append(one_run(True, checkpoints))
    return runs


def one_checkpoint(rec: Recorder, counter: StatsCounter) -> None:
    """The metric work of one checkpoint on the checkpoint path (api/checkpointer.py)."""
    before = counter.snapshot() if rec.enabled else None
    rec.blocked("op", "w0", 0.001)
    if before is not None:
        written = written_between(before, counter.snapshot())
        rec.checkpoint("op", "w0", "loop", ok=True, seconds=0.001, written=written)


def calls_alone(number: int) -> dict[str, float]:
    """Nanoseconds per checkpoint of the metric calls, no-op and Prometheus."""
    counter = StatsCounter()
    recorders: dict[str, Recorder] = {
        "no-op": NoRecorder(),
        "prometheus": metrics_prometheus.PrometheusRecorder(),
    }
    out = {}
    for name, rec in recorders.items():
        call = functools.partial(one_checkpoint, rec, counter)
        out[name] = min(timeit.repeat(call, number=number, repeat=5)) / number * 1e9
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoints", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    calls = calls_alone(20_000)
    runs = end_to_end(args.checkpoints, args.rounds)
    off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
    print("metric calls per checkpoint (timeit, best of 5):")
    for name, ns in calls.items():
        print(f"  {name:<10} {ns / 1000:8.2f} us")
    print(
        f"loop of {args.checkpoints} blocking checkpoints, file + sqlite, {args.rounds} runs each:"
    )
    print(f"  metrics off  median {off:8.0f} us/checkpoint  runs {[round(r) for r in runs['off']]}")
    print(f"  metrics on   median {on:8.0f} us/checkpoint  runs {[round(r) for r in runs['on']]}")
    print(f"  difference   {on - off:+8.0f} us ({100 * (on - off) / off:+.1f}%)")


if __name__ == "__main__":
    main()
