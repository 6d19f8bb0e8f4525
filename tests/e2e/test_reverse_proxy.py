"""Reverse-proxy mode (ORIGIN_URL): routing, forwarding, pass-through of unsafe methods and the
invalidation they cause (RFC 9111 §4.4), against a real origin, Redis and proxy."""

import email.utils
import gzip
import http.client
import json
import subprocess
import threading
import time

import pytest
import requests

from load_env import load_settings
from proxy import __version__
from proxy.cache.freshness import Policy
from proxy.cache.keys import canonical_url, url_digest
from proxy.errors import ConfigError
from proxy.serving.auth import Authenticator
from proxy.serving.rate_limit import RateLimiter
from proxy.serving.site import Site
from proxy.store.launcher import free_port
from proxy.upstream.policy import UpstreamPolicy
from servers import q, raw_exchange, request, start_proxy, stop_proxy, wait_until

TOKEN = "proxy-token-0123456789abcdef"


@pytest.fixture
def site_proxy(make_proxy, origin):
    """A proxy in front of `origin` (ORIGIN_URL = the origin's root unless `base` is given)."""
    def build(base: str = "", *, max_body_bytes: int = 1024 * 1024, tokens: tuple[str, ...] = (),
              header_timeout: float = 10.0, server_options_extra: dict | None = None,
              public_host: str = "", trusted_proxies: tuple[str, ...] = (), **options):
        origin_url = origin.url(base)
        site = Site(origin_url, max_body_bytes=max_body_bytes, public_host=public_host,
                    trusted_proxies=trusted_proxies)
        return make_proxy(origin=origin_url, server_options={
            "site": site, "authenticator": Authenticator(tokens), "header_timeout": header_timeout,
            **(server_options_extra or {})}, **options)
    return build


def raw(port: int, method: str, path: str, headers: dict[str, str] | None = None,
        body: bytes | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request with exactly these headers (http.client adds Host and, with a body,
    Content-Length); the status, every header line in order, the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


def header(fields: list[tuple[str, str]], name: str) -> list[str]:
    return [value for field, value in fields if field.lower() == name.lower()]


def redis_key_of(url: str) -> str:
    return "rp:" + url_digest(canonical_url(url))


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "10", *args],
                          capture_output=True, timeout=20)


# ----- GET and HEAD: cached under the origin's URL -------------------------------------------


def test_get_of_a_site_path_is_fetched_once_and_stored_under_the_origin_url(site_proxy, origin, r):
    url = origin.route("/page", lambda h: h.reply(200, b"\x00site page\xff",
                                                  {"Content-Type": "text/html"}))
    proxy = site_proxy()
    session = requests.Session()
    first = session.get(f"http://127.0.0.1:{proxy.port}/page?b=2&a=1")
    second = session.get(f"http://127.0.0.1:{proxy.port}/page?a=1&b=2")
    assert (first.status_code, first.content, first.headers["X-Cache"]) == (200, b"\x00site page\xff", "MISS")
    assert (second.status_code, second.content, second.headers["X-Cache"]) == (200, b"\x00site page\xff", "HIT")
    assert first.headers["Content-Type"] == "text/html"
    assert origin.hits["GET /page"] == 1
    assert [seen.target for seen in origin.seen] == ["/page?b=2&a=1"]
    assert 3590 < r.ttl(redis_key_of(url + "?a=1&b=2")) <= 3600


def test_curl_gets_the_site_through_the_cache(site_proxy, origin):
    origin.serve("/curl", b"for curl", headers={"Content-Type": "text/plain; charset=utf-8"})
    proxy = site_proxy()
    misses = curl("-i", f"http://127.0.0.1:{proxy.port}/curl")
    hits = curl("-i", f"http://127.0.0.1:{proxy.port}/curl")
    assert misses.returncode == 0 and hits.returncode == 0
    head, _, body = misses.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b"for curl"
    assert b"\r\nX-Cache: MISS" in head and b"\r\nX-Cache: HIT" in hits.stdout
    assert hits.stdout.endswith(b"\r\n\r\nfor curl")
    assert origin.hits["GET /curl"] == 1


def test_head_of_a_site_path_answers_headers_only_from_a_get_to_the_origin(site_proxy, origin):
    origin.serve("/h", b"twelve bytes")
    proxy = site_proxy()
    status, fields, body = raw(proxy.port, "HEAD", "/h")
    assert (status, body, header(fields, "Content-Length")) == (200, b"", ["12"])
    assert [seen.method for seen in origin.seen] == ["GET"]


def _cold_gets_from_twenty_clients(proxy, origin, path: str, origin_headers: dict[str, str]):
    """20 concurrent GETs of `path`, each from a client behind its own X-Forwarded-For, with the
    origin held until all 20 have reached the proxy's miss path; (status, body, X-Cache) each."""
    gate = threading.Event()

    def held(handler):
        gate.wait(10)
        handler.reply(200, b"one page for all", {"Content-Type": "text/plain", **origin_headers})

    origin.route(path, held)
    answers: list = []
    lock = threading.Lock()

    def one(n: int) -> None:
        got = request(proxy.port, path, headers={"X-Forwarded-For": f"198.51.100.{n}"}, timeout=20)
        with lock:
            answers.append((got.status, got.body))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: proxy.proxy.stats["misses"] == 20, timeout=10)
    finally:
        gate.set()
        for thread in threads:
            thread.join(20)
    return answers


def test_cold_gets_from_clients_behind_different_forwarded_for_make_one_origin_fetch(site_proxy, origin):
    # The clients are behind a trusted proxy (on loopback), whose X-Forwarded-For is kept.
    proxy = site_proxy(server_options_extra={"max_parallel": 64}, trusted_proxies=("127.0.0.1",))
    answers = _cold_gets_from_twenty_clients(proxy, origin, "/popular", {"Cache-Control": "max-age=60"})
    assert answers == [(200, b"one page for all")] * 20
    assert origin.hits["GET /popular"] == 1
    # Shared in this process's single flight: none polled Redis's fetch lock, which is there for
    # other processes (redis_proxy_coalesced_waits_total).
    assert proxy.proxy.stats["coalesced_waits"] == 0
    # The one fetch carried one client's chain, the peer appended: no client's is another's.
    [seen] = origin.seen
    [chain] = seen.header("X-Forwarded-For")
    assert chain in {f"198.51.100.{n}, 127.0.0.1" for n in range(20)}


