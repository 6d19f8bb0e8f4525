"""Prometheus metrics for `GET /metrics`: one registry per proxy, read at scrape time, summed
over the workers when there are several (worker_metrics), with Redis's INFO read once."""

import bisect
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from proxy.serving import stats
from proxy.serving.command_counts import CommandCounts
from proxy.serving.worker_metrics import WorkerPeers, families_to_json, merge_families

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Request latencies on this machine run from ~0.1 ms (an L1 hit) to the upstream deadline.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)

# The histogram's `le` labels as prometheus-client writes them ("0.0005", ..., "+Inf").
_LE = tuple(floatToGoString(bound) for bound in (*LATENCY_BUCKETS, float("inf")))  # type: ignore[no-untyped-call]


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
        self.requests = _Requests()
        self.registry.register(self.requests)
        self.resp_commands = self.requests.resp  # the RESP front end's connections count here
        self._collector = _ProxyCollector(proxy)
        self.registry.register(self._collector)
        self._redis = _RedisInfoCollector(proxy)  # one store: read once per scrape, never summed

    def watch(self, front: str, server: Any) -> None:
        """Report a front end's connection counts (a LimitedServerMixIn server)."""
        self._collector.servers[front] = server

    def observe(self, front: str, status: int, started: float) -> None:
        self.requests.observe(front, status, time.perf_counter() - started)
        if self.history.claim():  # the dashboard's history: one point per interval, one recorder
            self.record_history()

    def counted(self) -> None:
        """RESP commands were counted (in their connection's Tally): the history's point, when
        one is due, as after an HTTP request."""
        if self.history.claim():
            self.record_history()

    def record_history(self, families: list[Metric] | None = None) -> None:
        """One point of the history from `families` (this registry's, collected now if not given)."""
        collected = list(self.registry.collect()) if families is None else families
        self.history.record(stats.totals_of(stats.Figures(collected)))

    def note_error(self, status: int, error: str, detail: str, path: str) -> None:
        """An answer with a 5xx status, for the dashboard's last errors."""
        self.errors.add(status, error, detail, path)

    def snapshot(self) -> dict[str, Any]:
        """This process's own figures, history and last errors (what a peer worker asks for)."""
        families = list(self.registry.collect())  # once, for the point and the reply
        self.record_history(families)
        return {"families": families_to_json(families),
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
        errors = stats.merge_errors(snapshot["errors"] for snapshot in snapshots)
        points = stats.merge_histories(snapshot["history"] for snapshot in snapshots)
        return stats.build(stats.Figures(families), points, errors, workers=len(snapshots),
                           l1_capacity=self.proxy.local.capacity,
                           l1_max_bytes=self.proxy.local.max_bytes)


class _Requests(Collector):
    """Requests answered, by front end and status, and their latency by front end: counted on
    the hot path under one C lock, exported at scrape time as the counter
    `redis_proxy_requests_total{front,status}` (RESP commands also by `command`, their status
    `ok` or `error`) and the histogram `redis_proxy_request_duration_seconds{front}`.
    (prometheus-client's own Counter and Histogram take a lock per value and walk the buckets
    in Python: ~5 µs of an L1 hit.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], int] = {}  # (front, HTTP status)
        self._created: dict[tuple[str, int], float] = {}
        self.resp = CommandCounts(LATENCY_BUCKETS)  # RESP commands, counted per connection
        # front -> a count per bucket of LATENCY_BUCKETS and one over the last, then the sum
        self._latency: dict[str, list[float]] = {}

    def observe(self, front: str, status: int, seconds: float) -> None:
        bucket = bisect.bisect_left(LATENCY_BUCKETS, seconds)  # the first bound >= seconds
        key = (front, status)
        with self._lock:
            count = self._counts.get(key)
            if count is None:
                self._created[key] = time.time()
                count = 0
            self._counts[key] = count + 1
            row = self._latency.get(front)
            if row is None:
                row = self._latency[front] = [0.0] * (len(LATENCY_BUCKETS) + 2)
            row[bucket] += 1
            row[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts = sorted(self._counts.items())
            created = dict(self._created)
            rows = {front: list(row) for front, row in self._latency.items()}
        resp = self.resp.totals()
        if any(resp.latency):  # some command observed
            row = rows.setdefault("resp", [0.0] * len(resp.latency))
            for i, value in enumerate(resp.latency):
                row[i] += value
        latency = sorted(rows.items())
        requests = CounterMetricFamily("redis_proxy_requests",
                                       "Requests answered, by front end and status (RESP: "
                                       "commands, also by command)",
                                       labels=["front", "status"])
        for (front, status), count in counts:
            requests.add_metric([front, str(status)], count, created=created[(front, status)])
        # A RESP command's series carries a third label; HTTP's have none (in Prometheus an
        # absent label and an empty one are the same, so both sum by front and status).
        for state, by_command in (("error", resp.failed), ("ok", resp.ok)):
            for command, count in sorted(by_command.items()):
                labels = {"front": "resp", "command": command, "status": state}
                requests.add_sample("redis_proxy_requests_total", labels, count)
                requests.add_sample("redis_proxy_requests_created", labels, self.resp.created)
        yield requests
        durations = HistogramMetricFamily("redis_proxy_request_duration_seconds",
                                          "Time from a request's headers (a RESP command's "
                                          "bytes) to its answer",
                                          labels=["front"])
        for front, row in latency:
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, observed in zip(_LE, row, strict=False):  # row's last item is the sum
                cumulative += observed
                buckets.append((bound, cumulative))
            durations.add_metric([front], buckets, row[-1])
        yield durations


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
        fetcher = self.proxy.fetcher
        yield GaugeMetricFamily("redis_proxy_upstream_fetches_in_flight",
                                "Upstream fetches in flight (at most MAX_FETCHES)",
                                value=fetcher.in_flight.in_use)
        yield CounterMetricFamily("redis_proxy_upstream_fetches_refused",
                                  "Fetches answered 503 over MAX_FETCHES",
                                  value=fetcher.fetches_refused)
        gates = {id(server.parallel): server.parallel for server in self.servers.values()}
        yield GaugeMetricFamily("redis_proxy_requests_waiting_upstream",
                                "Requests waiting on an upstream fetch (theirs or another's), "
                                "their MAX_PARALLEL slot given back",
                                value=sum(gate.away for gate in gates.values()))
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
        pending = GaugeMetricFamily("redis_proxy_resp_pending_reply_bytes",
                                    "RESP reply bytes not yet taken by their clients "
                                    "(at most RESP_MAX_PENDING_BYTES)")
        for server in self.servers.values():
            if hasattr(server, "commands_processed"):
                commands.add_metric([], server.commands_processed)
                pending.add_metric([], server.pending.held)
        yield commands
        yield pending
