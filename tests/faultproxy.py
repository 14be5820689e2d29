"""Fault-injecting proxies for the network-fault tests (helper modules, not test files).

Two proxies, each on a free loopback port in front of one real server, steered from the
test while traffic flows through them:

- :class:`FaultProxy`, at the TCP level (Redis, or S3 below HTTP): added latency per
  direction; connections cut with a reset after N bytes (all of them, a fraction, at most
  a number of them); connections that stall after N bytes (nothing more gets through on
  them: their client must time out and retry on a new one); a hang of the whole link
  (every byte of every connection held back until the heal, as a black-holed link whose
  TCP retransmits get through once it is back); and an unreachable server (the port
  refuses connections and every open one is reset). ``heal()`` ends every fault.
- ``S3FaultProxy`` (``faultproxy_s3.py``), at the HTTP level: answers a fraction of the
  requests with an S3 error instead of the server's answer.

Both count what they did (``stats``), so a test can show that the fault really happened.
Threads, blocking sockets, no asyncio: the tests that steer them are synchronous.
"""

from __future__ import annotations

import contextlib
import queue
import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass

UP, DOWN = "up", "down"  # client -> server, server -> client
_READ = 65536
_EOF = b""
_CONNECT_S = 5.0
RESET, STALL = "reset", "stall"


@dataclass(slots=True)
class _Cut:
    """What happens to an armed connection once ``after`` more bytes went ``direction``:
    a ``RESET`` or a ``STALL``; ``left`` connections more at most (None: no limit)."""

    kind: str
    direction: str
    after: int
    fraction: float
    left: int | None


class FaultProxy:
    """A TCP proxy from ``127.0.0.1:port`` to ``upstream``, faults switched at run time.

    ``stats`` counts ``accepted`` connections, ``dropped`` ones (cut by :meth:`drop`),
    ``stalled`` ones (:meth:`stall`), ``reset`` ones (cut by :meth:`unreachable`) and
    ``bytes_up`` / ``bytes_down``.
    """

    def __init__(self, upstream: tuple[str, int], *, seed: int = 0) -> None:
        self.upstream = upstream
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._latency = {UP: 0.0, DOWN: 0.0}
        self._cut: _Cut | None = None
        self._links: set[_Link] = set()
        self._closed = False
        self.flowing = threading.Event()
        self.flowing.set()
        self._listening = threading.Event()
        self._listener: socket.socket | None = _listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._listening.set()
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True, name="proxy")
        self._acceptor.start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    # -- faults ------------------------------------------------------------------------

    def set_latency(self, *, up: float = 0.0, down: float = 0.0) -> None:
        """Delay every byte by ``up`` seconds towards the server, ``down`` back."""
        with self._lock:
            self._latency = {UP: up, DOWN: down}

    def drop(
        self, after: int, *, fraction: float = 1.0, direction: str = UP, limit: int | None = None
    ) -> None:
        """Reset a ``fraction`` of the connections (open ones and new ones, drawn one by
        one) once ``after`` more bytes have gone through them in ``direction``; at most
        ``limit`` of them (None: no limit)."""
        self._set_cut(_Cut(RESET, direction, after, fraction, limit))

    def stall(
        self,
        after: int = 0,
        *,
        fraction: float = 1.0,
        direction: str = UP,
        limit: int | None = None,
    ) -> None:
        """Like :meth:`drop`, but the chosen connections go silent instead: after ``after``
        more bytes nothing more crosses them either way (a peer that hung mid-request),
        until the heal resets them. New connections are drawn as with :meth:`drop`."""
        self._set_cut(_Cut(STALL, direction, after, fraction, limit))

    def _set_cut(self, cut: _Cut) -> None:
        with self._lock:
            self._cut = cut
            for link in self._links:
                self._arm(link)

    def hang(self) -> None:
        """Hold back every byte of every connection, new ones included, until the heal."""
        self.flowing.clear()

    def unreachable(self) -> None:
        """Refuse new connections (the port is closed) and reset every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            self._listening.clear()
            links = list(self._links)
        self._count("reset", len(links))  # before the clients can see it
        if listener is not None:
            _close_listener(listener)
        for link in links:
            link.kill()

    def heal(self) -> None:
        """End every fault: no latency, no cuts, bytes flow, the port listens again.
        Stalled connections are reset (their clients gave up on them long ago)."""
        with self._lock:
            self._latency = {UP: 0.0, DOWN: 0.0}
            self._cut = None
            for link in self._links:
                link.cut_at = {UP: None, DOWN: None}
            stalled = [link for link in self._links if link.stalled.is_set()]
            if self._listener is None and not self._closed:
                self._listener = _listen(self.port)
                self._listening.set()
        for link in stalled:
            link.kill()
        self.flowing.set()

    def connections(self) -> int:
        """How many connections are open now."""
        with self._lock:
            return len(self._links)

    def close(self) -> None:
        """Stop listening and reset every connection."""
        with self._lock:
            self._closed = True
        self.unreachable()
        self._listening.set()
        self.flowing.set()
        self._acceptor.join(timeout=5)

    # -- the plumbing --------------------------------------------------------------------

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.stats[what] += n

    def delay(self, direction: str) -> float:
        """The latency added now in ``direction`` (read by the connections' pumps)."""
        with self._lock:
            return self._latency[direction]

    def _arm(self, link: _Link) -> None:
        """Called with the lock held: draw whether ``link`` is cut, and where."""
        cut = self._cut
        if cut is None or cut.left == 0:
            return
        if self._rng.random() < cut.fraction:
            link.cut_at[cut.direction] = link.sent[cut.direction] + cut.after

    def take_cut(self) -> str | None:
        """A connection reached its cut: what to do (RESET or STALL), or None when the
        limit is spent or the fault was healed meanwhile (the bytes go on)."""
        with self._lock:
            cut = self._cut
            if cut is None or cut.left == 0:
                return None
            if cut.left is not None:
                cut.left -= 1
            self.stats["dropped" if cut.kind == RESET else "stalled"] += 1
            return cut.kind

    def _accept_loop(self) -> None:
        while True:
            self._listening.wait()
            with self._lock:
                listener, closed = self._listener, self._closed
            if closed:
                return
            if listener is None:
                continue
            try:
                client, _ = listener.accept()
            except OSError:  # closed under us, or the accept timeout
                continue
            client.setblocking(True)
            link = _Link(self, client)
            with self._lock:
                self._links.add(link)
                self.stats["accepted"] += 1
                self._arm(link)
            threading.Thread(target=link.run, daemon=True, name="proxy-link").start()

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)


