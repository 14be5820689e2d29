"""The library against real SeaweedFS and a real redis-server THROUGH fault-injecting
proxies (tests/faultproxy.py at the TCP level, tests/faultproxy_s3.py at the HTTP level):
the config's S3 endpoint or Redis URL points at the proxy, so every request the library
makes crosses the fault. Outcomes are checked from the store itself (each worker's history
linear, every checkpoint record's chunks present and re-hashed), and every test shows from
the proxy's counters that its fault really happened.

- S3 with added latency, connections reset mid-request (after N bytes, either way),
  connections that stall (the client's read timeout makes it retry on a new one), an
  unreachable window shorter than the retry budget, 503 SlowDown or 500 for a fraction of
  the requests: checkpoints and restores succeed and restore the very bytes written.
- S3 unreachable for longer than the retry budget, or refusing the commit record: a clean
  ``StoreUnavailable`` (the cause of ``CheckpointFailed`` in strict mode), no commit record
  without its chunks, the previous checkpoint restores, and the worker goes on afterwards.
- Redis unreachable for less than the lease TTL (less its heartbeat interval) while a
  worker runs: no ``LeaseLostError``, the same lease, every commit in the store and in the
  index. For longer than the TTL (refused, or hung: its held bytes, stale renewals among
  them, reach Redis at the heal): the workers stop with ``LeaseLostError`` from their next
  call, and after the outage replacements, or the coordinator's reclaim, finish the run
  with the output of an uncrashed run.
- Soak (``make soak``): random survivable faults on both links at once for
  ``BBP_NETFAULT_SOAK_S`` seconds (default 60; seed ``BBP_NETFAULT_SEED``, default 7)
  while a worker checkpoints and restores: the same lease all along, every checkpoint in
  the store and the index, every restore the bytes written. Restores need Redis (the
  operation's record), so one during a Redis outage raises ``CoordinationUnavailable``,
  retryable, and is tried again.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import redis
from faultproxy import DOWN, UP, FaultProxy
from faultproxy_s3 import INTERNAL_ERROR, SLOW_DOWN, HttpFaults, S3Error, S3FaultProxy
from resume_helpers import Systems, preprobe, take_over

from bbp_dist_resume import (
    CheckpointConfig,
    CheckpointFailed,
    ClaimedSlot,
    CoordinationUnavailable,
    LeaseLostError,
    Manifest,
    ResumeContext,
    ResumeSystem,
    ResumeSystemManager,
    StoreUnavailable,
    open_repository,
)
from bbp_dist_resume.blobstore import open_store
from bbp_dist_resume.coordination import longest_call_s, open_coordination
from bbp_dist_resume.repository import TakeoverRecord

# isort: split
# Fixtures reach a test module by being imported into it.
from resume_helpers import systems_fixture  # noqa: F401

pytestmark = pytest.mark.timeout(120)

CHUNKING = {"chunk_min_size": 16 << 10, "chunk_avg_size": 64 << 10, "chunk_max_size": 256 << 10}
BLOB_BYTES = 300_000  # random, so about 5 chunks that do not compress
TIMEOUT_S = 1.0  # S3 connect and read timeouts where a test waits for one
# botocore's backoff before retry i (from 0) of a connection error or a 5xx is
# rand(0, 1) x 50 ms x 2**i (1 s x 2**i for throttling): 5 attempts wait 0.75 s at most,
# 12 attempts less than 1 s with a probability under 1e-6 (and 25 s at most).
WINDOW_S = 1.0
WINDOW_ATTEMPTS = 12
STEP_S = 15.0  # the most any awaited step may take


# -- servers behind proxies ----------------------------------------------------------------


def address(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.removeprefix("http://").rstrip("/").rpartition(":")
    return host, int(port)


@pytest.fixture
def s3_tcp(services: Any) -> Iterator[FaultProxy]:
    """A TCP fault proxy in front of SeaweedFS."""
    with FaultProxy(address(services.s3_endpoint), seed=5) as proxy:
        yield proxy


@pytest.fixture
def s3_http(services: Any) -> Iterator[S3FaultProxy]:
    """An HTTP proxy in front of SeaweedFS that answers S3 errors on demand."""
    with S3FaultProxy(services.s3_endpoint, seed=5) as proxy:
        yield proxy


@pytest.fixture
def redis_tcp(services: Any, redis_client: redis.Redis) -> Iterator[FaultProxy]:
    """A TCP fault proxy in front of the (emptied) redis-server."""
    host, _, port = services.redis_url.removeprefix("redis://").split("/")[0].rpartition(":")
    with FaultProxy((host, int(port)), seed=5) as proxy:
        yield proxy


def proxied_redis(proxy: FaultProxy) -> str:
    return f"redis://127.0.0.1:{proxy.port}/0"


class Prefix:
    """A fresh S3 prefix, as URLs straight to SeaweedFS and through a proxy."""

    def __init__(self, services: Any) -> None:
        self.services = services
        self.name = f"t-{uuid.uuid4().hex}"
        self.direct = self.url(services.s3_endpoint)
        preprobe(self.direct, CheckpointConfig(**CHUNKING))

    def url(self, endpoint: str, **params: object) -> str:
        query = "".join(f"&{k}={v}" for k, v in params.items())
        s = self.services
        return f"s3://{s.bucket}/{self.name}?endpoint_url={endpoint}&region={s.region}{query}"


@pytest.fixture
def prefix(services: Any) -> Prefix:
    return Prefix(services)


def make_config(store_url: str, coord_url: str, **overrides: Any) -> CheckpointConfig:
    """Strict (a failed checkpoint raises), every part in chunks, nothing deleted."""
    base: dict[str, Any] = {
        "store_url": store_url,
        "coord_url": coord_url,
        "lease_ttl": 3,
        "heartbeat_interval": 0.5,
        "strict": True,
        "inline_threshold": 0,
        "auto_cleanup": False,
        "upload_concurrency": 4,
        **CHUNKING,
    }
    return CheckpointConfig(**(base | overrides))


def new_op() -> str:
    return f"op-{uuid.uuid4().hex[:12]}"


# -- checkpoints and what the store holds ----------------------------------------------------


def blobs(seed: int, n: int = 2) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(BLOB_BYTES) for _ in range(n)]


def write(rs: ResumeSystem, datas: list[bytes], first: int = 0) -> list[str]:
    """One checkpoint per blob, state ``{"i": n}`` from ``first`` on."""
    return [
        rs.create_checkpoint("s", {"i": first + n}, attachments={"blob": data})
        for n, data in enumerate(datas)
    ]


def read(reader: ResumeSystem, ids: list[str], first: int = 0) -> list[bytes]:
    """The blobs of the checkpoints, each state checked too."""
    out = []
    for n, cid in enumerate(ids):
        context = reader.open_checkpoint(cid)
        assert dict(context.state) == {"i": first + n}
        out.append(context.attachment("blob"))
    return out


def audit(store_url: str, op: str, worker: str) -> list[Manifest | TakeoverRecord]:
    """A worker's commit records, read from the store: its history is linear (seqs 1..N)
    and every checkpoint record's chunks are there and re-hash to their ids."""
    repo = open_repository(store_url, CheckpointConfig(store_url=store_url, **CHUNKING))
    try:
        records = repo.records(op, worker)
        assert [r.seq for r in records] == list(range(1, len(records) + 1))
        torn = [
            r.checkpoint_id
            for r in records
            if isinstance(r, Manifest) and not repo.verify(r, deep=True).ok
        ]
        assert not torn, f"commit records whose chunks are missing or damaged: {torn}"
        return records
    finally:
        repo.close()


