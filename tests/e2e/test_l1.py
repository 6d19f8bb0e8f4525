"""L1 in front of Redis (issue 3): LRU, TTL, byte bound, single flight, and coherence through
Redis's server-assisted invalidation. Redis reads are counted with INFO commandstats."""

import dataclasses
import random
import threading
from urllib.parse import quote

import pytest
import redis

from proxy.cache.entry import decode, encode
from proxy.cache.local_cache import MISSING, RECENT_INVALIDATIONS, LocalCache
from proxy.store.launcher import RedisServer
from servers import request, wait_until


def gets(client: redis.Redis) -> int:
    """How many GET commands the test's Redis has run since the last CONFIG RESETSTAT."""
    return int(client.info("commandstats").get("cmdstat_get", {}).get("calls", 0))


@pytest.fixture
def counted(r):
    r.config_resetstat()
    return r


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ----- the data structure alone (pure logic) ----------------------------------------------------

def test_lru_evicts_the_least_recently_used_past_capacity():
    cache = LocalCache(capacity=3)
    for key in "abc":
        cache.set(key, key.encode())
    assert cache.get("a") == b"a"  # a is now the most recently used
    cache.set("d", b"d")
    assert cache.get("b") is MISSING
    assert [cache.get(k) for k in "acd"] == [b"a", b"c", b"d"]


def test_entries_expire_after_the_ttl_on_the_injected_clock():
    clock = FakeClock()
    cache = LocalCache(capacity=10, ttl=5, timer=clock)
    cache.set("long", b"1")
    cache.set("short", b"2", ttl=1)
    clock.now += 1.5
    assert (cache.get("long"), cache.get("short")) == (b"1", MISSING)
    clock.now += 4
    assert cache.get("long") is MISSING
    assert len(cache) == 0 and cache.bytes == 0


def test_an_expired_entry_is_evicted_before_any_live_one():
    clock = FakeClock()
    cache = LocalCache(capacity=2, ttl=5, timer=clock)
    cache.set("short", b"1", ttl=1)
    cache.set("long", b"2")
    assert cache.get("short") == b"1"  # short is now the most recently used, yet expires first
    clock.now += 2
    cache.set("new", b"3")
    assert (cache.get("long"), cache.get("new"), cache.get("short")) == (b"2", b"3", MISSING)


def test_rewriting_one_key_keeps_its_expiry_bookkeeping_bounded():
    cache = LocalCache(capacity=4)
    for i in range(10_000):
        cache.set("k", b"%d" % (i % 10))
    assert cache.get("k") == b"9" and len(cache) == 1 and cache.bytes == 1
    assert len(cache._order) <= 3  # replaced entries' heap items are dropped, not piled up


def test_the_byte_bound_evicts_and_refuses_values_larger_than_it():
    cache = LocalCache(capacity=100, max_bytes=10)
    cache.set("a", b"12345")
    cache.set("b", b"12345")
    cache.set("c", b"123")  # over 10 bytes: the oldest goes
    assert cache.get("a") is MISSING and cache.bytes == 8
    cache.set("huge", b"x" * 11)
    assert cache.get("huge") is MISSING and cache.get("b") == b"12345"


def test_byte_accounting_stays_exact_under_random_operations():
    rng, clock = random.Random(7), FakeClock()
    cache = LocalCache(capacity=8, max_bytes=200, ttl=5, timer=clock)
    for _ in range(3000):
        key = rng.randrange(20)
        action = rng.random()
        if action < 0.6:
            cache.set(key, b"x" * rng.randrange(60), ttl=rng.choice([None, 0.5, 2]))
        elif action < 0.8:
            cache.get(key)
        elif action < 0.9:
            cache.pop(key)
        else:
            clock.now += rng.random()
        live = [cache.get(k) for k in range(20)]
        assert cache.bytes == sum(len(v) for v in live if v is not MISSING) <= 200
        assert len(cache) <= 8


def test_a_load_that_straddles_an_invalidation_is_not_kept():
    cache = LocalCache(capacity=10)

    def load():
        cache.pop("k")  # an invalidation arrives while the read is on the wire
        return b"possibly stale", None

    assert cache.get_or_load("k", load) == b"possibly stale"
    assert cache.get("k") is MISSING


