"""Connections to the backing Redis: the client factory, URL masking, and availability tracking."""

import functools
import logging
import math
import re
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoPermissionError
from redis.retry import Retry

from proxy.errors import StoreUnavailable
from proxy.log_limit import LogLimiter

log = logging.getLogger(__name__)

T = TypeVar("T")

# What counts as "Redis is unreachable", as opposed to a command error such as OOM.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError)


def mask_url(url: str) -> str:
    """The URL with any password replaced, for logs, errors and /health.

    The userinfo ends at the LAST '@' before the path, as urllib (and so redis-py) reads it, so
    a password holding a raw '@' is masked whole; `password=` in the query (redis-py reads it
    there too) is masked as well. A user name alone is kept: ACL user names are not secrets."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i != -1), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" not in authority:
        # unix://user:pass@/path puts the userinfo before a '/'; look as far as the last '@'.
        at = rest.rfind("@")
        if at == -1:
            return scheme + sep + _mask_query(rest)
        authority, tail = rest[:at + 1], rest[at + 1:]
    userinfo, _, host = authority.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    masked = f"{user}:***@" if colon else (f"{userinfo}@" if userinfo else "@")
    return scheme + sep + masked + host + _mask_query(tail)


def _mask_query(text: str) -> str:
    return re.sub(r"((?:^|[?&])password=)[^&#]*", r"\1***", text, flags=re.IGNORECASE)


def address(text: str) -> tuple[str, int]:
    """`host:port` (the host may be a bracketed IPv6 address) as redis-py takes it."""
    host, _, port = text.strip().rpartition(":")
    return host.strip("[]"), int(port)


def pool_kwargs(socket_timeout: float, max_connections: int, password: str | None) -> dict[str, Any]:
    """The settings of every pool of ours (one Redis, each cluster node's): a blocking pool whose
    wait and every socket operation are bounded by `socket_timeout`, RESP2."""
    kwargs: dict[str, Any] = {"socket_timeout": socket_timeout, "socket_connect_timeout": socket_timeout,
                              "max_connections": max_connections, "timeout": socket_timeout, "protocol": 2}
    if password:
        kwargs["password"] = password
    return kwargs


def make_client(url: str, *, socket_timeout: float = 0.5, max_connections: int = 64,
                password: str | None = None, tls_ca: str = "", tls_cert: str = "",
                tls_key: str = "") -> redis.Redis:
    """A client over a blocking pool: a burst waits for a connection instead of failing.

    No retries: a request must spend at most about a second on an unreachable Redis
    (CONTRACT §7); RedisHealth backs off instead.
    """
    kwargs = {**pool_kwargs(socket_timeout, max_connections, password), "retry": Retry(NoBackoff(), 0)}
    if url.startswith("rediss://"):
        if tls_ca:
            kwargs["ssl_ca_certs"] = tls_ca
        if tls_cert:
            kwargs["ssl_certfile"] = tls_cert
        if tls_key:
            kwargs["ssl_keyfile"] = tls_key
    pool = TrackingConnectionPool.from_url(url, redis_connect_func=_on_connect, **kwargs)
    return redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


def _on_connect(connection: Any) -> None:
    """A redis.Connection, given our `tracking_redirect` attribute."""
    connection.on_connect()
    connection.tracking_redirect = None  # a new connection tracks nothing yet


class TrackingConnectionPool(redis.BlockingConnectionPool):
    """A blocking pool whose connections report the keys they read to `redirect_to`.

    Server-assisted client-side caching (https://redis.io/docs/latest/develop/reference/
    client-side-caching/), RESP2 mode: each data connection runs
    `CLIENT TRACKING ON REDIRECT <id> NOLOOP`, so Redis sends an invalidation message to the
    connection `<id>` (subscribed to `__redis__:invalidate`) when a key it read changes.
    A connection is (re-)armed as it leaves the pool, so a new redirect id reaches every
    connection without dropping the ones in use. `redirect_to = None` leaves tracking off.
    """

    redirect_to: int | None = None
    # Set when the server refused CLIENT TRACKING (Redis < 6, an ACL without it): tracking is
    # then off for good and connections are handed out untracked.
    tracking_refused: redis.ResponseError | None = None

    def get_connection(self, *args: Any, **options: Any) -> Any:
        connection = super().get_connection(*args, **options)
        target = self.redirect_to
        if getattr(connection, "tracking_redirect", None) != target:
            try:
                if target is None:
                    connection.send_command("CLIENT", "TRACKING", "OFF")
                else:
                    connection.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", target, "NOLOOP")
                connection.read_response()
            except redis.ResponseError as exc:  # the reply was read: the connection is clean
                self.tracking_refused = exc
                self.redirect_to = target = None
            except BaseException:
                self.release(connection)
                raise
            connection.tracking_redirect = target
        return connection


def check_at_start(client: redis.Redis, label: str) -> bool:
    """One PING at start, so a wrong password or TLS set-up is one clear log line naming the
    (masked) URL rather than a traceback; the proxy then runs degraded and keeps probing.

    redis-py's messages name the host and port and the server's reply, never the password."""
    try:
        client.ping()
        log.info("Redis answers at %s", label)
        return True
    except redis.AuthenticationError as exc:
        log.error("authentication to Redis failed at %s (%s): check the user and password in "
                  "REDIS_URL or REDIS_PASSWORD", label, exc)
    except NoPermissionError as exc:
        log.error("the Redis user at %s may not run PING (%s): grant the proxy's ACL user "
                  "the commands it needs", label, exc)
    except UNREACHABLE as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLError) or "SSL" in str(exc):
            log.error("TLS to Redis failed at %s (%s): check REDIS_TLS_CA, REDIS_TLS_CERT and "
                      "REDIS_TLS_KEY, and that the server's certificate names its host",
                      label, exc)
        else:
            log.warning("Redis is not reachable at %s (%s); serving without it until it "
                        "answers", label, exc)
    except redis.RedisError as exc:
        log.error("Redis at %s refused PING: %s", label, exc)
    return False


def get(client: Any, key: bytes | str) -> Any:
    """GET `key`: the value, or None. On one Redis (or Sentinel's primary) the command goes
    straight over a connection of the client's pool, checked out and released as redis-py does
    (so a connection is armed for tracking and a busy pool still waits, then fails), without
    redis-py's per-command machinery: its retry wrapper, per-call observability and reply
    callbacks were ~60 of the ~110 µs of CPU a GET took. A cluster goes through `client.get`."""
    pool = getattr(client, "connection_pool", None)
    if type(client) is not redis.Redis or not isinstance(pool, TrackingConnectionPool):
        return client.get(key)
    raw = key.encode() if isinstance(key, str) else key
    connection = pool.get_connection()
    try:
        connection.send_packed_command([b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(raw), raw)],
                                       check_health=False)
        return connection.read_response()
    except redis.ResponseError:
        raise  # the reply was read whole: the connection is clean
    except BaseException:
        connection.disconnect()  # a reply may be left unread: never reuse this one
        raise
    finally:
        pool.release(connection)


def pipelined(client: Any, health: "RedisHealth", commands: list[tuple[Any, ...]]) -> list[Any]:
    """Each command's reply, in order; a command Redis refused (OOM, READONLY, ...) or could not
    run gives its exception in its place, the others still answer.

    On one Redis (or Sentinel's primary) the commands go out in one write over one connection of
    the pool and are read back in order: one round trip, in the order sent (a pipeline,
    https://redis.io/docs/latest/develop/use/pipelining/), raw as `get`; Redis unreachable
    raises StoreUnavailable (through `health`). A cluster runs them one by one through `health`,
    each on the node owning its key, so a node that is down fails only its own commands."""
    pool = getattr(client, "connection_pool", None)
    if type(client) is not redis.Redis or not isinstance(pool, TrackingConnectionPool):
        replies: list[Any] = []
        for command in commands:
            try:
                replies.append(health.call(functools.partial(client.execute_command, *command)))
            except (StoreUnavailable, redis.RedisError) as exc:
                replies.append(exc)
        return replies
    return health.call(lambda: _pipelined(pool, commands))


def _pipelined(pool: TrackingConnectionPool, commands: list[tuple[Any, ...]]) -> list[Any]:
    connection = pool.get_connection()
    try:
        connection.send_packed_command(connection.pack_commands(commands), check_health=False)
        replies: list[Any] = []
        for _command in commands:
            try:
                replies.append(connection.read_response())
            except redis.ResponseError as exc:  # this reply was read whole: read on
                replies.append(exc)
        return replies
    except BaseException:
        connection.disconnect()  # replies may be left unread: never reuse this one
        raise
    finally:
        pool.release(connection)


def pool_exhausted(exc: BaseException) -> bool:
    """BlockingConnectionPool found no free connection within its timeout."""
    return isinstance(exc, redis.ConnectionError) and "No connection available" in str(exc)


class RedisHealth:
    """Tracks whether Redis answers. After a failure the request path stops asking Redis and a
    background thread PINGs every `probe_interval` seconds until it answers again."""

    def __init__(self, client: Any, probe_interval: float = 0.5,
                 on_recover: Callable[[], None] | None = None):
        self.client = client  # a redis.Redis, or a proxy.store.topology.ClusterStore
        self.probe_interval = probe_interval
        self.on_recover = on_recover
        self._up = True
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._prober: threading.Thread | None = None
        self._check_lock = threading.Lock()
        self._checked_at = -math.inf
        self._last_check = True
        self.log_limiter = LogLimiter(log)  # a flapping Redis is told once per interval

    @property
    def up(self) -> bool:
        return self._up

    def call(self, fn: Callable[[], T]) -> T:
        """Run one Redis call; StoreUnavailable at once while Redis is known to be down."""
        if not self._up:
            raise StoreUnavailable()
        try:
            return fn()
        except redis.ConnectionError as exc:
            if pool_exhausted(exc):  # busy, not down: Redis answers, our pool is all in use
                raise StoreUnavailable("every connection to Redis is busy; retry shortly",
                                       error="redis busy") from exc
            self.mark_down(exc)
            raise StoreUnavailable() from exc
        except UNREACHABLE as exc:
            self.mark_down(exc)
            raise StoreUnavailable() from exc

    def mark_down(self, exc: BaseException) -> None:
        with self._lock:
            if not self._up or self._stop.is_set():
                return
            self._up = False
            self._prober = threading.Thread(target=self._probe, name="redis-probe", daemon=True)
            self._prober.start()
        self.log_limiter.warning("down", "redis unreachable (%s); serving without it until it "
                                 "answers again", exc)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except UNREACHABLE:
            return False
        except redis.RedisError:
            return False

    def check(self, max_age: float = 0.5) -> bool:
        """Whether Redis answers, by a PING at most every `max_age` seconds: /health is open to
        anyone, and a PING per request would let a flood of it drain the pool. A PING that
        fails for want of a free connection says nothing about Redis: the last answer stands."""
        now = time.monotonic()
        if now - self._checked_at < max_age or not self._check_lock.acquire(blocking=False):
            return self._up and self._last_check
        try:
            try:
                ok = bool(self.client.ping())
            except redis.ConnectionError as exc:
                ok = self._last_check if pool_exhausted(exc) else False
            except (*UNREACHABLE, redis.RedisError):
                ok = False
            self._last_check, self._checked_at = ok, time.monotonic()
            if not ok:
                self.mark_down(ConnectionError("PING failed"))
            return self._up and ok
        finally:
            self._check_lock.release()

    def report(self) -> dict[str, Any]:
        """What /health shows of the store: `{"redis": "ok"}` or `{"redis": "down"}`."""
        return {"redis": "ok" if self.check() else "down"}

    def _probe(self) -> None:
        while not self._stop.wait(self.probe_interval):
            if self.ping():
                with self._lock:
                    self._up = True
                self.log_limiter.warning("up", "redis answers again")
                if self.on_recover:
                    self.on_recover()
                return

    def close(self) -> None:
        self._stop.set()
        prober = self._prober
        if prober and prober is not threading.current_thread():
            prober.join(timeout=2)