def checkpoint_ids(records: list[Manifest | TakeoverRecord]) -> list[str]:
    return [r.checkpoint_id for r in records if isinstance(r, Manifest)]


def cause_of(exc: BaseException) -> BaseException | None:
    return exc.__cause__


def monitored(systems: Systems, config: CheckpointConfig, op: str, worker: str = "w0") -> Any:
    rs = systems(config, worker)
    rs.start_monitoring(op)
    return rs


def after(seconds: float, action: Callable[[], None]) -> threading.Event:
    """Run ``action`` in ``seconds`` (the end of an outage); the event says it ran."""
    done = threading.Event()

    def run() -> None:
        action()
        done.set()

    timer = threading.Timer(seconds, run)
    timer.daemon = True
    timer.start()
    return done


# -- S3: faults the retries absorb ---------------------------------------------------------


def test_s3_with_added_latency_checkpoints_and_restores_the_same_bytes(
    prefix: Prefix, s3_tcp: FaultProxy, redis_url: str, systems: Systems
) -> None:
    url = prefix.url(f"http://127.0.0.1:{s3_tcp.port}")
    cfg, op, datas = make_config(url, redis_url), new_op(), blobs(1)
    rs = monitored(systems, cfg, op)
    s3_tcp.set_latency(up=0.02, down=0.02)
    started = time.monotonic()
    ids = write(rs, datas)
    assert time.monotonic() - started >= 0.04 * len(ids)  # each commit waited on the link
    assert read(systems(cfg, "reader"), ids) == datas
    assert s3_tcp.stats["bytes_up"] >= sum(map(len, datas))  # the chunks went through it
    assert s3_tcp.stats["bytes_down"] >= sum(map(len, datas))  # and came back through it
    assert checkpoint_ids(audit(prefix.direct, op, "w0")) == ids


