"""Hostile and malformed requests (CONTRACT §4, §7): each gets its status and a JSON error,
contacts no upstream, changes nothing in Redis, and leaves the proxy serving."""

import json
import logging
import socket
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from http_server import make_server
from proxy.cache.local_cache import LocalCache
from proxy.serving.auth import Authenticator
from proxy.store.connection import make_client
from proxy.upstream.fetcher import Fetcher
from proxy.upstream.policy import UpstreamPolicy
from redis_proxy import RedisProxy
from servers import ServerThread, q, request

TOKEN = "hostile-test-token-0123456789abcdef"
GOOD_HEADERS = f"Host: proxy\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n"


class Reply:
    """One HTTP response read off a raw socket, and whatever followed it."""

    def __init__(self, raw: bytes):
        self.raw = raw
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        self.status = int(lines[0].split(" ")[1]) if lines[0].startswith("HTTP/1.1 ") else 0
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        length = int(self.headers.get("content-length", "0"))
        self.body, self.after = rest[:length], rest[length:]

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Reply {self.raw[:300]!r}>"


def exchange(port: int, data: bytes, timeout: float = 5.0) -> Reply:
    """Send raw bytes, then read to the server's close; every row asks for Connection: close
    or is refused with it, so this never waits for a timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it read everything: the answer is still in the socket
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return Reply(b"".join(chunks))


def req(target: str | bytes, headers: str = GOOD_HEADERS, method: bytes = b"GET",
        version: bytes = b"HTTP/1.1", tail: bytes = b"") -> bytes:
    target = target.encode("latin-1") if isinstance(target, str) else target
    return method + b" " + target + b" " + version + b"\r\n" + headers.encode("latin-1") + b"\r\n" + tail


def auth_headers(authorization: str | None) -> str:
    line = "" if authorization is None else f"Authorization: {authorization}\r\n"
    return f"Host: proxy\r\n{line}Connection: close\r\n"


EVIL = "http://127.0.0.1:{up}/evil"  # served by the upstream: a request that got through counts


def rows():
    """(id, build(upstream_port) -> request bytes, status, error)."""
    evil = EVIL.format
    deep = "[" * 5000
    many = json.dumps({"a": [1] * 10_000}, separators=(",", ":"))  # 40 KB encoded: fits the line
    wide = json.dumps({f"k{i}": i for i in range(300)})
    return [
        # --- authentication (checked first: these carry otherwise valid requests)
        ("no token", lambda up: req(q(evil(up=up)), auth_headers(None)), 401, "unauthorized"),
        ("wrong token", lambda up: req(q(evil(up=up)), auth_headers("Bearer nope-" + TOKEN)), 401,
         "unauthorized"),
        ("Bearer without token", lambda up: req(q(evil(up=up)), auth_headers("Bearer")), 401,
         "unauthorized"),
        ("Bearer and a space", lambda up: req(q(evil(up=up)), auth_headers("Bearer ")), 401,
         "unauthorized"),
        ("Basic credentials", lambda up: req(q(evil(up=up)), auth_headers("Basic dXNlcjpwYXNz")), 401,
         "unauthorized"),
        ("tab between scheme and token", lambda up: req(q(evil(up=up)), auth_headers(f"Bearer\t{TOKEN}")),
         401, "unauthorized"),
        ("token prefix", lambda up: req(q(evil(up=up)), auth_headers(f"Bearer {TOKEN[:-1]}")), 401,
         "unauthorized"),
        ("token plus a byte", lambda up: req(q(evil(up=up)), auth_headers(f"Bearer {TOKEN}x")), 401,
         "unauthorized"),
        ("token twice in one header", lambda up: req(q(evil(up=up)), auth_headers(f"Bearer {TOKEN},{TOKEN}")),
         401, "unauthorized"),
        ("two Authorization headers", lambda up: req(q(evil(up=up)), GOOD_HEADERS + "Authorization: Bearer x\r\n"),
         401, "unauthorized"),
        ("token in the query, not the header", lambda up: req(q(evil(up=up)) + "&access_token=" + TOKEN,
                                                              auth_headers(None)), 401, "unauthorized"),
        ("unknown route without token", lambda up: req("/admin", auth_headers(None)), 401, "unauthorized"),
        ("purge without token", lambda up: req("/?key=good", auth_headers(None), method=b"DELETE"), 401,
         "unauthorized"),
        # --- request line
        ("garbage request line", lambda up: b"GARBAGE\r\n\r\n", 400, "bad request"),
        ("HTTP/0.9 request", lambda up: b"GET /\r\n\r\n", 400, "bad request"),
        ("unknown version 9.9", lambda up: req("/health", version=b"HTTP/9.9"), 505,
         "http version not supported"),
        ("HTTP/2.0 in text", lambda up: req("/health", version=b"HTTP/2.0"), 505, "http version not supported"),
        ("not HTTP at all", lambda up: req("/health", version=b"FTP/1.1"), 400, "bad request"),
        ("four words", lambda up: b"GET / HTTP/1.1 extra\r\n" + GOOD_HEADERS.encode() + b"\r\n", 400,
         "bad request"),
        ("TLS handshake on the HTTP port", lambda up: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
         400, "bad request"),
        ("raw NUL in target", lambda up: req(b"/?key=a\x00b"), 400, "bad request"),
        ("raw CR in target", lambda up: req(b"/?key=a\rb"), 400, "bad request"),
        ("raw CRLF in target", lambda up: req(b"/?key=a\r\nX-Injected: 1"), 400, "bad request"),
        ("raw 8-bit byte in target", lambda up: req(b"/?key=\xff"), 400, "bad request"),
        ("request line over 64 KiB", lambda up: req("/?key=" + "k" * 70_000), 414, "uri too long"),
        ("absolute-form at the upstream", lambda up: req(f"http://127.0.0.1:{up}/evil"), 404,
         "resource not found"),
        ("asterisk target", lambda up: req("*"), 404, "resource not found"),
        ("OPTIONS *", lambda up: req("*", method=b"OPTIONS"), 405, "method not allowed"),
        ("CONNECT to the upstream", lambda up: req(f"127.0.0.1:{up}", method=b"CONNECT"), 405,
         "method not allowed"),
        ("unknown method", lambda up: req(q(evil(up=up)), method=b"BREW"), 405, "method not allowed"),
        ("TRACE", lambda up: req("/", method=b"TRACE"), 405, "method not allowed"),
        ("POST", lambda up: req(q(evil(up=up)), method=b"POST"), 405, "method not allowed"),
        # --- headers
        ("header line over 8 KiB", lambda up: req("/health", GOOD_HEADERS + "X-Big: " + "b" * 9000 + "\r\n"),
         431, "request headers too large"),
        ("101 headers", lambda up: req("/health", GOOD_HEADERS + "".join(f"X-{i}: v\r\n" for i in range(101))),
         431, "request headers too large"),
        ("headers over 32 KiB in all", lambda up: req("/health", GOOD_HEADERS + "".join(
            f"X-{i}: {'v' * 8000}\r\n" for i in range(5))), 431, "request headers too large"),
        ("no Host in HTTP/1.1", lambda up: req("/health", f"Authorization: Bearer {TOKEN}\r\n"), 400,
         "bad request"),
        ("two Host headers", lambda up: req("/health", GOOD_HEADERS + "Host: other\r\n"), 400, "bad request"),
        ("space before colon", lambda up: req("/health", GOOD_HEADERS + "Transfer-Encoding : chunked\r\n"),
         400, "bad request"),
        ("obs-fold continuation", lambda up: req("/health", GOOD_HEADERS + "X-A: 1\r\n  folded\r\n"), 400,
         "bad request"),
        ("NUL in a header value", lambda up: req("/health", GOOD_HEADERS + "X-A: a\x00b\r\n"), 400,
         "bad request"),
        ("header line without colon", lambda up: req("/health", GOOD_HEADERS + "just words\r\n"), 400,
         "bad request"),
        # --- body framing (request smuggling)
        ("Content-Length not a number", lambda up: req("/health", GOOD_HEADERS + "Content-Length: abc\r\n"),
         400, "bad request"),
        ("negative Content-Length", lambda up: req("/health", GOOD_HEADERS + "Content-Length: -1\r\n"), 400,
         "bad request"),
        ("two different Content-Lengths", lambda up: req("/health", GOOD_HEADERS
                                                         + "Content-Length: 5\r\nContent-Length: 6\r\n"),
         400, "bad request"),
        ("Content-Length and Transfer-Encoding", lambda up: req(
            "/health", GOOD_HEADERS + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", tail=b"0\r\n\r\n"),
         400, "bad request"),
        ("chunked body hiding a second request", lambda up: req(
            "/?key=missing", GOOD_HEADERS.replace("Connection: close\r\n", "") + "Transfer-Encoding: chunked\r\n",
            tail=b"0\r\n\r\n" + req(q(evil(up=up)))), 404, "key not found"),
        # --- query and parameters
        ("bad percent-encoding", lambda up: req("/?key=%zz"), 400, "bad query"),
        ("percent-encoded invalid UTF-8", lambda up: req("/?key=%ff%fe"), 400, "bad query"),
        ("encoded NUL in key", lambda up: req(q(evil(up=up), "a\x00b")), 400, "bad key"),
        ("encoded CRLF in key", lambda up: req(q(evil(up=up), "a\r\nb")), 400, "bad key"),
        ("encoded NUL in url", lambda up: req(q(evil(up=up) + "\x00")), 400, "bad url"),
        ("encoded CRLF in url", lambda up: req(q(evil(up=up) + "\r\nX-Injected: 1")), 400, "bad url"),
        ("key over MAX_KEY_BYTES", lambda up: req(q(evil(up=up), "k" * 1025)), 400, "bad key"),
        ("url over MAX_URL_BYTES", lambda up: req(q(evil(up=up) + "?" + "a" * 8200)), 414, "uri too long"),
        ("duplicate url field", lambda up: req(q(evil(up=up)) + "&url=" + quote(evil(up=up), safe="")), 400,
         "bad query"),
        ("duplicate key field", lambda up: req("/?key=good&key=other"), 400, "bad query"),
        ("unknown query field", lambda up: req(q(evil(up=up)) + "&callback=x"), 400, "bad query"),
        ("url with no host", lambda up: req(q("http:///evil")), 400, "bad url"),
        ("url not http", lambda up: req(q(f"gopher://127.0.0.1:{up}/evil")), 400, "bad url"),
        ("file url", lambda up: req(q("file:///etc/passwd")), 400, "bad url"),
        ("params nested object", lambda up: req(q(evil(up=up), params='{"a": {"b": 1}}')), 400, "bad params"),
        ("params deeply nested", lambda up: req(q(evil(up=up), params=deep)), 400, "bad params"),
        ("params huge", lambda up: req(q(evil(up=up), params=json.dumps({"a": "x" * 9000}))), 400,
         "bad params"),
        ("params with 10k items", lambda up: req(q(evil(up=up), params=many)), 400, "bad params"),
        ("params with 300 fields", lambda up: req(q(evil(up=up), params=wide)), 400, "bad params"),
        ("params a list", lambda up: req(q(evil(up=up), params="[1, 2]")), 400, "bad params"),
        ("params a string", lambda up: req(q(evil(up=up), params='"a=1"')), 400, "bad params"),
        ("params null value", lambda up: req(q(evil(up=up), params='{"a": null}')), 400, "bad params"),
        ("params NaN", lambda up: req(q(evil(up=up), params='{"a": NaN}')), 400, "bad params"),
        ("params infinite number", lambda up: req(q(evil(up=up), params='{"a": 1e999}')), 400, "bad params"),
        ("params not JSON", lambda up: req(q(evil(up=up), params="a=1&b=2")), 400, "bad params"),
        ("get with bad percent-encoding", lambda up: req("/get/%zz"), 400, "bad key"),
        ("get with empty key", lambda up: req("/get/"), 400, "bad key"),
    ]


ROWS = rows()


@pytest.fixture
def guarded(upstream, make_proxy, r):
    """A proxy behind a token, one cached entry (`good`) and one plain Redis key."""
    good_url = upstream.serve("/good", b"good body")
    upstream.serve("/evil", b"must never be fetched")
    proxy = make_proxy(server_options={"authenticator": Authenticator([TOKEN])})
    first = request(proxy.port, q(good_url, "good"), headers={"Authorization": f"Bearer {TOKEN}"})
    assert (first.status, first.headers["X-Cache"]) == (200, "MISS")
    r.set("plain", b"plain value")
    return proxy, good_url


def still_serving(proxy, good_url: str) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    good = request(proxy.port, q(good_url, "good"), headers=bearer)
    assert (good.status, good.body, good.headers["X-Cache"]) == (200, b"good body", "HIT")
    assert request(proxy.port, "/get/plain", headers=bearer).body == b"plain value"
    assert request(proxy.port, "/health").status == 200


def test_there_are_at_least_forty_hostile_rows():
    assert len(ROWS) >= 40 and len({row[0] for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("name,build,status,error", ROWS, ids=[row[0] for row in ROWS])
def test_hostile_request_is_refused_and_changes_nothing(guarded, upstream, r, name, build, status, error):
    proxy, good_url = guarded
    size = r.dbsize()
    reply = exchange(proxy.port, build(upstream.port))
    assert reply.status_line.startswith(f"HTTP/1.1 {status} "), reply
    assert reply.headers["content-type"] == "application/json", reply
    doc = reply.json()
    assert doc["error"] == error and doc["detail"], doc
    if status == 401:
        assert reply.headers["www-authenticate"].startswith('Bearer realm="redis-proxy"')
    if status == 405:
        assert "GET" in reply.headers["allow"]
    assert b"HTTP/1.1" not in reply.after, "a second response: something was smuggled through"
    assert upstream.hits["/evil"] == 0 and upstream.hits["/good"] == 1, upstream.hits
    assert r.dbsize() == size and r.get("plain") == b"plain value"
    still_serving(proxy, good_url)


# ----- the head's limits, at their boundaries (README, Security: each is "at most N") ----------

KIB = 1024


def request_line_of(size: int) -> bytes:
    """A GET of /get/plain whose request line is `size` bytes without its CRLF."""
    fixed = len("GET /get/plain?pad= HTTP/1.1")
    return req("/get/plain?pad=" + "p" * (size - fixed))


def header_line_of(size: int) -> bytes:
    return req("/get/plain", GOOD_HEADERS + "X-Pad: " + "v" * (size - len("X-Pad: ")) + "\r\n")


def header_count_of(count: int) -> bytes:
    good = GOOD_HEADERS.count("\r\n")
    return req("/get/plain", GOOD_HEADERS + "".join(f"X-{i}: v\r\n" for i in range(count - good)))


def header_bytes_of(total: int) -> bytes:
    """Header lines of `total` bytes together, not counting their CRLFs, none over 8 KiB."""
    lines = GOOD_HEADERS.split("\r\n")[:-1]
    remaining = total - sum(map(len, lines))
    while remaining:
        name = f"X-Pad-{len(lines)}: "
        value = min(8000, remaining - len(name))
        lines.append(name + "v" * value)
        remaining -= len(lines[-1])
    assert sum(map(len, lines)) == total and max(map(len, lines)) <= 8 * KIB and len(lines) < 100
    return req("/get/plain", "".join(line + "\r\n" for line in lines))


HEAD_LIMITS = [
    ("request line", request_line_of, 64 * KIB, 414, "uri too long"),
    ("header line", header_line_of, 8 * KIB, 431, "request headers too large"),
    ("header count", header_count_of, 100, 431, "request headers too large"),
    ("header bytes", header_bytes_of, 32 * KIB, 431, "request headers too large"),
]


@pytest.mark.parametrize("name,build,limit,status,error", HEAD_LIMITS, ids=[row[0] for row in HEAD_LIMITS])
def test_a_head_limit_admits_exactly_n_and_refuses_n_plus_one(guarded, r, name, build, limit, status, error):
    proxy, good_url = guarded
    at_limit = exchange(proxy.port, build(limit))
    assert (at_limit.status, at_limit.body) == (200, b"plain value"), at_limit
    over = exchange(proxy.port, build(limit + 1))
    assert over.status == status and over.json()["error"] == error, over
    assert over.headers["connection"] == "close"
    still_serving(proxy, good_url)


def test_the_line_limits_do_not_count_a_bare_lf_ending_either(guarded):
    proxy, _ = guarded
    line = request_line_of(64 * KIB).replace(b"\r\n", b"\n")
    assert exchange(proxy.port, line).status == 200


SSRF_TARGETS = ["http://127.0.0.1:{port}/evil", "http://localhost:{port}/evil", "http://[::1]:{port}/evil",
                "http://2130706433:{port}/evil", "http://127.1:{port}/evil", "http://0x7f000001:{port}/evil",
                "http://0.0.0.0:{port}/evil", "http://[::ffff:127.0.0.1]:{port}/evil"]


@pytest.mark.parametrize("target", SSRF_TARGETS)
def test_urls_at_this_machine_are_refused_by_the_strict_policy(upstream, make_proxy, r, target):
    upstream.serve("/evil", b"internal")
    proxy = make_proxy(allow_private=False)
    got = request(proxy.port, q(target.format(port=upstream.port), "ssrf"))
    assert got.status == 403, got
    assert got.headers["Content-Type"] == "application/json"
    assert got.json()["error"] == "url refused" and got.json()["detail"]
    assert sum(upstream.hits.values()) == 0 and r.dbsize() == 0
    assert request(proxy.port, "/health").status == 200


# ----- property-based: arbitrary bytes at the HTTP request path ----------------------------------

@pytest.fixture(scope="module")
def fuzz_target(redis_server):
    """A proxy for the fuzzer: fetches only from the literal host 127.0.0.1 (so no generated
    URL can send traffic off this machine), short header deadline."""
    policy = UpstreamPolicy(allowed_hosts=("127.0.0.1",), allow_private=True,
                            allowed_ports=tuple(range(1, 65536)))
    client = make_client(redis_server.url)
    proxy = RedisProxy(client, Fetcher(timeout=1.0, max_bytes=1 << 16, policy=policy),
                       LocalCache(capacity=64, ttl=60), ttl=60)
    server = make_server("127.0.0.1", 0, proxy, header_timeout=1.0, keepalive_timeout=1.0,
                         max_clients=64, authenticator=Authenticator([TOKEN]))
    thread = ServerThread(server).start()
    yield thread
    thread.stop()
    proxy.close()


def _send(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # end of input: the server must not wait for more
        except OSError:
            pass
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
    return b"".join(chunks)


_pieces = st.sampled_from([
    b"GET ", b"HEAD ", b"DELETE ", b"POST ", b"/", b"/?url=", b"/?key=", b"/get/", b"/health", b"&key=",
    b"&params=", b"%", b"%0", b"%00", b"%zz", b"%0d%0a", b"http%3A%2F%2F127.0.0.1%3A1%2F", b"%7B%22a%22%3A",
    b" HTTP/1.1", b" HTTP/1.0", b" HTTP/0.9", b"\r\n", b"\n", b"\r", b"\x00", b"Host: x\r\n",
    b"Authorization: Bearer " + TOKEN.encode() + b"\r\n", b"Authorization: Bearer\r\n",
    b"Content-Length: 3\r\n", b"Content-Length: -1\r\n", b"Transfer-Encoding: chunked\r\n",
    b"X-Forwarded-For: 1.2.3.4, ::1\r\n", b": \r\n", b" \t", b"\xff\xfe", b"\r\n\r\n",
])
hostile_bytes = st.one_of(
    st.binary(max_size=2048),
    st.lists(st.one_of(_pieces, st.binary(max_size=16)), max_size=40).map(b"".join),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=hostile_bytes)
def test_arbitrary_bytes_never_break_the_server(fuzz_target, caplog, data):
    caplog.set_level(logging.WARNING)
    reply = _send(fuzz_target.port, data)
    # Whatever came back is either nothing (the client went quiet or away) or real HTTP/1.1.
    assert reply == b"" or reply.startswith(b"HTTP/1.1 "), reply[:200]
    assert not reply.startswith(b"HTTP/1.1 500"), reply[:300]
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert not errors, errors[0].getMessage()
    assert request(fuzz_target.port, "/health").status == 200


def test_absolute_form_is_accepted_as_its_path_only(guarded, upstream):
    """RFC 9112 §3.2.2: a server MUST accept the absolute-form; the authority is ignored, so the
    proxy never becomes a forward proxy for it."""
    proxy, _ = guarded
    health = exchange(proxy.port, req("http://anything.invalid/health"))
    assert (health.status, health.json()) == (200, {"status": "ok", "redis": "ok", "l1_invalidation": "tracking"})
    got = exchange(proxy.port, req("HTTP://anything.invalid?key=good"))
    assert (got.status, got.body) == (200, b"good body")
    assert upstream.hits["/good"] == 1
