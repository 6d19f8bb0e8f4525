"""The origin's wire as the fetcher reads it, against an origin written byte for byte on port 0:
no desync (a response that cannot carry content ends its connection's exchange, bytes left
unread retire the connection), a malformed header section a 502 at once, content codings kept
as sent, a stored body's decoding bounded."""

import socket
import threading
from collections import Counter
from collections.abc import Callable

import pytest

from proxy.serving.auth import Authenticator
from proxy.serving.site import Site
from servers import q, request

VICTIM = b"the victim's own page"
SMUGGLED = (b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nCache-Control: max-age=600\r\n"
            b"Content-Type: text/plain\r\n\r\npayload")


def head(status: str, *fields: str) -> bytes:
    return ("HTTP/1.1 " + status + "\r\n" + "".join(field + "\r\n" for field in fields)
            + "\r\n").encode("latin-1")


def page(body: bytes, *fields: str) -> bytes:
    return head("200 OK", f"Content-Length: {len(body)}", *fields) + body


class RawOrigin:
    """An origin on 127.0.0.1:0 that writes exactly the bytes a route returns, keeps each
    connection open for the next request, and counts connections and requests by path. A
    route may leave `later` bytes that are written on its connection just before the answer
    to the next request on it (so a proxy that reads that connection again reads them first,
    however fast it asks)."""

    def __init__(self, routes: dict[str, Callable[[], tuple[bytes, bytes]]]):
        self.routes = routes
        self.hits: Counter[str] = Counter()
        self.connections = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        later = b""
        try:
            while True:
                line = reader.readline(65537)
                if not line:
                    return
                while reader.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                path = line.split()[1].decode().split("?")[0]
                with self.lock:
                    self.hits[path] += 1
                route = self.routes.get(path, lambda: (page(b"no such page"), b""))
                answer, following = route()
                conn.sendall(later + answer)
                later = following
        except OSError:
            return
        finally:
            conn.close()

    def stop(self) -> None:
        self.listener.close()
        with self.lock:
            for conn in self.open:
                conn.close()


@pytest.fixture
def raw_origin():
    started = []

    def build(routes):
        server = RawOrigin(routes)
        started.append(server)
        return server

    yield build
    for server in started:
        server.stop()


def site_in_front_of(make_proxy, origin: RawOrigin, **options):
    url = origin.url("")
    return make_proxy(origin=url, server_options={"site": Site(url),
                                                  "authenticator": Authenticator(())}, **options)


# ----- item 4: origin desync ---------------------------------------------------------------


@pytest.mark.parametrize("when", ["with the 304", "before the next answer"])
def test_bytes_after_a_304_are_never_read_as_the_next_requests_answer_ten_of_ten(
        make_proxy, raw_origin, when):
    # An origin that sends a body after a 304 (which cannot have one, RFC 9112 §6.3): in the
    # same write, or late, ahead of its answer to the next request on that connection.
    def bad304():
        if when == "with the 304":
            return head("304 Not Modified", "ETag: \"a\"") + SMUGGLED, b""
        return head("304 Not Modified", "ETag: \"a\""), SMUGGLED

    routes = {"/victim": lambda: (page(VICTIM, "Cache-Control: max-age=600"), b"")}
    routes.update({f"/bad304-{i}": bad304 for i in range(10)})
    origin = raw_origin(routes)
    proxy = site_in_front_of(make_proxy, origin, capacity=0)
    for i in range(10):
        assert request(proxy.port, f"/bad304-{i}").status == 304
        got = request(proxy.port, f"/victim?round={i}")
        assert (got.status, got.body, got.headers["X-Cache"]) == (200, VICTIM, "MISS")
        assert origin.hits["/victim"] == i + 1
    assert request(proxy.port, "/victim?round=0").body == VICTIM  # and what was stored is its own


def test_a_204_to_a_passed_through_delete_ends_its_connections_exchange(make_proxy, raw_origin):
    origin = raw_origin({"/empty": lambda: (head("204 No Content"), SMUGGLED),
                         "/victim": lambda: (page(VICTIM, "Cache-Control: max-age=600"), b"")})
    proxy = site_in_front_of(make_proxy, origin, capacity=0)
    assert request(proxy.port, "/empty", method="DELETE").status == 204
    got = request(proxy.port, "/victim")
    assert (got.status, got.body, origin.hits["/victim"]) == (200, VICTIM, 1)
    assert origin.connections == 2


def test_bytes_past_a_content_length_retire_the_connection_instead_of_pooling_it(
        make_proxy, raw_origin):
    origin = raw_origin({"/over": lambda: (page(b"ok", "Cache-Control: max-age=600") + SMUGGLED, b""),
                         "/plain": lambda: (page(b"plain", "Cache-Control: max-age=600"), b""),
                         "/victim": lambda: (page(VICTIM, "Cache-Control: max-age=600"), b"")})
    proxy = site_in_front_of(make_proxy, origin, capacity=0)
    assert request(proxy.port, "/plain").body == b"plain"
    assert request(proxy.port, "/over").body == b"ok"
    assert origin.connections == 1  # a well-framed answer leaves its connection pooled
    got = request(proxy.port, "/victim")
    assert (got.status, got.body, origin.hits["/victim"]) == (200, VICTIM, 1)
    assert origin.connections == 2  # the one with bytes left over was not used again


# ----- item 8: a malformed header section is a 502 at once -----------------------------------


@pytest.mark.parametrize("line", [
    "Bad Name: x",  # a space in the name: the parser stops here, Content-Length after it lost
    "NoColon",
    " folded: x",  # obs-fold (RFC 9112 §5.2): continues Content-Length
    "X-Y : 1",  # whitespace before the colon (RFC 9112 §5.1)
    ": no name",
])
def test_a_malformed_origin_header_line_is_502_at_once_not_504_after_the_timeout(
        make_proxy, raw_origin, r, line):
    origin = raw_origin({"/bad": lambda: (head("200 OK", line, "Content-Length: 2",
                                               "Cache-Control: max-age=600") + b"ok", b"")})
    proxy = make_proxy(timeout=30)
    got = request(proxy.port, q(origin.url("/bad"), "bad"), timeout=10)
    assert got.status == 502
    assert got.json()["error"] == "bad gateway"
    assert "malformed header section from the upstream" in got.json()["detail"]
    assert r.exists("rp:bad") == 0
    assert origin.hits["/bad"] == 1