def test_an_invalidation_of_one_key_drops_only_that_key_fill():
    cache = LocalCache(capacity=10)
    fill_a, fill_b = cache.epoch, cache.epoch  # reads of A and B go out
    cache.pop("a")  # A changes in Redis while both are on the wire
    cache.set("a", b"old a", epoch=fill_a)
    cache.set("b", b"b", epoch=fill_b)
    assert (cache.get("a"), cache.get("b")) == (MISSING, b"b")
    fill_a = cache.epoch  # a read of A that goes out after the invalidation is kept
    cache.set("a", b"new a", epoch=fill_a)
    assert cache.get("a") == b"new a"


def test_a_load_of_another_key_survives_an_invalidation_during_it():
    cache = LocalCache(capacity=10)

    def load():
        cache.pop("a")
        return b"b", None

    assert cache.get_or_load("b", load) == b"b"
    assert cache.get("b") == b"b"


@pytest.mark.parametrize("flush", ["clear", "suspend_resume"])
def test_a_flush_drops_every_fill_in_flight(flush):
    cache = LocalCache(capacity=10)
    fill_a, fill_b = cache.epoch, cache.epoch
    if flush == "clear":
        cache.clear()
    else:
        cache.suspend()
        cache.resume()
    cache.set("a", b"a", epoch=fill_a)
    cache.set("b", b"b", epoch=fill_b)
    assert (cache.get("a"), cache.get("b")) == (MISSING, MISSING)


def test_a_fill_older_than_the_forgotten_invalidations_is_dropped():
    assert RECENT_INVALIDATIONS == 4096  # what the README states
    cache = LocalCache(capacity=10)
    fill = cache.epoch
    for n in range(RECENT_INVALIDATIONS):  # all remembered one by one: "b" was not among them
        cache.pop(n)
    cache.set("b", b"b", epoch=fill)
    assert cache.get("b") == b"b"
    fill = cache.epoch
    for n in range(RECENT_INVALIDATIONS + 1):  # one forgotten: it might have been "c"
        cache.pop(("other", n))
    cache.set("c", b"c", epoch=fill)
    assert cache.get("c") is MISSING


def test_a_suspended_cache_serves_but_takes_nothing_new():
    cache = LocalCache(capacity=10)
    cache.set("held", b"1")
    cache.suspend()
    cache.set("new", b"2")
    assert (cache.get("held"), cache.get("new")) == (b"1", MISSING)
    cache.resume()
    cache.set("new", b"2")
    assert cache.get("new") == b"2"


# ----- /get/<key> through L1, against a real Redis ------------------------------------------------

def test_a_second_read_is_answered_from_l1_without_redis(make_proxy, counted):
    counted.set("hot", b"value")
    proxy = make_proxy()
    for _ in range(5):
        assert request(proxy.port, "/get/hot").body == b"value"
    assert gets(counted) == 1


def test_lru_past_capacity_goes_back_to_redis(make_proxy, counted):
    for key in ("k1", "k2", "k3", "k4"):
        counted.set(key, key)
    proxy = make_proxy(capacity=3)
    for key in ("k1", "k2", "k3", "k1", "k4"):  # k4 evicts k2, the least recently used
        request(proxy.port, f"/get/{key}")
    assert gets(counted) == 4
    assert request(proxy.port, "/get/k1").body == b"k1" and gets(counted) == 4
    assert request(proxy.port, "/get/k2").body == b"k2" and gets(counted) == 5


def test_l1_entry_expires_after_cache_ttl(make_proxy, counted):
    counted.set("ttl", b"t")
    clock = FakeClock()
    proxy = make_proxy(ttl=10, local_timer=clock)
    request(proxy.port, "/get/ttl")
    clock.now += 9
    request(proxy.port, "/get/ttl")
    assert gets(counted) == 1
    clock.now += 2
    request(proxy.port, "/get/ttl")
    assert gets(counted) == 2


def test_in_ttl_mode_an_l1_copy_expires_with_its_key_in_redis(make_proxy, counted):
    counted.set("brief", b"short-lived", px=2000)
    clock = FakeClock()
    proxy = make_proxy(ttl=3600, local_timer=clock, invalidation="ttl")
    for _ in range(2):
        got = request(proxy.port, "/get/brief")
        assert (got.status, got.body) == (200, b"short-lived")
    assert gets(counted) == 1  # the second from L1
    clock.now += 2.0  # the key's PX 2000 is over: L1 must not answer for it
    request(proxy.port, "/get/brief")
    assert gets(counted) == 2