def test_cold_gets_of_a_page_stating_no_freshness_share_one_fetch_across_forwarded_for(site_proxy,
                                                                                      origin):
    """Under DEFAULT_FRESHNESS=rfc (the default with ORIGIN_URL) a page stating no freshness is
    stored stale, so only the in-process single flight can spare the origin the other 19."""
    proxy = site_proxy(server_options_extra={"max_parallel": 64},
                       policy=Policy(ttl=3600.0, default_freshness="rfc"))
    answers = _cold_gets_from_twenty_clients(proxy, origin, "/dynamic", {"ETag": '"d1"'})
    assert answers == [(200, b"one page for all")] * 20
    assert origin.hits["GET /dynamic"] == 1


def test_redirect_from_the_origin_is_relayed_not_followed(site_proxy, origin):
    origin.serve("/old", b"", status=301, headers={"Location": "/new"})
    origin.serve("/new", b"new page")
    proxy = site_proxy()
    status, fields, _ = raw(proxy.port, "GET", "/old")
    assert (status, header(fields, "Location")) == (301, ["/new"])
    assert origin.hits["/new"] == 0


def test_dot_segments_cannot_leave_the_origin_base_path(site_proxy, origin):
    origin.serve("/base/secret", b"inside the base")
    origin.serve("/secret", b"outside the base")
    proxy = site_proxy("/base")
    status, _, body = raw(proxy.port, "GET", "/x/../../secret")
    assert (status, body) == (200, b"inside the base")
    assert [seen.target for seen in origin.seen] == ["/base/secret"]


# ----- what is forwarded -----------------------------------------------------------------------


def test_forwarded_headers_are_the_end_to_end_ones_plus_host_and_x_forwarded(site_proxy, origin):
    origin.serve("/f", b"ok")
    proxy = site_proxy()
    status, _, _ = raw(proxy.port, "GET", "/f", {
        "Host": "www.example.com", "User-Agent": "client/1", "Accept": "text/html",
        "Accept-Language": "fr", "Cookie": "a=1", "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "https", "X-Forwarded-Host": "spoofed.example",
        "Connection": "keep-alive, X-Hop", "X-Hop": "not forwarded", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Upgrade": "websocket", "Proxy-Authorization": "Basic c2VjcmV0",
        "Accept-Encoding": "gzip", "X-Custom": "kept"})
    assert status == 200
    (seen,) = origin.seen
    assert {name.lower(): value for name, value in seen.fields} == {
        "host": f"127.0.0.1:{origin.port}",
        "user-agent": "client/1",
        "accept": "text/html",
        "accept-language": "fr",
        "cookie": "a=1",
        "x-custom": "kept",
        "x-forwarded-for": "127.0.0.1",  # the peer is no trusted proxy: its chain is its word
        "x-forwarded-proto": "http",
        "x-forwarded-host": f"127.0.0.1:{origin.port}",  # no PUBLIC_HOST: the origin's host
        "accept-encoding": "identity",  # the fetcher's: what is stored must suit every client
        "connection": "keep-alive",  # the proxy's own connection to the origin
    }
    assert len(seen.fields) == 11  # each once


def _echo_forwarding(handler):
    """An origin page built from what the request says about the client, as frameworks do."""
    names = ("X-Forwarded-Host", "X-Forwarded-For", "X-Forwarded-Proto", "X-Original-URL")
    handler.reply(200, b"; ".join(f"{name}={handler.headers.get(name)}".encode() for name in names),
                  {"Content-Type": "text/plain"})


def test_the_clients_host_is_never_forwarded_so_it_cannot_poison_the_cache(site_proxy, origin):
    origin.route("/p", _echo_forwarding)
    proxy = site_proxy(public_host="www.example.com")
    poisoned = raw(proxy.port, "GET", "/p", {"Host": "evil.example"})
    plain = raw(proxy.port, "GET", "/p")
    expected = (b"X-Forwarded-Host=www.example.com; X-Forwarded-For=127.0.0.1; "
                b"X-Forwarded-Proto=http; X-Original-URL=None")
    assert (poisoned[0], poisoned[2], header(poisoned[1], "X-Cache")) == (200, expected, ["MISS"])
    assert (plain[0], plain[2], header(plain[1], "X-Cache")) == (200, expected, ["HIT"])
    assert origin.hits["GET /p"] == 1
    (seen,) = origin.seen
    assert seen.header("Host") == [f"127.0.0.1:{origin.port}"]


def test_without_public_host_the_origins_own_host_is_the_forwarded_host(site_proxy, origin):
    origin.route("/p", _echo_forwarding)
    proxy = site_proxy()
    got = raw(proxy.port, "GET", "/p", {"Host": "evil.example"})
    assert got[2].startswith(f"X-Forwarded-Host=127.0.0.1:{origin.port}; ".encode())


SPOOFED = {"Forwarded": "for=1.2.3.4;host=evil.example;proto=https",
           "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Host": "evil.example",
           "X-Forwarded-Proto": "https", "X-Forwarded-Port": "8443", "X-Forwarded-Scheme": "https",
           "X-Forwarded-Prefix": "/evil", "X-Forwarded-Server": "evil.example",
           "X-Real-IP": "10.0.0.1", "X-Original-URL": "/admin/secret",
           "X-Rewrite-URL": "/admin/secret", "X-HTTP-Method-Override": "DELETE",
           "X-HTTP-Method": "DELETE", "X-Method-Override": "DELETE", "X-Host": "evil.example",
           "X-Original-Host": "evil.example", "True-Client-IP": "10.0.0.1", "X-Client-IP": "10.0.0.1"}