READ_PATHS = {"fast-get": ("true", False), "botocore-get": ("false", False), "ranged": ("", True)}


@pytest.mark.parametrize("path", sorted(READ_PATHS))
@pytest.mark.parametrize("fault", ["reset", "stall"])
def test_every_s3_read_path_retries_a_body_cut_or_stalled_midway(
    prefix: Prefix, s3_tcp: FaultProxy, path: str, fault: str
) -> None:
    # botocore's retries end once an answer's head is in; the body is read after that.
    fast_get, ranged = READ_PATHS[path]
    data = blobs(9, 1)[0]
    direct = open_store(prefix.direct)
    direct.put("obj", data)
    direct.close()
    url = prefix.url(
        f"http://127.0.0.1:{s3_tcp.port}",
        max_attempts=5,
        read_timeout=TIMEOUT_S,
        **({"fast_get": fast_get} if fast_get else {}),
    )
    store = open_store(url)
    try:
        # One GET at a time, each of its first attempts cut 20 kB into the body (the
        # lean path's try, then botocore's): fewer cuts than attempts, so it succeeds.
        cuts = 3 if fault == "reset" else 2  # a stall costs a read timeout each
        if fault == "reset":
            s3_tcp.drop(20_000, direction=DOWN, limit=cuts)
        else:
            s3_tcp.stall(20_000, direction=DOWN, limit=cuts)
        if ranged:
            assert store.get_range("obj", 1000, 250_000) == data[1000:251_000]
        else:
            assert store.get("obj") == data
        assert s3_tcp.stats["dropped" if fault == "reset" else "stalled"] == cuts
    finally:
        store.close()


def test_s3_connections_reset_mid_request_both_ways_are_retried(
    prefix: Prefix, s3_tcp: FaultProxy, redis_url: str, systems: Systems
) -> None:
    url = prefix.url(f"http://127.0.0.1:{s3_tcp.port}")
    cfg, op, datas = make_config(url, redis_url), new_op(), blobs(2)
    rs = monitored(systems, cfg, op)
    reader = systems(cfg, "reader")
    # Uploads: requests cut after 20 kB of their body (3 of them, fewer than the 5
    # attempts every request has), then answers cut after 20 kB of a chunk's body.
    s3_tcp.drop(20_000, direction=UP, limit=3)
    ids = write(rs, datas)
    assert s3_tcp.stats["dropped"] == 3
    s3_tcp.drop(20_000, direction=DOWN, limit=3)
    assert read(reader, ids) == datas
    assert s3_tcp.stats["dropped"] == 6
    assert checkpoint_ids(audit(prefix.direct, op, "w0")) == ids


def test_s3_connections_that_stall_are_retried_after_the_read_timeout(
    prefix: Prefix, s3_tcp: FaultProxy, redis_url: str, systems: Systems
) -> None:
    url = prefix.url(
        f"http://127.0.0.1:{s3_tcp.port}", connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S
    )
    cfg, op, datas = make_config(url, redis_url), new_op(), blobs(3)
    rs = monitored(systems, cfg, op)
    reader = systems(cfg, "reader")
    # A request that never reaches the server, then an answer that never comes back
    # (the request landed: the retry meets its own object), then a chunk's body that
    # stops halfway.
    s3_tcp.stall(0, direction=UP, limit=1)
    first = write(rs, datas[:1])
    s3_tcp.stall(0, direction=DOWN, limit=1)
    second = write(rs, datas[1:], first=1)
    assert s3_tcp.stats["stalled"] == 2
    s3_tcp.stall(20_000, direction=DOWN, limit=1)
    started = time.monotonic()
    assert read(reader, first + second) == datas
    assert s3_tcp.stats["stalled"] == 3
    assert time.monotonic() - started >= TIMEOUT_S  # it waited for the read timeout
    assert checkpoint_ids(audit(prefix.direct, op, "w0")) == first + second