def test_in_ttl_mode_an_mget_copy_expires_with_its_key_in_redis(make_resp_proxy, r):
    r.set("brief", b"short-lived", px=2000)
    r.set("lasting", b"kept")
    clock = FakeClock()
    resp = make_resp_proxy(ttl=3600, local_timer=clock, invalidation="ttl")
    client = redis.Redis(host="127.0.0.1", port=resp.port, protocol=2, socket_timeout=5)
    assert client.mget("brief", "lasting") == [b"short-lived", b"kept"]
    clock.now += 2.0
    r.config_resetstat()
    assert client.get("lasting") == b"kept"  # no expiry in Redis: L1's own TTL
    assert gets(r) == 0
    client.get("brief")
    assert gets(r) == 1
    client.close()


def test_a_set_in_redis_is_seen_at_once_not_after_the_ttl(make_proxy, r):
    r.set("doc", b"v1")
    proxy = make_proxy(ttl=3600)
    assert request(proxy.port, "/get/doc").body == b"v1"
    r.set("doc", b"v2")  # behind the proxy's back
    wait_until(lambda: request(proxy.port, "/get/doc").body == b"v2", timeout=0.2, interval=0.005)
    assert proxy.proxy.stats["invalidations"] >= 1


def test_a_delete_in_redis_is_seen_at_once(make_proxy, r):
    r.set("gone", b"here")
    proxy = make_proxy(ttl=3600)
    assert request(proxy.port, "/get/gone").status == 200
    r.delete("gone")
    wait_until(lambda: request(proxy.port, "/get/gone").status == 404, timeout=0.2, interval=0.005)


def test_flushall_empties_l1(make_proxy, r):
    r.set("a", b"1")
    proxy = make_proxy()
    request(proxy.port, "/get/a")
    r.flushall()
    wait_until(lambda: request(proxy.port, "/get/a").status == 404, timeout=0.2, interval=0.005)


def test_url_entries_follow_a_purge_made_by_another_proxy(upstream, make_proxy):
    url = upstream.serve("/shared", b"one copy")
    path = f"/?url={quote(url, safe='')}&key=shared"
    first, second = make_proxy(), make_proxy()
    request(first.port, path)
    assert request(second.port, path).headers["X-Cache"] == "HIT"  # now in second's L1
    assert request(first.port, "/?key=shared", method="DELETE").json() == {"purged": 1}
    wait_until(lambda: request(second.port, path).headers["X-Cache"] == "MISS", timeout=0.5,
               interval=0.005)


def test_a_key_only_read_fills_l1_and_the_next_ones_do_not_touch_redis(upstream, make_proxy,
                                                                       counted):
    url = upstream.serve("/by-key", b"kept")
    writer, reader = make_proxy(), make_proxy()
    assert request(writer.port, f"/?url={quote(url, safe='')}&key=bykey").headers["X-Cache"] == "MISS"
    counted.config_resetstat()
    assert request(reader.port, "/?key=bykey").body == b"kept"  # from Redis, into L1
    assert gets(counted) == 1
    for _ in range(3):
        assert request(reader.port, "/?key=bykey").body == b"kept"
    # The same L1 entry a ?url= read of that key finds (same tier and key).
    assert request(reader.port, f"/?url={quote(url, safe='')}&key=bykey").headers["X-Cache"] == "HIT"
    assert gets(counted) == 1
    assert (reader.proxy.stats["hits_redis"], reader.proxy.stats["hits_l1"]) == (1, 4)
    assert upstream.hits["/by-key"] == 1


def test_a_key_only_read_kept_in_l1_follows_a_write_and_a_purge_in_redis(upstream, make_proxy,
                                                                         counted):
    url = upstream.serve("/by-key", b"kept")
    writer, reader = make_proxy(), make_proxy()
    request(writer.port, f"/?url={quote(url, safe='')}&key=bykey")
    assert request(reader.port, "/?key=bykey").body == b"kept"  # into reader's L1
    stored = decode(counted.get("rp:bykey"))
    counted.set("rp:bykey", encode(dataclasses.replace(stored, body=b"rewritten")), keepttl=True)
    wait_until(lambda: request(reader.port, "/?key=bykey").body == b"rewritten", timeout=0.5,
               interval=0.005)
    counted.config_resetstat()
    assert request(reader.port, "/?key=bykey").body == b"rewritten"  # kept in L1 again
    assert gets(counted) == 0
    assert request(writer.port, "/?key=bykey", method="DELETE").json() == {"purged": 1}
    wait_until(lambda: request(reader.port, "/?key=bykey").status == 404, timeout=0.5,
               interval=0.005)


