"""The graceful drain of a stopping process (a reload's replaced worker, SIGTERM): nothing more
accepted, the request in flight answered with `Connection: close`, a kept-alive connection's
next request answered the same way then closed, RESP connections closed between commands, all
within KEEPALIVE_TIMEOUT; and a stop signal acted on whichever thread the kernel gave it to."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from proxy.store.launcher import free_port
from servers import ROOT, q, refused, start_proxy, stop_proxy, wait_until

GET_K = b"GET /get/k HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_reply(sock: socket.socket) -> tuple[bytes, dict[str, str], bytes]:
    """One HTTP reply read off a kept-alive connection: status line, fields, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    fields = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}
    while len(body) < int(fields["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "closed before the whole body"
        body += chunk
    return status.encode(), fields, body


def closed_by_server(sock: socket.socket) -> bool:
    """The server closed: end of file (a FIN), not a reset, and nothing more sent."""
    return sock.recv(1) == b""


@pytest.fixture
def held(upstream):
    """An upstream page that answers only once `release` is set; its proxied target."""
    release = threading.Event()

    def slow(handler):
        release.wait(30)
        handler.reply(200, b"held page", {"Content-Type": "text/plain", "Cache-Control": "max-age=60"})

    target = q(upstream.route("/held", slow))
    yield target, release
    release.set()


def test_the_request_in_flight_at_the_drain_is_answered_with_connection_close(make_proxy, upstream, held):
    target, release = held
    proxy = make_proxy()
    server = proxy.thread.server
    with connect(proxy.port) as client:
        client.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        wait_until(lambda: upstream.hits["/held"] == 1)
        server.drain()
        wait_until(lambda: refused(proxy.port))  # no more accepted, from the loop's next tick
        release.set()
        status, fields, body = read_reply(client)
        assert (status, body) == (b"HTTP/1.1 200 OK", b"held page")
        assert fields["connection"] == "close"
        assert closed_by_server(client)
    assert server.drained(10)


def test_a_kept_alive_connection_gets_its_next_request_answered_with_close_then_closed(make_proxy, r):
    r.set("k", b"v")
    proxy = make_proxy()
    server = proxy.thread.server
    with connect(proxy.port) as client:
        client.sendall(GET_K)
        status, fields, body = read_reply(client)
        assert (status, body, "connection" in fields) == (b"HTTP/1.1 200 OK", b"v", False)

        server.drain()
        wait_until(lambda: refused(proxy.port))
        assert not server.drained(0)  # idle, and still open: its client may be sending now

        client.sendall(GET_K)
        status, fields, body = read_reply(client)
        assert (status, body, fields["connection"]) == (b"HTTP/1.1 200 OK", b"v", "close")
        assert closed_by_server(client)
    assert server.drained(10)


def test_the_drain_ends_at_its_bound_and_shutdown_closes_what_is_left(make_proxy):
    proxy = make_proxy()
    server = proxy.thread.server
    with connect(proxy.port) as client:
        client.sendall(b"GET /get/k HTTP/1.1\r\n")  # a head begun, never finished
        wait_until(lambda: server.active_connections == 1)
        server.drain()
        wait_until(lambda: refused(proxy.port))
        assert server.drained(0.2) is False  # the bound came with a connection still open
        server.shutdown()
        assert closed_by_server(client)


def test_a_drain_with_no_connection_is_over_at_once(make_proxy):
    proxy = make_proxy()
    server = proxy.thread.server
    server.drain()
    assert server.drained(10)
    assert refused(proxy.port)


def test_resp_closes_idle_connections_and_finishes_a_command_under_way(make_resp_proxy, r):
    r.set("k", b"v")
    proxy = make_resp_proxy()
    server = proxy.thread.server
    with connect(proxy.port) as idle, connect(proxy.port) as busy:
        idle.sendall(b"PING\r\n")
        assert idle.recv(100) == b"+PONG\r\n"
        busy.sendall(b"*2\r\n$3\r\nGET\r\n")  # half a command
        wait_until(lambda: server.active_connections == 2)

        server.drain()
        assert closed_by_server(idle)  # between commands: closed, as Redis's SHUTDOWN does
        busy.sendall(b"$1\r\nk\r\n")
        assert busy.recv(100) == b"$1\r\nv\r\n"  # the command under way answered, then closed
        assert closed_by_server(busy)
    assert server.drained(10)


def proxy_env(tmp_path, redis_url, upstream, keepalive: str) -> dict[str, str]:
    return {"HTTP_PORT": str(free_port()), "RESP_PORT": "0", "REDIS_URL": redis_url,
            "LOG_FILE": str(tmp_path / "proxy.log"), "UPSTREAM_ALLOW_PRIVATE": "true",
            "UPSTREAM_ALLOWED_PORTS": str(upstream.port), "KEEPALIVE_TIMEOUT": keepalive}


@contextlib.contextmanager
def sigterm_with_a_request_held(tmp_path, redis_url, upstream, target: str,
                                keepalive: str) -> Iterator[tuple[subprocess.Popen, socket.socket]]:
    """A proxy process with one client's request held at the origin, just sent SIGTERM;
    yields (the process, the client's socket), and stops the process if the test did not."""
    env = proxy_env(tmp_path, redis_url, upstream, keepalive=keepalive)
    port = int(env["HTTP_PORT"])
    process = start_proxy(env)
    try:
        wait_until(lambda: b"200" in _health(port), timeout=30)
        with connect(port) as client:
            client.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            wait_until(lambda: upstream.hits["/held"] == 1)
            process.send_signal(signal.SIGTERM)
            yield process, client
    finally:
        if process.poll() is None:
            stop_proxy(process)


def test_sigterm_answers_the_request_in_flight_refuses_new_connections_then_exits(tmp_path, redis_url, upstream, held):
    target, release = held
    with sigterm_with_a_request_held(tmp_path, redis_url, upstream, target, "15") as (process, client):
        port = client.getpeername()[1]
        wait_until(lambda: "draining: no new connections; each open one closes after its next "
                   "answer (at most 15 s)" in (tmp_path / "proxy.log").read_text(), timeout=10)
        # Shutting down, the parent holds the port no longer: a new connection is refused at
        # once while the request in flight is still being answered.
        wait_until(lambda: refused(port), timeout=5)
        release.set()
        status, fields, body = read_reply(client)
        assert (status, body, fields["connection"]) == (b"HTTP/1.1 200 OK", b"held page", "close")
        assert closed_by_server(client)
        assert process.wait(timeout=15) == 0
    assert "still open after the" not in (tmp_path / "proxy.log").read_text()


def test_sigterm_drain_ends_after_keepalive_timeout_with_a_request_still_held(tmp_path, redis_url, upstream, held):
    target, _ = held  # never released while the proxy runs: UPSTREAM_TIMEOUT (10 s) is longer
    with sigterm_with_a_request_held(tmp_path, redis_url, upstream, target, "1") as (process, client):
        assert process.wait(timeout=15) == 0
        assert client.recv(100) == b""  # cut, unanswered, when the process ended
    assert "connections still open after the 1 s drain are closed" in (tmp_path / "proxy.log").read_text()


def _health(port: int) -> bytes:
    try:
        with connect(port) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return sock.recv(100)
    except OSError:
        return b""


# A process whose stop signal lands on a thread other than the main one, once the main thread
# waits in serve(): CPython runs the handler only when the main thread runs again.
SIGNAL_ON_ANOTHER_THREAD = """
import os, signal, sys, threading, time
from proxy.process.serve import serve

main = threading.main_thread().native_id

def main_waits():
    with open(f"/proc/self/task/{main}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0] == "S"

def send_to_self():
    # Polled, bounded: the main thread must be asleep in serve()'s wait before the signal, or
    # the test would not test what it says; past the bound the run fails (exit 3).
    deadline = time.monotonic() + 10
    while not main_waits():
        if time.monotonic() > deadline:
            os._exit(3)
        time.sleep(0.01)  # the poll's interval
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

sys.exit(serve(lambda: [], lambda: None, ready=threading.Thread(target=send_to_self).start))
"""


def test_a_stop_signal_taken_by_another_thread_still_stops_the_process():
    done = subprocess.run([sys.executable, "-c", SIGNAL_ON_ANOTHER_THREAD], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
                          timeout=20)
    assert done.returncode == 0, done.stderr
