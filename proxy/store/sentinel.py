"""Sentinel's primary as the store: a tracking pool that follows failovers and configures each
new primary.

redis-py's `SentinelConnectionPool` asks Sentinel for the primary's address on every new
connection, so after a failover the next connection reaches the promoted replica. CONFIG is
per server and not replicated, so `REDIS_MAXMEMORY` / `REDIS_EVICTION_POLICY` applied at start
would leave a promoted replica at its own (`maxmemory 0`, `noeviction` by default): the first
connection to a primary not configured yet applies them there.
"""

import logging
import threading
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from proxy.store.connection import TrackingConnectionPool, _on_connect, address, pool_kwargs

log = logging.getLogger(__name__)


class SentinelTrackingPool(TrackingConnectionPool, SentinelConnectionPool):
    """The primary's address comes from Sentinel (re-asked on every new connection, so a
    failover is followed); connections are tracked as with a standalone Redis, and the memory
    settings are applied on each primary this pool connects to."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any):
        kwargs.setdefault("connection_class", SentinelManagedConnection)
        super().__init__(service_name=service_name, sentinel_manager=sentinel_manager, **kwargs)
        self.memory: tuple[int, str] | None = None  # (maxmemory, policy), once configured
        self.configured: tuple[str, int] | None = None  # the primary they were applied on
        self._memory_lock = threading.Lock()

    def reset(self) -> None:
        super().reset()
        proxy = getattr(self, "proxy", None)
        if proxy is not None:
            proxy.reset()  # BlockingConnectionPool.reset does not chain to Sentinel's

    def configure_memory(self, maxmemory: int, policy: str) -> bool:
        """CONFIG SET on the current primary now, and on every later one; a refusal is a warning."""
        with self._memory_lock:
            self.memory, self.configured = (maxmemory, policy), None
        connection = self.get_connection()
        try:
            return self.connected(connection)
        except redis.RedisError as exc:
            connection.disconnect()
            log.warning("could not apply maxmemory=%s maxmemory-policy=%s on Sentinel's primary: %s",
                        maxmemory, policy, exc)
            return False
        finally:
            self.release(connection)

    def connected(self, connection: Any) -> bool:
        """Apply the memory settings over `connection` (just connected) unless its server is the
        primary they were applied on; False when the server refused them."""
        where = (connection.host, connection.port)
        with self._memory_lock:
            if self.memory is None or where == self.configured:
                return True
            self.configured = where  # a refusal is told once per primary, not per connection
            maxmemory, policy = self.memory
        host, port = where
        try:
            for name, value in (("maxmemory", maxmemory), ("maxmemory-policy", policy)):
                connection.send_command("CONFIG", "SET", name, value)
                connection.read_response()
        except redis.ResponseError as exc:  # the reply was read: the connection is clean
            log.warning("could not apply maxmemory=%s maxmemory-policy=%s on Sentinel's primary "
                        "%s:%s: %s", maxmemory, policy, host, port, exc)
            return False
        log.info("applied maxmemory=%s maxmemory-policy=%s on Sentinel's primary %s:%s",
                 maxmemory, policy, host, port)
        return True


def _on_sentinel_connect(connection: Any) -> None:
    """A SentinelManagedConnection: set up as any of ours, then configured if its primary is new."""
    _on_connect(connection)
    # redis-py hands the connection a proxy holding a weak reference to its pool.
    pool = connection.connection_pool.connection_pool_ref()
    if pool is not None:
        pool.connected(connection)


def make_sentinel_client(sentinels: tuple[str, ...], master: str, *, socket_timeout: float = 0.5,
                         max_connections: int = 64, password: str | None = None) -> redis.Redis:
    """A client of Sentinel's current primary for `master`, over a blocking tracking pool."""
    sentinel = Sentinel([address(s) for s in sentinels],
                        sentinel_kwargs={"socket_timeout": socket_timeout,
                                         "socket_connect_timeout": socket_timeout})
    pool = SentinelTrackingPool(master, sentinel, redis_connect_func=_on_sentinel_connect,
                                **pool_kwargs(socket_timeout, max_connections, password))
    return redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