def test_losing_the_invalidation_connection_flushes_l1_and_rearms(make_proxy, r):
    r.set("k", b"v1")
    proxy = make_proxy()
    request(proxy.port, "/get/k")
    invalidator = proxy.proxy.invalidator
    old_id = invalidator.client_id
    r.client_kill_filter(_id=old_id)
    wait_until(lambda: invalidator.armed.is_set() and invalidator.client_id != old_id, timeout=5)
    assert len(proxy.proxy.local) == 0
    # Coherent again on the new connection.
    assert request(proxy.port, "/get/k").body == b"v1"
    r.set("k", b"v2")
    wait_until(lambda: request(proxy.port, "/get/k").body == b"v2", timeout=0.2, interval=0.005)


def test_a_redis_that_refuses_client_falls_back_to_ttl(make_proxy, caplog):
    with RedisServer(unix_socket=True, extra_args=("--rename-command", "CLIENT", "")) as managed:
        client = redis.Redis.from_url(managed.url)
        client.set("k", b"v")
        proxy = make_proxy(managed.url)
        health = request(proxy.port, "/health")
        assert (health.status, health.json()["l1_invalidation"]) == (200, "ttl")
        assert "L1 entries now expire by CACHE_TTL only" in caplog.text
        client.config_resetstat()
        for _ in range(3):
            assert request(proxy.port, "/get/k").body == b"v"
        assert gets(client) == 1  # L1 still works, on expiry alone
        client.close()
        proxy.thread.stop()
        proxy.proxy.close()


def test_ttl_mode_uses_no_tracking(make_proxy, r):
    proxy = make_proxy(invalidation="ttl")
    assert proxy.proxy.invalidator is None
    assert request(proxy.port, "/health").json()["l1_invalidation"] == "ttl"


def test_fifty_concurrent_reads_of_one_cold_key_make_one_redis_get(make_proxy, counted):
    counted.set("cold", b"single flight")
    proxy = make_proxy(server_options={"max_parallel": 64})
    gate = threading.Event()
    real_read = proxy.proxy._redis_value

    def gated_read(key):
        gate.wait(10)
        return real_read(key)

    proxy.proxy._redis_value = gated_read
    bodies: list[bytes] = []
    lock = threading.Lock()

    def one():
        body = request(proxy.port, "/get/cold").body
        with lock:
            bodies.append(body)

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    # Every request has missed L1 twice (the fast check, then get_or_load's) before the gate opens.
    wait_until(lambda: proxy.proxy.local.misses >= 100, timeout=10)
    gate.set()
    for t in threads:
        t.join(10)
    assert bodies == [b"single flight"] * 50
    assert gets(counted) == 1


def pttls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_pttl", {}).get("calls", 0))


def test_in_tracking_mode_a_read_sends_no_pttl_and_an_expiry_drops_the_copy(make_proxy, r):
    proxy = make_proxy(ttl=3600)
    wait_until(lambda: proxy.proxy.l1_invalidation == "tracking")
    r.set("brief", b"short-lived", px=300)
    r.config_resetstat()
    for _ in range(2):
        got = request(proxy.port, "/get/brief")
        assert (got.status, got.body) == (200, b"short-lived")
    assert (gets(r), pttls(r), proxy.proxy.stats["hits_l1"]) == (1, 0, 1)
    # Redis expires the key and tells the proxy, as it tells any change (CLIENT TRACKING).
    wait_until(lambda: request(proxy.port, "/get/brief").status == 404, timeout=5)
    assert proxy.proxy.stats["invalidations"] >= 1


@pytest.mark.parametrize("capacity, invalidation, expected", [(1024, "ttl", 1), (0, "ttl", 0)])
def test_pttl_is_read_only_where_it_caps_an_l1_copy(make_proxy, r, capacity, invalidation, expected):
    proxy = make_proxy(ttl=3600, capacity=capacity, invalidation=invalidation)
    r.set("k", b"v")
    r.config_resetstat()
    got = request(proxy.port, "/get/k")
    assert (got.status, got.body) == (200, b"v")
    assert (gets(r), pttls(r)) == (1, expected)
