"""Redis Cluster and Sentinel as the store: client construction, per-node L1 tracking and health.

Standalone Redis stays in connection.py; this module adds what the two scaled-out
topologies need on top of redis-py's own `RedisCluster` and `Sentinel`:

- `ClusterStore`: a `RedisCluster` whose node pools are `TrackingConnectionPool`s, whose MGET is
  split by slot and reassembled in order, and whose CONFIG SET goes to every primary;
- `ClusterTracking`: one `Invalidator` per node, re-armed when the topology changes;
- `ClusterHealth`: a node that is down fails the requests for its slots only;
- `make_sentinel_client`: the primary behind Sentinel, over a tracking pool.
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.event import AfterSlotsCacheRefreshEvent, EventDispatcher, EventListenerInterface
from redis.exceptions import ClusterError, RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from proxy.cache.local_cache import LocalCache
from proxy.errors import StoreUnavailable
from proxy.store.connection import (
    UNREACHABLE,
    RedisHealth,
    TrackingConnectionPool,
    _on_connect,
    pool_exhausted,
    pool_kwargs,
)
from proxy.store.invalidation import CONNECTING, TRACKING, TTL_ONLY, Invalidator

log = logging.getLogger(__name__)

T = TypeVar("T")

RECONCILE_INTERVAL = 1.0  # seconds between checks of the node list, besides redis-py's events

# What a request to a node that is down (or a slot nobody serves) raises, after redis-py's own
# retry: ClusterDownError is a ResponseError, SlotNotCoveredError not even a RedisError.
NODE_UNAVAILABLE = (*UNREACHABLE, ClusterError, RedisClusterException)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    return host.strip("[]"), int(port)


def _reset_tracking(connection: Any) -> None:
    """A redis.Connection, given our `tracking_redirect` attribute."""
    # RedisCluster.on_connect has run the handshake; a new connection tracks nothing yet.
    connection.tracking_redirect = None


class _SlotsRefreshed(EventListenerInterface):
    def __init__(self, callback: Callable[[], None]):
        self.callback = callback

    def listen(self, event: object) -> None:
        self.callback()


class _ClusterPools:
    """What RedisProxy reads from `client.connection_pool`: the kwargs every node shares, and
    `disconnect()` of every node's pool."""

    def __init__(self, cluster: "ClusterStore"):
        self.cluster = cluster

    @property
    def connection_kwargs(self) -> dict[str, Any]:
        return self.cluster.nodes_manager.connection_kwargs

    def disconnect(self) -> None:
        for node in self.cluster.get_nodes():
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()


class ClusterStore(RedisCluster):
    """`RedisCluster` with the hooks the proxy needs; built by `make_cluster_client`."""

    def __init__(self, nodes: list[tuple[str, int]], *, socket_timeout: float = 0.5,
                 max_connections: int = 64, password: str | None = None, tls: bool = False,
                 tls_kwargs: dict[str, Any] | None = None):
        self.tracking: ClusterTracking | None = None
        self.memory: tuple[int, str] | None = None  # applied to every primary, new ones too
        self.refreshes = 0  # slots-cache refreshes redis-py reported (MOVED, failover)
        dispatcher = EventDispatcher()
        dispatcher.register_listeners({AfterSlotsCacheRefreshEvent: [_SlotsRefreshed(self._refreshed)]})
        (host, port), rest = nodes[0], nodes[1:]
        scheme = "rediss" if tls else "redis"
        bracketed = f"[{host}]" if ":" in host else host
        super().__init__(
            # `url` makes redis-py build each node's pool with connection_pool_class.
            url=f"{scheme}://{bracketed}:{port}", startup_nodes=[ClusterNode(h, p) for h, p in rest],
            connection_pool_class=self._new_pool, redis_connect_func=_reset_tracking,
            # One retry after a topology refresh: a failover or a MOVED is survived, a dead
            # primary without a replica fails within two connection attempts.
            retry=Retry(NoBackoff(), 1), require_full_coverage=False, event_dispatcher=dispatcher,
            **pool_kwargs(socket_timeout, max_connections, password), **(tls_kwargs or {}))
        self.connection_pool = _ClusterPools(self)
        self.health_class = ClusterHealth

    def _new_pool(self, **kwargs: Any) -> TrackingConnectionPool:
        pool = TrackingConnectionPool(**kwargs)
        tracking = getattr(self, "tracking", None)
        if tracking is not None:
            tracking.pool_created()  # L1 takes nothing until this node tracks what it reads
        return pool

    def _refreshed(self) -> None:
        self.refreshes += 1
        tracking = getattr(self, "tracking", None)
        if tracking is not None:
            tracking.wake()

    def mget(self, keys: Any, *args: Any) -> list[Any]:
        """MGET split by slot, one pipeline per node, answers in the order asked."""
        return self.mget_nonatomic(keys, *args)

    def start_tracking(self, local: LocalCache, on_keys: Callable[[list[bytes] | None], None],
                       wait: float = 2.0) -> "ClusterTracking":
        self.tracking = ClusterTracking(self, local, on_keys).start(wait)
        return self.tracking

    def configure_memory(self, maxmemory: int, policy: str) -> bool:
        """CONFIG SET on every primary (CONFIG is per node); a refusal is a warning per node."""
        self.memory = (maxmemory, policy)
        results = [self._configure_node(node) for node in self.get_primaries()]
        return bool(results) and all(results)

    def _configure_node(self, node: ClusterNode) -> bool:
        assert self.memory is not None
        maxmemory, policy = self.memory
        try:
            client = self.get_redis_connection(node)
            client.config_set("maxmemory", maxmemory)
            client.config_set("maxmemory-policy", policy)
        except (redis.RedisError, RedisClusterException) as exc:
            log.warning("could not apply maxmemory=%s maxmemory-policy=%s on cluster node %s: %s",
                        maxmemory, policy, node.name, exc)
            return False
        return True


