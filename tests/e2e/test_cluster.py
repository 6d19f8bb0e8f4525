"""Redis Cluster as the store: a real 3-primary cluster on loopback, proxies built from settings."""

import socket
import threading
from urllib.parse import quote

import pytest
import redis
from redis.cluster import RedisCluster

import http_server
from load_env import load_settings
from proxy.resp import server as resp_server
from proxy.store.launcher import free_port
from proxy.store.purge_marker import marker_key
from proxy.store.topology import REFRESH_MAX_GAP, REFRESH_MIN_GAP
from redis_cluster import CLUSTER_BUS_OFFSET, Cluster, cluster_node_port, tools_missing
from redis_proxy import RedisProxy
from servers import ServerThread, request, wait_until

pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(bool(tools_missing()), reason=tools_missing() or "n/a")]

MAXMEMORY = 48 * 1024 * 1024


@pytest.fixture(scope="module")
def cluster():
    started = Cluster(3).start()
    yield started
    started.stop()


@pytest.fixture
def rc(cluster):
    """A plain cluster client, for looking behind the proxies' backs."""
    client = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    client.flushall()
    yield client
    client.close()


class Served:
    def __init__(self, proxy):
        self.proxy = proxy
        self.http = ServerThread(http_server.make_server("127.0.0.1", 0, proxy)).start()
        self.resp = ServerThread(resp_server.make_server("127.0.0.1", 0, proxy)).start()

    def get(self, path: str):
        return request(self.http.port, path)

    def stop(self) -> None:
        self.http.stop()
        self.resp.stop()
        self.proxy.close()


@pytest.fixture
def make_cluster_proxy(cluster, upstream):
    started = []

    def build(seeds=None, **env) -> Served:
        environ = {"REDIS_CLUSTER_NODES": ",".join(seeds or cluster.seeds),
                   "REDIS_MAXMEMORY": str(MAXMEMORY), "UPSTREAM_ALLOW_PRIVATE": "true",
                   "UPSTREAM_ALLOWED_PORTS": str(upstream.port), **env}
        served = Served(RedisProxy.from_settings(load_settings(environ, env_file=None)))
        started.append(served)
        return served

    yield build
    for served in started:
        served.stop()


def url_path(url: str, key: str) -> str:
    return f"/?url={quote(url, safe='')}&key={quote(key, safe='')}"


def test_a_cluster_node_port_leaves_room_for_a_free_bus_port():
    assert cluster_node_port(iter([55536, 60999, 55535]).__next__) == 55535  # bus port 65535
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        bus_taken = held.getsockname()[1]
        picks = iter([bus_taken - CLUSTER_BUS_OFFSET, *(free_port() for _ in range(20))])
        port = cluster_node_port(picks.__next__)
    assert port != bus_taken - CLUSTER_BUS_OFFSET and port <= 55535


def test_maxmemory_is_set_on_every_primary(cluster, rc, make_cluster_proxy):
    for node in cluster.nodes:
        redis.Redis(port=node.port).config_set("maxmemory", 0)
    make_cluster_proxy()
    for node in cluster.nodes:
        assert redis.Redis(port=node.port).config_get("maxmemory") == {"maxmemory": str(MAXMEMORY)}
        assert redis.Redis(port=node.port).config_get("maxmemory-policy") == \
            {"maxmemory-policy": "allkeys-lru"}


def test_url_role_stores_each_entry_on_the_node_owning_its_key(cluster, rc, upstream,
                                                               make_cluster_proxy):
    served = make_cluster_proxy()
    keys = cluster.keys_on_each_node("page-")
    for i, key in enumerate(keys):
        url = upstream.serve(f"/p{i}", f"body {i}".encode())
        first, second = served.get(url_path(url, key)), served.get(url_path(url, key))
        assert (first.status, first.body, first.headers["X-Cache"]) == (200, f"body {i}".encode(), "MISS")
        assert (second.status, second.body, second.headers["X-Cache"]) == (200, f"body {i}".encode(), "HIT")
        assert upstream.hits[f"/p{i}"] == 1
        owner = redis.Redis(port=cluster.node_of(f"rp:{key}").port)
        assert owner.exists(f"rp:{key}") == 1
        assert 3600 < owner.ttl(f"rp:{key}") <= 3600 + 300
    assert {cluster.node_of(f"rp:{k}").port for k in keys} == {n.port for n in cluster.nodes}


def test_get_key_reads_keys_from_all_three_nodes(cluster, rc, make_cluster_proxy):
    served = make_cluster_proxy()
    keys = cluster.keys_on_each_node("raw-")
    for key in keys:
        rc.set(key, f"value of {key}\x00\xff".encode("latin-1"))
    for key in keys:
        response = served.get(f"/get/{key}")
        assert (response.status, response.body) == (200, f"value of {key}\x00\xff".encode("latin-1"))
    missing = served.get("/get/no-such-key")
    assert missing.status == 404


