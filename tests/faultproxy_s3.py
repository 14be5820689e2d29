"""``S3FaultProxy``: an HTTP proxy in front of an S3 endpoint that answers a fraction of the
requests with an S3 error (503 SlowDown, 500 InternalError, with the XML body S3 sends)
instead of the server's answer: either without forwarding them, or after forwarding them
(the request took effect and its answer was lost: the case of a retried create-only PUT,
which then meets its own object).

It speaks just enough HTTP/1.1 for botocore and urllib3: keep-alive, bodies framed by
Content-Length or chunked, and ``Expect: 100-continue`` (botocore's PUTs). An error answer
closes the connection, as a server under load may.
"""

from __future__ import annotations

import random
import select
import socket
import socketserver
import threading
from collections import Counter
from dataclasses import dataclass
from html import escape
from http import HTTPStatus
from typing import Protocol

_POLL_S = 0.05  # how often serve_forever looks for a shutdown (close() waits that long)


class _Reader(Protocol):
    """What the proxy reads from: a buffered socket file."""

    def readline(self, size: int = -1, /) -> bytes: ...

    def read(self, size: int = -1, /) -> bytes: ...


# -- HTTP: S3 error answers -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class S3Error:
    """An error answer as S3 sends it."""

    status: int
    code: str
    message: str

    def response(self, method: str, path: str, n: int) -> bytes:
        """The whole answer (``Connection: close``: the proxy hangs up after it)."""
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{self.code}</Code><Message>{self.message}</Message>"
            f"<Resource>{escape(path)}</Resource><RequestId>fault-{n}</RequestId></Error>"
        )
        body = b"" if method == "HEAD" else xml.encode()
        head = (
            f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}\r\n"
            f"Content-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        return head.encode() + body


SLOW_DOWN = S3Error(503, "SlowDown", "Please reduce your request rate.")
INTERNAL_ERROR = S3Error(
    500, "InternalError", "We encountered an internal error. Please try again."
)


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpFaults:
    """Which requests get ``error`` instead of the server's answer.

    Attributes:
        fraction: the share of the matching requests that fail (drawn one by one).
        error: the answer they get.
        methods: only these methods (empty: all).
        path_contains: only paths (with the query) holding this text.
        after_forward: forward the request first, then answer the error in place of the
            server's answer: the request took effect and its answer was lost.
        max_streak: when > 0, one method and path never fails more often in a row (a
            retry budget of more attempts then always gets through).
    """

    fraction: float
    error: S3Error = SLOW_DOWN
    methods: frozenset[str] = frozenset()
    path_contains: str = ""
    after_forward: bool = False
    max_streak: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (not self.methods or method in self.methods) and self.path_contains in path


class S3FaultProxy:
    """An HTTP proxy from ``endpoint`` to an S3 endpoint that fails requests on demand.

    ``stats`` counts ``"forwarded <METHOD>"``, ``"failed <METHOD>"`` (answered with the
    error, never forwarded) and ``"landed <METHOD>"`` (forwarded, answer replaced).
    """

    def __init__(self, upstream_endpoint: str, *, seed: int = 0) -> None:
        host, _, port = upstream_endpoint.removeprefix("http://").rstrip("/").rpartition(":")
        self.upstream = (host, int(port))
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._faults: HttpFaults | None = None
        self._streaks: dict[tuple[str, str], int] = {}
        self._server = _HttpServer(self)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(_POLL_S,), daemon=True
        )
        self._thread.start()

    def __enter__(self) -> S3FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, faults: HttpFaults) -> None:
        """From now on, fail requests as ``faults`` says."""
        with self._lock:
            self._faults = faults
            self._streaks.clear()

    def heal(self) -> None:
        """Forward every request again."""
        with self._lock:
            self._faults = None

    def failures(self) -> int:
        """Requests answered with an error so far (forwarded or not)."""
        with self._lock:
            return sum(n for what, n in self.stats.items() if what.startswith(("failed", "landed")))

    def decide(self, method: str, path: str) -> HttpFaults | None:
        """The faults that apply to this request, or None to forward it as it is."""
        with self._lock:
            faults, key = self._faults, (method, path)
            if faults is None or not faults.matches(method, path):
                return None
            streak = self._streaks.pop(key, 0)
            if faults.max_streak and streak >= faults.max_streak:
                return None
            if self._rng.random() >= faults.fraction:
                return None
            self._streaks[key] = streak + 1
            return faults

    def count(self, what: str) -> int:
        """Count one ``what``; returns the number of requests seen so far (an error's id)."""
        with self._lock:
            self.stats[what] += 1
            return sum(self.stats.values())

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _HttpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, proxy: S3FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), _HttpHandler)