def make_cluster_client(nodes: tuple[str, ...], *, socket_timeout: float = 0.5,
                        max_connections: int = 64, password: str | None = None, tls_ca: str = "",
                        tls_cert: str = "", tls_key: str = "") -> ClusterStore:
    """A cluster client from REDIS_CLUSTER_NODES (`host:port` seeds); TLS when files are given."""
    tls_kwargs = {name: path for name, path in (("ssl_ca_certs", tls_ca), ("ssl_certfile", tls_cert),
                                                 ("ssl_keyfile", tls_key)) if path}
    return ClusterStore([_address(n) for n in nodes], socket_timeout=socket_timeout,
                        max_connections=max_connections, password=password,
                        tls=bool(tls_kwargs), tls_kwargs=tls_kwargs)


class ClusterTracking:
    """L1 coherence over a cluster: one `Invalidator` (its own `CLIENT TRACKING ... REDIRECT`
    target) per node, each arming the connections of that node's pool.

    L1 admits new entries only while every node of the current topology is armed: a node whose
    invalidation connection drops suspends it, and L1 is flushed when that node is armed again
    (its invalidations may be lost). A node that appears (a failover, a node added) gets its own
    invalidator; one that leaves the topology has its invalidator closed. redis-py tells us of
    every slots refresh (a MOVED, a failover); a timer catches the rest.
    """

    def __init__(self, cluster: ClusterStore, local: LocalCache,
                 on_keys: Callable[[list[bytes] | None], None], interval: float = RECONCILE_INTERVAL):
        self.cluster = cluster
        self.local = local
        self.on_keys = on_keys
        self.interval = interval
        self._invalidators: dict[int, tuple[str, Invalidator]] = {}  # id(pool) -> node, listener
        self._primaries: set[str] = set()
        self._refreshes_seen = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-tracking", daemon=True)

    @property
    def mode(self) -> str:
        with self._lock:
            listeners = [inv for _name, inv in self._invalidators.values()]
        if any(inv.mode == TTL_ONLY for inv in listeners):
            return TTL_ONLY
        if listeners and all(inv.mode == TRACKING for inv in listeners):
            return TRACKING
        return CONNECTING

    def start(self, wait: float = 2.0) -> "ClusterTracking":
        self.local.suspend()
        self._reconcile()
        deadline = time.monotonic() + wait
        with self._lock:
            listeners = [inv for _name, inv in self._invalidators.values()]
        for inv in listeners:
            inv.armed.wait(max(0.0, deadline - time.monotonic()))
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def pool_created(self) -> None:
        self.local.suspend()
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        with self._lock:
            listeners, self._invalidators = list(self._invalidators.values()), {}
        for _name, inv in listeners:
            inv.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._reconcile()
            except Exception:  # noqa: BLE001 - the watcher must outlive one bad pass
                log.exception("cluster topology check failed")

    def _reconcile(self) -> None:
        nodes = {id(node.redis_connection.connection_pool): node for node in self.cluster.get_nodes()
                 if node.redis_connection is not None}
        refreshes = self.cluster.refreshes
        if refreshes != self._refreshes_seen:
            log.info("cluster slot map refreshed %d time(s) (MOVED/ASK redirection or failover)",
                     refreshes - self._refreshes_seen)
            self._refreshes_seen = refreshes
        primaries = {node.name for node in nodes.values() if node.server_type == "primary"}
        if primaries != self._primaries:
            if self._primaries:
                log.warning("cluster primaries changed: now %s (were %s)",
                            ", ".join(sorted(primaries)), ", ".join(sorted(self._primaries)))
            new_primaries = primaries - self._primaries
            self._primaries = primaries
            if self.cluster.memory is not None:
                for node in nodes.values():
                    if node.name in new_primaries:
                        self.cluster._configure_node(node)
        started, gone = [], []
        with self._lock:
            for key in list(self._invalidators):
                if key not in nodes:
                    gone.append(self._invalidators.pop(key))
            for key, node in nodes.items():
                if key not in self._invalidators:
                    inv = Invalidator(node.redis_connection.connection_pool, on_keys=self.on_keys,
                                      on_lost=self.local.suspend, on_armed=self._armed)
                    inv.node = node.name
                    self._invalidators[key] = (node.name, inv)
                    started.append((node.name, inv))
        for name, inv in gone:
            log.info("cluster node %s left the topology: its invalidation listener stops", name)
            inv.close()
        if started:
            self.local.suspend()
        for name, inv in started:
            log.info("L1 tracking armed per node: listening to cluster node %s", name)
            inv.start(wait=0)
        self._armed()

    def _armed(self) -> None:
        """Admit into L1 again once every node tracks what this process reads from it."""
        with self._lock:
            listeners = [inv for _name, inv in self._invalidators.values()]
        if listeners and all(inv.armed.is_set() for inv in listeners):
            self.local.resume()


