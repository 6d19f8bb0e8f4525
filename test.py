"""End-to-end suite of the URL read-through cache: real Redis, real upstream, proxy on port 0."""

import http.client
import socket
import threading

import pytest

from load_env import load_settings
from proxy.store.launcher import RedisServer
from redis_proxy import RedisProxy
from servers import q, raw_exchange, request, wait_until


def test_miss_then_hit_reaches_upstream_once(upstream, make_proxy):
    url = upstream.serve("/page", b"hello world", headers={"Content-Type": "text/html"})
    proxy = make_proxy()
    first = request(proxy.port, q(url, "page"))
    second = request(proxy.port, q(url, "page"))
    assert (first.status, first.headers["X-Cache"], first.body) == (200, "MISS", b"hello world")
    assert (second.status, second.headers["X-Cache"], second.body) == (200, "HIT", b"hello world")
    assert upstream.hits["/page"] == 1
    assert second.headers["Content-Type"] == "text/html"
    assert int(second.headers["Age"]) >= 0
    assert second.headers["Cache-Status"].startswith("redis-proxy; hit")
    assert first.headers["Cache-Status"].startswith("redis-proxy; fwd=miss; fwd-status=200; stored")


def test_entry_is_stored_under_the_prefix_with_a_ttl(upstream, make_proxy, r):
    url = upstream.serve("/ttl", b"x")
    proxy = make_proxy(ttl=60)
    assert request(proxy.port, q(url, "k1")).status == 200
    assert r.exists("rp:k1") == 1
    assert 0 < r.ttl("rp:k1") <= 60


def test_a_redis_hit_without_l1_still_skips_upstream(upstream, make_proxy, r):
    url = upstream.serve("/noL1", b"from redis")
    proxy = make_proxy(capacity=0)
    request(proxy.port, q(url, "noL1"))
    again = request(proxy.port, q(url, "noL1"))
    assert (again.headers["X-Cache"], again.body, upstream.hits["/noL1"]) == ("HIT", b"from redis", 1)


def test_expired_entry_is_fetched_again(upstream, make_proxy, r):
    url = upstream.serve("/short", b"short-lived")
    now = [1_000_000.0]
    proxy = make_proxy(ttl=1, capacity=0, clock=lambda: now[0])
    assert request(proxy.port, q(url, "s")).headers["X-Cache"] == "MISS"
    assert request(proxy.port, q(url, "s")).headers["X-Cache"] == "HIT"
    assert r.ttl("rp:s") == 1
    now[0] += 1.5  # the entry's freshness is over (Redis drops it by its own TTL as well)
    again = request(proxy.port, q(url, "s"))
    assert (again.headers["X-Cache"], upstream.hits["/short"]) == ("MISS", 2)


def test_redis_expiry_alone_forces_a_refetch(upstream, make_proxy, r):
    url = upstream.serve("/expire", b"v")
    proxy = make_proxy(ttl=3600, capacity=0)
    request(proxy.port, q(url, "e"))
    r.pexpire("rp:e", 1)
    wait_until(lambda: r.exists("rp:e") == 0)
    assert request(proxy.port, q(url, "e")).headers["X-Cache"] == "MISS"
    assert upstream.hits["/expire"] == 2


def test_binary_body_comes_back_byte_for_byte(upstream, make_proxy):
    body = bytes(range(256)) * 4
    url = upstream.serve("/bin", body, headers={"Content-Type": "image/x-test"})
    proxy = make_proxy()
    for expected in ("MISS", "HIT"):
        got = request(proxy.port, q(url))
        assert (got.body, got.headers["Content-Type"], got.headers["X-Cache"]) == \
            (body, "image/x-test", expected)


def test_params_reach_upstream_and_derive_one_key(upstream, make_proxy, r):
    url = upstream.serve("/search", b"results")
    proxy = make_proxy()
    request(proxy.port, q(url, params={"q": "redis", "page": 2, "tags": ["a", "b"], "x": True}))
    path, _headers = upstream.requests[-1]
    assert path == "/search?q=redis&page=2&tags=a&tags=b&x=true"
    reordered = request(proxy.port, q(url, params={"x": True, "tags": ["a", "b"], "page": 2, "q": "redis"}))
    assert reordered.headers["X-Cache"] == "HIT"
    assert upstream.hits["/search"] == 1
    assert [k for k in r.scan_iter("rp:*")] and len(list(r.scan_iter("rp:*"))) == 1