def test_an_s3_outage_shorter_than_the_retry_budget_is_waited_out(
    prefix: Prefix, s3_tcp: FaultProxy, redis_url: str, systems: Systems
) -> None:
    url = prefix.url(f"http://127.0.0.1:{s3_tcp.port}", max_attempts=WINDOW_ATTEMPTS)
    cfg, op, datas = make_config(url, redis_url), new_op(), blobs(4, 3)
    rs = monitored(systems, cfg, op)
    reader = systems(cfg, "reader")
    before = write(rs, datas[:1])
    s3_tcp.unreachable()
    started = time.monotonic()
    after(WINDOW_S, s3_tcp.heal)
    during = write(rs, datas[1:2], first=1)
    assert time.monotonic() - started >= WINDOW_S  # it committed once S3 was back
    context = reader.open_checkpoint(before[0])
    s3_tcp.unreachable()
    started = time.monotonic()
    after(WINDOW_S, s3_tcp.heal)
    assert context.attachment("blob") == datas[0]  # its chunks read through the outage
    assert time.monotonic() - started >= WINDOW_S
    assert s3_tcp.stats["reset"] >= 1  # live connections were cut, not only new ones
    assert read(reader, before + during) == datas[:2]
    assert checkpoint_ids(audit(prefix.direct, op, "w0")) == before + during


# -- S3: faults that outlast the retries -----------------------------------------------------


def test_an_s3_outage_longer_than_the_retry_budget_fails_cleanly_and_leaves_nothing_partial(
    prefix: Prefix, s3_tcp: FaultProxy, redis_url: str, systems: Systems
) -> None:
    url = prefix.url(f"http://127.0.0.1:{s3_tcp.port}", max_attempts=2)
    cfg, op, datas = make_config(url, redis_url), new_op(), blobs(5, 3)
    rs = monitored(systems, cfg, op)
    reader = systems(cfg, "reader")
    before = write(rs, datas[:1])
    s3_tcp.unreachable()
    with pytest.raises(CheckpointFailed) as failed:
        write(rs, datas[1:2], first=1)
    assert isinstance(cause_of(failed.value), StoreUnavailable)
    with pytest.raises(StoreUnavailable) as unread:
        reader.open_checkpoint(before[0])
    assert unread.value.retryable
    s3_tcp.heal()
    records = audit(prefix.direct, op, "w0")
    assert checkpoint_ids(records) == before  # nothing of the failed checkpoint is listed
    assert rs.list_checkpoints(op) == before
    assert read(reader, before) == datas[:1]  # the previous checkpoint restores
    after_outage = write(rs, datas[2:], first=2)  # and the worker goes on, linearly
    assert after_outage == [f"{op}/w0/{records[-1].seq + 1}"]
    assert read(reader, after_outage, first=2) == datas[2:]
    assert checkpoint_ids(audit(prefix.direct, op, "w0")) == before + after_outage


def test_a_commit_record_s3_keeps_refusing_fails_cleanly_and_its_uploaded_chunks_stay_unlisted(
    prefix: Prefix, s3_http: S3FaultProxy, redis_url: str, systems: Systems
) -> None:
    cfg, op, datas = make_config(prefix.url(s3_http.endpoint), redis_url), new_op(), blobs(6, 3)
    rs = monitored(systems, cfg, op)
    before = write(rs, datas[:1])
    s3_http.fail(
        HttpFaults(
            fraction=1.0,
            error=INTERNAL_ERROR,
            methods=frozenset({"PUT"}),
            path_contains="/checkpoints/",
        )
    )
    with pytest.raises(CheckpointFailed) as failed:
        write(rs, datas[1:2], first=1)
    assert isinstance(cause_of(failed.value), StoreUnavailable)
    assert s3_http.stats["failed PUT"] == 5  # every attempt at the commit point
    s3_http.heal()
    records = audit(prefix.direct, op, "w0")
    assert checkpoint_ids(records) == before
    # The same seq is taken by the next checkpoint: the failed one left no hole.
    again = write(rs, datas[1:2], first=1)
    assert again == [f"{op}/w0/{records[-1].seq + 1}"]
    assert read(systems(cfg, "reader"), before + again) == datas[:2]


