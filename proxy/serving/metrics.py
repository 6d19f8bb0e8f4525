"""Prometheus metrics for `GET /metrics`: one registry per proxy, read at scrape time."""

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Request latencies on this machine run from ~0.1 ms (an L1 hit) to the upstream deadline.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)


class Metrics:
    """Requests and their latency are counted as they are answered; everything else (cache
    tiers, upstream, Redis, connections) is read from the proxy and servers when scraped, so
    the hit path pays for one counter and one histogram observation."""

    def __init__(self, proxy: Any):
        self.registry = CollectorRegistry()
        self.requests = Counter("redis_proxy_requests", "Requests answered, by front end and status",
                                ["front", "status"], registry=self.registry)
        self.latency = Histogram("redis_proxy_request_duration_seconds",
                                 "Time from a request's headers to its answer", ["front"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._collector = _ProxyCollector(proxy)
        self.registry.register(self._collector)

    def watch(self, front: str, server: Any) -> None:
        """Report a front end's connection counts (a LimitedServerMixIn server)."""
        self._collector.servers[front] = server

    def observe(self, front: str, status: int, started: float) -> None:
        children = self._children.get((front, status))
        if children is None:  # .labels() costs a lock and a dict build: look it up once
            children = self._children[(front, status)] = (
                self.requests.labels(front, str(status)), self.latency.labels(front))
        children[0].inc()
        children[1].observe(time.perf_counter() - started)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ProxyCollector(Collector):
    def __init__(self, proxy: Any):
        self.proxy = proxy
        self.servers: dict[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        stats = dict(self.proxy.stats)
        hits = CounterMetricFamily("redis_proxy_cache_hits", "Answers from the cache, by tier",
                                   labels=["tier"])
        hits.add_metric(["l1"], stats.get("hits_l1", 0))
        hits.add_metric(["redis"], stats.get("hits_redis", 0))
        hits.add_metric(["stale"], stats.get("hits_stale", 0))
        yield hits
        for name, key, text in (
                ("cache_misses", "misses", "URL requests not answered from a fresh entry"),
                ("redis_reads", "reads_redis", "Keys read from the backing Redis for /get and RESP"),
                ("upstream_fetches", "upstream_fetches", "Upstream responses received"),
                ("upstream_errors", "upstream_errors", "Upstream fetches that failed or timed out"),
                ("store_errors", "store_errors", "Writes Redis refused (OOM, READONLY, ...)"),
                ("coalesced_waits", "coalesced_waits", "Misses that waited for another fetch"),
                ("invalidations", "invalidations", "L1 keys dropped on Redis invalidation"),
                ("purges", "purges", "Purge requests"),
                ("refreshes_ahead", "refreshes_ahead",
                 "Background refreshes started by REFRESH_AHEAD on a hit")):
            yield CounterMetricFamily(f"redis_proxy_{name}", text, value=stats.get(key, 0))
        refusals = CounterMetricFamily("redis_proxy_upstream_refusals",
                                       "URLs refused by the upstream policy", labels=["reason"])
        for reason, count in sorted(self.proxy.fetcher.policy.refusal_counts().items()):
            refusals.add_metric([reason], count)
        yield refusals
        yield GaugeMetricFamily("redis_proxy_redis_up", "1 while the backing Redis answers",
                                value=1 if self.proxy.health.up else 0)
        yield GaugeMetricFamily("redis_proxy_l1_entries", "Entries in the local cache",
                                value=len(self.proxy.local))
        yield GaugeMetricFamily("redis_proxy_l1_bytes", "Bytes of values in the local cache",
                                value=self.proxy.local.bytes)
        connections = GaugeMetricFamily("redis_proxy_connections", "Open client connections",
                                        labels=["front"])
        rejected = CounterMetricFamily("redis_proxy_rejected_connections",
                                       "Connections refused over MAX_CLIENTS", labels=["front"])
        for front, server in sorted(self.servers.items()):
            connections.add_metric([front], server.active_connections)
            rejected.add_metric([front], server.rejected_connections)
        yield connections
        yield rejected
        commands = CounterMetricFamily("redis_proxy_resp_commands", "RESP commands processed")
        for server in self.servers.values():
            if hasattr(server, "commands_processed"):
                commands.add_metric([], server.commands_processed)
        yield commands
