"""Plain hits (issue 20): a GET or HEAD with no field the full RFC 9111 evaluation reads is
answered from the reply head kept beside its L1 entry, and those bytes are exactly what the
full evaluation sends for the same request (a stopped clock keeps Age and ttl= put); a request
that carries such a field, and an entry the plain path does not take, go the full way."""

import re
import socket
import time

import pytest

from proxy.cache.local_cache import URL_TIER
from proxy.cache.rules import parse_rules
from proxy.serving.reply import ReplyHead
from proxy.serving.site import Site
from servers import q, request

PAGE = b"<html>" + b"plain hit page " * 300 + b"</html>"  # 4.5 KB of text: compresses


def stopped():
    """A clock stopped at now (the origin's Date is now): Age and ttl= stay put between requests."""
    now = time.time()
    return lambda: now


def one_reply(port: int, head: str) -> bytes:
    """Send one request head, raw; read one reply, raw: its head, then Content-Length bytes of
    body (none for a HEAD or a 304), on a connection left open when the reply keeps it alive."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        reply_head, _, body = data.partition(b"\r\n\r\n")
        framed = re.search(rb"\r\nContent-Length: (\d+)", reply_head)  # a 304 has none
        length = 0 if head.startswith("HEAD ") or framed is None else int(framed.group(1))
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, data
            body += chunk
        return reply_head + b"\r\n\r\n" + body


def both_ways(proxy, head: str, plain: str = "plain_hit") -> tuple[bytes, bytes]:
    """The request answered twice by the plain path (the head kept, then reused) and then by the
    full evaluation (the plain path turned away); the plain path must have taken it each time.
    `plain`: the proxy's method for it (plain_lookup for ?key=)."""
    real = getattr(proxy.proxy, plain)
    taken = []

    def spy(*args, **kwargs):
        hit = real(*args, **kwargs)
        taken.append(hit is not None)
        return hit

    setattr(proxy.proxy, plain, spy)
    try:
        first, fast = one_reply(proxy.port, head), one_reply(proxy.port, head)
        setattr(proxy.proxy, plain, lambda *args, **kwargs: None)
        slow = one_reply(proxy.port, head)
    finally:
        delattr(proxy.proxy, plain)  # the class's again
    assert taken == [True, True]
    assert first == fast
    return fast, slow


@pytest.fixture
def site_proxy(make_proxy, origin):
    def build(**options):
        return make_proxy(origin=origin.url(""), clock=stopped(),
                          server_options={"site": Site(origin.url(""))}, **options)
    return build


PLAIN = {"Content-Type": "text/html", "Cache-Control": "max-age=600", "ETag": '"p1"',
         "Last-Modified": "Tue, 01 Dec 2026 10:00:00 GMT", "X-Frame-Options": "DENY"}
CASES = {
    "plain": ({}, PLAIN, ""),
    # The variant the request's Accept-Language selects (RFC 9111 §4.1), sent upstream as it is.
    "vary": ({}, {**PLAIN, "Vary": "Accept-Language"}, "Accept-Language: fr\r\n"),
    # Stored zstd, given as stored to a client taking zstd (its ETag and Vary say so).
    "compressed": ({"compress_min_bytes": 1024}, PLAIN, "Accept-Encoding: gzip, zstd\r\n"),
    "tags shown": ({"tag_headers_shown": True}, {**PLAIN, "Surrogate-Key": "a b"}, ""),
    # An origin's Cache-Status comes before Age (the proxy's member appended to it), and a
    # field no-cache="f" names is left out of a reuse (RFC 9111 §5.2.2.4).
    "origin cache-status": ({}, {**PLAIN, "Cache-Status": "origin; hit",
                                 "Cache-Control": 'max-age=600, no-cache="x-secret"',
                                 "X-Secret": "s"}, ""),
}
REQUESTS = {
    "GET": "GET {path} HTTP/1.1\r\nHost: site\r\n{fields}\r\n",
    "HEAD": "HEAD {path} HTTP/1.1\r\nHost: site\r\n{fields}\r\n",
    "close": "GET {path} HTTP/1.1\r\nHost: site\r\n{fields}Connection: close\r\n\r\n",
    "HTTP/1.0": "GET {path} HTTP/1.0\r\nHost: site\r\n{fields}Connection: keep-alive\r\n\r\n",
}


