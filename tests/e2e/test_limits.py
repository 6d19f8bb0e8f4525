"""Client limits on both front ends (CONTRACT §6-7): MAX_CLIENTS, MAX_PARALLEL, idle timeouts.

Overlap is proven with a gate, not with sleeps: the proxy's read method is wrapped so it counts
the requests inside it and holds them until the test opens the gate, and the server's
MAX_PARALLEL semaphore is wrapped so the test sees who is queued behind it.
"""

import http.client
import json
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from http_server import ProxyHTTPServer
from proxy.resp.replies import command
from servers import request, wait_until


class Gauge:
    """Wraps a function: counts the calls in progress, remembers the peak, and holds each call
    at `gate` until it is opened."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = 0
        self.gate = threading.Event()

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                self.now += 1
                self.peak = max(self.peak, self.now)
            try:
                assert self.gate.wait(10), "the test never opened the gate"
                return fn(*args, **kwargs)
            finally:
                with self.lock:
                    self.now -= 1
        return counted


class CountingSemaphore:
    """The server's MAX_PARALLEL semaphore, counting the requests waiting for it."""

    def __init__(self, inner: threading.Semaphore):
        self.inner = inner
        self.lock = threading.Lock()
        self.waiting = 0

    def __enter__(self) -> None:
        with self.lock:
            self.waiting += 1
        self.inner.acquire()
        with self.lock:
            self.waiting -= 1

    def __exit__(self, *exc: object) -> None:
        self.inner.release()