def test_forwarding_and_override_fields_from_an_untrusted_client_never_reach_the_origin(site_proxy, origin):
    origin.route("/p", _echo_forwarding)
    proxy = site_proxy()
    spoofed = raw(proxy.port, "GET", "/p", SPOOFED)
    plain = raw(proxy.port, "GET", "/p")
    expected = (f"X-Forwarded-Host=127.0.0.1:{origin.port}; X-Forwarded-For=127.0.0.1; "
                "X-Forwarded-Proto=http; X-Original-URL=None").encode()
    assert (spoofed[2], plain[2], header(plain[1], "X-Cache")) == (expected, expected, ["HIT"])
    (seen,) = origin.seen
    sent = {name.lower() for name, _ in seen.fields}
    assert sent == {"host", "accept-encoding", "connection", "user-agent", "accept",  # the fetcher's
                    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
    # Passed through (not cached), the same fields are dropped.
    assert raw(proxy.port, "POST", "/p", SPOOFED, b"x")[0] == 200
    assert {name.lower() for name, _ in origin.seen[-1].fields} == sent | {"content-length"}


def test_a_trusted_proxys_forwarding_fields_pass_and_its_chain_is_appended_to(site_proxy, origin):
    origin.route("/p", _echo_forwarding)
    proxy = site_proxy(public_host="www.example.com", trusted_proxies=("127.0.0.0/8",))
    got = raw(proxy.port, "GET", "/p", SPOOFED)
    assert got[2] == (b"X-Forwarded-Host=www.example.com; X-Forwarded-For=203.0.113.7, 127.0.0.1; "
                      b"X-Forwarded-Proto=https; X-Original-URL=/admin/secret")
    (seen,) = origin.seen
    assert seen.header("Forwarded") == [SPOOFED["Forwarded"]]
    assert seen.header("X-Forwarded-Port") == ["8443"]
    assert seen.header("X-Real-IP") == ["10.0.0.1"]
    assert seen.header("X-Forwarded-Host") == ["www.example.com"]  # PUBLIC_HOST, even from it


def test_public_host_setting(tmp_path):
    assert load_settings({}, env_file=None).public_host == ""
    assert load_settings({"PUBLIC_HOST": "www.example.com:8443"}, env_file=None).public_host == \
        "www.example.com:8443"
    assert load_settings({"PUBLIC_HOST": "[::1]"}, env_file=None).public_host == "[::1]"
    for bad in ("http://www.example.com", "www.example.com/x", "a b", "host:0", "host:99999", "h\r\nX: 1"):
        with pytest.raises(ConfigError) as caught:
            load_settings({"PUBLIC_HOST": bad}, env_file=None)
        assert str(caught.value).startswith("PUBLIC_HOST=")
        assert "expected a host name, optionally with :port (no scheme or path)" in str(caught.value)


def test_repeated_cookie_headers_are_joined_as_one_cookie_line(site_proxy, origin):
    origin.serve("/c", b"ok")
    proxy = site_proxy()
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.putrequest("GET", "/c")
    conn.putheader("Cookie", "a=1")
    conn.putheader("Cookie", "b=2")
    conn.endheaders()
    assert conn.getresponse().status == 200
    conn.close()
    assert origin.seen[0].header("Cookie") == ["a=1; b=2"]


# ----- unsafe methods: passed through, never stored, invalidating -----------------------------


def test_post_is_passed_through_with_its_body_and_not_stored(site_proxy, origin, r):
    def created(handler):
        handler.reply_fields(201, b'{"id": 7}', [
            ("Content-Type", "application/json"), ("Location", "/items/7"),
            ("Set-Cookie", "s=1; Path=/"), ("Set-Cookie", "t=2; Path=/"), ("X-Frame-Options", "DENY")])
    origin.route("/items", created)
    proxy = site_proxy()
    url = origin.url("/items")
    payload = bytes(range(256)) * 4
    for _ in range(2):
        status, fields, body = raw(proxy.port, "POST", "/items", {"Content-Type": "application/octet-stream"},
                                   payload)
        assert (status, body) == (201, b'{"id": 7}')
        assert header(fields, "Location") == ["/items/7"]
        assert header(fields, "Set-Cookie") == ["s=1; Path=/", "t=2; Path=/"]
        assert header(fields, "X-Frame-Options") == ["DENY"]
        assert header(fields, "Cache-Status") == ["redis-proxy; fwd=method; fwd-status=201"]
    assert origin.hits["POST /items"] == 2
    assert [(seen.method, seen.body) for seen in origin.seen] == [("POST", payload)] * 2
    assert origin.seen[0].header("Content-Type") == ["application/octet-stream"]
    assert origin.seen[0].header("Content-Length") == [str(len(payload))]
    assert r.exists(redis_key_of(url)) == 0


def test_requests_session_posts_json_and_reads_the_cached_page(site_proxy, origin):
    origin.counter("/doc")
    proxy = site_proxy()
    base = f"http://127.0.0.1:{proxy.port}"
    with requests.Session() as session:
        assert session.get(base + "/doc").content == b"version 1"
        assert session.get(base + "/doc").headers["X-Cache"] == "HIT"
        posted = session.post(base + "/doc", json={"title": "new"})
        assert posted.status_code == 204
        assert session.get(base + "/doc").content == b"version 2"
    assert [seen.method for seen in origin.seen] == ["GET", "POST", "GET"]
    assert origin.seen[1].body == b'{"title": "new"}'
    assert origin.hits["GET /doc"] == 2


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "FROBNICATE"])
def test_a_successful_unsafe_method_invalidates_the_stored_get(site_proxy, origin, r, method):
    url = origin.counter("/thing")
    proxy = site_proxy()
    assert raw(proxy.port, "GET", "/thing")[2] == b"version 1"
    assert header(raw(proxy.port, "GET", "/thing")[1], "X-Cache") == ["HIT"]
    status, _, _ = raw(proxy.port, method, "/thing", body=b"x")
    assert status == 204
    assert r.exists(redis_key_of(url)) == 0
    status, fields, body = raw(proxy.port, "GET", "/thing")
    assert (status, body, header(fields, "X-Cache")) == (200, b"version 2", ["MISS"])
    assert origin.hits[f"{method} /thing"] == 1