def test_derived_key_ignores_scheme_and_host_case_default_port_and_query_order(upstream, make_proxy):
    upstream.serve("/case", b"c")
    proxy = make_proxy()
    first = request(proxy.port, q(f"http://localhost:{upstream.port}/case?b=2&a=1"))
    again = request(proxy.port, q(f"HTTP://LocalHost:{upstream.port}/case?a=1&b=2"))
    assert (first.headers["X-Cache"], again.headers["X-Cache"], again.body) == ("MISS", "HIT", b"c")
    assert upstream.hits["/case"] == 1
    # The default port is dropped from the key too (no upstream listens on 80 or 443 here, so
    # the keys are compared as derived); any other port is kept.
    def key(url: str) -> str:
        return proxy.proxy.parse(url).redis_key

    assert key("http://Example.COM:80/p?b=2&a=1") == key("HTTP://example.com/p?a=1&b=2")
    assert key("https://example.com:443/p") == key("HTTPS://EXAMPLE.COM/p")
    assert key("http://example.com:8080/p") != key("http://example.com/p")


def test_key_bound_to_another_url_is_a_miss_never_the_other_body(upstream, make_proxy, r):
    url_a = upstream.serve("/a", b"body of A")
    url_b = upstream.serve("/b", b"body of B")
    proxy = make_proxy()
    assert request(proxy.port, q(url_a, "shared")).body == b"body of A"
    got = request(proxy.port, q(url_b, "shared"))
    assert (got.body, got.headers["X-Cache"], upstream.hits["/b"]) == (b"body of B", "MISS", 1)
    assert request(proxy.port, q(url_b, "shared")).headers["X-Cache"] == "HIT"


def test_key_alone_reads_the_cache(upstream, make_proxy):
    url = upstream.serve("/k", b"keyed")
    proxy = make_proxy()
    missing = request(proxy.port, "/?key=nothing")
    assert (missing.status, missing.json()["error"]) == (404, "key not found")
    request(proxy.port, q(url, "named"))
    got = request(proxy.port, "/?key=named")
    assert (got.status, got.body, got.headers["X-Cache"]) == (200, b"keyed", "HIT")
    assert upstream.hits["/k"] == 1


def test_check_key_and_redis_get_the_simple_calls(upstream, make_proxy):
    url = upstream.serve("/simple", b"simple")
    proxy = make_proxy().proxy
    assert proxy.check_key("simple") is False
    assert proxy.redis_get(url, key="simple") == b"simple"
    assert proxy.check_key("simple") is True
    assert proxy.redis_get(url, key="simple") == b"simple"
    assert upstream.hits["/simple"] == 1


def test_upstream_error_status_is_relayed_and_not_stored(upstream, make_proxy, r):
    url = upstream.serve("/missing", b"gone", status=404)
    proxy = make_proxy()
    for _ in range(2):
        got = request(proxy.port, q(url, "nf"))
        assert (got.status, got.body, got.headers["X-Cache"]) == (404, b"gone", "MISS")
    assert upstream.hits["/missing"] == 2
    assert r.exists("rp:nf") == 0


def test_upstream_down_is_502(make_proxy):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proxy = make_proxy()
    got = request(proxy.port, q(f"http://127.0.0.1:{port}/x"))
    assert got.status == 502 and got.json()["error"] == "bad gateway"


def test_slow_upstream_is_504(upstream, make_proxy, r):
    release = threading.Event()

    def slow(handler):
        release.wait(10)
        handler.reply(200, b"late")

    url = upstream.route("/slow", slow)
    proxy = make_proxy(timeout=0.3)
    try:
        got = request(proxy.port, q(url, "slow"))
    finally:
        release.set()
    assert got.status == 504 and "detail" in got.json()
    assert r.exists("rp:slow") == 0