def test_l1_entry_dropped_when_its_key_is_rewritten_on_its_node(cluster, rc, make_cluster_proxy):
    served = make_cluster_proxy()
    assert served.proxy.l1_invalidation == "tracking"
    keys = cluster.keys_on_each_node("hot-")
    for key in keys:
        rc.set(key, b"old")
        assert served.get(f"/get/{key}").body == b"old"
        hits = served.proxy.stats["hits_l1"]
        assert served.get(f"/get/{key}").body == b"old"
        assert served.proxy.stats["hits_l1"] == hits + 1  # the second read came from L1
    for key in keys:
        rc.set(key, b"new")
    for key in keys:
        wait_until(lambda k=key: served.get(f"/get/{k}").body == b"new", timeout=5)


def test_resp_mget_across_slots_answers_in_order(cluster, rc, make_cluster_proxy):
    served = make_cluster_proxy()
    keys = cluster.keys_on_each_node("m-")
    for key in keys:
        rc.set(key, key.encode() + b"!")
    client = redis.Redis(port=served.resp.port)
    asked = [keys[2], "m-missing", keys[0], keys[1], keys[2]]
    assert client.execute_command("MGET", *asked) == \
        [keys[2].encode() + b"!", None, keys[0].encode() + b"!", keys[1].encode() + b"!",
         keys[2].encode() + b"!"]
    assert client.get(keys[1]) == keys[1].encode() + b"!"
    assert client.exists(*keys, "m-missing") == 3


def test_two_proxies_fetch_a_cold_url_once(cluster, rc, upstream, make_cluster_proxy):
    first, second = make_cluster_proxy(), make_cluster_proxy()
    release = threading.Event()

    def slow(handler):
        release.wait(5)  # held open until every request has been sent, so all of them overlap
        handler.reply(200, b"the one body", {"Content-Type": "text/plain"})

    url = upstream.route("/cold", slow)
    results: list = []
    lock = threading.Lock()

    def ask(served):
        response = served.get(url_path(url, "cold"))
        with lock:
            results.append((response.status, response.body))

    threads = [threading.Thread(target=ask, args=(first if i % 2 else second,)) for i in range(50)]
    for thread in threads:
        thread.start()
    wait_until(lambda: upstream.hits["/cold"] >= 1, timeout=5)
    wait_until(lambda: first.proxy.stats["misses"] + second.proxy.stats["misses"] >= 2, timeout=5)
    release.set()
    for thread in threads:
        thread.join(10)
    assert results == [(200, b"the one body")] * 50
    assert upstream.hits["/cold"] == 1


def test_purge_through_one_proxy_reaches_the_other_proxys_l1(cluster, rc, upstream,
                                                              make_cluster_proxy):
    first, second = make_cluster_proxy(), make_cluster_proxy()
    url = upstream.serve("/purged", b"version 1")
    assert first.get(url_path(url, "purged")).headers["X-Cache"] == "MISS"
    for _ in range(2):  # the second read is an L1 hit on the second proxy
        response = second.get(url_path(url, "purged"))
        assert (response.body, response.headers["X-Cache"]) == (b"version 1", "HIT")
    assert second.proxy.stats["hits_l1"] == 1
    upstream.serve("/purged", b"version 2")
    invalidations = second.proxy.stats["invalidations"]
    purge = request(first.http.port, url_path(url, "purged"), method="DELETE")
    assert (purge.status, purge.json()) == (200, {"purged": 1})
    wait_until(lambda: second.proxy.stats["invalidations"] > invalidations, timeout=5)
    response = second.get(url_path(url, "purged"))
    assert (response.status, response.body, response.headers["X-Cache"]) == (200, b"version 2", "MISS")
    assert upstream.hits["/purged"] == 2


@pytest.mark.parametrize("purge_by,key", [("key", "race"), ("key", "user{7}:race"), ("key", "a}b"),
                                          ("url", None)])
