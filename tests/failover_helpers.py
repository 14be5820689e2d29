"""A Redis primary with one replica, and a failover address in front of them.

``ReplicatedRedis`` starts a primary and a replica (``--replicaof``) with
``infra/dev/services.py`` and stops both whatever happens. ``Forwarder`` is a TCP
forwarder on a loopback port whose target can be switched: the one address the clients
know, as a Sentinel-managed or DNS failover address would be. ``failover()`` is what an
operator or Sentinel does: kill -9 the primary, ``REPLICAOF NO ONE`` on the replica, point
the address at it (dropping every connection it forwarded, as a failover does).

After it, ``primary`` is the promoted server, with no replica until ``add_replica()``.

``detach()`` makes the replica miss every write from then on, while the primary goes on
accepting them: it points the replica at a port where nothing listens (a replica keeps
its data while it cannot reach a master). A replica that is merely stopped would not
do: the kernel keeps receiving the primary's stream for it, and it applies the lot when
it wakes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import redis

_ACCEPT_POLL_S = 0.2
_BUF = 65536


class Forwarder:
    """Forwards each connection to ``127.0.0.1:<target>``; ``retarget`` switches the
    target and closes every connection forwarded so far."""

    def __init__(self, target: int) -> None:
        self._target = target
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_ACCEPT_POLL_S)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="forwarder", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def retarget(self, target: int) -> None:
        with self._lock:
            self._target = target
            socks, self._socks = self._socks, set()
        for sock in socks:
            _close(sock)

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        self._listener.close()
        self.retarget(0)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                target = self._target
            try:
                upstream = socket.create_connection(("127.0.0.1", target), timeout=2.0)
            except OSError:
                _close(client)  # the address leads nowhere right now: a refused connection
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._socks |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(_BUF):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _close(src)
        _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class ReplicatedRedis:
    """A primary, its replica, and the failover address (a ``Forwarder``) in front."""

    def __init__(self, services: ModuleType, root: Path) -> None:
        self._services = services
        self._root = root
        self.primary = services.start_redis_node(root, "primary", die_with_parent=True)
        self._nodes: list[Any] = [self.primary]
        self.replica: Any = None
        self.address: Forwarder | None = None
        try:
            self.add_replica()
            self.address = Forwarder(self.primary.port)
        except BaseException:
            self.close()
            raise

    def add_replica(self) -> None:
        """Start a replica of the primary (the first one, or a new one after a failover)
        and return once it is synced."""
        self.replica = self._services.start_redis_node(
            self._root,
            f"replica{len(self._nodes)}",
            replica_of=self.primary.port,
            die_with_parent=True,
        )
        self._nodes.append(self.replica)

    @property
    def url(self) -> str:
        """The failover address: what every client is configured with."""
        assert self.address is not None
        return self.address.url

    def client(self, node: Any) -> redis.Redis:
        return redis.Redis(port=node.port, decode_responses=True, socket_timeout=10)

    def synced(self, timeout: float = 10.0) -> None:
        """Wait until the replica has every write the primary has taken so far."""
        with contextlib.closing(self.client(self.primary)) as primary:
            primary.set("bbp-test:sync", time.monotonic_ns())
            if int(primary.execute_command("WAIT", 1, int(timeout * 1000))) < 1:
                raise AssertionError("the replica did not acknowledge the primary's writes")

    def detach(self) -> None:
        """From now on the replica misses every write (it keeps what it has)."""
        nowhere = socket.create_server(("127.0.0.1", 0))
        port = nowhere.getsockname()[1]
        nowhere.close()  # a port nothing listens on
        with contextlib.closing(self.client(self.replica)) as replica:
            replica.execute_command("REPLICAOF", "127.0.0.1", port)

    def failover(self) -> None:
        """kill -9 the primary, promote the replica, point the address at it."""
        assert self.address is not None
        self._services.kill_redis_node(self.primary)
        with contextlib.closing(self.client(self.replica)) as replica:
            replica.execute_command("REPLICAOF", "NO", "ONE")
        self.address.retarget(self.replica.port)
        self.primary, self.replica = self.replica, None

    def close(self) -> None:
        if self.address is not None:
            self.address.close()
        for node in reversed(self._nodes):  # a node killed already is left alone
            self._services.kill_redis_node(node)


@contextlib.contextmanager
def replicated_redis(services: ModuleType, root: Path) -> Iterator[ReplicatedRedis]:
    pair = ReplicatedRedis(services, root)
    try:
        yield pair
    finally:
        pair.close()
