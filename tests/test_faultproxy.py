"""The fault-injecting proxies of the network-fault tests (faultproxy.py, faultproxy_s3.py),
against trivial local servers: a TCP echo server and a small HTTP object server."""

from __future__ import annotations

import http.client
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO

import pytest
from faultproxy import DOWN, FaultProxy
from faultproxy_s3 import INTERNAL_ERROR, SLOW_DOWN, HttpFaults, S3FaultProxy

pytestmark = pytest.mark.timeout(60)
WAIT_S = 5.0
POLL_S = 0.05  # serve_forever's shutdown poll: the teardown waits that long


# -- a TCP echo server -------------------------------------------------------------------


class EchoServer(socketserver.ThreadingTCPServer):
    """Echoes every byte back; ``received`` counts what reached it."""

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.received = 0
        self.arrived = threading.Event()
        self.lock = threading.Lock()


class EchoHandler(socketserver.BaseRequestHandler):
    server: EchoServer

    def handle(self) -> None:
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self.server.lock:
                self.server.received += len(data)
            self.server.arrived.set()
            try:
                self.request.sendall(data)
            except OSError:
                return


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    threading.Thread(target=server.serve_forever, args=(POLL_S,), daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", port_of(echo)), seed=7) as p:
        yield p


def port_of(server: socketserver.BaseServer) -> int:
    """The port a loopback test server listens on."""
    assert isinstance(server, socketserver.TCPServer)
    return int(server.server_address[1])


def connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(proxy.address, timeout=WAIT_S)
    return sock


def read_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            break
        out += data
    return out


def read_until_cut(sock: socket.socket) -> tuple[bytes, str]:
    """Everything until the connection ends, and how it ended ("reset" or "eof")."""
    out = b""
    try:
        while data := sock.recv(65536):
            out += data
    except ConnectionResetError:
        return out, "reset"
    return out, "eof"


# -- TCP ---------------------------------------------------------------------------------


def test_bytes_go_both_ways_and_a_half_close_is_passed_on(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"x" * 200_000)
        assert read_exactly(sock, 200_000) == b"x" * 200_000
        sock.shutdown(socket.SHUT_WR)
        assert read_until_cut(sock) == (b"", "eof")
    assert proxy.stats["accepted"] == 1
    assert proxy.stats["bytes_up"] == proxy.stats["bytes_down"] == 200_000


def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    proxy.set_latency(up=0.2, down=0.1)
    with connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"ping")
        assert read_exactly(sock, 4) == b"ping"
        took = time.monotonic() - started
    assert 0.3 <= took < 0.3 + WAIT_S
    proxy.heal()
    with connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"ping")
        assert read_exactly(sock, 4) == b"ping"
        assert time.monotonic() - started < 0.3


