"""Shared-cache semantics (issue 5): coalescing, Cache-Control, revalidation, stale, purge."""

import http.client
import socket
import struct
import threading

import pytest
from redis.crc import key_slot

from proxy.cache.freshness import Policy
from proxy.store.fetch_lock import slot_tag
from proxy.store.launcher import free_port
from servers import q, request, start_proxy, wait_until


def gated(upstream, path: str, body: bytes, headers: dict | None = None):
    """A route that holds every answer until the returned event is set."""
    gate = threading.Event()

    def route(handler):
        gate.wait(10)
        handler.reply(200, body, {"Content-Type": "text/plain", **(headers or {})})

    return upstream.route(path, route), gate


def fire(port: int, path: str, count: int) -> tuple[list, threading.Event, list[threading.Thread]]:
    """`count` concurrent GETs; returns their responses (filled as they finish)."""
    responses: list = []
    sent = [0]
    lock = threading.Lock()
    all_sent = threading.Event()

    def one():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.request("GET", path)
        with lock:
            sent[0] += 1
            if sent[0] == count:
                all_sent.set()
        resp = conn.getresponse()
        body = resp.read()
        with lock:
            responses.append((resp.status, body))
        conn.close()

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    return responses, all_sent, threads


def test_100_concurrent_requests_for_one_cold_url_make_one_fetch(upstream, make_proxy):
    url, gate = gated(upstream, "/cold", b"one fetch for all")
    proxy = make_proxy(server_options={"max_parallel": 128})
    responses, _sent, threads = fire(proxy.port, q(url), 100)
    # Hold the origin until every request has reached the miss path of the proxy.
    wait_until(lambda: proxy.proxy.stats["misses"] == 100, timeout=10)
    gate.set()
    for t in threads:
        t.join(20)
    assert upstream.hits["/cold"] == 1
    assert responses == [(200, b"one fetch for all")] * 100


def _start_proxy_process(redis_url: str, upstream_port: int, tmp_path, name: str):
    port = free_port()
    process = start_proxy({"REDIS_URL": redis_url, "HTTP_PORT": str(port), "RESP_PORT": "0",
                           "UPSTREAM_ALLOW_PRIVATE": "true", "UPSTREAM_ALLOWED_PORTS": str(upstream_port),
                           "MAX_PARALLEL": "64", "LOG_FILE": str(tmp_path / f"{name}.log")})

    def ready():
        try:
            return request(port, "/health", timeout=1).status == 200
        except OSError:
            return False

    wait_until(ready, timeout=20, interval=0.05)
    return process, port


def test_two_proxy_processes_on_one_redis_make_one_fetch(upstream, redis_url, tmp_path):
    url, gate = gated(upstream, "/shared", b"fetched once across processes")
    processes = [_start_proxy_process(redis_url, upstream.port, tmp_path, f"p{i}") for i in range(2)]
    try:
        batches = [fire(port, q(url), 50) for _process, port in processes]
        wait_until(lambda: upstream.hits["/shared"] >= 1 and all(s.is_set() for _, s, _ in batches),
                   timeout=10)
        gate.set()
        for _responses, _sent, threads in batches:
            for t in threads:
                t.join(20)
        assert upstream.hits["/shared"] == 1
        for responses, _sent, _threads in batches:
            assert responses == [(200, b"fetched once across processes")] * 50
    finally:
        gate.set()
        for process, _port in processes:
            process.terminate()
            process.wait(10)


def test_lock_is_released_by_its_owner_after_a_failed_fetch(upstream, make_proxy, r):
    url = upstream.serve("/fails", b"", status=500)
    proxy = make_proxy()
    assert request(proxy.port, q(url, "f")).status == 500
    assert list(r.scan_iter("rp:f*")) == []  # neither the entry nor its lock key


@pytest.mark.parametrize("cache_control", ["no-store", "private", "private, max-age=60"])
def test_responses_a_shared_cache_must_not_store(upstream, make_proxy, r, cache_control):
    url = upstream.serve("/ns", b"personal", headers={"Cache-Control": cache_control})
    proxy = make_proxy()
    for _ in range(2):
        assert request(proxy.port, q(url, "ns")).headers["X-Cache"] == "MISS"
    assert upstream.hits["/ns"] == 2 and r.exists("rp:ns") == 0


def test_set_cookie_is_not_stored_unless_configured(upstream, make_proxy, r):
    url = upstream.serve("/cookie", b"c", headers={"Set-Cookie": "session=abc"})
    proxy = make_proxy()
    request(proxy.port, q(url, "c"))
    assert r.exists("rp:c") == 0
    allowing = make_proxy(policy=Policy(ttl=3600, store_set_cookie=True))
    request(allowing.port, q(url, "c"))
    assert r.exists("rp:c") == 1