@pytest.mark.parametrize("purged_through", ["the fetching proxy", "another proxy"])
def test_a_purge_during_a_fetch_is_not_undone_by_its_store(cluster, rc, upstream, make_cluster_proxy,
                                                           purge_by, key, purged_through):
    gate = threading.Event()

    def held(handler):
        gate.wait(10)  # the fetch stays in flight until the purge has been answered
        handler.reply(200, b"older answer", {"Content-Type": "text/plain"})

    url = upstream.route("/racing", held)
    path = url_path(url, key) if key else f"/?url={quote(url, safe='')}"
    fetching = make_cluster_proxy()
    purging = fetching if purged_through == "the fetching proxy" else make_cluster_proxy()
    redis_key = fetching.proxy.parse(url, key).redis_key
    responses: list = []
    thread = threading.Thread(target=lambda: responses.append(fetching.get(path)))
    thread.start()
    wait_until(lambda: upstream.hits["/racing"] == 1)  # the fetch is in flight
    purge = request(purging.http.port, f"/?key={quote(key, safe='')}" if key else path, method="DELETE")
    assert (purge.status, purge.json()) == (200, {"purged": 0})
    gate.set()
    thread.join(10)
    assert [(got.status, got.body, got.headers["X-Cache"]) for got in responses] == \
        [(200, b"older answer", "MISS")]
    assert rc.exists(redis_key) == 0
    # The marker and the sequence the store script compared live on the entry's node.
    owner = redis.Redis(port=cluster.node_of(redis_key).port)
    assert owner.exists(marker_key(redis_key), fetching.proxy.purge_markers.sequence_key(redis_key)) == 2
    assert 0 < owner.pttl(marker_key(redis_key)) <= 2 * fetching.proxy.fetch_lock.hold * 1000
    again = fetching.get(path)
    assert (again.status, again.body, again.headers["X-Cache"]) == (200, b"older answer", "MISS")
    assert upstream.hits["/racing"] == 2
    # The fetch that began after the purge is stored as usual, on the node owning the entry.
    assert 3600 < owner.ttl(redis_key) <= 3600 + 300
    assert fetching.get(path).headers["X-Cache"] == "HIT"
    assert upstream.hits["/racing"] == 2


def test_a_connection_torn_down_under_a_request_is_a_503_not_a_500(cluster, rc, upstream,
                                                                    make_cluster_proxy):
    """During a node outage redis-py disconnects a node's idle connections from the thread that
    saw the failure while another thread hands one out: that one finds its parser's socket gone
    (TypeError/ValueError inside redis-py, not a ConnectionError)."""
    served = make_cluster_proxy(CACHE_CAPACITY="0")
    key = cluster.keys_on_each_node("torn-")[0]
    rc.set(key, b"value")
    url = upstream.serve("/torn", b"from upstream")
    assert served.get(f"/get/{key}").body == b"value"  # connections now idle in the node pools
    idle = [connection for node in served.proxy.client.get_nodes()
            for connection in node.redis_connection.connection_pool.pool.queue if connection]
    for connection in idle:
        connection._parser._sock = None  # the other thread's disconnect(), half done
    torn = served.get(f"/get/{key}")
    assert (torn.status, torn.json()["error"]) == (503, "redis unavailable")
    assert "closed under this request" in torn.json()["detail"]
    page = served.get(url_path(url, key))
    assert (page.status, page.body, page.headers["X-Cache"]) == (200, b"from upstream", "BYPASS")
    for connection in idle:
        connection.disconnect()  # the other thread's disconnect() done: the nodes serve again
    assert served.get(f"/get/{key}").body == b"value"


def test_slot_map_refreshes_are_spaced_by_a_gap_that_doubles_to_its_cap_until_one_finds_a_change(
        cluster, make_cluster_proxy):
    store = make_cluster_proxy().proxy.client
    now = [1024.0]
    store.clock = lambda: now[0]
    ran = []

    def initialize(*args, **kwargs):  # stands in for CLUSTER SLOTS; says whether the map changed
        ran.append(now[0])
        store._map_changed = changes.pop(0)

    store._initialize = initialize
    changes = [False] * 5 + [True, False]
    # redis-py's own refresh after a failed command goes through the same limit.
    assert store.nodes_manager.initialize(last_failed_node_name="x") is True
    # Each refresh that finds nothing new doubles the gap before the next, up to its cap.
    expected_gaps = [REFRESH_MIN_GAP * 2 ** i for i in range(1, 4)] + [REFRESH_MAX_GAP]
    assert expected_gaps == [0.5, 1.0, 2.0, 2.0]
    for gap in expected_gaps:
        now[0] += gap - 1 / 64  # binary fractions: the sums are exact
        assert store.refresh_topology() is False  # within the gap: nothing sent
        now[0] += 1 / 64
        assert store.refresh_topology() is True
    now[0] += REFRESH_MAX_GAP
    assert store.refresh_topology() is True  # this one finds a change (a promoted replica)
    assert store.refresh_gap == REFRESH_MIN_GAP == 0.25
    now[0] += REFRESH_MIN_GAP - 1 / 64
    assert store.refresh_topology() is False
    now[0] += 1 / 64
    assert store.refresh_topology() is True
    assert len(ran) == 7