def test_a_dropped_connection_forwards_exactly_n_bytes_then_resets(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    proxy.drop(1000)
    with connect(proxy) as sock:
        sock.sendall(b"y" * 5000)
        data, how = read_until_cut(sock)
    assert how == "reset"
    assert data == b"y" * len(data) and len(data) <= 1000
    # The server may never read them: Linux drops unread bytes when the reset comes.
    assert proxy.stats["bytes_up"] == 1000 and echo.received <= 1000
    assert proxy.stats["dropped"] == 1


def test_a_drop_downstream_cuts_the_answer_after_n_bytes(proxy: FaultProxy) -> None:
    proxy.drop(300, direction=DOWN)
    with connect(proxy) as sock:
        sock.sendall(b"z" * 1000)
        data, how = read_until_cut(sock)
    assert (len(data), how) == (300, "reset")


def test_drops_hit_the_given_fraction_of_connections_and_an_open_one_too(
    proxy: FaultProxy,
) -> None:
    open_before = connect(proxy)
    open_before.sendall(b"a")
    assert read_exactly(open_before, 1) == b"a"
    proxy.drop(10, fraction=0.5)
    cut = 0
    for _ in range(20):
        with connect(proxy) as sock:
            sock.sendall(b"b" * 100)
            _, how = read_until_cut_or_echo(sock, 100)
            cut += how == "reset"
    assert 3 <= cut <= 17  # seed 7: some, not all
    assert proxy.stats["dropped"] == cut
    open_before.close()


def read_until_cut_or_echo(sock: socket.socket, n: int) -> tuple[bytes, str]:
    try:
        data = read_exactly(sock, n)
    except ConnectionResetError:
        return b"", "reset"
    return data, "echo" if len(data) == n else "reset"


def test_a_drop_limit_cuts_at_most_that_many_connections(proxy: FaultProxy) -> None:
    proxy.drop(10, limit=2)
    outcomes = []
    for _ in range(5):
        with connect(proxy) as sock:
            sock.sendall(b"c" * 100)
            outcomes.append(read_until_cut_or_echo(sock, 100)[1])
    assert outcomes == ["reset", "reset", "echo", "echo", "echo"]
    assert proxy.stats["dropped"] == 2


def test_a_stalled_connection_goes_silent_both_ways_new_ones_flow_and_the_heal_resets_it(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    proxy.stall(50, limit=1)
    stalled = connect(proxy)
    stalled.sendall(b"s" * 100)
    poll_until(lambda: echo.received == 50)
    stalled.settimeout(0.3)
    with pytest.raises(TimeoutError):  # the echo of the 50 bytes does not come back
        stalled.recv(100)
    with connect(proxy) as fresh:  # the limit is spent: a retry on a new one gets through
        fresh.sendall(b"f" * 10)
        assert read_exactly(fresh, 10) == b"f" * 10
    assert echo.received == 60
    proxy.heal()
    stalled.settimeout(WAIT_S)
    assert read_until_cut(stalled) == (b"", "reset")
    stalled.close()
    assert proxy.stats["stalled"] == 1


def test_a_stall_downstream_delivers_n_bytes_of_the_answer_then_nothing(
    proxy: FaultProxy,
) -> None:
    proxy.stall(30, direction=DOWN)
    with connect(proxy) as sock:
        sock.sendall(b"d" * 100)
        assert read_exactly(sock, 30) == b"d" * 30
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(100)
    assert proxy.stats["stalled"] == 1
    assert proxy.stats["bytes_up"] == 100 and proxy.stats["bytes_down"] == 30


def poll_until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.01)


def test_a_hang_holds_every_byte_until_the_heal(proxy: FaultProxy, echo: EchoServer) -> None:
    proxy.hang()
    with connect(proxy) as sock:
        sock.sendall(b"held")
        assert not echo.arrived.wait(0.3), "a byte got through the hang"
        proxy.heal()
        assert read_exactly(sock, 4) == b"held"
    assert echo.received == 4


def test_a_hang_holds_an_open_connection_too(proxy: FaultProxy, echo: EchoServer) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"1")
        assert read_exactly(sock, 1) == b"1"
        echo.arrived.clear()
        proxy.hang()
        sock.sendall(b"2")
        assert not echo.arrived.wait(0.3)
        proxy.heal()
        assert read_exactly(sock, 1) == b"2"


def test_unreachable_refuses_new_connections_resets_open_ones_and_heals_on_the_same_port(
    proxy: FaultProxy,
) -> None:
    port = proxy.port
    with connect(proxy) as sock:
        sock.sendall(b"1")
        assert read_exactly(sock, 1) == b"1"
        proxy.unreachable()
        assert read_until_cut(sock) == (b"", "reset")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=WAIT_S)
    assert proxy.stats["reset"] == 1
    proxy.heal()
    assert proxy.port == port
    with connect(proxy) as sock:
        sock.sendall(b"2")
        assert read_exactly(sock, 1) == b"2"


def test_connections_are_forgotten_once_closed(proxy: FaultProxy) -> None:
    for _ in range(3):
        with connect(proxy) as sock:
            sock.sendall(b"q")
            assert read_exactly(sock, 1) == b"q"
    deadline = time.monotonic() + WAIT_S
    while proxy.connections() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.connections() == 0


# -- HTTP --------------------------------------------------------------------------------


class ObjectServer(ThreadingHTTPServer):
    """PUT stores a body under its path, GET and HEAD return it: a stand-in for S3."""

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ObjectHandler)
        self.objects: dict[str, bytes] = {}
        self.requests = 0


