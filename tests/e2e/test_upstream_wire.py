"""The origin's wire as the fetcher reads it, against an origin written byte for byte on port 0:
no desync (a response that cannot carry content ends its connection's exchange, bytes left
unread retire the connection), a malformed header section a 502 at once, content codings kept
as sent, a stored body's decoding bounded."""

import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable

import pytest

from proxy.cache import compression
from proxy.cache import entry as cache_entry
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


# ----- item 5: content codings the proxy does not decode --------------------------------------


CODED = bytes(range(256)) * 8  # opaque: the proxy cannot (and must not) read it


@pytest.mark.parametrize("coding", ["br", "x-custom", "gzip, br"])
def test_a_coding_the_proxy_does_not_decode_is_stored_and_served_with_its_content_encoding(
        upstream, make_proxy, r, coding):
    url = upstream.serve("/coded", CODED, headers={"Content-Type": "text/html",
                                                   "Content-Encoding": coding,
                                                   "Cache-Control": "max-age=600"})
    proxy = make_proxy(compress_min_bytes=1024)
    answers = [request(proxy.port, q(url, "coded"), headers=headers)
               for headers in ({}, {}, {"Accept-Encoding": "gzip"}, {"Accept-Encoding": "br"})]
    assert [(got.status, got.body, got.headers["Content-Encoding"], got.headers["X-Cache"])
            for got in answers] == [(200, CODED, coding, "MISS")] + [(200, CODED, coding, "HIT")] * 3
    assert all("Vary" not in got.headers for got in answers)  # the same answer for every client
    entry = cache_entry.decode(r.get("rp:coded"))
    assert (entry.coding, entry.body, entry.headers["content-encoding"]) == ("", CODED, coding)
    assert upstream.hits["/coded"] == 1


def test_a_304_keeps_the_stored_content_encoding_whatever_it_carries(upstream, make_proxy, r):
    def route(handler):
        if upstream.hits["/reval"] == 1:
            handler.reply(200, CODED, {"Content-Encoding": "br", "ETag": '"v1"',
                                       "Cache-Control": "max-age=10"})
        else:
            handler.reply(304, b"", {"ETag": '"v1"', "Cache-Control": "max-age=100",
                                     "Content-Encoding": "gzip"})

    url = upstream.route("/reval", route)
    now = [time.time()]
    proxy = make_proxy(clock=lambda: now[0], stale_ttl=300)
    request(proxy.port, q(url, "reval"))
    now[0] += 20
    got = request(proxy.port, q(url, "reval"))
    assert (got.status, got.body, got.headers["Content-Encoding"]) == (200, CODED, "br")
    assert "fwd-status=304" in got.headers["Cache-Status"]
    assert cache_entry.decode(r.get("rp:reval")).headers["content-encoding"] == "br"
    assert upstream.hits["/reval"] == 2


def test_a_relayed_answer_in_a_coding_the_proxy_does_not_decode_keeps_its_content_encoding(
        make_proxy, origin):
    origin.route("/br", lambda h: h.reply_fields(200, CODED, [("Content-Encoding", "br")]))
    url = origin.url("")
    proxy = make_proxy(origin=url, server_options={"site": Site(url),
                                                   "authenticator": Authenticator(())})
    got = request(proxy.port, "/br", method="POST")
    assert (got.status, got.body, got.headers["Content-Encoding"]) == (200, CODED, "br")


# ----- item 8: decoding is bounded by UPSTREAM_MAX_BYTES -------------------------------------

CAP = 64 * 1024


def stored_coded(proxy, r, url: str, key: str, decoded_size: int, coding: str) -> bytes:
    """An entry for `url` under `key` whose body is `decoded_size` zero bytes in `coding`, as
    anyone who can write to Redis can write it."""
    canonical = proxy.proxy.parse(url).canonical
    body = compression.encode(b"\0" * decoded_size, coding)
    r.set(f"rp:{key}", cache_entry.encode(cache_entry.Entry(
        status=200, body=body, url=canonical, fetched_at=time.time(), fresh_for=600,
        headers={"content-type": "text/plain"}, via=((canonical, "127.0.0.1"),), coding=coding)))
    return body


@pytest.mark.parametrize("coding", ["zstd", "gzip"])
def test_a_stored_body_decoding_past_upstream_max_bytes_is_a_502_and_served_coded_to_who_takes_it(
        upstream, make_proxy, r, coding):
    url = upstream.serve("/bomb", b"never fetched")
    proxy = make_proxy(max_bytes=CAP)
    stored_coded(proxy, r, url, "edge", CAP, coding)
    assert request(proxy.port, q(url, "edge")).body == b"\0" * CAP  # the cap itself decodes
    coded = stored_coded(proxy, r, url, "bomb", CAP + 1, coding)
    got = request(proxy.port, q(url, "bomb"))
    assert (got.status, got.json()["error"]) == (502, "bad gateway")
    assert got.json()["detail"] == (f"the stored entry decodes to more than {CAP} bytes, more than "
                                    f"UPSTREAM_MAX_BYTES: purge it, or ask with Accept-Encoding: {coding}")
    taken = request(proxy.port, q(url, "bomb"), headers={"Accept-Encoding": coding})
    assert (taken.status, taken.body, taken.headers["Content-Encoding"]) == (200, coded, coding)
    assert upstream.hits["/bomb"] == 0
    assert request(proxy.port, "/health").status == 200


@pytest.mark.parametrize("coding", ["gzip", "deflate", "zstd"])
def test_an_upstream_body_decoding_past_upstream_max_bytes_is_413_and_not_stored(
        upstream, make_proxy, r, coding):
    def coded(size: int) -> bytes:
        plain = b"\0" * size
        return zlib.compress(plain) if coding == "deflate" else compression.encode(plain, coding)

    fits = upstream.serve("/fits", coded(CAP), headers={"Content-Encoding": coding})
    over = upstream.serve("/over", coded(CAP + 1), headers={"Content-Encoding": coding})
    proxy = make_proxy(max_bytes=CAP)
    got = request(proxy.port, q(fits, "fits"))
    assert (got.status, got.body, got.headers["Content-Encoding"]) == (200, b"\0" * CAP, None)
    got = request(proxy.port, q(over, "over"))
    assert (got.status, got.json()["error"]) == (413, "upstream body too large")
    assert r.exists("rp:over") == 0