def test_max_age_bounds_freshness_below_cache_ttl(upstream, make_proxy, r):
    url = upstream.serve("/ma", b"one second", headers={"Cache-Control": "max-age=1"})
    now = [1_000_000.0]
    proxy = make_proxy(ttl=3600, stale_ttl=300, clock=lambda: now[0])
    assert request(proxy.port, q(url, "ma")).headers["X-Cache"] == "MISS"
    assert 1 < r.ttl("rp:ma") <= 301  # freshness 1 s + the 300 s revalidation window
    assert request(proxy.port, q(url, "ma")).headers["X-Cache"] == "HIT"
    now[0] += 1.5
    assert request(proxy.port, q(url, "ma")).headers["X-Cache"] == "MISS"
    assert upstream.hits["/ma"] == 2


def test_s_maxage_wins_and_respect_cache_control_off_ignores_it(upstream, make_proxy, r):
    url = upstream.serve("/sm", b"s", headers={"Cache-Control": "max-age=600, s-maxage=5"})
    proxy = make_proxy(ttl=3600)
    request(proxy.port, q(url, "sm"))
    assert 0 < r.ttl("rp:sm") <= 5
    ignoring = make_proxy(ttl=3600, policy=Policy(ttl=3600, respect_cache_control=False))
    request(ignoring.port, q(url, "sm2"))
    assert r.ttl("rp:sm2") > 3000


def test_etag_revalidation_gets_a_304_and_no_body_transfer(upstream, make_proxy, r):
    body = b"validated body" * 100
    sent_bodies = []

    def route(handler):
        if handler.headers.get("If-None-Match") == '"v1"':
            sent_bodies.append(0)
            handler.reply(304, b"", {"ETag": '"v1"', "Cache-Control": "max-age=1"})
        else:
            sent_bodies.append(len(body))
            handler.reply(200, body, {"ETag": '"v1"', "Cache-Control": "max-age=1",
                                      "Content-Type": "text/plain"})

    url = upstream.route("/etag", route)
    now = [1_000_000.0]
    proxy = make_proxy(ttl=3600, stale_ttl=60, clock=lambda: now[0])
    assert request(proxy.port, q(url, "et")).body == body
    now[0] += 2  # stale now, still in Redis for revalidation
    again = request(proxy.port, q(url, "et"))
    assert (again.status, again.body, again.headers["ETag"]) == (200, body, '"v1"')
    # As the README's table says: a hit, forwarded to revalidate, and the freshened entry stored.
    assert (again.headers["X-Cache"], again.headers["Cache-Status"]) == \
        ("HIT", "redis-proxy; fwd=stale; fwd-status=304; stored; ttl=1")
    _path, headers = upstream.requests[-1]
    assert headers.get("If-None-Match") == '"v1"'
    assert sent_bodies == [len(body), 0]  # the second exchange carried no body
    assert request(proxy.port, q(url, "et")).headers["X-Cache"] == "HIT"  # freshened
    assert upstream.hits["/etag"] == 2


def test_last_modified_revalidation(upstream, make_proxy):
    stamp = "Tue, 24 Nov 2026 10:00:00 GMT"

    def route(handler):
        if handler.headers.get("If-Modified-Since") == stamp:
            handler.reply(304, b"")
        else:
            handler.reply(200, b"dated", {"Last-Modified": stamp, "Cache-Control": "max-age=1"})

    url = upstream.route("/lm", route)
    now = [1_000_000.0]
    proxy = make_proxy(stale_ttl=60, clock=lambda: now[0])
    request(proxy.port, q(url))
    now[0] += 5
    assert request(proxy.port, q(url)).body == b"dated"
    assert upstream.requests[-1][1].get("If-Modified-Since") == stamp


def test_stale_copy_served_when_upstream_is_down(upstream, make_proxy):
    url = upstream.serve("/sie", b"last good copy", headers={"Cache-Control": "max-age=1"})
    now = [1_000_000.0]
    proxy = make_proxy(stale_ttl=300, stale_if_error=300, clock=lambda: now[0])
    request(proxy.port, q(url, "sie"))
    upstream.serve("/sie", b"broken", status=503)
    now[0] += 10
    got = request(proxy.port, q(url, "sie"))
    assert (got.status, got.body, got.headers["X-Cache"]) == (200, b"last good copy", "STALE")
    assert "fwd=stale; fwd-status=503; detail=stale-if-error; ttl=-" in got.headers["Cache-Status"]
    upstream.stop()  # the origin gone entirely: connection refused
    got = request(proxy.port, q(url, "sie"))
    assert (got.status, got.headers["X-Cache"]) == (200, "STALE")