@pytest.mark.parametrize("form", sorted(REQUESTS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_plain_hit_through_the_reverse_proxy_is_the_bytes_of_the_full_evaluation(
        site_proxy, origin, case, form):
    options, headers, fields = CASES[case]
    origin.route("/page", lambda h: h.reply(200, PAGE, headers))
    proxy = site_proxy(**options)
    miss = one_reply(proxy.port, REQUESTS["close"].format(path="/page", fields=fields))
    assert b"\r\nX-Cache: MISS\r\n" in miss
    fast, slow = both_ways(proxy, REQUESTS[form].format(path="/page", fields=fields))
    assert fast == slow
    assert fast.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nX-Cache: HIT\r\n" in fast
    assert fast.endswith(b"\r\n\r\n" if form == "HEAD" else (
        b"" if case == "compressed" else PAGE))  # zstd bytes as stored
    assert (b"\r\nContent-Encoding: zstd\r\n" in fast) == (case == "compressed")
    assert (b"\r\nSurrogate-Key: a b\r\n" in fast) == (case == "tags shown")
    assert b"X-Secret" not in fast
    assert origin.hits["GET /page"] == 1


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("target", ["url and key", "url", "key"])
def test_a_plain_hit_of_the_url_role_is_the_bytes_of_the_full_evaluation(upstream, make_proxy,
                                                                          target, compressed):
    url = upstream.serve("/role", PAGE, headers=PLAIN)
    proxy = make_proxy(clock=stopped(), compress_min_bytes=1024 if compressed else 0)
    assert request(proxy.port, q(url, "role")).headers["X-Cache"] == "MISS"
    path = {"url and key": q(url, "role"), "url": q(url), "key": "/?key=role"}[target]
    if target == "url":
        request(proxy.port, path)  # its own entry, stored
    fields = "Accept-Encoding: zstd\r\n" if compressed else ""
    fast, slow = both_ways(proxy, REQUESTS["GET"].format(path=path, fields=fields),
                           "plain_lookup" if target == "key" else "plain_hit")
    assert fast == slow and b"\r\nX-Cache: HIT\r\n" in fast
    assert fast.endswith(b"\r\n\r\n" + PAGE) != compressed
    assert upstream.hits["/role"] == (2 if target == "url" else 1)


def test_plain_hits_take_one_max_parallel_slot(upstream, origin, make_proxy):
    """Inside MAX_PARALLEL once: with one slot, every kind of plain hit is answered."""
    url = upstream.serve("/one", PAGE, headers=PLAIN)
    origin.route("/one", lambda h: h.reply(200, PAGE, PLAIN))
    role = make_proxy(server_options={"max_parallel": 1})
    site = make_proxy(origin=origin.url(""), server_options={"max_parallel": 1,
                                                             "site": Site(origin.url(""))})
    for proxy, path in ((role, q(url, "one")), (role, "/?key=one"), (site, "/one")):
        for _ in range(2):
            answer = request(proxy.port, path, timeout=5)
            assert (answer.status, answer.body) == (200, PAGE)
        assert answer.headers["X-Cache"] == "HIT"


@pytest.mark.parametrize("fields, status", [
    ('If-None-Match: "p1"\r\n', b"304"), ("Range: bytes=0-5\r\n", b"206"),
    ("Cache-Control: max-age=0\r\n", b"200"), ("Pragma: no-cache\r\n", b"200"),
    ("Authorization: Basic dTpw\r\n", b"200")])
def test_a_request_with_a_field_the_evaluation_reads_is_not_a_plain_hit(site_proxy, origin,
                                                                       fields, status):
    origin.route("/page", lambda h: h.reply(200, PAGE, PLAIN))
    proxy = site_proxy()
    one_reply(proxy.port, REQUESTS["close"].format(path="/page", fields=""))
    asked = []
    proxy.proxy.plain_hit = lambda *args, **kwargs: asked.append(args)
    answer = one_reply(proxy.port, REQUESTS["close"].format(path="/page", fields=fields))
    assert answer.startswith(b"HTTP/1.1 " + status) and asked == []


def test_a_plain_hit_on_another_vary_variant_goes_the_full_way(site_proxy, origin):
    origin.route("/page", lambda h: h.reply(200, h.headers["Accept-Language"].encode(),
                                            {**PLAIN, "Vary": "Accept-Language"}))
    proxy = site_proxy()
    for language in ("fr", "de", "fr", "de"):
        answer = one_reply(proxy.port, REQUESTS["close"].format(
            path="/page", fields=f"Accept-Language: {language}\r\n"))
        assert answer.endswith(b"\r\n\r\n" + language.encode())
    assert origin.hits["GET /page"] == 2


def test_a_compressed_entry_for_a_client_not_taking_its_coding_is_decoded_the_full_way(
        site_proxy, origin):
    origin.route("/page", lambda h: h.reply(200, PAGE, PLAIN))
    proxy = site_proxy(compress_min_bytes=1024)
    one_reply(proxy.port, REQUESTS["close"].format(path="/page", fields=""))
    real, taken = proxy.proxy.plain_hit, []
    proxy.proxy.plain_hit = lambda *args: taken.append(real(*args))
    for _ in range(2):
        plain = one_reply(proxy.port, REQUESTS["close"].format(path="/page", fields=""))
        assert plain.endswith(b"\r\n\r\n" + PAGE) and b"Content-Encoding" not in plain
        assert b"\r\nX-Cache: HIT\r\n" in plain
    assert taken == [None, None]  # asked, and declined: the full way decodes it


def test_a_replaced_entry_is_answered_with_its_own_head_never_the_one_kept_before(
        site_proxy, origin):
    versions = iter([b"first", b"second"])
    origin.route("/page", lambda h: h.reply(200, next(versions), {**PLAIN, "ETag": f'"{h.server.hits["/page"]}"'}))
    proxy = site_proxy()
    get = REQUESTS["close"].format(path="/page", fields="")
    one_reply(proxy.port, get)
    hit = one_reply(proxy.port, get)
    assert hit.endswith(b"\r\n\r\nfirst") and b'\r\nEtag: "1"\r\n' in hit
    key = proxy.proxy.parse(origin.url("/page")).redis_key
    _entry, memo = proxy.proxy.local.get_with_memo((URL_TIER, key))
    assert isinstance(memo["identity"], ReplyHead)
    assert request(proxy.port, "/_proxy" + q(origin.url("/page")), method="PURGE").status == 200
    assert one_reply(proxy.port, get).endswith(b"\r\n\r\nsecond")
    again = one_reply(proxy.port, get)
    assert again.endswith(b"\r\n\r\nsecond") and b'\r\nEtag: "2"\r\n' in again
    assert b"\r\nX-Cache: HIT\r\n" in again and origin.hits["/page"] == 2


def test_with_rules_set_only_the_paths_a_rule_matches_leave_the_plain_path(site_proxy, origin):
    """A RULES_FILE rule decides its requests' key and bypass first, so those go the full way
    (fetch); a path no rule matches stays a plain hit, never asking fetch."""
    for path in ("/page", "/ruled/page"):
        origin.route(path, lambda h: h.reply(200, PAGE, PLAIN))
    proxy = site_proxy(rules=parse_rules('[[rule]]\npath = "/ruled/"\nttl = 60\n'))
    for path in ("/page", "/ruled/page"):
        assert request(proxy.port, path).headers["X-Cache"] == "MISS"  # stored, and into L1
    fetched = []
    full = proxy.proxy.fetch
    proxy.proxy.fetch = lambda *args, **kwargs: fetched.append(args[0]) or full(*args, **kwargs)

    answers = [request(proxy.port, path) for path in ("/page", "/ruled/page")]

    assert [(got.body, got.headers["X-Cache"]) for got in answers] == [(PAGE, "HIT")] * 2
    assert fetched == [origin.url("/ruled/page")]  # the plain hit asked nothing of fetch
