"""Scaled-out stores under faults: a cluster primary killed (with a replica to promote, and
without), a Sentinel failover while serving."""

import logging
import time
from urllib.parse import quote

import pytest
import redis
from redis.cluster import RedisCluster

import http_server
from load_env import load_settings
from proxy.store import cluster_health, topology
from redis_cluster import Cluster, SentinelSetup, tools_missing
from redis_proxy import RedisProxy
from servers import ServerThread, request, wait_until

pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(bool(tools_missing()), reason=tools_missing() or "n/a")]


@pytest.fixture(scope="module")
def replicated():
    """3 primaries, each with a replica; a test fails over a primary that still has one."""
    started = Cluster(3, replicas=1).start()
    yield started
    started.stop()


def all_seeds(cluster: Cluster) -> str:
    return ",".join(f"127.0.0.1:{server.port}" for server in cluster.servers)


def key_on(cluster: Cluster, node, prefix: str, entry_prefix: str = "") -> str:
    """A key `prefix`N whose `entry_prefix`+key lives on `node`'s slots."""
    return next(k for k in (f"{prefix}{i}" for i in range(1000))
                if cluster.node_of(entry_prefix + k).port == node.port)


def shard(slots: str, server, state: str) -> dict:
    return {"slots": slots, "primary": f"127.0.0.1:{server.port}", "state": state}


@pytest.fixture
def serve(upstream):
    started = []

    def build(**env):
        environ = {"UPSTREAM_ALLOW_PRIVATE": "true", "UPSTREAM_ALLOWED_PORTS": str(upstream.port),
                   "REDIS_MAXMEMORY": "64mb", **env}
        proxy = RedisProxy.from_settings(load_settings(environ, env_file=None))
        thread = ServerThread(http_server.make_server("127.0.0.1", 0, proxy)).start()
        started.append((proxy, thread))
        return proxy, thread.port

    yield build
    for proxy, thread in started:
        thread.stop()
        proxy.close()


def calls(servers, command: str = "cluster|slots") -> int:
    """How many times the live `servers` have run `command` (INFO commandstats)."""
    total = 0
    for server in servers:
        stats = redis.Redis(port=server.port).info("commandstats")
        total += stats.get(f"cmdstat_{command}", {}).get("calls", 0)
    return total


def test_killed_primary_fails_only_its_own_keys_with_503_and_health_is_degraded(upstream, serve,
                                                                                caplog):
    cluster = Cluster(3).start()
    try:
        rc = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
        keys = cluster.keys_on_each_node("k-")
        for key in keys:
            rc.set(key, f"value {key}".encode())
        rc.close()
        proxy, port = serve(REDIS_CLUSTER_NODES=",".join(cluster.seeds))
        dead_key, live_keys = keys[0], keys[1:]
        dead, live = cluster.nodes[0], cluster.nodes[1:]
        # The URL role's entry key is CACHE_PREFIX + key: find one whose entry lives on the dead node.
        page_key = key_on(cluster, dead, "page", entry_prefix="rp:")
        shards = request(port, "/health").json()["shards"]
        assert [entry["state"] for entry in shards] == ["ok"] * 3
        Cluster.kill(dead)
        url = upstream.serve("/page", b"from upstream")
        (slots_before, pings_before), started = (calls(live), calls(live, "ping")), time.monotonic()
        caplog.set_level(logging.INFO, logger="proxy.store.topology")
        for _ in range(30):  # before and after the cluster marks the node failed
            answer = request(port, f"/get/{dead_key}")
            assert answer.status == 503
            assert answer.json()["error"] == "redis unavailable"
            assert "node holding this key is unreachable" in answer.json()["detail"]
            for key in live_keys:
                response = request(port, f"/get/{key}")
                assert (response.status, response.body) == (200, f"value {key}".encode())
            # The URL role for an entry on the dead node is answered from upstream, not stored.
            page = request(port, f"/?url={quote(url, safe='')}&key={page_key}")
            assert (page.status, page.body, page.headers["X-Cache"]) == (200, b"from upstream", "BYPASS")
        # 60 requests for the dead shard's keys; the slot map is refreshed at most once per
        # REFRESH_MIN_GAP of the outage, not once per request (and per live node).
        refreshes, elapsed = calls(live) - slots_before, time.monotonic() - started
        assert refreshes <= 2 + elapsed / topology.REFRESH_MIN_GAP
        # The health watcher, woken by each failed request, PINGs each primary at most twice a
        # pass, a pass at most once per PASS_MIN_GAP (the invalidation listeners PING once a
        # second of silence besides).
        pings = calls(live, "ping") - pings_before
        assert pings <= len(live) * (2 * (2 + elapsed / cluster_health.PASS_MIN_GAP) + 2 + elapsed)
        refreshed_lines = [r for r in caplog.records if "slot map refreshed" in r.getMessage()]
        assert len(refreshed_lines) <= 1  # at most one per LogLimiter interval (10 s)
        # The other shards serve: /health is 200, degraded, and says which shard is down.
        expected = [{**entry, "state": "down" if entry["primary"] == f"127.0.0.1:{dead.port}" else "ok"}
                    for entry in shards]
        wait_until(lambda: request(port, "/health").json().get("shards") == expected, timeout=10)
        health = request(port, "/health")
        assert health.status == 200
        assert health.json() == {"status": "degraded", "redis": "degraded",
                                 "l1_invalidation": "connecting", "shards": expected}
        # No shard serves: 503.
        for node in live:
            Cluster.kill(node)
        wait_until(lambda: request(port, "/health").status == 503, timeout=10)
        assert request(port, "/health").json() == {
            "status": "degraded", "redis": "down", "l1_invalidation": "connecting",
            "shards": [{**entry, "state": "down"} for entry in expected]}
    finally:
        cluster.stop()