def test_without_stale_serving_an_upstream_failure_is_502(upstream, make_proxy):
    url = upstream.serve("/nostale", b"x", headers={"Cache-Control": "max-age=1"})
    now = [1_000_000.0]
    proxy = make_proxy(stale_ttl=300, stale_if_error=0, clock=lambda: now[0])
    request(proxy.port, q(url))
    upstream.stop()
    now[0] += 10
    assert request(proxy.port, q(url)).status == 502


def test_stale_while_revalidate_answers_at_once_and_refreshes_once(upstream, make_proxy):
    version = [b"v1"]
    url = upstream.route("/swr", lambda h: h.reply(200, version[0], {"Cache-Control": "max-age=1"}))
    now = [1_000_000.0]
    proxy = make_proxy(stale_ttl=300, stale_while_revalidate=60, clock=lambda: now[0])
    request(proxy.port, q(url, "swr"))
    version[0] = b"v2"
    now[0] += 5
    got = request(proxy.port, q(url, "swr"))
    assert (got.body, got.headers["X-Cache"]) == (b"v1", "STALE")
    assert "detail=stale-while-revalidate" in got.headers["Cache-Status"]
    wait_until(lambda: request(proxy.port, q(url, "swr")).body == b"v2")
    assert upstream.hits["/swr"] == 2


def test_purge_by_key_and_by_url_removes_from_redis_and_l1(upstream, make_proxy, r):
    url = upstream.serve("/purge", b"purge me")
    proxy = make_proxy()
    request(proxy.port, q(url, "pk"))
    assert request(proxy.port, q(url, "pk")).headers["X-Cache"] == "HIT"  # now in L1 too
    gone = request(proxy.port, "/?key=pk", method="DELETE")
    assert (gone.status, gone.json()) == (200, {"purged": 1})
    assert r.exists("rp:pk") == 0
    assert request(proxy.port, q(url, "pk")).headers["X-Cache"] == "MISS"
    request(proxy.port, q(url))
    assert request(proxy.port, q(url), method="DELETE").json() == {"purged": 1}
    assert request(proxy.port, q(url)).headers["X-Cache"] == "MISS"
    assert request(proxy.port, "/?key=never", method="DELETE").json() == {"purged": 0}
    assert request(proxy.port, "/", method="DELETE").status == 400


def test_truncated_upstream_body_is_502_and_not_stored(upstream, make_proxy, r):
    def short(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b"only part of it")
        handler.close_connection = True

    url = upstream.route("/short", short)
    proxy = make_proxy()
    got = request(proxy.port, q(url, "short"))
    assert got.status == 502 and "incomplete" in got.json()["detail"]
    assert r.exists("rp:short") == 0