class HttpFrontEnd:
    name = "http"

    def __init__(self, make_proxy: Callable[..., Any], options: dict[str, Any]):
        self.under_test = make_proxy(server_options=options)

    def ask(self, sock: socket.socket, key: str) -> bytes:
        sock.sendall(f"GET /get/{key} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200
        return response.read()

    def assert_refused(self, reply: bytes) -> None:
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ")
        assert b"\r\nRetry-After: 1\r\n" in head
        assert b'"error": "too many clients"' in body


class RespFrontEnd:
    name = "resp"

    def __init__(self, make_resp_proxy: Callable[..., Any], options: dict[str, Any]):
        self.under_test = make_resp_proxy(resp_options=options)

    def ask(self, sock: socket.socket, key: str) -> bytes:
        sock.sendall(command(b"GET", key.encode()))
        head = b""
        while not head.endswith(b"\r\n"):
            head += sock.recv(1)
        assert head.startswith(b"$"), head
        size = int(head[1:-2])
        body = b""
        while len(body) < size + 2:
            body += sock.recv(size + 2 - len(body))
        return body[:-2]

    def assert_refused(self, reply: bytes) -> None:
        assert reply == b"-ERR max number of clients reached\r\n"


@pytest.fixture(params=["http", "resp"])
def front_end(request, make_proxy, make_resp_proxy, r):
    """Builds the front end under test with the given limits, the key `k` set to `v`."""
    r.set("k", b"v")

    def build(**options: Any) -> HttpFrontEnd | RespFrontEnd:
        if request.param == "http":
            return HttpFrontEnd(make_proxy, options)
        return RespFrontEnd(make_resp_proxy, options)
    return build


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_over_max_clients_a_new_connection_is_refused_at_once(front_end):
    fe = front_end(max_clients=4)
    server = fe.under_test.thread.server
    held = [connect(fe.under_test.port) for _ in range(4)]
    try:
        for sock in held:
            assert fe.ask(sock, "k") == b"v"
        assert server.active_connections == 4
        with connect(fe.under_test.port) as fifth:
            fe.assert_refused(read_until_closed(fifth))  # answered and closed, never queued
        assert server.rejected_connections == 1
        held.pop().close()
        wait_until(lambda: server.active_connections == 3)
        with connect(fe.under_test.port) as sixth:
            assert fe.ask(sixth, "k") == b"v"
        for sock in held:
            assert fe.ask(sock, "k") == b"v"  # the others were kept all along
    finally:
        for sock in held:
            sock.close()


def test_idle_kept_alive_connections_hold_no_thread(front_end):
    """Connections between requests wait in the connection loop: 40 of them, each served once
    and kept alive, leave the process with about as many threads as before (the loop's)."""
    fe = front_end()
    assert fe.ask(warm := connect(fe.under_test.port), "k") == b"v"  # the loop's threads started
    before = threading.active_count()
    held = [connect(fe.under_test.port) for _ in range(40)]
    try:
        for sock in held:
            assert fe.ask(sock, "k") == b"v"
        assert threading.active_count() <= before + 2  # a spare thread or two at most, not 40
        for sock in held:
            assert fe.ask(sock, "k") == b"v"  # each one kept, and served again
    finally:
        for sock in held + [warm]:
            sock.close()


def _concurrent_reads(fe: HttpFrontEnd | RespFrontEnd, clients: int, parallel: int) -> None:
    """`clients` connections ask at once; exactly `parallel` get inside, the rest queue."""
    server = fe.under_test.thread.server
    gauge = Gauge()
    # Both front ends read through read_value (/get/ directly, RESP's GET by get_value).
    fe.under_test.proxy.read_value = gauge.wrap(fe.under_test.proxy.read_value)
    server.parallel = semaphore = CountingSemaphore(server.parallel)
    results: list[bytes] = []

    def one_client() -> None:
        with connect(fe.under_test.port) as sock:
            value = fe.ask(sock, "k")
        with gauge.lock:
            results.append(value)

    threads = [threading.Thread(target=one_client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: gauge.now == parallel and semaphore.waiting == clients - parallel)
        assert gauge.peak == parallel
    finally:
        gauge.gate.set()
        for thread in threads:
            thread.join(10)
    assert results == [b"v"] * clients
    assert gauge.peak == parallel


def test_max_parallel_1_processes_one_request_at_a_time(front_end):
    _concurrent_reads(front_end(max_parallel=1), clients=8, parallel=1)


def test_max_parallel_4_processes_up_to_four_at_once(front_end):
    _concurrent_reads(front_end(max_parallel=4), clients=8, parallel=4)


def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(front_end):
    fe = front_end(keepalive_timeout=0.3)
    server = fe.under_test.thread.server
    with connect(fe.under_test.port) as sock:
        assert fe.ask(sock, "k") == b"v"
        assert fe.ask(sock, "k") == b"v"  # kept alive between requests
        assert read_until_closed(sock) == b""  # then closed by the server (bounded by recv's 10 s)
    wait_until(lambda: server.active_connections == 0)


def test_resp_a_partial_command_must_complete_within_the_header_timeout(make_resp_proxy):
    resp = make_resp_proxy(resp_options={"header_timeout": 0.3, "keepalive_timeout": 30})
    with connect(resp.port) as sock:
        sock.sendall(b"*2\r\n$3\r\nGET\r\n$1")  # and nothing more: a slowloris
        assert read_until_closed(sock) == b""
    wait_until(lambda: resp.thread.server.active_connections == 0)


# ----- found in review: a slow reader holds its own connection, nothing else ------------------

def test_a_client_that_does_not_read_holds_no_processing_slot(make_proxy, r):
    r.set("big", b"x" * (8 * 1024 * 1024))
    r.set("small", b"s")
    proxy = make_proxy(server_options={"max_parallel": 1})
    stalled = socket.create_connection(("127.0.0.1", proxy.port))
    try:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /get/big HTTP/1.1\r\nHost: t\r\n\r\n")  # and never reads
        wait_until(lambda: proxy.proxy.stats["reads_redis"] >= 1)
        # With the reply sent under MAX_PARALLEL=1 this would wait for the send to time out.
        got = request(proxy.port, "/get/small", timeout=5)
        assert (got.status, got.body) == (200, b"s")
    finally:
        stalled.close()


def test_the_503_over_max_clients_is_well_framed_json():

    head, _, body = ProxyHTTPServer.reject_bytes.partition(b"\r\n\r\n")
    length = int([line for line in head.split(b"\r\n") if line.startswith(b"Content-Length")][0]
                 .split(b":")[1])
    assert length == len(body) and json.loads(body)["error"] == "too many clients"


def test_http_1_0_keep_alive_is_confirmed(make_proxy):
    proxy = make_proxy()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        for _ in range(2):  # the second request proves the connection was kept
            sock.sendall(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            reply = b""
            while b"}" not in reply:
                reply += sock.recv(4096)
            assert b"Connection: keep-alive\r\n" in reply and b" 200 " in reply
