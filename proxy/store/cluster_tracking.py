"""L1 coherence over a Redis Cluster: one invalidation listener per node, and a node's L1
copies dropped when its invalidations may be lost or its slots move to another primary."""

import functools
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from redis.crc import key_slot

from proxy.cache.local_cache import LocalCache
from proxy.log_limit import LogLimiter
from proxy.store.invalidation import CONNECTING, TRACKING, TTL_ONLY, Invalidator

log = logging.getLogger(__name__)

RECONCILE_INTERVAL = 1.0  # seconds between checks of the node list, besides redis-py's events


def _slot_of(l1_key: Hashable) -> int:
    """The hash slot of an L1 key: (tier, Redis key) as proxy.cache.local_cache makes them."""
    key = l1_key[-1] if isinstance(l1_key, tuple) else l1_key
    return int(key_slot(key if isinstance(key, bytes) else str(key).encode()))


class ClusterTracking:
    """L1 coherence over a cluster: one `Invalidator` (its own `CLIENT TRACKING ... REDIRECT`
    target) per node, each arming the connections of that node's pool.

    L1 admits new entries only while every node of the current topology is armed: a node whose
    invalidation connection drops suspends it, and L1 is flushed when that node is armed again
    (its invalidations may be lost). A primary whose connection drops has its keys' L1 copies
    dropped at once: its replica may be promoted and take writes and purges this process would
    never hear of (it listens to the new primary only from then on). Copies of keys whose slots
    move to another primary (a failover, a resharding) are dropped likewise. A node that appears
    gets its own invalidator; one that leaves the topology has its invalidator closed. redis-py
    tells us of every slots refresh (a MOVED, a failover); a timer catches the rest.
    """

    def __init__(self, cluster: Any, local: LocalCache,  # cluster: a topology.ClusterStore
                 on_keys: Callable[[list[bytes] | None], None], interval: float = RECONCILE_INTERVAL):
        self.cluster = cluster
        self.local = local
        self.on_keys = on_keys
        self.interval = interval
        self._invalidators: dict[int, tuple[str, Invalidator]] = {}  # id(pool) -> node, listener
        self._primaries: set[str] = set()
        self._refreshes_seen = 0
        self.log_limiter = LogLimiter(log)  # an outage may refresh the map every REFRESH_MAX_GAP
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
            self.log_limiter.info("refreshed", "cluster slot map refreshed %d time(s) (MOVED/ASK "
                                  "redirection or failover)", refreshes - self._refreshes_seen)
            self._refreshes_seen = refreshes
        primaries = {node.name for node in nodes.values() if node.server_type == "primary"}
        if primaries != self._primaries:
            if self._primaries:
                log.warning("cluster primaries changed: now %s (were %s)",
                            ", ".join(sorted(primaries)), ", ".join(sorted(self._primaries)))
            self._primaries = primaries
        started, gone = [], []
        with self._lock:
            for key in list(self._invalidators):
                if key not in nodes:
                    gone.append(self._invalidators.pop(key))
            for key, node in nodes.items():
                if key not in self._invalidators:
                    inv = Invalidator(node.redis_connection.connection_pool, on_keys=self.on_keys,
                                      on_lost=functools.partial(self._lost, node.name),
                                      on_armed=self._armed)
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

    def _lost(self, name: str) -> None:
        """Node `name`'s invalidation connection dropped: take nothing new into L1, and forget
        what L1 holds of the slots it serves."""
        self.local.suspend()
        with self.cluster._owners_lock:
            owners = self.cluster.owners
        self.drop_slots({slot for slot, owner in enumerate(owners) if owner == name},
                        f"their primary {name} dropped its invalidation connection")

    def drop_slots(self, slots: set[int], why: str) -> None:
        if not slots:
            return
        dropped = self.local.drop_where(lambda key: _slot_of(key) in slots)
        if dropped:
            log.info("dropped %d L1 entries of %d slots: %s", dropped, len(slots), why)

    def _armed(self) -> None:
        """Admit into L1 again once every node tracks what this process reads from it."""
        with self._lock:
            listeners = [inv for _name, inv in self._invalidators.values()]
        if listeners and all(inv.armed.is_set() for inv in listeners):
            self.local.resume()
