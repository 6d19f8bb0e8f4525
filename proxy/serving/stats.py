"""`GET /stats`: the JSON behind the dashboard, read from the same figures as /metrics (summed
over the workers), plus a short history of totals for the charts and the last errors."""

import collections
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import Metric

HISTORY_INTERVAL = 2.0  # seconds between the history's points
HISTORY_POINTS = 150  # 5 minutes of them
LAST_ERRORS = 20
# The running totals a history point keeps (cumulative; rates are their differences).
TOTALS = ("requests", "http_requests", "resp_requests", "hits", "misses", "upstream_answers",
          "upstream_seconds")
FRONTS = ("http", "resp")  # /stats' by_front: each front end, whether or not it has served yet
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))

Point = tuple[float, dict[str, float]]


class History:
    """Running totals, at most one point per HISTORY_INTERVAL of wall-clock time (aligned, so
    the workers' points fall on the same instants); the clock is injected for tests."""

    def __init__(self, interval: float = HISTORY_INTERVAL, points: int = HISTORY_POINTS,
                 clock: Callable[[], float] = time.time):
        self.interval = interval
        self.clock = clock
        self._points: collections.deque[Point] = collections.deque(maxlen=points)
        self._lock = threading.Lock()
        self._next = -math.inf

    def claim(self) -> bool:
        """True for exactly one caller once the next instant has come: the request that records
        the point. (A bare check of the time let every request arriving before the point was written collect
        the whole registry too, which under load was a sixth of a hit's time.)"""
        now = self.clock()
        if now < self._next:
            return False
        with self._lock:
            if now < self._next:
                return False
            self._next = (math.floor(now / self.interval) + 1) * self.interval
            return True

    def record(self, totals: dict[str, float]) -> None:
        instant = math.floor(self.clock() / self.interval) * self.interval
        self._next = instant + self.interval
        with self._lock:
            if self._points and self._points[-1][0] == instant:
                self._points[-1] = (instant, totals)  # the latest totals of this instant
            else:
                self._points.append((instant, totals))

    def points(self) -> list[Point]:
        with self._lock:
            return list(self._points)


def merge_histories(histories: Iterable[list[Point]]) -> list[Point]:
    """The sum over workers at each instant any of them recorded: a worker's totals hold from
    its point until its next (cumulative counters: an idle worker's stand still)."""
    histories = [sorted((float(t), totals) for t, totals in history) for history in histories]
    instants = sorted({t for history in histories for t, _ in history})
    merged = []
    cursors = [0] * len(histories)  # per history: how many of its points are at or before now
    for instant in instants:
        summed = dict.fromkeys(TOTALS, 0.0)
        for i, history in enumerate(histories):
            while cursors[i] < len(history) and history[cursors[i]][0] <= instant:
                cursors[i] += 1
            latest = history[cursors[i] - 1][1] if cursors[i] else {}
            for name in TOTALS:
                summed[name] += latest.get(name, 0.0)
        merged.append((instant, summed))
    return merged


def series(points: list[Point]) -> list[dict[str, Any]]:
    """Per interval between points: requests/s (all, HTTP's, RESP commands'), hit ratio (null
    when nothing was looked up) and mean upstream latency in ms (null when nothing was fetched)."""
    out = []
    for (t0, a), (t1, b) in zip(points, points[1:], strict=False):
        delta = {name: b.get(name, 0.0) - a.get(name, 0.0) for name in TOTALS}
        looked_up = delta["hits"] + delta["misses"]
        out.append({
            "t": t1,
            "requests_per_s": round(delta["requests"] / (t1 - t0), 3),
            "http_per_s": round(delta["http_requests"] / (t1 - t0), 3),
            "resp_per_s": round(delta["resp_requests"] / (t1 - t0), 3),
            "hit_ratio": round(delta["hits"] / looked_up, 4) if looked_up else None,
            "upstream_ms": round(1000 * delta["upstream_seconds"] / delta["upstream_answers"], 3)
            if delta["upstream_answers"] else None,
        })
    return out


class RecentErrors:
    """The last LAST_ERRORS kinds of answer with a 5xx status: what and where, how many times,
    first and last seen. The same error on the same path is one item counted, not repeated."""

    def __init__(self, size: int = LAST_ERRORS, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.size = size
        # (status, error, detail, path) -> its item; in the order last seen, oldest first
        self._items: collections.OrderedDict[tuple[int, str, str, str], dict[str, Any]] = \
            collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, status: int, error: str, detail: str, path: str) -> None:
        now = round(self.clock(), 3)
        key = (status, error, detail, path)
        with self._lock:
            item = self._items.get(key)
            if item is None:
                item = self._items[key] = {"time": now, "first": now, "count": 0, "status": status,
                                           "error": error, "detail": detail, "path": path}
                if len(self._items) > self.size:
                    self._items.popitem(last=False)
            self._items.move_to_end(key)
            item["time"] = now
            item["count"] += 1

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(item) for item in self._items.values()]


def merge_errors(lists: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The workers' last errors as one list: the same kind counted once (counts summed, first
    and last seen across them), the LAST_ERRORS last seen, oldest first."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for errors in lists:
        for error in errors:
            key = (error["status"], error["error"], error["detail"], error["path"])
            seen = merged.get(key)
            if seen is None:
                merged[key] = dict(error)
            else:
                seen["count"] += error["count"]
                seen["time"] = max(seen["time"], error["time"])
                seen["first"] = min(seen["first"], error["first"])
    return sorted(merged.values(), key=lambda error: error["time"])[-LAST_ERRORS:]