def test_trickling_body_hits_the_total_deadline(upstream, make_proxy, r):
    stop = threading.Event()

    def trickle(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        for _ in range(1000):
            if stop.wait(0.05):
                return
            handler.wfile.write(b"x")
            handler.wfile.flush()

    url = upstream.route("/trickle", trickle)
    proxy = make_proxy(timeout=0.5)
    try:
        got = request(proxy.port, q(url, "trickle"))
    finally:
        stop.set()
    assert got.status == 504
    assert r.exists("rp:trickle") == 0


def test_body_over_the_cap_is_413_and_not_stored(upstream, make_proxy, r):
    url = upstream.serve("/big", b"x" * 2048)
    proxy = make_proxy(max_bytes=1024)
    got = request(proxy.port, q(url, "big"))
    assert got.status == 413 and got.json()["error"] == "upstream body too large"
    assert r.exists("rp:big") == 0

    def chunked(handler):  # no Content-Length: the cap must hold while streaming
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for _ in range(4):
            handler.wfile.write(b"200\r\n" + b"y" * 512 + b"\r\n")
        handler.wfile.write(b"0\r\n\r\n")

    url = upstream.route("/chunked", chunked)
    assert request(proxy.port, q(url, "chunked")).status == 413
    assert r.exists("rp:chunked") == 0


def test_redirects_are_followed_up_to_five(upstream, make_proxy):
    for i in range(7):
        upstream.serve(f"/hop{i}", b"", status=302, headers={"Location": f"/hop{i + 1}"})
    upstream.serve("/hop7", b"landed")
    proxy = make_proxy()
    assert request(proxy.port, q(upstream.url("/hop2"))).body == b"landed"  # 5 hops
    assert request(proxy.port, q(upstream.url("/hop0"))).status == 502  # 7 hops


@pytest.mark.parametrize("path, status, error", [
    ("/", 400, "missing url"),
    ("/?url=", 400, "bad url"),
    ("/?url=ftp%3A%2F%2Fexample.com%2F", 400, "bad url"),
    ("/?url=http%3A%2F%2F%2Fpath", 400, "bad url"),
    ("/?url=not-a-url", 400, "bad url"),
    ("/?url=http%3A%2F%2Fexample.com%3A99999%2F", 400, "bad url"),
    ("/?url=http%3A%2F%2Fexample.com%2F&params=%5B1%5D", 400, "bad params"),
    ("/?url=http%3A%2F%2Fexample.com%2F&params=%7B%22a%22%3A%7B%7D%7D", 400, "bad params"),
    ("/?url=http%3A%2F%2Fexample.com%2F&params=nope", 400, "bad params"),
    ("/?url=http%3A%2F%2Fexample.com%2F&key=a%00b", 400, "bad key"),
    ("/?url=http%3A%2F%2Fexample.com%2F&key=" + "k" * 1025, 400, "bad key"),
    ("/?url=http%3A%2F%2Fexample.com%2F" + "a" * 8200, 414, "uri too long"),
    ("/?url=http%3A%2F%2Fexample.com%2F&url=http%3A%2F%2Fother%2F", 400, "bad query"),
    ("/?url=%zz", 400, "bad query"),
    ("/?url=%ff", 400, "bad query"),
    ("/?what=1", 400, "bad query"),
    ("/nowhere", 404, "resource not found"),
])
def test_bad_input_gets_a_json_error_and_changes_nothing(upstream, make_proxy, r, path, status, error):
    proxy = make_proxy()
    got = request(proxy.port, path)
    assert got.status == status, got
    assert got.headers["Content-Type"] == "application/json"
    assert got.json()["error"] == error and got.json()["detail"]
    assert r.dbsize() == 0 and sum(upstream.hits.values()) == 0
    url = upstream.serve("/fine", b"still serving")
    assert request(proxy.port, q(url)).body == b"still serving"


def test_other_methods_get_405_with_allow(make_proxy):
    proxy = make_proxy()
    got = request(proxy.port, "/?key=x", method="POST")
    assert got.status == 405 and "GET" in got.headers["Allow"]
    assert request(proxy.port, "/?key=x", method="PUT").status == 405


def test_head_has_the_headers_and_no_body(upstream, make_proxy):
    url = upstream.serve("/head", b"twelve bytes")
    proxy = make_proxy()
    request(proxy.port, q(url, "h"))
    got = request(proxy.port, q(url, "h"), method="HEAD")
    assert (got.status, got.body, got.headers["Content-Length"], got.headers["X-Cache"]) == \
        (200, b"", "12", "HIT")


def test_keep_alive_serves_many_requests_on_one_connection(upstream, make_proxy):
    url = upstream.serve("/ka", b"kept alive")
    proxy = make_proxy()
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    for _ in range(20):
        conn.request("GET", q(url, "ka"))
        resp = conn.getresponse()
        assert resp.read() == b"kept alive" and resp.version == 11
    conn.close()


@pytest.mark.parametrize("line", [b"GARBAGE\r\n\r\n", b"GET /\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                                  b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"])
def test_malformed_request_lines_get_a_real_status_line(make_proxy, line):
    proxy = make_proxy()
    reply = raw_exchange(proxy.port, line)
    assert reply.startswith(b"HTTP/1.1 400 ") or reply.startswith(b"HTTP/1.1 505 "), reply
    assert b'"error"' in reply
    assert request(proxy.port, "/health").status == 200


def test_health_reports_redis(make_proxy):
    got = request(make_proxy().port, "/health")
    assert (got.status, got.json()) == (200, {"status": "ok", "redis": "ok", "l1_invalidation": "tracking"})


def test_config_set_applies_maxmemory_and_policy(make_proxy, r):
    before = {**r.config_get("maxmemory"), **r.config_get("maxmemory-policy")}
    proxy = make_proxy().proxy
    try:
        assert proxy.configure_memory(32 * 1024 * 1024, "allkeys-lfu") is True
        assert r.config_get("maxmemory") == {"maxmemory": str(32 * 1024 * 1024)}
        assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lfu"}
    finally:  # the session's Redis is shared: put its limits back even when an assert failed
        r.config_set("maxmemory", before["maxmemory"])
        r.config_set("maxmemory-policy", before["maxmemory-policy"])


def test_refused_config_set_is_a_warning_not_a_crash(make_proxy, upstream, caplog):
    # A managed Redis refuses CONFIG: here a real one with the command renamed away.
    with RedisServer(unix_socket=True, extra_args=("--rename-command", "CONFIG", "")) as managed:
        proxy = make_proxy(managed.url)
        assert proxy.proxy.configure_memory(1024 * 1024, "allkeys-lru") is False
        assert "could not apply maxmemory" in caplog.text
        url = upstream.serve("/managed", b"still serving")
        assert request(proxy.port, q(url, "m")).body == b"still serving"
        assert request(proxy.port, q(url, "m")).headers["X-Cache"] == "HIT"
        proxy.thread.stop()
        proxy.proxy.close()


def test_get_instance_is_one_object_across_threads(redis_url, monkeypatch):
    settings = load_settings({"REDIS_URL": redis_url, "RESP_PORT": "0"}, env_file=None)
    RedisProxy.reset_instance()
    seen, barrier = [], threading.Barrier(16)

    def grab():
        barrier.wait()
        seen.append(RedisProxy.get_instance(settings))

    threads = [threading.Thread(target=grab) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(seen) == 16 and all(p is seen[0] for p in seen)
    finally:
        RedisProxy.reset_instance()
    assert RedisProxy._instance is None


def test_trickling_headers_hit_the_total_deadline(upstream, make_proxy, r):
    stop = threading.Event()

    def trickle(handler):
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        handler.wfile.flush()
        for _ in range(1000):  # one header byte every 50 ms: each read is quick, the whole is not
            if stop.wait(0.05):
                return
            handler.wfile.write(b"x")
            handler.wfile.flush()
        handler.close_connection = True

    url = upstream.route("/slowheaders", trickle)
    proxy = make_proxy(timeout=0.5)
    try:
        got = request(proxy.port, q(url, "sh"))
    finally:
        stop.set()
    # Without the deadline this request would outlast the client's own 10 s timeout.
    assert got.status == 504, got
    assert r.exists("rp:sh") == 0


@pytest.mark.parametrize("status_line, extra", [
    (b"HTTP/1.1 103 Early Hints", b""), (b"HTTP/1.1 999 Odd", b""),
    (b"HTTP/1.1 302 Found", b"Location: http://[::1\r\n")])
def test_unusable_upstream_answers_are_502(upstream, make_proxy, r, status_line, extra):
    def odd(handler):
        handler.wfile.write(status_line + b"\r\n" + extra + b"Content-Length: 0\r\n\r\n")
        handler.close_connection = True

    url = upstream.route("/odd", odd)
    got = request(make_proxy().port, q(url, "odd"))
    assert got.status == 502 and got.json()["detail"], got
    assert r.exists("rp:odd") == 0


def test_a_redirect_body_is_never_read(upstream, make_proxy):
    stop = threading.Event()
    upstream.serve("/landing", b"landed")

    def trickling_redirect(handler):
        handler.send_response(302)
        handler.send_header("Location", "/landing")
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        for _ in range(1000):  # a body that would take 50 s, and is 10x the cap
            if stop.wait(0.05):
                return
            handler.wfile.write(b"x" * 100)
            handler.wfile.flush()

    url = upstream.route("/redirect", trickling_redirect)
    proxy = make_proxy(timeout=2, max_bytes=10_000)
    try:
        got = request(proxy.port, q(url, "rd"))
    finally:
        stop.set()
    assert (got.status, got.body) == (200, b"landed")
