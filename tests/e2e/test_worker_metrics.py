"""Metrics across workers (issue 11): with HTTP_WORKERS=2 any scrape of /metrics (and /stats)
is the sum over both workers; Redis's memory, evictions and keyspace hits come from INFO."""

import json
import pathlib
import shutil
import socket
import subprocess
import tempfile

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.driver_info import DriverInfo

from proxy.serving.worker_metrics import SOCKET_SUFFIX, WorkerPeers
from proxy.store.launcher import RedisServer, free_port
from servers import q, refused, request, start_proxy, stop_proxy, wait_until


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    got = request(port, "/metrics")
    assert got.status == 200, got
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(got.body.decode()) for s in family.samples}


def ask_worker(path: str) -> dict:
    """One worker's own snapshot, read from its socket as a peer would."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return json.loads(data)


def own_requests(snapshot: dict, front: str = "http") -> float:
    return sum(value for family in snapshot["families"] if family["name"] == "redis_proxy_requests"
               for name, labels, value in family["samples"]
               if name == "redis_proxy_requests_total" and labels["front"] == front)


@pytest.fixture
def short_tmp():
    """A temporary folder with a short path: a unix socket's path is limited to 107 bytes."""
    folder = tempfile.mkdtemp(prefix="rpt")
    yield pathlib.Path(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def two_workers(redis_url, upstream, short_tmp):
    tmp_path = short_tmp
    port, resp_port = free_port(), free_port()
    process = start_proxy({"HTTP_WORKERS": "2", "HTTP_PORT": str(port), "RESP_PORT": str(resp_port),
                           "REDIS_URL": redis_url, "UPSTREAM_ALLOW_PRIVATE": "true",
                           "UPSTREAM_ALLOWED_PORTS": str(upstream.port), "ACCESS_LOG": "false",
                           "TMPDIR": str(tmp_path)}, stderr=subprocess.PIPE)
    folder = [None]

    def sockets() -> list[str]:
        found = list(tmp_path.glob("rp-metrics-*"))
        folder[0] = found[0] if found else None
        return sorted(str(p) for p in found[0].glob("*" + SOCKET_SUFFIX)) if found else []

    wait_until(lambda: not refused(port) and not refused(resp_port) and len(sockets()) == 2,
               timeout=20)
    yield port, sockets, resp_port
    stop_proxy(process)
    assert not folder[0].exists()  # the parent removes the folder when it stops


def test_a_scrape_reaching_either_worker_sums_both(two_workers, upstream):
    port, sockets, _resp_port = two_workers
    url = upstream.serve("/summed", b"summed")
    made = 0

    def both_served() -> bool:
        nonlocal made
        for _ in range(10):  # a new connection each: the kernel hands them to either worker
            assert request(port, q(url, "summed")).status == 200
            made += 1
        return all(own_requests(ask_worker(path)) > 0 for path in sockets())

    wait_until(both_served, timeout=20, interval=0)
    per_worker = [own_requests(ask_worker(path)) for path in sockets()]
    assert sum(per_worker) == made and min(per_worker) > 0

    for scrape_number in range(4):  # each on its own connection, so either worker may answer
        m = scrape(port)
        assert m[("redis_proxy_workers", ())] == 2
        # Earlier scrapes count as requests too; this one is counted after it is answered.
        assert m[("redis_proxy_requests_total", (("front", "http"), ("status", "200")))] \
            == made + scrape_number
        hits = sum(v for (name, _labels), v in m.items() if name == "redis_proxy_cache_hits_total")
        assert hits + m[("redis_proxy_cache_misses_total", ())] == made
    assert upstream.hits["/summed"] == 1  # one fetch across both workers (the fetch lock)

    stats = request(port, "/stats").json()
    assert stats["workers"] == 2
    assert stats["requests"]["total"] == made + 4


def test_resp_commands_served_by_either_worker_are_summed_in_metrics_and_stats(two_workers, r):
    port, sockets, resp_port = two_workers
    r.set("wk", b"v")
    made = 0

    def both_served() -> bool:
        nonlocal made
        for _ in range(10):  # a new connection each: the kernel hands them to either worker
            c = redis.Redis(host="127.0.0.1", port=resp_port, protocol=2, socket_timeout=5,
                            driver_info=DriverInfo(name=None, lib_version=None))
            pipe = c.pipeline(transaction=False)
            for _ in range(3):
                pipe.get("wk")
            assert pipe.execute() == [b"v"] * 3
            c.close()
            made += 3
        return all(own_requests(ask_worker(path), "resp") > 0 for path in sockets())

    wait_until(both_served, timeout=20, interval=0)
    # A latency is observed once its reply is sent: the last may land just after the scrape.
    wait_until(lambda: scrape(port)[("redis_proxy_request_duration_seconds_count",
                                     (("front", "resp"),))] == made)

    for _ in range(4):  # each scrape on its own connection, either worker answering
        m = scrape(port)
        assert m[("redis_proxy_workers", ())] == 2
        assert m[("redis_proxy_requests_total",
                  (("command", "get"), ("front", "resp"), ("status", "ok")))] == made
        assert m[("redis_proxy_request_duration_seconds_count", (("front", "resp"),))] == made
        resp = request(port, "/stats").json()["requests"]["by_front"]["resp"]
        assert (resp["requests"], resp["by_command"], resp["errors"]) == (made, {"get": made}, 0)


def test_redis_memory_evictions_and_keyspace_hits_come_from_info(make_proxy, r):
    proxy = make_proxy()
    r.config_set("maxmemory-policy", "allkeys-lru")
    r.config_set("maxmemory", 2 * 1024 * 1024)
    value = b"x" * 10_000
    for i in range(400):  # 4 MB into 2 MB: Redis evicts
        r.set(f"filler:{i}", value)
    r.get("filler:399")
    r.get("absent")

    m = scrape(proxy.port)
    info = r.info()

    assert m[("redis_proxy_redis_maxmemory_bytes", ())] == 2 * 1024 * 1024 == info["maxmemory"]
    assert 0 < m[("redis_proxy_redis_used_memory_bytes", ())]
    assert m[("redis_proxy_redis_evicted_keys_total", ())] == info["evicted_keys"] > 0
    assert m[("redis_proxy_redis_keyspace_hits_total", ())] == info["keyspace_hits"] > 0
    assert m[("redis_proxy_redis_keyspace_misses_total", ())] == info["keyspace_misses"] > 0


@pytest.fixture
def own_redis():
    server = RedisServer(unix_socket=True).start()
    yield server
    server.cleanup()


def test_with_redis_down_the_scrape_answers_without_the_info_figures(own_redis, make_proxy):
    proxy = make_proxy(own_redis.url)
    assert ("redis_proxy_redis_used_memory_bytes", ()) in scrape(proxy.port)
    own_redis.stop()
    wait_until(lambda: request(proxy.port, "/health").status == 503)

    m = scrape(proxy.port)

    assert m[("redis_proxy_redis_up", ())] == 0
    assert ("redis_proxy_redis_used_memory_bytes", ()) not in m


def test_a_worker_gone_is_left_out_and_its_socket_removed(tmp_path):
    stale = tmp_path / f"999999{SOCKET_SUFFIX}"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(stale))  # bound, never listening: a connect is refused, as after a crash
    peers = WorkerPeers(str(tmp_path), pid=1)
    assert peers.gather() == []
    assert not stale.exists()