class ObjectHandler(BaseHTTPRequestHandler):
    server: ObjectServer
    protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue for Expect

    def log_message(self, *args: object) -> None:
        pass

    def do_PUT(self) -> None:
        self.server.requests += 1
        length = int(self.headers["Content-Length"])
        self.server.objects[self.path] = self.rfile.read(length)
        self._answer(200, b"")

    def do_GET(self) -> None:
        self.server.requests += 1
        body = self.server.objects.get(self.path)
        self._answer(200 if body is not None else 404, body or b"")

    def do_HEAD(self) -> None:
        self.server.requests += 1
        body = self.server.objects.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def objects() -> Iterator[ObjectServer]:
    server = ObjectServer()
    threading.Thread(target=server.serve_forever, args=(POLL_S,), daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def s3proxy(objects: ObjectServer) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(f"http://127.0.0.1:{port_of(objects)}", seed=3) as p:
        yield p


def http_conn(p: S3FaultProxy) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", p.port, timeout=WAIT_S)


def call(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    conn.request(method, path, body=body)
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_requests_pass_through_on_one_kept_alive_connection(
    s3proxy: S3FaultProxy, objects: ObjectServer
) -> None:
    conn = http_conn(s3proxy)
    assert call(conn, "PUT", "/b/k", b"v" * 10_000) == (200, b"")
    assert call(conn, "GET", "/b/k") == (200, b"v" * 10_000)
    assert call(conn, "HEAD", "/b/k") == (200, b"")
    assert call(conn, "GET", "/b/missing")[0] == 404
    conn.close()
    assert s3proxy.stats == {"forwarded PUT": 1, "forwarded GET": 2, "forwarded HEAD": 1}
    assert s3proxy.failures() == 0


def test_a_failed_request_gets_the_s3_error_and_never_reaches_the_server(
    s3proxy: S3FaultProxy, objects: ObjectServer
) -> None:
    s3proxy.fail(HttpFaults(fraction=1.0, error=SLOW_DOWN))
    conn = http_conn(s3proxy)
    status, body = call(conn, "PUT", "/b/k", b"data")
    assert status == 503
    assert b"<Code>SlowDown</Code>" in body and b"<Resource>/b/k</Resource>" in body
    assert objects.requests == 0 and "/b/k" not in objects.objects
    conn.close()
    conn = http_conn(s3proxy)
    assert call(conn, "HEAD", "/b/k") == (503, b"")
    conn.close()
    assert s3proxy.failures() == 2


def test_after_forward_the_request_lands_and_its_answer_is_replaced(
    s3proxy: S3FaultProxy, objects: ObjectServer
) -> None:
    s3proxy.fail(HttpFaults(fraction=1.0, error=INTERNAL_ERROR, after_forward=True))
    conn = http_conn(s3proxy)
    status, body = call(conn, "PUT", "/b/k", b"landed")
    conn.close()
    assert status == 500 and b"<Code>InternalError</Code>" in body
    assert objects.objects["/b/k"] == b"landed"
    assert s3proxy.stats["landed PUT"] == 1


def test_only_the_given_methods_and_paths_fail(s3proxy: S3FaultProxy) -> None:
    s3proxy.fail(HttpFaults(fraction=1.0, methods=frozenset({"GET"}), path_contains="/rec/"))
    conn = http_conn(s3proxy)
    assert call(conn, "PUT", "/b/rec/1", b"r")[0] == 200
    assert call(conn, "GET", "/b/other")[0] == 404
    assert call(conn, "GET", "/b/rec/1")[0] == 503
    conn.close()
    s3proxy.heal()
    conn = http_conn(s3proxy)
    assert call(conn, "GET", "/b/rec/1") == (200, b"r")
    conn.close()


def test_max_streak_lets_every_retry_after_the_streak_through(s3proxy: S3FaultProxy) -> None:
    s3proxy.fail(HttpFaults(fraction=1.0, max_streak=2))
    statuses = []
    for _ in range(6):
        conn = http_conn(s3proxy)
        statuses.append(call(conn, "GET", "/b/k")[0])
        conn.close()
    assert statuses == [503, 503, 404, 503, 503, 404]


def test_a_fraction_fails_about_that_share_of_the_requests(s3proxy: S3FaultProxy) -> None:
    s3proxy.fail(HttpFaults(fraction=0.3))
    failed = 0
    for i in range(100):
        conn = http_conn(s3proxy)
        failed += call(conn, "GET", f"/b/{i}")[0] == 503
        conn.close()
    assert 15 <= failed <= 45
    assert s3proxy.failures() == failed


def status_lines(reader: BinaryIO) -> Iterator[bytes]:
    """The status line of each answer read from ``reader`` (heads only, no bodies)."""
    while line := reader.readline():
        if line.startswith(b"HTTP/1.1 "):
            yield line.split(b" ")[1]


def test_expect_continue_is_relayed_and_a_refusal_comes_before_the_body(
    s3proxy: S3FaultProxy, objects: ObjectServer
) -> None:
    head = b"PUT /b/e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    with socket.create_connection(("127.0.0.1", s3proxy.port), timeout=WAIT_S) as sock:
        reader = sock.makefile("rb")
        answers = status_lines(reader)
        sock.sendall(head)
        assert next(answers) == b"100"
        sock.sendall(b"body")
        assert next(answers) == b"200"
    assert objects.objects["/b/e"] == b"body"
    s3proxy.fail(HttpFaults(fraction=1.0))
    with socket.create_connection(("127.0.0.1", s3proxy.port), timeout=WAIT_S) as sock:
        reader = sock.makefile("rb")
        sock.sendall(head)  # and no body: the client waits for a 100 that never comes
        assert list(status_lines(reader)) == [b"503"]
    assert objects.objects["/b/e"] == b"body"
    assert s3proxy.stats == {"forwarded PUT": 1, "failed PUT": 1}