@pytest.mark.parametrize("status", [400, 404, 409, 500, 503])
def test_an_unsafe_method_answered_with_an_error_keeps_the_stored_get(site_proxy, origin, status):
    origin.route("/kept", lambda h: h.reply(200, b"stored") if h.command == "GET"
                 else h.reply(status, b"refused"))
    proxy = site_proxy()
    raw(proxy.port, "GET", "/kept")
    assert raw(proxy.port, "POST", "/kept", body=b"x")[:3:2] == (status, b"refused")
    status_after, fields, body = raw(proxy.port, "GET", "/kept")
    assert (status_after, body, header(fields, "X-Cache")) == (200, b"stored", ["HIT"])
    assert origin.hits["GET /kept"] == 1


def test_location_and_content_location_of_the_same_origin_are_invalidated(site_proxy, origin,
                                                                          upstream, r):
    for path in ("/a", "/b", "/untouched"):
        origin.counter(path)
    other = upstream.serve("/elsewhere", b"another origin's page")
    origin.route("/form", lambda h: h.reply_fields(303, b"", [
        ("Location", "/a"), ("Content-Location", origin.url("/b"))]))
    origin.route("/moved", lambda h: h.reply_fields(201, b"", [("Location", other)]))
    proxy = site_proxy()
    for path in ("/a", "/b", "/untouched"):
        raw(proxy.port, "GET", path)
    assert request(proxy.port, "/_proxy" + q(other)).headers["X-Cache"] == "MISS"
    assert raw(proxy.port, "POST", "/form", body=b"f=1")[0] == 303
    assert raw(proxy.port, "POST", "/moved", body=b"m=1")[0] == 201
    assert [raw(proxy.port, "GET", path)[2] for path in ("/a", "/b", "/untouched")] == \
        [b"version 2", b"version 2", b"version 1"]
    assert request(proxy.port, "/_proxy" + q(other)).headers["X-Cache"] == "HIT"
    assert upstream.hits["/elsewhere"] == 1


def test_delete_of_a_site_path_reaches_the_origin_and_the_admin_purge_does_not(site_proxy, origin, r):
    url = origin.counter("/doomed")
    proxy = site_proxy()
    raw(proxy.port, "GET", "/doomed")
    purged = request(proxy.port, "/_proxy" + q(url), method="DELETE")
    assert (purged.status, purged.json()) == (200, {"purged": 1})
    assert origin.hits["DELETE /doomed"] == 0
    assert raw(proxy.port, "DELETE", "/doomed")[0] == 204
    assert origin.hits["DELETE /doomed"] == 1


# ----- with the cache's HTTP semantics ----------------------------------------------------------


CLIENT_CONDITIONALS = {"If-None-Match": '"v1"', "If-Modified-Since": "Thu, 01 Jan 2015 00:00:00 GMT",
                       "If-Match": '"v1"', "If-Unmodified-Since": "Thu, 01 Jan 2099 00:00:00 GMT",
                       "If-Range": '"v1"', "Range": "bytes=2-4"}


def test_a_fill_sends_none_of_the_clients_conditionals_or_range_and_the_cache_answers_them(
        site_proxy, origin):
    origin.serve("/doc", b"0123456789", headers={"ETag": '"v1"', "Cache-Control": "max-age=60"})
    proxy = site_proxy()
    ranged = raw(proxy.port, "GET", "/doc", {"Range": "bytes=2-4", "If-Range": '"v1"',
                                              "If-Match": '"v1"', "Accept-Language": "fr"})
    assert (ranged[0], ranged[2], header(ranged[1], "Content-Range")) == (206, b"234", ["bytes 2-4/10"])
    [fill] = origin.seen
    assert [name for name in CLIENT_CONDITIONALS if fill.header(name)] == []
    assert fill.header("Accept-Language") == ["fr"]  # the other end-to-end headers do go
    status, fields, body = raw(proxy.port, "GET", "/doc", {"If-None-Match": '"v1"'})
    assert (status, body, header(fields, "X-Cache"), header(fields, "ETag")) == (304, b"", ["HIT"], ['"v1"'])
    assert origin.hits["GET /doc"] == 1


def test_a_passed_through_request_keeps_its_conditionals_and_range(site_proxy, origin):
    origin.route("/doc", lambda h: h.reply(412, b"precondition failed"))
    proxy = site_proxy()
    status, _, body = raw(proxy.port, "PUT", "/doc", CLIENT_CONDITIONALS, body=b"new")
    assert (status, body) == (412, b"precondition failed")
    [put] = origin.seen
    assert {name: put.header(name) for name in CLIENT_CONDITIONALS} == \
        {name: [value] for name, value in CLIENT_CONDITIONALS.items()}


def test_vary_selects_by_the_clients_forwarded_header_both_variants_kept(site_proxy, origin):
    origin.route("/greet", lambda h: h.reply(
        200, b"hello in " + h.headers.get("Accept-Language", "none").encode(),
        {"Vary": "Accept-Language", "Cache-Control": "max-age=60"}))
    proxy = site_proxy()

    def get(language: str) -> tuple[bytes, str]:
        got = request(proxy.port, "/greet", headers={"Accept-Language": language})
        return got.body, got.headers["X-Cache"]

    assert get("en") == (b"hello in en", "MISS")
    assert get("en") == (b"hello in en", "HIT")
    assert get("de") == (b"hello in de", "MISS")  # never the English one
    assert get("de") == (b"hello in de", "HIT")
    assert get("en") == (b"hello in en", "HIT")  # the German variant is stored beside it
    assert origin.hits["GET /greet"] == 2


def test_a_set_cookie_on_a_cached_get_reaches_no_client_and_is_not_stored(site_proxy, origin, r):
    url = origin.serve("/login-page", b"form", headers={"Set-Cookie": "sid=secret; Path=/",
                                                         "Cache-Control": "max-age=60"})
    proxy = site_proxy()
    first = raw(proxy.port, "GET", "/login-page")
    second = raw(proxy.port, "GET", "/login-page")
    assert (first[0], first[2], header(first[1], "Set-Cookie")) == (200, b"form", [])
    assert (second[0], second[2], header(second[1], "X-Cache")) == (200, b"form", ["MISS"])
    assert origin.hits["GET /login-page"] == 2
    assert r.exists(redis_key_of(url)) == 0


# ----- request bodies --------------------------------------------------------------------------