class Figures:
    """Sample values of a list of metric families, by sample name and labels."""

    def __init__(self, families: Iterable[Metric]):
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = collections.defaultdict(list)
        for family in families:
            for sample in family.samples:
                self.samples[sample.name].append((sample.labels, sample.value))

    def get(self, name: str, **labels: str) -> float:
        return sum(value for have, value in self.samples.get(name, ())
                   if all(have.get(k) == v for k, v in labels.items()))

    def has(self, name: str) -> bool:
        return name in self.samples

    def by(self, name: str, label: str, **where: str) -> dict[str, float]:
        """Sums by the values of `label`, of the samples that have the labels `where` says."""
        out: dict[str, float] = collections.defaultdict(float)
        for labels, value in self.samples.get(name, ()):
            if label in labels and all(labels.get(k) == v for k, v in where.items()):
                out[labels[label]] += value
        return dict(out)

    def buckets(self, name: str, **where: str) -> list[tuple[float, float]]:
        """A histogram's cumulative buckets as (upper bound, count), lowest bound first."""
        return sorted((float(bound), count) for bound, count in
                      self.by(f"{name}_bucket", "le", **where).items())


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of a histogram's cumulative buckets, estimated as Prometheus's
    histogram_quantile does: linear within the bucket the rank falls in (from 0 for the first),
    and the highest finite bound when it falls in +Inf's. None with nothing observed."""
    if not buckets or not buckets[-1][1]:
        return None
    rank = q * buckets[-1][1]
    lower = below = 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        lower, below = bound, cumulative
    return lower


def front_figures(figures: Figures, front: str) -> dict[str, Any]:
    """One front end's requests, errors (HTTP: a 5xx status; RESP: an error reply), counts by
    status (and by command for RESP) and latency quantiles in ms."""
    by_status = {status: int(value) for status, value in sorted(
        figures.by("redis_proxy_requests_total", "status", front=front).items())}
    errors = sum(count for status, count in by_status.items()
                 if status == "error" or (status.isdigit() and int(status) >= 500))
    buckets = figures.buckets("redis_proxy_request_duration_seconds", front=front)
    latency = {name: round(1000 * value, 3) for name, q in QUANTILES
               if (value := quantile(buckets, q)) is not None}
    out: dict[str, Any] = {"requests": sum(by_status.values()), "errors": errors,
                           "by_status": by_status, "latency_ms": latency or None}
    if front == "resp":
        out["by_command"] = {command: int(value) for command, value in sorted(
            figures.by("redis_proxy_requests_total", "command", front=front).items())}
    return out


def totals_of(figures: Figures) -> dict[str, float]:
    """A history point's totals, from one worker's figures."""
    return {"requests": figures.get("redis_proxy_requests_total"),
            "http_requests": figures.get("redis_proxy_requests_total", front="http"),
            "resp_requests": figures.get("redis_proxy_requests_total", front="resp"),
            "hits": figures.get("redis_proxy_cache_hits_total"),
            "misses": figures.get("redis_proxy_cache_misses_total"),
            "upstream_answers": figures.get("redis_proxy_upstream_fetches_total")
            + figures.get("redis_proxy_upstream_errors_total"),
            "upstream_seconds": figures.get("redis_proxy_upstream_duration_seconds_total")}


def build(figures: Figures, points: list[Point], errors: list[dict[str, Any]], *, workers: int,
          l1_capacity: int, l1_max_bytes: int) -> dict[str, Any]:
    """The /stats document."""
    hits = {tier: int(value) for tier, value in figures.by("redis_proxy_cache_hits_total", "tier").items()}
    misses = int(figures.get("redis_proxy_cache_misses_total"))
    looked_up = sum(hits.values()) + misses
    fetches = figures.get("redis_proxy_upstream_fetches_total")
    failures = figures.get("redis_proxy_upstream_errors_total")
    seconds = figures.get("redis_proxy_upstream_duration_seconds_total")
    redis: dict[str, Any] = {"up": figures.get("redis_proxy_redis_up") >= 1}
    for key, name in (("used_memory", "redis_proxy_redis_used_memory_bytes"),
                      ("maxmemory", "redis_proxy_redis_maxmemory_bytes"),
                      ("evicted_keys", "redis_proxy_redis_evicted_keys_total"),
                      ("keyspace_hits", "redis_proxy_redis_keyspace_hits_total"),
                      ("keyspace_misses", "redis_proxy_redis_keyspace_misses_total")):
        redis[key] = int(figures.get(name)) if figures.has(name) else None
    return {
        "workers": workers,
        "requests": {"total": int(figures.get("redis_proxy_requests_total")),
                     "by_status": {status: int(value) for status, value in sorted(
                         figures.by("redis_proxy_requests_total", "status").items())},
                     "by_front": {front: front_figures(figures, front) for front in FRONTS}},
        "cache": {"hits": hits, "misses": misses,
                  "hit_ratio": round(sum(hits.values()) / looked_up, 4) if looked_up else None},
        "upstream": {"fetches": int(fetches), "errors": int(failures),
                     "mean_ms": round(1000 * seconds / (fetches + failures), 3)
                     if fetches + failures else None,
                     "refusals": {k: int(v) for k, v in figures.by(
                         "redis_proxy_upstream_refusals_total", "reason").items()}},
        "redis": redis,
        "l1": {"entries": int(figures.get("redis_proxy_l1_entries")),
               "bytes": int(figures.get("redis_proxy_l1_bytes")),
               "capacity": l1_capacity * workers, "max_bytes": l1_max_bytes * workers},
        "connections": {front: int(v) for front, v in figures.by("redis_proxy_connections", "front").items()},
        "series": series(points),
        "errors": errors,
    }