def test_sentinel_failover_is_survived_tracking_rearmed_and_memory_set_on_the_new_primary(serve):
    setup = SentinelSetup().start()
    try:
        old_primary = setup.primary
        redis.Redis(port=old_primary.port).set("item", b"before")
        replica = redis.Redis(port=setup.replica.port, decode_responses=True)
        assert replica.config_get("maxmemory") == {"maxmemory": "0"}
        proxy, port = serve(REDIS_SENTINELS=",".join(setup.sentinels),
                            REDIS_SENTINEL_MASTER=SentinelSetup.MASTER)
        assert proxy.l1_invalidation == "tracking"
        assert request(port, "/get/item").body == b"before"
        old_primary.stop()
        seen = set()

        def serving_from_new_primary() -> bool:
            response = request(port, "/get/item")
            seen.add((response.status, response.body if response.status == 200 else b""))
            return setup.master_port() != old_primary.port and response.status == 200

        wait_until(serving_from_new_primary, timeout=30, interval=0.1)
        # During the failover: the old value (from L1 or the promoted replica) or a clear 503.
        assert seen <= {(200, b"before"), (503, b"")}
        wait_until(lambda: proxy.l1_invalidation == "tracking", timeout=10)
        new_primary = redis.Redis(port=setup.master_port())
        new_primary.set("item", b"after")
        wait_until(lambda: request(port, "/get/item").body == b"after", timeout=5)
        # L1 is in use again (armed on the new primary) and hears of the next write.
        hits = proxy.stats["hits_l1"]
        assert request(port, "/get/item").body == b"after"
        assert proxy.stats["hits_l1"] == hits + 1
        new_primary.set("item", b"after again")
        wait_until(lambda: request(port, "/get/item").body == b"after again", timeout=5)
        # REDIS_MAXMEMORY and REDIS_EVICTION_POLICY reached the promoted replica too.
        assert replica.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}
        assert replica.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}
    finally:
        setup.stop()


def answers_until_served(port: int, paths: list[str]) -> list[tuple[int, bytes]]:
    """Ask each path until it is answered from the store (200, not BYPASS); every answer seen."""
    seen = []

    def served(path: str) -> bool:
        response = request(port, path)
        seen.append((response.status, response.body))
        return response.status == 200 and response.headers.get("X-Cache") != "BYPASS"

    for path in paths:
        wait_until(lambda p=path: served(p), timeout=20, interval=0.1)
    return seen