class ClusterHealth(RedisHealth):
    """Health over a cluster: a node that is down fails the requests routed to it (503) while
    the other nodes' keys keep working, so no failure marks the whole store down. /health is
    degraded while any node does not answer PING."""

    def __init__(self, client: Any, probe_interval: float = 0.5,
                 on_recover: Callable[[], None] | None = None):
        super().__init__(client, probe_interval, on_recover)

    @property
    def up(self) -> bool:
        return self._last_check

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

    def mark_down(self, exc: BaseException) -> None:
        self.log_limiter.warning("node down", "a Redis Cluster node is unreachable (%s): requests "
                                 "for its slots get 503 until it or its replica answers", exc)

    def ping(self) -> bool:
        """Whether every primary answers PING, each asked directly (not through the slot map)."""
        try:
            primaries = self.client.get_primaries()
            return bool(primaries) and all(self.client.get_redis_connection(node).ping()
                                           for node in primaries)
        except NODE_UNAVAILABLE:
            return False

    def check(self, max_age: float = 0.5) -> bool:
        now = time.monotonic()
        if now - self._checked_at < max_age or not self._check_lock.acquire(blocking=False):
            return self._last_check
        try:
            ok = self.ping()
            self._last_check, self._checked_at = ok, time.monotonic()
            return ok
        finally:
            self._check_lock.release()


class SentinelTrackingPool(TrackingConnectionPool, SentinelConnectionPool):
    """The primary's address comes from Sentinel (re-asked on every new connection, so a
    failover is followed); connections are tracked as with a standalone Redis."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any):
        kwargs.setdefault("connection_class", SentinelManagedConnection)
        super().__init__(service_name=service_name, sentinel_manager=sentinel_manager, **kwargs)

    def reset(self) -> None:
        super().reset()
        proxy = getattr(self, "proxy", None)
        if proxy is not None:
            proxy.reset()  # BlockingConnectionPool.reset does not chain to Sentinel's


def make_sentinel_client(sentinels: tuple[str, ...], master: str, *, socket_timeout: float = 0.5,
                         max_connections: int = 64, password: str | None = None) -> redis.Redis:
    """A client of Sentinel's current primary for `master`, over a blocking tracking pool."""
    sentinel = Sentinel([_address(s) for s in sentinels],
                        sentinel_kwargs={"socket_timeout": socket_timeout,
                                         "socket_connect_timeout": socket_timeout})
    pool = SentinelTrackingPool(master, sentinel, redis_connect_func=_on_connect,
                                **pool_kwargs(socket_timeout, max_connections, password))
    return redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
