"""Keeps L1 coherent with Redis: server-assisted invalidation over one subscribed connection."""

import logging
import threading
from collections.abc import Callable

import redis

from proxy.store.connection import UNREACHABLE, TrackingConnectionPool

log = logging.getLogger(__name__)

CHANNEL = "__redis__:invalidate"

# Modes a front end reports in /health.
TRACKING, TTL_ONLY, CONNECTING = "tracking", "ttl", "connecting"


class Invalidator:
    """Listens on `__redis__:invalidate` and tells L1 which keys changed in Redis.

    RESP2 redirect mode (https://redis.io/docs/latest/develop/reference/client-side-caching/):
    this connection's `CLIENT ID` becomes the pool's `redirect_to`, so every data connection
    reports the keys it read here. `on_keys(keys)` gets the changed keys, or None for "all"
    (FLUSHALL, or invalidations possibly missed).

    Losing the connection means invalidations may be lost: L1 stops taking new entries
    (`on_lost`), the listener reconnects, and L1 is flushed when tracking is armed again
    (`on_keys(None)` then `on_armed`). While Redis itself is unreachable, L1 keeps serving what
    it holds (CONTRACT §7) until its TTL. A server that refuses CLIENT (managed Redis) leaves
    L1 on TTL expiry alone, said in the log and `mode`.
    """

    def __init__(self, pool: TrackingConnectionPool, *, on_keys: Callable[[list[bytes] | None], None],
                 on_lost: Callable[[], None] = lambda: None, on_armed: Callable[[], None] = lambda: None,
                 ping_interval: float = 1.0, retry_interval: float = 0.5):
        self.pool = pool
        self.on_keys = on_keys
        self.on_lost = on_lost
        self.on_armed = on_armed
        self.ping_interval = ping_interval
        self.retry_interval = retry_interval
        self.mode = CONNECTING
        self.node = ""  # which server, where there are several (a cluster node's host:port)
        self.client_id: int | None = None
        self.armed = threading.Event()
        self._stop = threading.Event()
        self._connection: redis.Connection | None = None
        self._thread = threading.Thread(target=self._run, name="l1-invalidation", daemon=True)

    def start(self, wait: float = 2.0) -> "Invalidator":
        """Start listening; wait up to `wait` seconds for the first arming (Redis may be down)."""
        self._thread.start()
        self.armed.wait(wait)
        return self

    def close(self) -> None:
        self._stop.set()
        connection = self._connection
        if connection is not None:
            connection.disconnect()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        self.pool.redirect_to = None

    # ----- the listener thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                connection = self._subscribe()
            except redis.ResponseError as exc:
                self._drop_connection()
                self._fall_back_to_ttl(exc)
                return
            except (*UNREACHABLE, redis.RedisError) as exc:
                self._drop_connection()
                log.debug("invalidation connection not ready: %s", exc)
                self._stop.wait(self.retry_interval)
                continue
            try:
                self._listen(connection)
            except Exception as exc:  # noqa: BLE001 - close() pulls the socket from under a read
                if self._stop.is_set():
                    return
                if not isinstance(exc, (*UNREACHABLE, redis.RedisError)):
                    log.exception("L1 invalidation listener failed; reconnecting")
                else:
                    log.warning("L1 invalidation connection lost%s (%s); reconnecting",
                                self.node and f" to {self.node}", exc)
            finally:
                self._disarm(connection)

    def _subscribe(self) -> redis.Connection:
        kwargs = {**self.pool.connection_kwargs, "redis_connect_func": None}
        connection: redis.Connection = self.pool.connection_class(**kwargs)
        self._connection = connection
        connection.connect()
        connection.send_command("CLIENT", "ID")
        client_id = int(connection.read_response())
        connection.send_command("SUBSCRIBE", CHANNEL)
        connection.read_response()
        # Entries read before this point were not tracked by this id: start from empty.
        self.on_keys(None)
        self.client_id = client_id
        self.pool.redirect_to = client_id
        # CLIENT ID can be allowed where CLIENT TRACKING is not (Redis 5, a narrow ACL): arm
        # one data connection now, so a refusal turns into TTL mode rather than failed reads.
        self.pool.release(self.pool.get_connection())
        if self.pool.tracking_refused is not None:
            raise self.pool.tracking_refused
        self.mode = TRACKING
        self.armed.set()
        self.on_armed()
        log.info("L1 kept coherent by Redis invalidation messages (tracking redirect to client %d)",
                 client_id)
        return connection

    def _listen(self, connection: redis.Connection) -> None:
        awaiting_pong = False
        while not self._stop.is_set():
            if not connection.can_read(timeout=self.ping_interval):
                if awaiting_pong:  # a frozen or half-open Redis answers nothing
                    raise redis.TimeoutError("no answer to PING on the invalidation connection")
                connection.send_command("PING")
                awaiting_pong = True
                continue
            message = connection.read_response()
            if isinstance(message, list) and message and message[0] == b"pong":
                awaiting_pong = False
            elif isinstance(message, list) and len(message) == 3 and message[0] == b"message":
                keys = message[2]
                self.on_keys(list(keys) if isinstance(keys, list) else None)

    def _disarm(self, connection: redis.Connection) -> None:
        self.armed.clear()
        self.mode = CONNECTING
        self.pool.redirect_to = None
        self.on_lost()
        connection.disconnect()

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.disconnect()

    def _fall_back_to_ttl(self, exc: BaseException) -> None:
        self.mode = TTL_ONLY
        self.pool.redirect_to = None
        self.armed.set()
        self.on_armed()
        log.warning("redis refused client tracking (%s): L1 entries now expire by CACHE_TTL only "
                    "and may be served up to that long after they change in Redis", exc)