def test_a_commit_record_whose_answer_is_lost_is_settled_by_reading_it_back(
    prefix: Prefix, s3_http: S3FaultProxy, redis_url: str, systems: Systems
) -> None:
    cfg, op, datas = make_config(prefix.url(s3_http.endpoint), redis_url), new_op(), blobs(7)
    rs = monitored(systems, cfg, op)
    s3_http.fail(
        HttpFaults(
            fraction=1.0,
            error=INTERNAL_ERROR,
            methods=frozenset({"PUT"}),
            path_contains="/checkpoints/",
            after_forward=True,
            max_streak=1,
        )
    )
    ids = write(rs, datas)  # each record landed, its answer lost, the retry refused (412)
    assert s3_http.stats["landed PUT"] == len(ids)
    s3_http.heal()
    assert checkpoint_ids(audit(prefix.direct, op, "w0")) == ids
    assert rs.list_checkpoints(op) == ids
    assert read(systems(cfg, "reader"), ids) == datas


@pytest.mark.parametrize("error", [SLOW_DOWN, INTERNAL_ERROR], ids=lambda e: e.code)
def test_s3_errors_for_a_fraction_of_requests_are_retried_never_surfaced(
    prefix: Prefix, s3_http: S3FaultProxy, redis_url: str, systems: Systems, error: S3Error
) -> None:
    cfg, op, datas = make_config(prefix.url(s3_http.endpoint), redis_url), new_op(), blobs(8, 3)
    rs = monitored(systems, cfg, op)
    reader = systems(cfg, "reader")
    # At most 2 failures in a row for one request: its 5 attempts always get through.
    s3_http.fail(HttpFaults(fraction=0.2, error=error, max_streak=2))
    ids = write(rs, datas)
    assert read(reader, ids) == datas
    assert all(reader.verify_checkpoint(cid, deep=True) for cid in ids)
    assert s3_http.stats["failed PUT"] > 0 and s3_http.stats["failed GET"] > 0
    s3_http.heal()
    assert checkpoint_ids(audit(prefix.direct, op, "w0")) == ids


# -- Redis -----------------------------------------------------------------------------------

SHORT_TTL_S = 4.0  # lease TTL of the short outage (renewed every 0.3 s)
OUTAGE_S = 2.0  # shorter than the TTL less a renewal period and a renewal's own retries
LONG_TTL_S = 2.0  # lease TTL of the long outage: Redis stays away until both leases lapse
BATCH = 3
SHARD = 12


def shard(worker: str, n: int = SHARD) -> list[int]:
    """The items a worker processes (worker ``wK`` gets ``K*100 ..``)."""
    base = int(worker[1:]) * 100
    return list(range(base, base + n))


def work(x: int) -> int:
    return x * x + 7


def step(state: Mapping[str, Any], items: list[int]) -> dict[str, Any]:
    """One batch of work on top of ``state``: the pipeline's whole logic."""
    done = int(state.get("next", 0))
    batch = items[done : done + BATCH]
    return {"next": done + len(batch), "out": [*state.get("out", []), *map(work, batch)]}


def commit(rs: ResumeSystem, state: Mapping[str, Any], items: list[int]) -> str:
    return rs.create_checkpoint("work", state, progress=100.0 * state["next"] / len(items))


def advance(rs: ResumeSystem, state: Mapping[str, Any], items: list[int]) -> dict[str, Any]:
    """One batch, checkpointed."""
    state = step(state, items)
    commit(rs, state, items)
    return state


def lease_lost(rs: ResumeSystem) -> bool:
    try:
        rs.ensure_lease()
    except LeaseLostError:
        return True
    return False


