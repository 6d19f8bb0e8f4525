"""Prometheus metrics for `GET /metrics`: one registry per proxy, read at scrape time, summed
over the workers when there are several (worker_metrics), with Redis's INFO read once."""

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.serving import stats
from proxy.serving.worker_metrics import WorkerPeers, families_to_json, merge_families

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Request latencies on this machine run from ~0.1 ms (an L1 hit) to the upstream deadline.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)


class Metrics:
    """Requests and their latency are counted as they are answered; everything else (cache
    tiers, upstream, Redis, connections) is read from the proxy and servers when scraped, so
    the hit path pays for one counter and one histogram observation."""

    def __init__(self, proxy: Any, peers: WorkerPeers | None = None,
                 history: stats.History | None = None):
        self.proxy = proxy
        self.peers = peers  # None: this process is the only one serving
        self.history = history or stats.History()
        self.errors = stats.RecentErrors()
        self.registry = CollectorRegistry()
        self.requests = Counter("redis_proxy_requests", "Requests answered, by front end and status",
                                ["front", "status"], registry=self.registry)
        self.latency = Histogram("redis_proxy_request_duration_seconds",
                                 "Time from a request's headers to its answer", ["front"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._collector = _ProxyCollector(proxy)
        self.registry.register(self._collector)
        self._redis = _RedisInfoCollector(proxy)  # one store: read once per scrape, never summed

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
        if self.history.claim():  # the dashboard's history: one point per interval, one recorder
            self.record_history()

    def record_history(self) -> None:
        self.history.record(stats.totals_of(stats.Figures(self.registry.collect())))

    def note_error(self, status: int, error: str, detail: str, path: str) -> None:
        """An answer with a 5xx status, for the dashboard's last errors."""
        self.errors.add(status, error, detail, path)

    def snapshot(self) -> dict[str, Any]:
        """This process's own figures, history and last errors (what a peer worker asks for)."""
        self.record_history()
        return {"families": families_to_json(self.registry.collect()),
                "history": self.history.points(), "errors": self.errors.items()}

    def gather(self) -> tuple[list[Metric], list[dict[str, Any]]]:
        """The families summed over every worker that answered, plus Redis's, and the workers'
        snapshots (this one's first)."""
        snapshots = [self.snapshot()] + (self.peers.gather() if self.peers else [])
        families = merge_families([snapshot["families"] for snapshot in snapshots])
        families.append(GaugeMetricFamily("redis_proxy_workers",
                                          "Worker processes whose figures are summed here",
                                          value=len(snapshots)))
        families.extend(self._redis.collect())
        return families, snapshots

    def render(self) -> bytes:
        families, _snapshots = self.gather()
        return generate_latest(_Families(families))

    def stats(self) -> dict[str, Any]:
        """The /stats document: the figures of /metrics, the history and the last errors."""
        families, snapshots = self.gather()
        errors = sorted((error for snapshot in snapshots for error in snapshot["errors"]),
                        key=lambda error: error["time"])[-stats.LAST_ERRORS:]
        points = stats.merge_histories(snapshot["history"] for snapshot in snapshots)
        return stats.build(stats.Figures(families), points, errors, workers=len(snapshots),
                           l1_capacity=self.proxy.local.capacity,
                           l1_max_bytes=self.proxy.local.max_bytes)


class _Families:
    """A fixed list of families, in the shape generate_latest reads a registry."""

    def __init__(self, families: Iterable[Metric]):
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


# Redis's INFO fields exported at scrape time: (field, metric, help, counter?).
REDIS_INFO_FIELDS = (
    ("used_memory", "redis_proxy_redis_used_memory_bytes", "Redis used_memory (INFO memory)", False),
    ("maxmemory", "redis_proxy_redis_maxmemory_bytes", "Redis maxmemory, 0 for no limit", False),
    ("evicted_keys", "redis_proxy_redis_evicted_keys", "Keys Redis evicted under maxmemory", True),
    ("keyspace_hits", "redis_proxy_redis_keyspace_hits", "Redis lookups that found their key", True),
    ("keyspace_misses", "redis_proxy_redis_keyspace_misses", "Redis lookups that did not", True),
)


class _RedisInfoCollector(Collector):
    """The backing Redis's memory, evictions and keyspace hits from INFO, when it answers (a
    cluster's primaries summed); nothing while it is down, so a scrape never waits on it."""

    def __init__(self, proxy: Any):
        self.proxy = proxy

    def collect(self) -> Iterator[Metric]:
        try:
            info = self.proxy.health.call(self.proxy.client.info)
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail on INFO
            log.debug("INFO not read for /metrics: %s", exc)
            return
        nodes = list(info.values()) if info and all(isinstance(v, dict) for v in info.values()) \
            else [info]
        for field, name, text, counter in REDIS_INFO_FIELDS:
            if any(field in node for node in nodes):
                value = sum(float(node.get(field, 0)) for node in nodes)
                family = CounterMetricFamily if counter else GaugeMetricFamily
                yield family(name, text, value=value)


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
                ("upstream_duration_seconds", "upstream_seconds",
                 "Seconds spent on upstream fetches, answered or failed"),
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