class _Link:
    """One proxied connection: a reader and a writer thread per direction."""

    def __init__(self, proxy: FaultProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server: socket.socket | None = None
        self.sent = {UP: 0, DOWN: 0}
        self.cut_at: dict[str, int | None] = {UP: None, DOWN: None}
        self.dead = threading.Event()
        self.stalled = threading.Event()
        self._lock = threading.Lock()
        self._threads = 0

    def run(self) -> None:
        """Connect upstream (once bytes may flow), then pump both ways."""
        while not self.proxy.flowing.wait(0.05):
            if self.dead.is_set():
                return self._finish()
        try:
            self.server = socket.create_connection(self.proxy.upstream, timeout=_CONNECT_S)
            self.server.settimeout(None)
        except OSError:
            self.kill()
            return self._finish()
        self._threads = 4
        for src, dst, direction in (
            (self.client, self.server, UP),
            (self.server, self.client, DOWN),
        ):
            pending: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
            threading.Thread(target=self._read, args=(src, pending, direction), daemon=True).start()
            threading.Thread(
                target=self._write, args=(dst, pending, direction), daemon=True
            ).start()
        return None

    def _read(
        self, src: socket.socket, pending: queue.SimpleQueue[tuple[float, bytes]], d: str
    ) -> None:
        try:
            while True:  # a kill wakes recv with b"" (SHUT_RD): EOF ends the writer too
                data = src.recv(_READ)
                pending.put((time.monotonic() + self.proxy.delay(d), data))
                if not data:
                    break
        except OSError:
            self.kill()  # a reset on one side is passed on to the other
            pending.put((0.0, _EOF))
        self._finish()

    def _write(
        self, dst: socket.socket, pending: queue.SimpleQueue[tuple[float, bytes]], d: str
    ) -> None:
        while True:
            due, data = pending.get()
            if self.dead.wait(max(0.0, due - time.monotonic())):
                break
            while not self.proxy.flowing.wait(0.05) and not self.dead.is_set():
                pass
            if self.stalled.is_set():  # the other direction stalled: this one goes silent too
                self.dead.wait()
            if self.dead.is_set() or not self._send(dst, data, d):
                break
        self._finish()

    def _send(self, dst: socket.socket, data: bytes, d: str) -> bool:
        """Forward ``data`` (up to the cut, if one is armed); False when the pump ends."""
        try:
            if not data:
                dst.shutdown(socket.SHUT_WR)  # pass the half-close on
                return False
            cut = self.cut_at[d]
            if cut is not None and self.sent[d] + len(data) >= cut:
                return self._reach_cut(dst, data, d, cut)
            dst.sendall(data)
        except OSError:
            self.kill()
            return False
        self._sent(d, len(data))
        return True

    def _reach_cut(self, dst: socket.socket, data: bytes, d: str, cut: int) -> bool:
        """Forward the bytes before the cut, then reset or stall; True when the limit was
        spent meanwhile and the connection goes on."""
        kind = self.proxy.take_cut()
        self.cut_at[d] = None
        if kind is None:
            dst.sendall(data)
            self._sent(d, len(data))
            return True
        head = data[: cut - self.sent[d]]
        if kind == STALL:
            self.stalled.set()  # before the head goes: no answer to it gets back either
        dst.sendall(head)
        self._sent(d, len(head))
        if kind == STALL:
            self.dead.wait()  # silent until the heal (or unreachable, or close) resets it
        self.kill()
        return False

    def _sent(self, d: str, n: int) -> None:
        self.sent[d] += n
        self.proxy._count(f"bytes_{d}", n)

    def kill(self) -> None:
        """Reset both sides: linger 0 makes the close send RST; SHUT_RD wakes the readers
        (a close alone would not, while a thread is blocked in recv)."""
        if self.dead.is_set():
            return
        self.dead.set()
        for sock in (self.client, self.server):
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass

    def _finish(self) -> None:
        """The last pump thread out closes both sockets."""
        with self._lock:
            self._threads -= 1
            last = self._threads <= 0
        if last:
            for sock in (self.client, self.server):
                if sock is not None:
                    sock.close()
            self.proxy._forget(self)


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    sock.settimeout(0.2)  # the accept loop looks at the proxy's state this often
    return sock


def _close_listener(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