def test_after_a_failover_no_proxy_serves_its_l1_copy_of_the_dead_primarys_keys(replicated, upstream,
                                                                              serve):
    primary, replica = replicated.primary_with_replica()
    key = key_on(replicated, primary, "fo-")
    page_key = key_on(replicated, primary, "fo-page-", entry_prefix="rp:")
    RedisCluster(host="127.0.0.1", port=replica.port).set(key, b"before")
    url = upstream.serve("/failover", b"version 1")
    page = f"/?url={quote(url, safe='')}&key={page_key}"
    proxies = [serve(REDIS_CLUSTER_NODES=all_seeds(replicated)) for _ in range(2)]
    for proxy, port in proxies:
        assert proxy.l1_invalidation == "tracking"
        hits = proxy.stats["hits_l1"]
        for _ in range(2):  # the second read of each comes from L1
            assert request(port, f"/get/{key}").body == b"before"
            assert request(port, page).body == b"version 1"
        assert proxy.stats["hits_l1"] == hits + 2
    Cluster.kill(primary)
    wait_until(lambda: Cluster.promoted(replica), timeout=30, interval=0.1)
    new_primary = redis.Redis(port=replica.port)
    new_primary.set(key, b"after")
    upstream.serve("/failover", b"version 2")
    (first, first_port), (second, second_port) = proxies
    # The purge goes through the first proxy once it has found the new primary.
    wait_until(lambda: request(first_port, page, method="DELETE").status == 200, timeout=20,
               interval=0.1)
    assert new_primary.exists(f"rp:{page_key}") == 0
    for _proxy, port in proxies:
        seen = answers_until_served(port, [f"/get/{key}", page])
        # While the proxy follows the failover: 503 or the new value, never the L1 copy.
        assert {body for status, body in seen if status == 200} == {b"after", b"version 2"}
        assert {status for status, _body in seen} <= {200, 503}
    # Tracking is armed on the new primary: an L1 copy taken from it hears of the next write.
    wait_until(lambda: second.l1_invalidation == "tracking", timeout=20, interval=0.1)

    def from_l1() -> bool:
        hits = second.stats["hits_l1"]
        return request(second_port, f"/get/{key}").body == b"after" and second.stats["hits_l1"] > hits

    wait_until(from_l1, timeout=10, interval=0.1)
    new_primary.set(key, b"after again")
    wait_until(lambda: request(second_port, f"/get/{key}").body == b"after again", timeout=5)


def test_an_idle_proxys_health_follows_a_failover_by_itself_and_stays_200(replicated, serve):
    primary, replica = replicated.primary_with_replica()
    promoted = redis.Redis(port=replica.port, decode_responses=True)
    assert promoted.config_get("maxmemory") == {"maxmemory": "0"}
    # No invalidation listener either: nothing but the health watcher looks at the cluster.
    proxy, port = serve(REDIS_CLUSTER_NODES=all_seeds(replicated), L1_INVALIDATION="ttl")
    before = request(port, "/health")
    assert before.status == 200
    slots = {entry["primary"]: entry["slots"] for entry in before.json()["shards"]}
    assert before.json() == {"status": "ok", "redis": "ok", "l1_invalidation": "ttl",
                             "shards": [{"slots": slots[p], "primary": p, "state": "ok"}
                                        for p in sorted(slots, key=lambda p: int(slots[p].split("-")[0]))]}
    dead_slots = slots[f"127.0.0.1:{primary.port}"]
    Cluster.kill(primary)
    wait_until(lambda: Cluster.promoted(replica), timeout=30, interval=0.1)
    # No request touches the shard: only /health is asked, and it is never 503 (two shards serve).
    statuses = []

    def followed() -> bool:
        health = request(port, "/health")
        statuses.append(health.status)
        return health.json()["redis"] == "ok" and \
            shard(dead_slots, replica, "ok") in health.json()["shards"]

    wait_until(followed, timeout=20, interval=0.2)
    assert set(statuses) == {200}
    assert proxy.stats["misses"] == proxy.stats["hits_l1"] == 0  # idle indeed
    # REDIS_MAXMEMORY and REDIS_EVICTION_POLICY reached the promoted replica.
    wait_until(lambda: promoted.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)},
               timeout=5)
    assert promoted.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}