def test_a_body_of_max_body_bytes_passes_and_one_byte_more_is_413(site_proxy, origin):
    origin.route("/upload", lambda h: h.reply(200, b"got %d" % len(h.server.seen[-1].body)))
    proxy = site_proxy(max_body_bytes=64)
    assert raw(proxy.port, "PUT", "/upload", body=b"x" * 64)[::2] == (200, b"got 64")
    status, fields, body = raw(proxy.port, "PUT", "/upload", body=b"x" * 65)
    assert status == 413
    assert json.loads(body) == {"error": "request body too large", "detail":
                                "the request body is 65 bytes; the limit is 64 (MAX_BODY_BYTES)"}
    assert origin.hits["PUT /upload"] == 1


def test_a_chunked_request_body_is_411_and_not_forwarded(site_proxy, origin):
    origin.counter("/chunked")
    proxy = site_proxy()
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request("POST", "/chunked", body=iter([b"part one", b"part two"]),
                 encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
    resp = conn.getresponse()
    assert resp.status == 411
    assert json.loads(resp.read()) == {"error": "length required", "detail":
                                       "send the request body with a Content-Length; chunked "
                                       "request bodies are not accepted"}
    conn.close()
    assert origin.hits["/chunked"] == 0


def test_a_body_that_stops_arriving_is_408_after_header_timeout(site_proxy, origin):
    origin.counter("/slow")
    proxy = site_proxy(header_timeout=0.3)
    answer = raw_exchange(proxy.port, b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
                                      b"\r\nabc")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert json.loads(body) == {"error": "request timeout",
                                "detail": "the request body did not arrive within 0.3 s"}
    assert origin.hits["/slow"] == 0


def test_curl_posts_a_large_body_with_expect_100_continue(site_proxy, origin, tmp_path):
    origin.route("/big", lambda h: h.reply(200, b"%d bytes" % len(h.server.seen[-1].body)))
    proxy = site_proxy()
    payload = tmp_path / "payload"
    payload.write_bytes(b"\x01\x02" * 4096)
    # curl sends Expect by itself only past a size that changed between versions: asked for here.
    done = curl("-v", "-H", "Expect: 100-continue", "--data-binary", f"@{payload}",
                f"http://127.0.0.1:{proxy.port}/big")
    assert done.returncode == 0
    assert done.stdout == b"8192 bytes"
    assert b"Expect: 100-continue" in done.stderr and b"HTTP/1.1 100 Continue" in done.stderr
    assert origin.seen[-1].body == b"\x01\x02" * 4096
    assert origin.seen[-1].header("Expect") == []


# ----- the proxy's own routes and its tokens -------------------------------------------------


def test_admin_routes_answer_under_the_prefix_and_root_paths_are_the_origins(site_proxy, origin,
                                                                             upstream):
    origin.serve("/health", b"the site's health page")
    upstream_url = upstream.serve("/u", b"url role")
    proxy = site_proxy()
    health = request(proxy.port, "/_proxy/health")
    assert (health.status, health.json()["redis"]) == (200, "ok")
    assert request(proxy.port, "/_proxy/metrics").body.startswith(b"# HELP")
    assert request(proxy.port, "/health").body == b"the site's health page"
    fetched = request(proxy.port, "/_proxy" + q(upstream_url, key="k"))
    assert (fetched.status, fetched.body) == (200, b"url role")
    assert request(proxy.port, "/_proxy/?key=k").body == b"url role"
    assert request(proxy.port, "/_proxy/?key=k", method="DELETE").json() == {"purged": 1}
    assert origin.hits["/health"] == 1 and origin.hits["/"] == 0


def test_without_an_origin_the_routes_answer_at_the_root_and_under_the_prefix(make_proxy, upstream):
    url = upstream.serve("/u", b"url role")
    proxy = make_proxy()
    for prefix in ("", "/_proxy"):
        assert request(proxy.port, prefix + "/health").status == 200
        assert request(proxy.port, prefix + q(url)).body == b"url role"
    assert request(proxy.port, "/elsewhere").status == 404
    assert upstream.hits["/u"] == 1


def test_tokens_guard_the_admin_routes_not_the_site_and_are_never_forwarded(site_proxy, origin, r):
    url = origin.counter("/open")
    origin.counter("/account")
    proxy = site_proxy(tokens=(TOKEN,))
    assert request(proxy.port, "/_proxy" + q(url)).status == 401
    assert request(proxy.port, "/_proxy/health").status == 200
    own = {"Authorization": f"Bearer {TOKEN}"}
    assert raw(proxy.port, "GET", "/open", own)[2] == b"version 1"
    assert raw(proxy.port, "GET", "/open")[2] == b"version 1"  # stored: the token stayed here
    assert origin.seen[0].header("Authorization") == []
    # A credential for the origin is the origin's: forwarded, and the answer never stored.
    theirs = {"Authorization": "Basic dXNlcjpwdw=="}
    answers = [raw(proxy.port, "GET", "/account", theirs) for _ in range(2)]
    assert [body for _, _, body in answers] == [b"version 1", b"version 2"]
    assert [header(fields, "X-Cache") for _, fields, _ in answers] == [["MISS"], ["MISS"]]
    assert header(answers[0][1], "Cache-Status") == ["redis-proxy; fwd=request; fwd-status=200"]
    assert origin.seen[-1].header("Authorization") == ["Basic dXNlcjpwdw=="]
    assert r.exists(redis_key_of(origin.url("/account"))) == 0


@pytest.mark.parametrize("target", ["/x/../_proxy/health", "/_proxy/./health", "/x/%2e%2e/_proxy/health",
                                    "/%5Fproxy/health", "/a/b/../../_proxy/x/../health"])
def test_routing_decides_on_the_normalised_path_so_dot_segments_reach_the_proxys_routes(site_proxy, origin,
                                                                                        target):
    origin.serve("/_proxy/health", b"the origin's page")
    proxy = site_proxy()
    got = request(proxy.port, target)
    assert (got.status, got.json()["status"]) == (200, "ok")
    assert origin.seen == []


def test_a_dot_segment_out_of_the_admin_prefix_is_the_origins_path(site_proxy, origin):
    origin.serve("/p", b"site page")
    proxy = site_proxy(tokens=(TOKEN,))
    got = request(proxy.port, "/_proxy/../p")
    assert (got.status, got.body) == (200, b"site page")
    assert [seen.target for seen in origin.seen] == ["/p"]
    # Normalised, a proxy route still needs its token.
    assert request(proxy.port, "/p/../_proxy/get/k").status == 401


class _Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_wrong_bearer_on_a_site_path_is_a_failed_attempt_and_past_the_limit_every_answer_is_429(
        site_proxy, origin):
    origin.counter("/p")
    limiter = RateLimiter(3 / 60, 3, clock=_Clock())
    proxy = site_proxy(server_options_extra={"authenticator": Authenticator([TOKEN], fail_limiter=limiter)})
    own, wrong = {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer not-our-token-0123"}
    assert raw(proxy.port, "GET", "/p", own)[2] == b"version 1"  # stored
    # The origin's own schemes are not guesses: forwarded, never counted.
    assert [raw(proxy.port, "GET", "/p", {"Authorization": "Basic dXNlcjpwdw=="})[0]
            for _ in range(5)] == [200] * 5
    assert limiter.wait("127.0.0.1", take=False) == 0
    # Under the limit a wrong bearer is forwarded, as before, but counted: 3 of 3.
    assert [raw(proxy.port, "GET", "/p", wrong)[2] for _ in range(3)] == \
        [b"version 7", b"version 8", b"version 9"]
    assert limiter.wait("127.0.0.1", take=False) == 20  # spent: the next attempt in 20 s
    # Past it, our token and a wrong one get the same answer: nothing tells them apart.
    answers = [raw(proxy.port, "GET", "/p", headers) for headers in (own, wrong, {})]
    assert [(status, body) for status, _, body in answers] == [(429, answers[0][2])] * 3
    assert json.loads(answers[0][2]) == {
        "error": "too many failed authentications",
        "detail": "over 3 failed authentications per minute from your address; retry in 20 s"}
    assert [header(fields, "Retry-After") for _, fields, _ in answers] == [["20"]] * 3
    assert request(proxy.port, "/_proxy/get/k", headers=own).status == 429  # as on the proxy's routes
    assert request(proxy.port, "/_proxy/health").status == 200
    assert origin.hits["GET /p"] == 9


# ----- web cache deception: answers to requests with credentials (RFC 9111 §3.5) --------------

ACCOUNT = "/account.php/1/x.css"  # a personal page behind a path that looks like a static file


def _account_page(cache_control: str):
    def page(handler):
        fields = {"Content-Type": "text/css", "Last-Modified": "Mon, 01 Jan 2001 00:00:00 GMT"}
        if cache_control:
            fields["Cache-Control"] = cache_control
        handler.reply(200, f"account of {handler.headers.get('Cookie')}".encode(), fields)
    return page


@pytest.mark.parametrize("freshness", ["ttl", "rfc"])
@pytest.mark.parametrize("cookie_header", ["Cookie", "Authorization"])
def test_an_answer_to_a_request_with_credentials_that_does_not_say_public_is_not_stored(
        site_proxy, origin, r, freshness, cookie_header):
    origin.route(ACCOUNT, _account_page(""))
    proxy = site_proxy(policy=Policy(ttl=3600.0, default_freshness=freshness))
    mine = raw(proxy.port, "GET", ACCOUNT, {cookie_header: "sid=alice"})
    assert (mine[0], header(mine[1], "X-Cache")) == (200, ["MISS"])
    assert r.exists(redis_key_of(origin.url(ACCOUNT))) == 0
    theirs = raw(proxy.port, "GET", ACCOUNT)
    assert (theirs[2], header(theirs[1], "X-Cache")) == (b"account of None", ["MISS"])
    assert origin.hits["GET " + ACCOUNT] == 2
    # Without credentials the same answer is stored as before (heuristic or CACHE_TTL freshness).
    assert header(raw(proxy.port, "GET", ACCOUNT)[1], "X-Cache") == ["HIT"]


@pytest.mark.parametrize("cache_control", ["public, max-age=60", "s-maxage=60", "must-revalidate, max-age=60"])
def test_an_answer_to_a_request_with_a_cookie_that_says_it_may_be_shared_is_stored_for_its_own_freshness(
        site_proxy, origin, r, cache_control):
    origin.route(ACCOUNT, _account_page(cache_control))
    proxy = site_proxy()  # DEFAULT_FRESHNESS=ttl: CACHE_TTL 3600 s would apply without credentials
    assert raw(proxy.port, "GET", ACCOUNT, {"Cookie": "sid=alice"})[2] == b"account of sid=alice"
    theirs = raw(proxy.port, "GET", ACCOUNT)
    assert (theirs[2], header(theirs[1], "X-Cache")) == (b"account of sid=alice", ["HIT"])
    assert origin.hits["GET " + ACCOUNT] == 1
    assert 55 < r.ttl(redis_key_of(origin.url(ACCOUNT))) <= 60


@pytest.mark.parametrize("freshness", ["ttl", "rfc"])
def test_public_without_a_lifetime_on_a_cookie_request_is_stored_stale_never_with_default_freshness(
        site_proxy, origin, freshness):
    origin.route(ACCOUNT, _account_page("public"))
    proxy = site_proxy(policy=Policy(ttl=3600.0, default_freshness=freshness), stale_ttl=300.0)
    raw(proxy.port, "GET", ACCOUNT, {"Cookie": "sid=alice"})
    theirs = raw(proxy.port, "GET", ACCOUNT)  # revalidated: the origin asked again
    assert origin.hits["GET " + ACCOUNT] == 2
    assert origin.seen[-1].header("If-Modified-Since") == ["Mon, 01 Jan 2001 00:00:00 GMT"]
    assert origin.seen[-1].header("Cookie") == []
    assert theirs[2] == b"account of None"


def test_a_target_not_in_origin_form_is_400(site_proxy, origin):
    proxy = site_proxy()
    status, _, body = raw(proxy.port, "OPTIONS", "*")
    assert status == 400 and json.loads(body)["error"] == "bad target"
    assert origin.seen == []


# ----- the upstream policy holds for the origin ------------------------------------------------


def test_a_loopback_origin_is_refused_without_allow_private(site_proxy, origin):
    origin.counter("/p")
    proxy = site_proxy(allow_private=False, upstream_policy=UpstreamPolicy(
        allow_private=False, allowed_ports=(origin.port,)))
    for method in ("GET", "POST"):
        status, _, body = raw(proxy.port, method, "/p", body=b"x" if method == "POST" else None)
        assert status == 403 and json.loads(body)["error"] == "url refused"
    assert origin.seen == []


@pytest.mark.parametrize("allow_private", ["true", "false"])
def test_origin_url_setting_with_curl_and_allow_private_both_ways(origin, redis_url, tmp_path,
                                                                  allow_private):
    origin.serve("/site", b"served through ORIGIN_URL")
    port = free_port()
    process = start_proxy({"REDIS_URL": redis_url, "HTTP_PORT": str(port), "RESP_PORT": "0",
                           "ORIGIN_URL": origin.url(""), "UPSTREAM_ALLOW_PRIVATE": allow_private,
                           "UPSTREAM_ALLOWED_PORTS": str(origin.port),
                           "LOG_FILE": str(tmp_path / "proxy.log")})
    try:
        wait_until(lambda: curl(f"http://127.0.0.1:{port}/_proxy/health").returncode == 0, timeout=20)
        done = curl("-i", f"http://127.0.0.1:{port}/site")
        head, _, body = done.stdout.partition(b"\r\n\r\n")
        if allow_private == "true":
            assert head.startswith(b"HTTP/1.1 200") and body == b"served through ORIGIN_URL"
            assert origin.hits["/site"] == 1
        else:
            assert head.startswith(b"HTTP/1.1 403") and json.loads(body)["error"] == "url refused"
            assert origin.hits["/site"] == 0
    finally:
        stop_proxy(process)


@pytest.mark.parametrize("environ, hits, second", [({}, 2, "MISS"), ({"DEFAULT_FRESHNESS": "ttl"}, 1, "HIT")])
def test_with_origin_url_a_page_stating_no_freshness_is_not_reused_unless_default_freshness_is_ttl(
        origin, redis_url, tmp_path, environ, hits, second):
    """DEFAULT_FRESHNESS left unset is `rfc` with ORIGIN_URL: a page with no Cache-Control,
    Expires or Last-Modified is not fresh (RFC 9111 §4.2.2), where `ttl` keeps it CACHE_TTL."""
    origin.serve("/plain", b"no freshness stated")
    port = free_port()
    process = start_proxy({"REDIS_URL": redis_url, "HTTP_PORT": str(port), "RESP_PORT": "0",
                           "ORIGIN_URL": origin.url(""), "UPSTREAM_ALLOW_PRIVATE": "true",
                           "UPSTREAM_ALLOWED_PORTS": str(origin.port),
                           "LOG_FILE": str(tmp_path / "proxy.log"), **environ})
    try:
        wait_until(lambda: curl(f"http://127.0.0.1:{port}/_proxy/health").returncode == 0, timeout=20)
        first, again = (request(port, "/plain") for _ in range(2))
        assert (first.status, first.body, first.headers["X-Cache"]) == (200, b"no freshness stated", "MISS")
        assert (again.status, again.body, again.headers["X-Cache"]) == (200, b"no freshness stated", second)
        assert origin.hits["GET /plain"] == hits
    finally:
        stop_proxy(process)


@pytest.mark.parametrize("environ, kept_for, gone_again", [
    ({}, 7200 + 300, "HIT"),  # the origin's max-age (plus CACHE_STALE_TTL); a 404 stored
    ({"CACHE_TTL": "600"}, 600 + 300, "HIT"),  # CACHE_TTL set: the ceiling, the origin's too
    ({"CACHE_STORE_STATUSES": "2xx,503"}, 7200 + 300, "MISS"),  # set: it wins, no 404 stored
])
def test_with_origin_url_the_rfc_statuses_are_stored_and_cache_ttl_caps_max_age_only_when_set(
        origin, redis_url, r, tmp_path, environ, kept_for, gone_again):
    """DEFAULT_FRESHNESS=rfc (the default with ORIGIN_URL) stores the statuses RFC 9110 §15.1
    calls heuristically cacheable (a 404, not a 503) and keeps an origin's max-age past
    CACHE_TTL's default; a stored 503 is never served stale (STALE_IF_ERROR at its default) in
    place of the origin's next 503."""
    modified = {"Last-Modified": email.utils.formatdate(time.time() - 86400, usegmt=True)}
    fresh = origin.serve("/fresh", b"fresh for two hours", headers={"Cache-Control": "max-age=7200"})
    origin.serve("/gone", b"not here", 404, modified)
    down = origin.route("/down", lambda h: h.reply(503, f"down {origin.hits['GET /down']}".encode(),
                                                   modified))
    port = free_port()
    process = start_proxy({"REDIS_URL": redis_url, "HTTP_PORT": str(port), "RESP_PORT": "0",
                           "ORIGIN_URL": origin.url(""), "UPSTREAM_ALLOW_PRIVATE": "true",
                           "UPSTREAM_ALLOWED_PORTS": str(origin.port),
                           "LOG_FILE": str(tmp_path / "proxy.log"), **environ})
    try:
        wait_until(lambda: curl(f"http://127.0.0.1:{port}/_proxy/health").returncode == 0, timeout=20)
        got = request(port, "/fresh")
        assert (got.status, got.body, got.headers["X-Cache"]) == (200, b"fresh for two hours", "MISS")
        assert kept_for - 10 < r.ttl(redis_key_of(fresh)) <= kept_for
        first, again = request(port, "/gone"), request(port, "/gone")
        assert (first.status, first.body, first.headers["X-Cache"]) == (404, b"not here", "MISS")
        assert (again.status, again.body, again.headers["X-Cache"]) == (404, b"not here", gone_again)
        assert origin.hits["GET /gone"] == (1 if gone_again == "HIT" else 2)
        first, again = request(port, "/down"), request(port, "/down")
        assert (first.status, first.body, first.headers["X-Cache"]) == (503, b"down 1", "MISS")
        assert (again.status, again.body, again.headers["X-Cache"]) == (503, b"down 2", "MISS")
        assert origin.hits["GET /down"] == 2
        assert r.exists(redis_key_of(down)) == ("503" in environ.get("CACHE_STORE_STATUSES", ""))
    finally:
        stop_proxy(process)


EARLY_HINTS = (b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload; as=style\r\n"
               b"Link: </a.js>; rel=preload; as=script\r\nX-My-Header: test\r\nSet-Cookie: id=1\r\n"
               b"Connection: x-hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n")


def test_a_103_reaches_the_http11_client_of_the_miss_before_the_answer_and_is_never_stored(
        site_proxy, origin):
    """RFC 8297 / RFC 9110 §15.2: the origin's Early Hints are relayed as they come, with their
    end-to-end fields (both Link lines) but not Set-Cookie, hop-by-hop or framing ones; a later
    hit has none, and an HTTP/1.0 client (no interim responses) gets only the answer."""
    def route(handler):
        handler.wfile.write(EARLY_HINTS)
        handler.reply(200, b"hinted page", {"Cache-Control": "max-age=60"})

    origin.route("/hinted", route)
    proxy = site_proxy()
    get = b"GET /hinted HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n"
    interim, _, final = raw_exchange(proxy.port, get).partition(b"\r\n\r\n")
    assert interim.split(b"\r\n") == [b"HTTP/1.1 103 Early Hints", b"Link: </s.css>; rel=preload; as=style",
                                       b"Link: </a.js>; rel=preload; as=script", b"X-My-Header: test"]
    assert final.startswith(b"HTTP/1.1 200 OK\r\n") and final.endswith(b"\r\n\r\nhinted page")
    assert b"\r\nX-Cache: MISS\r\n" in final and b"Early Hints" not in final
    again = raw_exchange(proxy.port, get)
    assert again.startswith(b"HTTP/1.1 200 OK\r\n") and again.endswith(b"\r\n\r\nhinted page")
    assert b"\r\nX-Cache: HIT\r\n" in again and b"Early Hints" not in again
    old = raw_exchange(proxy.port, b"GET /hinted?v=2 HTTP/1.0\r\nHost: site\r\n\r\n")
    assert old.startswith(b"HTTP/1.1 200 OK\r\n") and old.endswith(b"\r\n\r\nhinted page")
    assert b"\r\nX-Cache: MISS\r\n" in old and b"Early Hints" not in old
    assert origin.hits["GET /hinted"] == 2
    post = b"POST /hinted HTTP/1.1\r\nHost: site\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    interim, _, final = raw_exchange(proxy.port, post).partition(b"\r\n\r\n")  # passed through
    assert interim.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload; as=style\r\n")
    assert final.startswith(b"HTTP/1.1 200 OK\r\n") and final.endswith(b"\r\n\r\nhinted page")
    assert origin.hits["POST /hinted"] == 1


# ----- the rest of the routing table -----------------------------------------------------------


def test_absolute_form_names_the_same_path_of_the_origin(site_proxy, origin):
    origin.serve("/abs", b"absolute")
    proxy = site_proxy()
    status, _, body = raw(proxy.port, "GET", "http://elsewhere.example/abs")
    assert (status, body) == (200, b"absolute")
    assert [seen.target for seen in origin.seen] == ["/abs"]


def test_options_is_passed_through_and_invalidates_nothing(site_proxy, origin):
    origin.counter("/opt")
    proxy = site_proxy()
    raw(proxy.port, "GET", "/opt")
    assert raw(proxy.port, "OPTIONS", "/opt")[0] == 204
    assert header(raw(proxy.port, "GET", "/opt")[1], "X-Cache") == ["HIT"]
    assert origin.hits["OPTIONS /opt"] == 1 and origin.hits["GET /opt"] == 1


@pytest.mark.parametrize("target", ["/tunnel", "127.0.0.1:443"])  # the second: CONNECT's own form
def test_connect_is_405(site_proxy, origin, target):
    proxy = site_proxy()
    status, fields, body = raw(proxy.port, "CONNECT", target)
    assert status == 405 and json.loads(body)["error"] == "method not allowed"
    assert header(fields, "Allow") == ["GET, HEAD, POST, PUT, PATCH, DELETE"]
    assert origin.seen == []


def test_the_read_role_answers_under_the_prefix(site_proxy, origin, r):
    r.set("plain", b"a value")
    proxy = site_proxy()
    assert request(proxy.port, "/_proxy/get/plain").body == b"a value"
    assert origin.seen == []


def test_rate_limit_applies_to_site_paths(site_proxy, origin):
    origin.serve("/limited", b"ok")
    proxy = site_proxy(server_options_extra={"rate_limiter": RateLimiter(0.001, 1)})
    assert raw(proxy.port, "GET", "/limited")[0] == 200
    status, fields, _ = raw(proxy.port, "GET", "/limited")
    assert status == 429 and header(fields, "Retry-After")
    assert origin.hits["/limited"] == 1


def test_defaults_of_user_agent_and_accept_and_repeated_headers_joined(site_proxy, origin):
    origin.serve("/d", b"ok")
    proxy = site_proxy()
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.putrequest("GET", "/d", skip_accept_encoding=True)
    conn.putheader("X-Custom", "one")
    conn.putheader("X-Custom", "two")
    conn.endheaders()
    assert conn.getresponse().status == 200
    conn.close()
    (seen,) = origin.seen
    assert seen.header("User-Agent") == [f"redis-proxy/{__version__}"]
    assert seen.header("Accept") == ["*/*"]
    assert seen.header("X-Custom") == ["one, two"]


def test_a_relayed_answer_has_the_proxys_date_and_server_and_a_decoded_body(site_proxy, origin):
    origin.route("/gz", lambda h: h.reply_fields(200, gzip.compress(b"plain text"), [
        ("Content-Encoding", "gzip"), ("Date", "Mon, 01 Jan 2001 00:00:00 GMT"),
        ("Server", "origin/1")]))
    proxy = site_proxy()
    status, fields, body = raw(proxy.port, "POST", "/gz", body=b"x")
    assert (status, body) == (200, b"plain text")
    assert header(fields, "Content-Encoding") == []
    assert header(fields, "Server") == ["redis-proxy"]
    assert len(header(fields, "Date")) == 1 and "2001" not in header(fields, "Date")[0]
    assert header(fields, "Connection") == ["close"]  # a request with a body ends its connection