def poll(predicate: Callable[[], bool], timeout: float = STEP_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def closing() -> Iterator[list[ResumeSystem | ResumeSystemManager]]:
    """Systems and managers to shut down at the end of the test."""
    made: list[ResumeSystem | ResumeSystemManager] = []
    yield made
    for thing in reversed(made):
        thing.shutdown()


@pytest.mark.parametrize("coord_timeout", [0.5, 4.0])
def test_coord_timeout_bounds_how_long_a_call_blocks_on_a_hung_redis_link(
    prefix: Prefix, redis_tcp: FaultProxy, systems: Systems, coord_timeout: float
) -> None:
    cfg = make_config(
        prefix.direct, proxied_redis(redis_tcp), coord_timeout=coord_timeout, lease_ttl=30
    )
    rs = monitored(systems, cfg, new_op())
    write(rs, blobs(1, 1))
    redis_tcp.hang()
    try:
        started = time.monotonic()
        with pytest.raises(CoordinationUnavailable):
            rs.committed_offset("ch")  # reads the plan and the index
        blocked = time.monotonic() - started
    finally:
        redis_tcp.heal()
    # At least one timeout, and no more than its retries allow (1 s for a loaded machine).
    assert coord_timeout <= blocked <= longest_call_s(coord_timeout) + 1.0, blocked
    assert rs.committed_offset("ch") == 0  # the link healed: the same client goes on


def test_a_redis_outage_shorter_than_the_lease_ttl_costs_the_worker_nothing(
    prefix: Prefix, redis_tcp: FaultProxy, systems: Systems
) -> None:
    cfg = make_config(
        prefix.direct, proxied_redis(redis_tcp), lease_ttl=SHORT_TTL_S, heartbeat_interval=0.3
    )
    op, items = new_op(), shard("w0", 10_000)
    rs = monitored(systems, cfg, op)
    fence = rs.fencing_token
    state: dict[str, Any] = {}
    ids = []
    for _ in range(2):
        state = step(state, items)
        ids.append(commit(rs, state, items))
    redis_tcp.unreachable()
    healed = after(OUTAGE_S, redis_tcp.heal)
    during = 0
    while not healed.is_set():  # the worker goes on through the outage
        state = step(state, items)
        ids.append(commit(rs, state, items))
        during += 1
    for _ in range(2):
        state = step(state, items)
        ids.append(commit(rs, state, items))
    rs.ensure_lease()  # no LeaseLostError
    assert rs.fencing_token == fence  # the same lease all along, never lost and taken again
    assert during >= 1 and redis_tcp.stats["reset"] >= 1  # its connections were cut
    records = audit(prefix.direct, op, "w0")
    assert checkpoint_ids(records) == ids  # every commit landed in the store...
    assert rs.list_checkpoints(op) == ids  # ...and in the index
    assert [r.seq for r in records if isinstance(r, TakeoverRecord)] == [1]
    assert dict(rs.open_checkpoint(ids[-1]).state) == state
    assert rs.complete()


LONG_OUTAGES = {  # (how Redis goes away, how the lost slots are taken up again)
    "refused-replacement": ("refused", "replacement"),
    "refused-reclaim": ("refused", "reclaim"),
    "hung-reclaim": ("hung", "reclaim"),
}


@pytest.mark.parametrize("case", sorted(LONG_OUTAGES))
def test_a_redis_outage_longer_than_the_lease_ttl_stops_the_workers_and_the_run_ends_the_same(
    prefix: Prefix,
    redis_tcp: FaultProxy,
    systems: Systems,
    closing: list[ResumeSystem | ResumeSystemManager],
    case: str,
) -> None:
    # Refused: connections reset, the port closed. Hung: every byte held (a black-holed
    # link; the held ones, stale renewals among them, reach Redis at the heal).
    outage, recovery = LONG_OUTAGES[case]
    cfg = make_config(
        prefix.direct,
        proxied_redis(redis_tcp),
        lease_ttl=LONG_TTL_S,
        heartbeat_interval=0.5,
        scan_interval=0.2,
    )
    op, workers = new_op(), ["w0", "w1"]
    first = {w: systems(cfg, w) for w in workers}
    for rs in first.values():
        rs.start_monitoring(op, workers=workers)
    states: dict[str, dict[str, Any]] = {w: {} for w in workers}
    for w in workers:
        for _ in range(2):
            states[w] = advance(first[w], states[w], shard(w))
    if outage == "refused":
        redis_tcp.unreachable()
    else:
        redis_tcp.hang()
    cut_at = time.monotonic()
    # While its lease holds, w0 goes on: its commit lands in the store (S3 is up) and its
    # index step waits for Redis (until the lease runs out, or the heal when hung).
    going_on = threading.Thread(target=go_on, args=(first["w0"], states["w0"], shard("w0")))
    going_on.start()
    poll(lambda: all(lease_lost(rs) for rs in first.values()))  # with Redis still away
    assert time.monotonic() - cut_at < LONG_TTL_S + 1.0
    with pytest.raises(LeaseLostError):  # from its next call
        commit(first["w1"], step(states["w1"], shard("w1")), shard("w1"))
    redis_tcp.heal()
    going_on.join(STEP_S)
    assert not going_on.is_alive()
    for w, rs in first.items():
        with pytest.raises(LeaseLostError):  # for good, Redis back or not
            commit(rs, step(states[w], shard(w)), shard(w))
    latest = {w: checkpoint_ids(audit(prefix.direct, op, w))[-1] for w in workers}
    resumed = replace_workers(cfg, op, workers, recovery, systems, closing)
    completed = []
    for w, (rs, context) in resumed.items():
        assert context is not None and context.checkpoint_id == latest[w]  # nothing lost
        state = dict(context.state)
        while state["next"] < SHARD:
            state = advance(rs, state, shard(w))
        completed.append(rs.complete())
    assert completed == [False, True]  # the last one to finish completes the operation
    reader = systems(cfg, "reader")
    output = []
    for w in workers:
        records = audit(prefix.direct, op, w)
        check_fenced_history(records)
        output += reader.open_checkpoint(checkpoint_ids(records)[-1]).state["out"]
    assert output == [work(x) for w in workers for x in shard(w)]  # an uncrashed run's


def go_on(rs: ResumeSystem, state: Mapping[str, Any], items: list[int]) -> None:
    """One more batch; the lease may run out before its commit point (nothing lands) or
    during its index step (it landed: the store is the truth)."""
    with contextlib.suppress(LeaseLostError):
        advance(rs, state, items)


def replace_workers(
    cfg: CheckpointConfig,
    op: str,
    workers: list[str],
    recovery: str,
    systems: Systems,
    closing: list[ResumeSystem | ResumeSystemManager],
) -> dict[str, tuple[ResumeSystem, ResumeContext | None]]:
    """New workers for the lost slots, each with where it resumes from: processes started
    by hand (``replacement``), or claimed from the coordinator's reclaim queue."""
    if recovery == "replacement":
        out = {}
        for w in workers:
            rs = systems(cfg, w)
            take_over(rs, op, timeout=STEP_S)
            out[w] = (rs, rs.resume_automatically(op))
        return out
    manager = ResumeSystemManager("coordinator")
    closing.append(manager)
    manager.initialize(cfg)
    # Every slot, not just the first: Redis counts a lease's TTL from the last renewal it
    # received, a little after the worker's own deadline, so the two expire apart.
    coord = open_coordination(cfg.coord_url)
    try:
        poll(lambda: {w for o, w in coord.crashed_workers() if o == op} == set(workers))
    finally:
        coord.close()
    assert manager.attempt_automatic_recovery(op)
    slots: list[ClaimedSlot] = []
    for _ in workers:
        slot = manager.claim("pool")
        assert isinstance(slot, ClaimedSlot)
        closing.append(slot.system)
        slots.append(slot)
    return {s.worker_id: (s.system, s.context) for s in sorted(slots, key=lambda s: s.worker_id)}


def check_fenced_history(records: list[Manifest | TakeoverRecord]) -> None:
    """Two incarnations, each checkpoint carrying the fence of the takeover before it: no
    commit of the first one landed after the second one took the slot over."""
    takeovers = [r for r in records if isinstance(r, TakeoverRecord)]
    assert len(takeovers) == 2 and takeovers[1].fence > takeovers[0].fence
    fence = 0
    for record in records:
        if isinstance(record, TakeoverRecord):
            fence = record.fence
        assert record.fence == fence


# -- soak: random faults on both links at once -------------------------------------------------

SOAK_SEED = int(os.environ.get("BBP_NETFAULT_SEED", "7"))
SOAK_S = float(os.environ.get("BBP_NETFAULT_SOAK_S", "60"))  # then ~1 min of checks


class Chaos:
    """A thread that keeps switching random faults on the S3 and Redis proxies, each one
    survivable: at most 2 cuts or 1 stall per fault, S3 away for less than its retry
    budget, Redis away for less than the lease TTL less a renewal."""

    def __init__(self, s3: FaultProxy, rds: FaultProxy, seed: int) -> None:
        self.s3, self.rds = s3, rds
        self.rng = random.Random(seed)
        self.actions: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def __enter__(self) -> Chaos:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.s3.heal()
        self.rds.heal()

    def _run(self) -> None:
        while not self.stop.wait(self.rng.uniform(0.2, 1.0)):
            name = self._strike()
            self.actions.append(name)
            # An outage lasts less than what absorbs it (WINDOW_S, SHORT_TTL_S).
            self.stop.wait(self.rng.uniform(0.3, WINDOW_S if name == "s3 away" else 2.0))
            self.s3.heal()
            self.rds.heal()

    def _strike(self) -> str:
        rng, direction = self.rng, self.rng.choice([UP, DOWN])
        faults: dict[str, Callable[[], None]] = {
            "s3 latency": lambda: self.s3.set_latency(up=rng.uniform(0, 0.03), down=0.01),
            "s3 reset": lambda: self.s3.drop(
                rng.randrange(100, 50_000), direction=direction, limit=2
            ),
            "s3 stall": lambda: self.s3.stall(
                rng.randrange(0, 50_000), direction=direction, limit=1
            ),
            "s3 away": self.s3.unreachable,
            "redis reset": lambda: self.rds.drop(rng.randrange(10, 2_000), limit=2),
            "redis away": self.rds.unreachable,
        }
        name = rng.choice(sorted(faults))
        faults[name]()
        return name


def read_while_redis_is_away(reader: ResumeSystem, cid: str, n: int) -> bytes:
    """Open a checkpoint as a caller would: it needs the operation's record in Redis, so
    while Redis is away it raises ``CoordinationUnavailable`` (retryable): try again."""
    deadline = time.monotonic() + STEP_S
    while True:
        try:
            return read(reader, [cid], first=n)[0]
        except CoordinationUnavailable:
            assert time.monotonic() < deadline, "Redis stayed away"
            time.sleep(0.1)


@pytest.mark.soak
@pytest.mark.timeout(SOAK_S + 300)
def test_soak_random_network_faults_on_s3_and_redis_lose_nothing(
    prefix: Prefix, s3_tcp: FaultProxy, redis_tcp: FaultProxy, systems: Systems
) -> None:
    url = prefix.url(
        f"http://127.0.0.1:{s3_tcp.port}",
        max_attempts=WINDOW_ATTEMPTS,
        connect_timeout=TIMEOUT_S,
        read_timeout=TIMEOUT_S,
    )
    cfg = make_config(url, proxied_redis(redis_tcp), lease_ttl=SHORT_TTL_S, heartbeat_interval=0.3)
    op, rng = new_op(), random.Random(SOAK_SEED)
    rs = monitored(systems, cfg, op)
    reader = systems(cfg, "reader")
    fence = rs.fencing_token
    written: dict[str, bytes] = {}
    with Chaos(s3_tcp, redis_tcp, SOAK_SEED) as chaos:
        end = time.monotonic() + SOAK_S
        while time.monotonic() < end:
            data = rng.randbytes(rng.randrange(1_000, BLOB_BYTES))
            (cid,) = write(rs, [data], first=len(written))
            written[cid] = data
            if len(written) % 4 == 0:  # restore one of them, through the faults too
                n = rng.randrange(len(written))
                old = list(written)[n]
                got = read_while_redis_is_away(reader, old, n)
                assert got == written[old], chaos.actions
    summary = f"seed {SOAK_SEED}: {len(written)} checkpoints, faults {chaos.actions}"
    rs.ensure_lease()
    assert rs.fencing_token == fence, summary  # the lease held all along
    ids = list(written)
    assert checkpoint_ids(audit(prefix.direct, op, "w0")) == ids, summary
    assert rs.list_checkpoints(op) == ids, summary
    assert read(systems(cfg, "last-reader"), ids) == list(written.values()), summary
    assert len(set(chaos.actions)) >= 4, summary
    assert s3_tcp.stats["dropped"] + s3_tcp.stats["stalled"] > 0, summary
