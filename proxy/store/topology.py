"""Redis Cluster as the store: the client, its slot map and its refreshes.

Standalone Redis stays in connection.py, Sentinel is in sentinel.py; this module adds what a
cluster needs on top of redis-py's own `RedisCluster`:

- `ClusterStore`: a `RedisCluster` whose node pools are `TrackingConnectionPool`s, whose MGET is
  split by slot and reassembled in order, whose CONFIG SET goes to every primary, and whose
  slot-map refreshes are rate-limited (a request failing on a dead node asks for one each);
- `ClusterTracking` (cluster_tracking.py) keeps L1 coherent per node.

Health over a cluster (per shard, with a background watcher) is in cluster_health.py.
"""

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS
from redis.event import AfterSlotsCacheRefreshEvent, EventDispatcher, EventListenerInterface
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from proxy.cache.local_cache import LocalCache
from proxy.store.cluster_health import ClusterHealth
from proxy.store.cluster_tracking import ClusterTracking
from proxy.store.connection import TrackingConnectionPool, address, pool_kwargs

log = logging.getLogger(__name__)

# A slot-map refresh (CLUSTER SLOTS) at most once per gap: redis-py asks for one after every
# failed command, so during an outage each request for a dead node's keys cost one per live
# node. The gap doubles while refreshes find nothing new, and is back at its least after one
# that finds a change (a promoted replica).
REFRESH_MIN_GAP = 0.25
REFRESH_MAX_GAP = 2.0


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
        self.owners: list[str | None] = []  # slot -> its primary's name, as last refreshed
        self._owners_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._refreshed_at = -math.inf
        self.clock: Callable[[], float] = time.monotonic  # a test ticks its own
        self.refresh_gap = REFRESH_MIN_GAP
        self._map_changed = False
        self._unconfigured: set[str] = set()  # primaries since the memory settings were applied
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
        # The first map was read inside super().__init__, before `nodes_manager` was set.
        self.owners = self._owners_now()
        # Every refresh, redis-py's own after a failed command included, goes through the limit.
        self._initialize = self.nodes_manager.initialize
        self.nodes_manager.initialize = self.refresh_topology  # type: ignore[method-assign]

    def _new_pool(self, **kwargs: Any) -> TrackingConnectionPool:
        pool = TrackingConnectionPool(**kwargs)
        tracking = getattr(self, "tracking", None)
        if tracking is not None:
            tracking.pool_created()  # L1 takes nothing until this node tracks what it reads
        return pool

    def _refreshed(self) -> None:
        self.refreshes += 1
        if not hasattr(self, "nodes_manager"):
            return  # the first map, read while RedisCluster.__init__ runs
        owners = self._owners_now()
        with self._owners_lock:
            before, self.owners = self.owners, owners
            moved = {slot for slot, old in enumerate(before) if old != owners[slot]}  # [] at first
            if moved:
                self._map_changed = True
                # CONFIG is per node and not replicated: a promoted replica has its own settings.
                self._unconfigured |= set(filter(None, owners)) - set(before)
        tracking = getattr(self, "tracking", None)
        if tracking is not None:
            if moved:
                tracking.drop_slots(moved, "moved to another primary")
            tracking.wake()

    def _owners_now(self) -> list[str | None]:
        cache = self.nodes_manager.slots_cache
        return [nodes[0].name if nodes else None
                for nodes in (cache.get(slot) for slot in range(REDIS_CLUSTER_HASH_SLOTS))]

    def refresh_topology(self, *args: Any, **kwargs: Any) -> bool:
        """redis-py's `NodesManager.initialize` (CLUSTER SLOTS from a reachable node), unless one
        ran less than `refresh_gap` ago or runs now; whether it ran. A failed command still
        fails (503) without it; the next one after the gap finds the new map."""
        if self.clock() - self._refreshed_at < self.refresh_gap or \
                not self._refresh_lock.acquire(blocking=False):
            return False
        try:
            self._map_changed = False
            try:
                self._initialize(*args, **kwargs)
            finally:
                self._refreshed_at = self.clock()
                self.refresh_gap = REFRESH_MIN_GAP if self._map_changed \
                    else min(REFRESH_MAX_GAP, 2 * self.refresh_gap)
            return True
        finally:
            self._refresh_lock.release()

    def slot_ranges(self) -> list[tuple[int, int, ClusterNode | None]]:
        """The slot map as (first, last, primary) ranges in slot order; None for slots no node
        serves."""
        cache = self.nodes_manager.slots_cache
        ranges: list[tuple[int, int, ClusterNode | None]] = []
        for slot in range(REDIS_CLUSTER_HASH_SLOTS):
            nodes = cache.get(slot)
            primary = nodes[0] if nodes else None
            if ranges and ranges[-1][2] is primary and ranges[-1][1] == slot - 1:
                ranges[-1] = (ranges[-1][0], slot, primary)
            else:
                ranges.append((slot, slot, primary))
        return ranges

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

    def configure_new_primaries(self) -> None:
        """Apply the memory settings on the primaries that appeared since (the health watcher
        calls this once per pass, outside redis-py's refresh)."""
        with self._owners_lock:
            names, self._unconfigured = self._unconfigured, set()
        if self.memory is None or not names:
            return
        for node in self.get_primaries():
            if node.name in names:
                log.info("new cluster primary %s: applying the memory settings", node.name)
                self._configure_node(node)

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
    return ClusterStore([address(n) for n in nodes], socket_timeout=socket_timeout,
                        max_connections=max_connections, password=password,
                        tls=bool(tls_kwargs), tls_kwargs=tls_kwargs)