@dataclass(frozen=True, slots=True)
class _Head:
    """A request's or an answer's head: first line, headers (lower-case names), raw bytes."""

    raw: bytes
    first: list[str]
    headers: dict[str, str]

    def has(self, name: str, value: str) -> bool:
        return value in self.headers.get(name, "").lower()


class _HttpHandler(socketserver.StreamRequestHandler):
    """One client connection: requests one after the other (keep-alive)."""

    server: _HttpServer

    def handle(self) -> None:
        self.up: tuple[socket.socket, _Reader] | None = None
        try:
            while self._exchange():
                pass
        except (OSError, ValueError):
            pass  # a side hung up mid-exchange: so does the proxy
        finally:
            if self.up is not None:
                self.up[0].close()

    def _exchange(self) -> bool:
        """One request and its answer; False when the connection ends."""
        head = _read_head(self.rfile)
        if head is None:
            return False
        method, path = head.first[0], head.first[1]
        faults = self.server.proxy.decide(method, path)
        expects = head.has("expect", "100-continue")
        if faults is not None and not faults.after_forward:
            if not expects:  # else the client waits for a 100 before it sends the body
                _read_body(self.rfile, head)
            self._error(faults.error, method, path, "failed")
            return False
        answer, body = self._forward(head, expects, method == "HEAD")
        if faults is not None:
            self._error(faults.error, method, path, "landed")
            return False
        self.server.proxy.count(f"forwarded {method}")  # counted before the client can look
        self.wfile.write(answer.raw + body)
        return not answer.has("connection", "close")

    def _error(self, error: S3Error, method: str, path: str, what: str) -> None:
        n = self.server.proxy.count(f"{what} {method}")
        self.wfile.write(error.response(method, path, n))

    def _forward(self, head: _Head, expects: bool, is_head: bool) -> tuple[_Head, bytes]:
        """Send the request upstream (relaying a ``100 Continue``); return its answer."""
        sock, rfile = self._upstream()
        sock.sendall(head.raw)
        if expects:
            answer = _read_head(rfile)
            if answer is not None and answer.first[1] == "100":
                self.wfile.write(answer.raw)
                sock.sendall(_read_body(self.rfile, head))
                answer = _read_head(rfile)
        else:
            sock.sendall(_read_body(self.rfile, head))
            answer = _read_head(rfile)
        if answer is None:
            raise ConnectionError("the server hung up")
        no_body = is_head or answer.first[1] in ("204", "304")
        return answer, _read_body(rfile, answer, no_body=no_body, to_eof=True)

    def _upstream(self) -> tuple[socket.socket, _Reader]:
        """The connection to the server, a new one when the server closed the kept-alive
        one while it was idle (else that would pass for a fault the proxy never made)."""
        if self.up is not None and _closed_by_peer(self.up[0]):
            self.up[0].close()
            self.up = None
        if self.up is None:
            sock = socket.create_connection(self.server.proxy.upstream, timeout=60)
            self.up = (sock, sock.makefile("rb"))
        return self.up


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether an idle connection is unusable: readable means the server closed it (EOF or
    a reset) or sent stray bytes, either way no place for the next request."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def _read_head(rfile: _Reader) -> _Head | None:
    """A head up to its blank line; None at a clean end of the stream."""
    raw = b""
    while True:
        line = rfile.readline(65537)
        if not line:
            if raw:
                raise ConnectionError("the stream ended inside a head")
            return None
        raw += line
        if line in (b"\r\n", b"\n"):
            break
    lines = raw.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for text in lines[1:]:
        name, sep, value = text.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return _Head(raw, lines[0].split(" ", 2), headers)


def _read_body(
    rfile: _Reader, head: _Head, *, no_body: bool = False, to_eof: bool = False
) -> bytes:
    """The body's bytes as framed on the wire (chunked ones stay chunked)."""
    if no_body:
        return b""
    if head.has("transfer-encoding", "chunked"):
        return _read_chunked(rfile)
    if "content-length" in head.headers:
        return _read_exact(rfile, int(head.headers["content-length"]))
    return rfile.read() if to_eof else b""


def _read_chunked(rfile: _Reader) -> bytes:
    out = b""
    while True:
        line = rfile.readline(65537)
        out += line
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while (trailer := rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
                out += trailer
            return out + b"\r\n"
        out += _read_exact(rfile, size + 2)


def _read_exact(rfile: _Reader, n: int) -> bytes:
    data = rfile.read(n)
    if len(data) != n:
        raise ConnectionError(f"the stream ended {n - len(data)} bytes early")
    return data
