"""Slow clients (CONTRACT §7): header deadline, keep-alive idle close, the client limit."""

import select
import socket
import threading
import time

from servers import request, wait_until

REQUEST = b"GET /health HTTP/1.1\r\nHost: proxy\r\nX-Padding: " + b"p" * 40 + b"\r\n\r\n"


class Trickler(threading.Thread):
    """A slowloris connection: one byte of headers every `gap` seconds until the server ends it."""

    def __init__(self, port: int, gap: float = 0.2):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.gap = gap
        self.reply = b""
        self.ended_at = 0.0

    def run(self) -> None:
        try:
            for i in range(len(REQUEST)):
                # Whatever the server said first (a 503, or its close) is read before sending on.
                if select.select([self.sock], [], [], self.gap if i else 0)[0]:
                    self.reply = self.sock.recv(4096)
                    break
                self.sock.sendall(REQUEST[i:i + 1])
        except OSError:
            pass  # reset by the server: it gave up on us, which is the point
        finally:
            self.ended_at = time.monotonic()
            self.sock.close()


def healthy(port: int) -> bool:
    try:
        return request(port, "/health", timeout=2).status == 200
    except OSError:
        return False


def test_slowloris_holds_slots_at_most_header_timeout(make_proxy):
    proxy = make_proxy(server_options={"max_clients": 4, "header_timeout": 1.0})
    server = proxy.thread.server
    clients = []
    for _ in range(8):
        clients.append(Trickler(proxy.port))
        # Accepted in this order: wait until the server has counted this one, so the first four
        # are the ones holding slots (bounded poll, not a sleep).
        wait_until(lambda: server.active_connections + server.rejected_connections == len(clients), timeout=5)
    for client in clients:
        client.start()
    for client in clients:
        client.join(timeout=10)
    assert not any(client.is_alive() for client in clients)
    held, excess = clients[:4], clients[4:]
    for client in excess:
        assert client.reply.startswith(b"HTTP/1.1 503 "), client.reply
        assert b"Retry-After: 1" in client.reply and b'"too many clients"' in client.reply
    for client in held:
        assert client.reply == b"", client.reply  # closed at the deadline, headers unfinished
    # The excess ones were turned away while the slots were still held, not queued behind them.
    assert max(c.ended_at for c in excess) < min(c.ended_at for c in held)
    assert server.rejected_connections == 4
    # With the slow ones gone, a normal client is served.
    wait_until(lambda: healthy(proxy.port), timeout=5)
    wait_until(lambda: server.active_connections == 0, timeout=5)


def test_a_silent_connection_is_closed_at_the_header_deadline(make_proxy):
    proxy = make_proxy(server_options={"header_timeout": 0.3})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        assert sock.recv(1024) == b""  # the server closed it; nothing was sent
    assert healthy(proxy.port)


def test_an_idle_kept_alive_connection_is_closed_after_keepalive_timeout(make_proxy):
    proxy = make_proxy(server_options={"keepalive_timeout": 0.3, "header_timeout": 5.0})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(REQUEST)
        reply = b""
        while b'"redis": "ok"' not in reply:
            reply += sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in reply
        assert sock.recv(1024) == b""  # then closed for idling, well before the socket timeout


def test_a_second_request_must_also_arrive_within_the_header_deadline(make_proxy):
    proxy = make_proxy(server_options={"keepalive_timeout": 5.0, "header_timeout": 0.5})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(REQUEST)
        reply = b""
        while b'"redis": "ok"' not in reply:
            reply += sock.recv(4096)
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # begun, then never finished
        assert sock.recv(1024) == b""
