"""Health over a Redis Cluster: per shard, kept current by a background watcher.

A shard is a range of hash slots and the primary serving it. A primary that does not answer
fails the requests for its slots only (503), so the store is `degraded` while any shard is down
and `down` only when none serves. The watcher PINGs every primary of the slot map once per
`PROBE_INTERVAL` (sooner when a request failed) and, while one does not answer, refreshes the
slot map (rate-limited by the store), so an idle proxy sees a replica promoted in its place
without a request having to touch the shard first.
"""

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.exceptions import ClusterError, RedisClusterException

from proxy.errors import StoreUnavailable
from proxy.store.connection import UNREACHABLE, RedisHealth, pool_exhausted

log = logging.getLogger(__name__)

T = TypeVar("T")

PROBE_INTERVAL = 1.0  # seconds between two passes of the watcher when nothing wakes it
PASS_MIN_GAP = 0.25  # and at least this between two, however many failed requests wake it

# What a request to a node that is down (or a slot nobody serves) raises, after redis-py's own
# retry: ClusterDownError is a ResponseError, SlotNotCoveredError not even a RedisError.
NODE_UNAVAILABLE = (*UNREACHABLE, ClusterError, RedisClusterException)

OK, DEGRADED, DOWN = "ok", "degraded", "down"


def _through_redis_py(exc: BaseException) -> bool:
    """Whether `exc` was raised inside redis-py (one of its frames is on the traceback)."""
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module == "redis" or module.startswith("redis."):
            return True
        tb = tb.tb_next
    return False


class ClusterHealth(RedisHealth):
    """`state` is ok, degraded (some shard down, another serving) or down (none serving);
    `shards` says which, as /health shows them: `{"slots": "0-5460", "primary":
    "10.0.0.1:7000", "state": "ok"}` in slot order (`"primary": null` for slots no node
    serves). /health reads the last pass: it never waits on a node itself."""

    def __init__(self, client: Any, probe_interval: float = 0.5,
                 on_recover: Callable[[], None] | None = None, interval: float = PROBE_INTERVAL):
        super().__init__(client, probe_interval, on_recover)
        self.interval = interval
        self.state = OK
        self.shards: list[dict[str, Any]] = []
        self._wake = threading.Event()
        self._publish(self._probe_shards())
        self._watcher = threading.Thread(target=self._watch, name="cluster-health", daemon=True)
        self._watcher.start()

    @property
    def up(self) -> bool:
        return self.state != DOWN

    def call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except redis.ConnectionError as exc:
            if pool_exhausted(exc):
                raise StoreUnavailable("every connection to Redis is busy; retry shortly",
                                       error="redis busy") from exc
            self.mark_down(exc)
            raise StoreUnavailable("the Redis Cluster node holding this key is unreachable; "
                                   "retry shortly") from exc
        except NODE_UNAVAILABLE as exc:
            self.mark_down(exc)
            raise StoreUnavailable("the Redis Cluster node holding this key is unreachable; "
                                   "retry shortly") from exc
        except (TypeError, ValueError, AttributeError) as exc:
            # During a node outage redis-py disconnects a failed node's idle connections from
            # the thread that saw the failure, while another thread may be handing one out: the
            # socket gone under it, its parser raises TypeError/ValueError instead of a
            # ConnectionError. A failed command all the same; anything else is our bug (500).
            if not _through_redis_py(exc):
                raise
            self.mark_down(exc)
            raise StoreUnavailable("a connection to a Redis Cluster node was closed under this "
                                   "request during a node outage; retry shortly") from exc

    def mark_down(self, exc: BaseException) -> None:
        self.log_limiter.warning("node down", "a Redis Cluster node is unreachable (%s): requests "
                                 "for its slots get 503 until it or its replica answers", exc)
        self._wake.set()  # look at the topology now, not at the next tick

    def check(self, max_age: float = 0.5) -> bool:
        """Whether some shard serves, as of the watcher's last pass."""
        return self.state != DOWN

    def report(self) -> dict[str, Any]:
        return {"redis": self.state, "shards": self.shards}

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._watcher.is_alive() and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=2)

    # ----- the watcher -------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                shards = self._probe_shards()
                # A shard down: is there a new primary for its slots? The store refreshes the
                # slot map at most once per its refresh gap, however often it is asked.
                if any(shard["state"] != OK for shard in shards) and self.client.refresh_topology():
                    shards = self._probe_shards()
                self._publish(shards)
                self.client.configure_new_primaries()
            except Exception:  # noqa: BLE001 - the watcher must outlive one bad pass
                log.exception("cluster health check failed")
            self._stop.wait(PASS_MIN_GAP)

    def _probe_shards(self) -> list[dict[str, Any]]:
        """One PING per primary of the slot map, each asked directly; its shards' states, one
        per primary (its ranges joined by commas) in the order of their first slot."""
        ranges: dict[str | None, list[str]] = {}
        nodes: dict[str | None, Any] = {}
        for first, last, node in self.client.slot_ranges():
            name = node.name if node is not None else None
            ranges.setdefault(name, []).append(f"{first}-{last}")
            nodes[name] = node
        return [{"slots": ",".join(ranges[name]), "primary": name,
                 "state": OK if node is not None and self._answers(node) else DOWN}
                for name, node in nodes.items()]

    def _answers(self, node: Any) -> bool:
        try:
            return bool(self.client.get_redis_connection(node).ping())
        except redis.ConnectionError as exc:
            # No free connection says nothing about the node: it answered the last time.
            return pool_exhausted(exc) and any(
                shard["primary"] == node.name and shard["state"] == OK for shard in self.shards)
        except (*NODE_UNAVAILABLE, redis.RedisError):
            return False
        except (TypeError, ValueError, AttributeError) as exc:  # see call()
            if not _through_redis_py(exc):
                raise
            return False

    def _publish(self, shards: list[dict[str, Any]]) -> None:
        serving = [shard for shard in shards if shard["state"] == OK]
        state = OK if shards and len(serving) == len(shards) else DEGRADED if serving else DOWN
        with self._lock:
            before, self.state, self.shards = self.state, state, shards
            self._last_check = state != DOWN
        if state != before:
            down = ", ".join(f"{s['slots']} ({s['primary'] or 'no primary'})"
                             for s in shards if s["state"] != OK)
            if state == OK:
                log.warning("Redis Cluster: every shard serves again")
            else:
                log.warning("Redis Cluster %s: no primary answers for slots %s", state, down)
