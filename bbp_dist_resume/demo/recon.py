"""What the demo pipeline computes: its input, its workers and channels, and its output.

Pure functions only (no I/O), so that a test or the demo runner can compute an uncrashed
run's output in-process and compare it with what the worker processes wrote:

- the input is ``Params.hosts`` host names drawn from ``Params.seed``;
- ``expand`` cuts it into batches of ``Params.batch`` hosts and splits each batch over
  ``Params.probers`` partitions (channel ``targets-j`` feeds prober ``probe-j``);
- ``probe-j`` probes each host of its partition (a port and a score, derived from the
  host's name) and writes the records to channel ``probes-j``;
- ``rank`` collects every ``probes-j`` and writes ``ranked.csv``, best score first.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

EXPAND = "expand"
RANK = "rank"
PROBE_PREFIX = "probe-"
CSV_NAME = "ranked.csv"
CSV_HEADER = "rank,host,port,score\n"
DONE = "done"

Record = dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Params:
    """The pipeline's input and pace (the defaults are the demo's).

    Attributes:
        seed: draws the host names. hosts: how many. probers: partitions (``probe-j``).
        batch: hosts per ``expand`` checkpoint. sleep_s: pause after every batch, so
            that a crash lands mid-run. poll_s: pause of a consumer with nothing to read.
    """

    seed: int = 7
    hosts: int = 600
    probers: int = 2
    batch: int = 20
    sleep_s: float = 0.1
    poll_s: float = 0.05


# -- names -------------------------------------------------------------------------------


def probers(params: Params) -> list[str]:
    """``probe-0`` .. ``probe-(k-1)``."""
    return [f"{PROBE_PREFIX}{j}" for j in range(params.probers)]


def worker_ids(params: Params) -> list[str]:
    """Every worker of the pipeline, in pipeline order."""
    return [EXPAND, *probers(params), RANK]


def worker_for_index(params: Params, index: int) -> str:
    """The worker of a 0-based index (a Kubernetes Indexed Job's completion index):
    0 is ``expand``, 1..k the probers, k+1 ``rank``.

    Raises:
        IndexError: the index names no worker.
    """
    workers = worker_ids(params)
    if not 0 <= index < len(workers):
        raise IndexError(f"worker index {index} is not in 0..{len(workers) - 1}")
    return workers[index]


def prober_index(worker_id: str) -> int:
    """``j`` of ``probe-j``."""
    return int(worker_id.removeprefix(PROBE_PREFIX))


def targets(j: int) -> str:
    """The channel from ``expand`` to ``probe-j``."""
    return f"targets-{j}"


def probes(j: int) -> str:
    """The channel from ``probe-j`` to ``rank``."""
    return f"probes-{j}"


# -- the data ----------------------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def target_list(params: Params) -> list[str]:
    """The deterministic input: ``params.hosts`` host names from ``params.seed``."""
    rng = random.Random(params.seed)
    return [f"h{i:04d}-{rng.randrange(16**6):06x}.example.net" for i in range(params.hosts)]


def partition(host: str, k: int) -> int:
    """The prober (of ``k``) a host goes to."""
    return int(_digest(host)[:8], 16) % k


def probe(host: str) -> Record:
    """What probing a host finds: a port and a score, deterministic in the host."""
    h = _digest("probe:" + host)
    return {"host": host, "port": 1 + int(h[:4], 16) % 65535, "score": int(h[4:8], 16) % 1000}


def expand_batches(params: Params) -> list[list[str]]:
    """``expand``'s batches, in order."""
    hosts = target_list(params)
    return [hosts[i : i + params.batch] for i in range(0, len(hosts), params.batch)]


def split(batch: list[str], k: int) -> list[list[str]]:
    """One batch's hosts of each of the ``k`` partitions, in batch order."""
    parts: list[list[str]] = [[] for _ in range(k)]
    for host in batch:
        parts[partition(host, k)].append(host)
    return parts


def partition_sizes(params: Params) -> list[int]:
    """How many hosts each prober gets."""
    sizes = [0] * params.probers
    for host in target_list(params):
        sizes[partition(host, params.probers)] += 1
    return sizes


def rank_csv(records: list[Record]) -> bytes:
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


def encode_lines(items: list[Any]) -> bytes:
    """JSON lines: one item a line, keys sorted."""
    return b"".join(json.dumps(i, sort_keys=True).encode() + b"\n" for i in items)


def decode_lines(data: bytes) -> list[Any]:
    """The items of :func:`encode_lines`."""
    return [json.loads(line) for line in data.splitlines() if line]
