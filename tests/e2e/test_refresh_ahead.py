"""REFRESH_AHEAD: a hit past that fraction of its entry's freshness answers from the cache at
once and starts one background refresh, coalesced across proxies by the fetch lock."""

import threading
import time

from servers import q, request, wait_until


def versioned(upstream, path: str, max_age: int, gate: threading.Event | None = None):
    """A route answering `v<n>` with ETag "v<n>" (n counts its hits, so every fetch is a new
    version); `gate` holds every answer after the first until it is set."""
    def route(handler):
        if gate is not None and upstream.hits[path] > 1:
            gate.wait(10)
        version = upstream.hits[path]
        headers = {"Cache-Control": f"max-age={max_age}", "ETag": f'"v{version}"'}
        handler.reply(200, b"v%d" % version, headers)

    return upstream.route(path, route)


def test_a_hit_past_the_fraction_is_served_at_once_and_refreshed_once(upstream, make_proxy):
    url = versioned(upstream, "/ra", max_age=100)
    now = [1_000_000.0]
    proxy = make_proxy(refresh_ahead=0.8, clock=lambda: now[0])
    assert request(proxy.port, q(url)).body == b"v1"
    now[0] += 79.9  # just before 80 % of the freshness
    before = request(proxy.port, q(url))
    assert (before.body, before.headers["X-Cache"]) == (b"v1", "HIT")
    assert proxy.proxy.stats["refreshes_ahead"] == 0
    now[0] += 0.1  # at 80 %
    at = request(proxy.port, q(url))
    assert (at.body, at.headers["X-Cache"], at.headers["Age"]) == (b"v1", "HIT", "80")
    assert proxy.proxy.stats["refreshes_ahead"] == 1
    wait_until(lambda: request(proxy.port, q(url)).body == b"v2")
    assert upstream.hits["/ra"] == 2
    assert upstream.requests[-1][1].get("If-None-Match") == '"v1"'  # conditional
    after = request(proxy.port, q(url))
    assert (after.body, after.headers["Age"]) == (b"v2", "0")
    assert proxy.proxy.stats["refreshes_ahead"] == 1  # the new entry is young: no refresh
    assert proxy.proxy.stats["misses"] == 1
    metrics = request(proxy.port, "/metrics").body.decode()
    assert "redis_proxy_refreshes_ahead_total 1.0" in metrics


def test_refresh_ahead_is_off_by_default(upstream, make_proxy):
    url = versioned(upstream, "/off", max_age=100)
    now = [1_000_000.0]
    proxy = make_proxy(clock=lambda: now[0])
    request(proxy.port, q(url))
    now[0] += 99.9
    assert request(proxy.port, q(url)).body == b"v1"
    assert proxy.proxy.stats["refreshes_ahead"] == 0
    assert upstream.hits["/off"] == 1


def test_refreshes_ahead_from_two_proxies_make_one_upstream_fetch(upstream, make_proxy):
    gate = threading.Event()
    url = versioned(upstream, "/two", max_age=100, gate=gate)
    now = [1_000_000.0]
    first = make_proxy(refresh_ahead=0.5, clock=lambda: now[0])
    second = make_proxy(refresh_ahead=0.5, clock=lambda: now[0])
    request(first.port, q(url))
    now[0] += 60
    assert request(first.port, q(url)).body == b"v1"
    wait_until(lambda: upstream.hits["/two"] == 2)  # first's refresh holds the fetch lock
    assert request(second.port, q(url)).body == b"v1"
    wait_until(lambda: second.proxy.stats["coalesced_waits"] == 1)
    gate.set()
    wait_until(lambda: not first.proxy.urls._refreshing and not second.proxy.urls._refreshing)
    assert (first.proxy.stats["refreshes_ahead"], second.proxy.stats["refreshes_ahead"]) == (1, 1)
    assert upstream.hits["/two"] == 2
    assert request(second.port, q(url)).body == b"v2"


def test_a_hot_entry_with_max_age_2_is_never_missed_while_read_for_6_seconds(upstream, make_proxy):
    url = versioned(upstream, "/hot", max_age=2)
    proxy = make_proxy(refresh_ahead=0.8)
    assert request(proxy.port, q(url)).headers["X-Cache"] == "MISS"
    caches, bodies = set(), set()
    ends = time.monotonic() + 6
    while time.monotonic() < ends:
        got = request(proxy.port, q(url))
        caches.add(got.headers["X-Cache"])
        bodies.add(got.body)
    assert caches == {"HIT"}
    assert proxy.proxy.stats["misses"] == 1
    # Refreshed at an age of 1.6 s, counted from the origin's Date (RFC 9111 §4.2.3), which is
    # whole seconds: so 0.6 to 1.6 s after each fetch, 3 to 10 times in 6 s, each one a new
    # version served (and not on every hit: thousands of them).
    assert 3 <= upstream.hits["/hot"] - 1 <= 10
    assert len(bodies) >= upstream.hits["/hot"] - 1  # the last may land after the reading


def test_at_most_8_refreshes_ahead_run_at_once(upstream, make_proxy):
    gate = threading.Event()
    urls = [versioned(upstream, f"/many{i}", max_age=100, gate=gate) for i in range(9)]
    now = [1_000_000.0]
    proxy = make_proxy(refresh_ahead=0.5, clock=lambda: now[0])
    for url in urls:
        request(proxy.port, q(url))
    now[0] += 60
    try:
        for url in urls:
            assert request(proxy.port, q(url)).body == b"v1"
        assert proxy.proxy.stats["refreshes_ahead"] == 8  # the ninth is not started
        wait_until(lambda: sum(upstream.hits.values()) == 9 + 8)
    finally:
        gate.set()
    wait_until(lambda: not proxy.proxy.urls._refreshing)
    assert request(proxy.port, q(urls[8])).body == b"v1"  # its refresh starts now
    assert proxy.proxy.stats["refreshes_ahead"] == 9


def test_the_fraction_is_of_the_rfc_freshness_lifetime_s_maxage_over_max_age(upstream, make_proxy):
    url = upstream.serve("/shared", b"v1", headers={"Cache-Control": "max-age=10, s-maxage=100",
                                                    "ETag": '"v1"'})
    now = [1_000_000.0]
    proxy = make_proxy(refresh_ahead=0.8, clock=lambda: now[0])
    request(proxy.port, q(url))
    now[0] += 79.9  # 8 s would be 80 % of max-age; a shared cache takes s-maxage's 100 s
    assert request(proxy.port, q(url)).headers["X-Cache"] == "HIT"
    assert proxy.proxy.stats["refreshes_ahead"] == 0
    now[0] += 0.1
    assert request(proxy.port, q(url)).headers["X-Cache"] == "HIT"
    assert proxy.proxy.stats["refreshes_ahead"] == 1
    wait_until(lambda: upstream.hits["/shared"] == 2)


def test_a_stale_answer_the_request_accepted_starts_no_refresh_ahead(upstream, make_proxy):
    url = upstream.serve("/stale", b"v1", headers={"Cache-Control": "max-age=10", "ETag": '"v1"'})
    now = [1_000_000.0]
    proxy = make_proxy(refresh_ahead=0.5, stale_ttl=300, clock=lambda: now[0])
    request(proxy.port, q(url))
    now[0] += 20
    got = request(proxy.port, q(url), headers={"Cache-Control": "max-stale=60"})
    assert (got.body, got.headers["X-Cache"]) == (b"v1", "STALE")
    assert "detail=max-stale" in got.headers["Cache-Status"]
    assert proxy.proxy.stats["refreshes_ahead"] == 0
    assert upstream.hits["/stale"] == 1