def test_upstream_reset_mid_body_is_502_and_not_stored(upstream, make_proxy, r):

    def reset(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        handler.wfile.write(b"x" * 1000)
        handler.wfile.flush()
        # SO_LINGER 0: close sends a RST instead of a FIN.
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()
        handler.close_connection = True

    url = upstream.route("/reset", reset)
    proxy = make_proxy()
    assert request(proxy.port, q(url, "reset")).status == 502
    assert r.exists("rp:reset") == 0


# ----- found in review: regressions pinned -----------------------------------------------------

def test_two_urls_under_one_key_never_share_a_fetch(upstream, make_proxy):
    url_a, gate = gated(upstream, "/pa", b"BODY OF A")
    url_b = upstream.serve("/pb", b"BODY OF B")
    proxy = make_proxy(server_options={"max_parallel": 8})
    responses, _sent, threads = fire(proxy.port, q(url_a, "shared"), 1)
    wait_until(lambda: upstream.hits["/pa"] == 1)  # A's fetch is in flight, held at the gate
    got = request(proxy.port, q(url_b, "shared"))
    gate.set()
    threads[0].join(10)
    assert (got.body, upstream.hits["/pb"]) == (b"BODY OF B", 1)
    assert responses == [(200, b"BODY OF A")]


def test_an_entry_this_proxy_stored_follows_a_purge_by_another(upstream, make_proxy):
    url = upstream.serve("/own", b"stored by first")
    path = q(url, "own")
    first, second = make_proxy(), make_proxy()
    assert request(first.port, path).headers["X-Cache"] == "MISS"  # first stores it, L1 too
    assert request(first.port, path).headers["X-Cache"] == "HIT"
    assert request(second.port, "/?key=own", method="DELETE").json() == {"purged": 1}
    wait_until(lambda: request(first.port, path).headers["X-Cache"] == "MISS", timeout=0.5,
               interval=0.005)


def test_a_304_keeps_the_stored_max_age(upstream, make_proxy, r):
    def route(handler):
        if handler.headers.get("If-None-Match") == '"v"':
            handler.reply(304, b"", {"ETag": '"v"'})  # a 304 with the validator alone
        else:
            handler.reply(200, b"ten seconds", {"ETag": '"v"', "Cache-Control": "max-age=10"})

    url = upstream.route("/r304", route)
    now = [1_000_000.0]
    proxy = make_proxy(ttl=3600, stale_ttl=60, clock=lambda: now[0])
    request(proxy.port, q(url, "r304"))
    now[0] += 20
    again = request(proxy.port, q(url, "r304"))
    assert again.headers["Cache-Status"].endswith("ttl=10")
    assert 10 <= r.ttl("rp:r304") <= 70  # max-age 10 + the stale window, not CACHE_TTL


@pytest.mark.parametrize("cache_control", ["max-age=1, must-revalidate", "max-age=1, proxy-revalidate",
                                           "s-maxage=1", "no-cache"])
def test_entries_that_forbid_stale_serving_are_not_served_stale(upstream, make_proxy, cache_control):
    url = upstream.serve("/strict", b"strict", headers={"Cache-Control": cache_control})
    now = [1_000_000.0]
    proxy = make_proxy(stale_ttl=300, stale_if_error=300, stale_while_revalidate=300,
                       clock=lambda: now[0])
    request(proxy.port, q(url, "strict"))
    now[0] += 5
    upstream.serve("/strict", b"broken", status=503)
    got = request(proxy.port, q(url, "strict"))
    assert (got.status, got.headers["X-Cache"]) == (503, "MISS")  # RFC 9111 §4.2.4


def test_upstream_age_counts_against_freshness(upstream, make_proxy):
    url = upstream.serve("/aged", b"from a cdn", headers={"Cache-Control": "max-age=60", "Age": "50"})
    now = [1_000_000.0]
    proxy = make_proxy(clock=lambda: now[0])
    first = request(proxy.port, q(url, "aged"))
    assert first.headers["Age"] == "50"
    now[0] += 5
    assert request(proxy.port, q(url, "aged")).headers["Age"] == "55"
    now[0] += 10  # 65 s old: stale
    assert request(proxy.port, q(url, "aged")).headers["X-Cache"] == "MISS"


@pytest.mark.parametrize("purge_by", ["key", "url"])
@pytest.mark.parametrize("purged_through", ["the fetching proxy", "another proxy"])
def test_a_purge_during_a_fetch_is_not_undone_by_its_store(upstream, make_proxy, r, purge_by,
                                                           purged_through):
    url, gate = gated(upstream, "/racing", b"older answer")
    path = q(url, "race") if purge_by == "key" else q(url)
    fetching = make_proxy()
    purging = fetching if purged_through == "the fetching proxy" else make_proxy()
    redis_key = fetching.proxy.parse(url, "race" if purge_by == "key" else None).redis_key
    responses, _sent, threads = fire(fetching.port, path, 1)
    wait_until(lambda: upstream.hits["/racing"] == 1)  # the fetch is in flight
    purge = request(purging.port, "/?key=race" if purge_by == "key" else q(url), method="DELETE")
    assert (purge.status, purge.json()) == (200, {"purged": 0})
    gate.set()
    for t in threads:
        t.join(10)
    assert responses == [(200, b"older answer")]
    assert r.exists(redis_key) == 0
    assert r.exists(f"rp:{{{slot_tag(key_slot(redis_key.encode()))}}}\x00purge-seq") == 1
    # The marker lives twice the fetch lock's hold: UPSTREAM_TIMEOUT plus two socket timeouts.
    socket_timeout = fetching.proxy.client.connection_pool.connection_kwargs["socket_timeout"]
    assert 2 * (5.0 + 2 * socket_timeout) * 1000 - 4000 < r.pttl(f"{{{redis_key}}}\x00purged") \
        <= 2 * (5.0 + 2 * socket_timeout) * 1000
    again = request(fetching.port, path)
    assert (again.status, again.body, again.headers["X-Cache"]) == (200, b"older answer", "MISS")
    assert upstream.hits["/racing"] == 2
    # The fetch that began after the purge is stored as usual.
    assert 3590 < r.ttl(redis_key) <= 3600
    assert request(fetching.port, path).headers["X-Cache"] == "HIT"
    assert upstream.hits["/racing"] == 2


def test_a_purge_of_another_entry_during_a_fetch_does_not_stop_its_store(upstream, make_proxy, r):
    url, gate = gated(upstream, "/kept", b"kept answer")
    proxy = make_proxy()
    responses, _sent, threads = fire(proxy.port, q(url, "kept"), 1)
    wait_until(lambda: upstream.hits["/kept"] == 1)
    assert request(proxy.port, "/?key=other", method="DELETE").json() == {"purged": 0}
    gate.set()
    for t in threads:
        t.join(10)
    assert responses == [(200, b"kept answer")]
    assert 3590 < r.ttl("rp:kept") <= 3600
    hit = request(proxy.port, q(url, "kept"))
    assert (hit.body, hit.headers["X-Cache"], upstream.hits["/kept"]) == (b"kept answer", "HIT", 1)
