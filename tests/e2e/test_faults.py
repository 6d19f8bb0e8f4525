"""Redis faults (CONTRACT §7): down, frozen, restarted and full, with real servers."""

import os
import signal
import time

import pytest
import redis

from proxy.errors import StoreUnavailable
from proxy.store.launcher import RedisServer
from servers import q, request, wait_until


@pytest.fixture
def own_redis():
    """A redis-server of this test's own, which the test may stop, freeze and restart."""
    server = RedisServer(unix_socket=True).start()
    yield server
    if server.process and server.process.poll() is None:
        os.kill(server.pid, signal.SIGCONT)
    server.cleanup()


def test_redis_restart_is_survived_without_restarting_the_proxy(own_redis, upstream, make_proxy):
    url = upstream.serve("/r", b"resilient")
    proxy = make_proxy(own_redis.url, capacity=0)
    assert request(proxy.port, q(url, "r")).headers["X-Cache"] == "MISS"
    own_redis.stop()
    down = request(proxy.port, q(url, "r"))
    assert (down.status, down.body, down.headers["X-Cache"]) == (200, b"resilient", "BYPASS")
    assert request(proxy.port, "/health").status == 503
    own_redis.start()
    wait_until(lambda: request(proxy.port, "/health").status == 200, timeout=5)
    # The restarted Redis is empty (no persistence): one more fetch, then hits again.
    assert request(proxy.port, q(url, "r")).headers["X-Cache"] == "MISS"
    assert request(proxy.port, q(url, "r")).headers["X-Cache"] == "HIT"


def test_frozen_redis_costs_a_request_about_one_socket_timeout(own_redis, upstream, make_proxy):
    url = upstream.serve("/f", b"frozen")
    proxy = make_proxy(own_redis.url, capacity=0)
    request(proxy.port, q(url, "warm"))  # the pool holds a live connection
    os.kill(own_redis.pid, signal.SIGSTOP)  # accepts nothing, answers nothing
    try:
        started = time.monotonic()
        got = request(proxy.port, q(url, "f"))
        first = time.monotonic() - started
        assert (got.status, got.body, got.headers["X-Cache"]) == (200, b"frozen", "BYPASS")
        # CONTRACT §7: at most about a second on an unreachable Redis (socket timeout 0.5 s).
        assert first < 1.5, first
        # Then the back-off: the request path no longer waits on Redis at all.
        started = time.monotonic()
        assert request(proxy.port, q(url, "f2")).headers["X-Cache"] == "BYPASS"
        assert time.monotonic() - started < first
        assert request(proxy.port, "/health").json()["redis"] == "down"
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)
    wait_until(lambda: request(proxy.port, "/health").status == 200, timeout=5)
    assert request(proxy.port, q(url, "f")).headers["X-Cache"] in ("MISS", "HIT")


def test_proxy_started_with_redis_down_serves_and_recovers(own_redis, upstream, make_proxy):
    own_redis.stop()
    url = upstream.serve("/late", b"late redis")
    proxy = make_proxy(own_redis.url, capacity=0)
    got = request(proxy.port, q(url, "late"))
    assert (got.status, got.body, got.headers["X-Cache"]) == (200, b"late redis", "BYPASS")
    own_redis.start()
    wait_until(lambda: request(proxy.port, "/health").status == 200, timeout=5)
    assert request(proxy.port, q(url, "late")).headers["X-Cache"] == "MISS"
    assert request(proxy.port, q(url, "late")).headers["X-Cache"] == "HIT"


def test_get_key_with_redis_down_is_503_unless_l1_has_it(own_redis, make_proxy):
    client = redis.Redis.from_url(own_redis.url)
    client.set("warm", b"in L1")
    proxy = make_proxy(own_redis.url)
    assert request(proxy.port, "/get/warm").body == b"in L1"
    own_redis.stop()
    assert request(proxy.port, "/get/warm").body == b"in L1"
    cold = request(proxy.port, "/get/cold")
    assert cold.status == 503 and cold.json()["error"] == "redis unavailable"


@pytest.mark.parametrize("headers", [{}, {"Surrogate-Key": "t1"}], ids=["untagged", "tagged"])
def test_full_redis_still_serves_and_counts_the_store_error(own_redis, upstream, make_proxy, caplog,
                                                            headers):
    client = redis.Redis.from_url(own_redis.url)
    client.config_set("maxmemory-policy", "noeviction")
    client.set("ballast", b"x" * 2_000_000)
    client.config_set("maxmemory", 1024 * 1024)  # already over: every write is refused
    url = upstream.serve("/oom", b"still served", headers=headers)
    proxy = make_proxy(own_redis.url, capacity=0)
    for _ in range(3):
        got = request(proxy.port, q(url, "oom"))
        assert (got.status, got.body) == (200, b"still served")
    assert client.exists("rp:oom") == 0
    assert proxy.proxy.stats["store_errors"] == 3
    assert caplog.text.count("redis refused a write") == 1  # once per interval, not per request
    assert "maxmemory" in caplog.text


def test_key_lookup_with_redis_down_is_503_not_404(own_redis, make_proxy):
    proxy = make_proxy(own_redis.url, capacity=0)
    own_redis.stop()
    got = request(proxy.port, "/?key=anything")
    assert (got.status, got.json()["error"]) == (503, "redis unavailable")


def test_a_busy_pool_is_not_taken_for_redis_down(make_proxy, r):
    """Every pooled connection in use (a flood of /health, say) is 'busy', not 'down': Redis
    is not marked down, so the proxy does not fall back to BYPASS and 503s for everyone."""
    r.set("k", b"v")
    proxy = make_proxy(capacity=0).proxy
    pool = proxy.client.connection_pool
    held = [pool.get_connection() for _ in range(pool.max_connections)]
    try:
        with pytest.raises(StoreUnavailable) as caught:
            proxy.get_value(b"k")  # waits the pool's timeout for a free connection, in vain
        assert caught.value.error == "redis busy"
        assert proxy.health.up is True
    finally:
        for connection in held:
            pool.release(connection)
    assert proxy.get_value(b"k") == b"v"
    assert proxy.health_report()["redis"] == "ok"
