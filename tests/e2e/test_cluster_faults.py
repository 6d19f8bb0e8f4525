"""Scaled-out stores under faults: a cluster primary killed, a Sentinel failover while serving."""

from urllib.parse import quote

import pytest
import redis
from redis.cluster import RedisCluster

import http_server
from load_env import load_settings
from redis_cluster import Cluster, SentinelSetup, tools_missing
from redis_proxy import RedisProxy
from servers import ServerThread, request, wait_until

pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(bool(tools_missing()), reason=tools_missing() or "n/a")]


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


def test_killed_primary_fails_only_its_own_keys_with_503(upstream, serve):
    cluster = Cluster(3).start()
    try:
        rc = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
        keys = cluster.keys_on_each_node("k-")
        for key in keys:
            rc.set(key, f"value {key}".encode())
        rc.close()
        proxy, port = serve(REDIS_CLUSTER_NODES=",".join(cluster.seeds))
        dead_key, live_keys = keys[0], keys[1:]
        dead_port = cluster.nodes[0].port
        # The URL role's entry key is CACHE_PREFIX + key: find one whose entry lives on the dead node.
        page_key = next(k for k in (f"page{i}" for i in range(1000))
                        if cluster.node_of(f"rp:{k}").port == dead_port)
        cluster.nodes[0].stop()
        url = upstream.serve("/page", b"from upstream")
        for _ in range(3):  # before and after the cluster marks the node failed
            dead = request(port, f"/get/{dead_key}")
            assert dead.status == 503
            assert dead.json()["error"] == "redis unavailable"
            assert "node holding this key is unreachable" in dead.json()["detail"]
            for key in live_keys:
                live = request(port, f"/get/{key}")
                assert (live.status, live.body) == (200, f"value {key}".encode())
            # The URL role for an entry on the dead node is answered from upstream, not stored.
            page = request(port, f"/?url={quote(url, safe='')}&key={page_key}")
            assert (page.status, page.body, page.headers["X-Cache"]) == (200, b"from upstream", "BYPASS")
        assert request(port, "/health").json()["redis"] == "down"
    finally:
        cluster.stop()


def test_sentinel_failover_is_survived_and_tracking_rearmed(serve):
    setup = SentinelSetup().start()
    try:
        old_primary = setup.primary
        redis.Redis(port=old_primary.port).set("item", b"before")
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
    finally:
        setup.stop()
