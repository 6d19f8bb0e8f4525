"""The URL role's hit path reads only what decides an answer (issue 10): a request with no
field the cache reads is answered as the plain request, a query is read once per distinct
query, and a response's no-cache="f" is looked for in every field and case that can carry it."""

import re
import time

from proxy.serving.query import parse_query
from servers import q, raw_exchange, request


def stopped():
    """A clock stopped at now (the origin's Date is now): Age and ttl= stay put between requests."""
    now = time.time()
    return lambda: now


def exchange(port: int, target: str, fields: str = "") -> bytes:
    """One GET on its own connection, raw; the Date line (the proxy's clock) left out."""
    raw = raw_exchange(port, f"GET {target} HTTP/1.1\r\nHost: p\r\n{fields}Connection: close\r\n\r\n"
                       .encode())
    return re.sub(rb"\r\nDate: [^\r]*", b"", raw)


def test_a_hit_is_the_same_bytes_whatever_the_fields_the_cache_does_not_read(upstream, make_proxy):
    url = upstream.serve("/same", b"same body", headers={"Cache-Control": "max-age=60",
                                                         "ETag": '"v1"'})
    proxy = make_proxy(clock=stopped())
    assert request(proxy.port, q(url, "same")).headers["X-Cache"] == "MISS"
    for target in (q(url, "same"), "/?key=same"):
        bare = exchange(proxy.port, target)
        assert bare.startswith(b"HTTP/1.1 200 OK\r\n") and bare.endswith(b"\r\n\r\nsame body")
        assert b"\r\nX-Cache: HIT\r\n" in bare and b"\r\nEtag: \"v1\"\r\n" in bare
        assert exchange(proxy.port, target, "User-Agent: wrk\r\nAccept: */*\r\nX-Other: 1\r\n"
                        "Accept-Language: de\r\nCookie: a=b\r\n") == bare
    assert upstream.hits["/same"] == 1


def test_the_fields_the_cache_reads_count_in_any_case(upstream, make_proxy):
    url = upstream.serve("/read", b"0123456789", headers={"Cache-Control": "max-age=60",
                                                          "ETag": '"v1"'})
    proxy = make_proxy(clock=stopped())
    request(proxy.port, q(url, "read"))
    head = exchange(proxy.port, q(url, "read"), 'IF-NONE-MATCH: "v1"\r\n')
    assert head.startswith(b"HTTP/1.1 304 Not Modified\r\n") and head.endswith(b"\r\n\r\n")
    ranged = exchange(proxy.port, q(url, "read"), "range: bytes=2-4\r\n")
    assert ranged.startswith(b"HTTP/1.1 206 Partial Content\r\n") and ranged.endswith(b"\r\n\r\n234")
    assert b"\r\nContent-Range: bytes 2-4/10\r\n" in ranged
    assert upstream.hits["/read"] == 1
    forwarded = exchange(proxy.port, q(url, "read"), "CACHE-CONTROL: no-cache\r\n")
    assert forwarded.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nX-Cache: MISS\r\n" in forwarded
    assert upstream.hits["/read"] == 2
    pragma = exchange(proxy.port, q(url, "read"), "Pragma: No-Cache\r\n")
    assert b"\r\nX-Cache: MISS\r\n" in pragma and upstream.hits["/read"] == 3


def test_a_no_cache_field_list_is_found_in_any_case_and_in_a_targeted_field(upstream, make_proxy):
    shown = {"Cache-Control": 'max-age=60, NO-CACHE="X-Secret"', "X-Secret": "s", "X-Kept": "k"}
    targeted = {"Cache-Control": "max-age=60", "CDN-Cache-Control": 'max-age=60, no-cache="x-secret"',
                "X-Secret": "s", "X-Kept": "k"}
    proxy = make_proxy(clock=stopped())
    for path, headers in (("/upper", shown), ("/targeted", targeted)):
        url = upstream.serve(path, b"body", headers=headers)
        miss = request(proxy.port, q(url, path))
        assert (miss.headers["X-Cache"], miss.headers["X-Secret"]) == ("MISS", "s")
        for target in (q(url, path), f"/?key={path}"):
            hit = request(proxy.port, target)
            assert hit.headers["X-Cache"] == "HIT", target
            assert (hit.headers.get("X-Secret"), hit.headers["X-Kept"]) == (None, "k"), target
        assert upstream.hits[path] == 1


def test_a_bad_query_is_refused_each_time_it_is_asked(make_proxy):
    proxy = make_proxy()
    for target, error in (("/?key=a&key=b", "bad query"), ("/?key=%zz", "bad query"),
                          ("/?key=a&colour=red", "bad query"), ("/?key=%01", "bad key")):
        for _ in range(2):
            got = request(proxy.port, target)
            assert (got.status, got.json()["error"]) == (400, error), target


def test_a_remembered_query_is_the_callers_own_copy():
    fields = parse_query(b"url=http%3A%2F%2Fh%2F&key=k")
    assert fields == {"url": "http://h/", "key": "k"}
    fields["key"] = "changed"
    del fields["url"]
    assert parse_query(b"url=http%3A%2F%2Fh%2F&key=k") == {"url": "http://h/", "key": "k"}
    long = b"key=" + b"k" * 4096  # past the remembered size: read each time, the same way
    assert parse_query(long) == {"key": "k" * 4096}
