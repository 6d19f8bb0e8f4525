"""RedisProxy: the facade over the URL role and the read role, shared by every front end."""

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import redis
from redis.exceptions import RedisClusterException

from load_env import Settings, load_settings
from proxy.cache.freshness import Policy
from proxy.cache.local_cache import READ_TIER, URL_TIER, LocalCache
from proxy.cache.request import ClientRequest
from proxy.cache.result import BYPASS, HIT, MISS, STALE, CacheResult, PlainHit
from proxy.cache.rules import NO_RULES, Rules, RulesError, parse_rules
from proxy.cache.single_flight import SingleFlight
from proxy.core import stats as names
from proxy.core.read_cache import ReadCache
from proxy.core.stats import Stats
from proxy.core.url_cache import UrlCache
from proxy.core.url_request import UrlLimits, UrlRequest
from proxy.errors import ConfigError, ProxyError
from proxy.store.bans import Ban
from proxy.store.connection import (
    RedisHealth,
    TrackingConnectionPool,
    check_at_start,
    make_client,
    mask_url,
)
from proxy.store.fetch_lock import FetchLock
from proxy.store.invalidation import TRACKING, TTL_ONLY, Invalidator
from proxy.store.launcher import RedisServer
from proxy.store.purge_marker import PurgeMarkers
from proxy.store.sentinel import make_sentinel_client
from proxy.store.topology import make_cluster_client
from proxy.upstream.fetcher import Fetcher, UpstreamResponse
from proxy.upstream.policy import UpstreamPolicy

log = logging.getLogger(__name__)


class RedisProxy:
    """The caching core's facade. Build it from its parts for tests; `get_instance()` for the
    process. The URL role is `self.urls` (UrlCache), the read role `self.reads` (ReadCache);
    both share this object's client, L1, health, locks and counters."""

    _instance: ClassVar["RedisProxy | None"] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, client: Any, fetcher: Fetcher, local_cache: LocalCache | None = None,
                 *, ttl: float = 3600.0, stale_ttl: float = 300.0, stale_if_error: float = 300.0,
                 prefix: str = "rp:", policy: Policy | None = None, max_url_bytes: int = 8192,
                 max_key_bytes: int = 1024, clock: Callable[[], float] = time.time,
                 stale_while_revalidate: float = 0.0, invalidation: str = "ttl",
                 redis_label: str = "", on_close: Iterable[Callable[[], None]] = (),
                 get_allow_cache_prefix: bool = False, origin: str = "",
                 origins: Iterable[str] = (),
                 refresh_ahead: float = 0.0,
                 tag_headers: Iterable[str] = ("Surrogate-Key", "Cache-Tag"),
                 tag_headers_shown: bool = False, compress_min_bytes: int = 0,
                 max_variants: int = 8, rules: Rules = NO_RULES):
        self.client = client
        self.fetcher = fetcher
        self.local = local_cache if local_cache is not None else LocalCache(capacity=0)
        self.prefix = prefix
        self.policy = policy or Policy(ttl=ttl)
        self.clock = clock
        self.redis_label = redis_label
        # A cluster client brings its own per-shard health (proxy.store.cluster_health).
        health_class = getattr(client, "health_class", RedisHealth)
        self.health = health_class(client, on_recover=self._on_redis_recover)
        # The owner's section is the fetch plus a re-read and the store, each up to one socket
        # timeout: the lock must not expire before the store.
        socket_timeout = client.connection_pool.connection_kwargs.get("socket_timeout") or 0.5
        self.fetch_lock = FetchLock(client, self.health, hold=fetcher.timeout + 2 * socket_timeout)
        # A purge's marker outlives any fetch that could have begun before it (see PurgeMarkers).
        self.purge_markers = PurgeMarkers(client, self.health, prefix, lifetime=2 * self.fetch_lock.hold)
        self.counters = Stats()
        limits = UrlLimits(prefix=prefix, max_url_bytes=max_url_bytes, max_key_bytes=max_key_bytes,
                           stale_ttl=stale_ttl, stale_if_error=stale_if_error,
                           stale_while_revalidate=stale_while_revalidate, origin=origin,
                           origins=tuple(origins),
                           refresh_ahead=refresh_ahead,
                           tag_headers=tuple(name.lower() for name in tag_headers),
                           tag_headers_shown=tag_headers_shown,
                           compress_min_bytes=compress_min_bytes, max_variants=max_variants)
        self.urls = UrlCache(client, fetcher, self.local, self.health, self.fetch_lock,
                             self.purge_markers, self.policy, self.counters, limits, clock=clock,
                             redis_label=redis_label, rules=rules)
        self.reads = ReadCache(client, self.local, self.health, self.counters, prefix=prefix,
                               allow_cache_prefix=get_allow_cache_prefix,
                               tracked=lambda: self.l1_invalidation == TRACKING)
        self._on_close = list(on_close)
        self.invalidator: Invalidator | Any = None
        pool = client.connection_pool
        if invalidation == "tracking" and hasattr(client, "start_tracking"):
            # A cluster: one invalidation listener per node (proxy.store.cluster_tracking).
            self.invalidator = client.start_tracking(self.local, on_keys=self._invalidate)
        elif invalidation == "tracking" and isinstance(pool, TrackingConnectionPool):
            # L1 takes nothing until Redis tracks what this process reads (CONTRACT §4, issue 3).
            self.local.suspend()
            self.invalidator = Invalidator(pool, on_keys=self._invalidate, on_lost=self.local.suspend,
                                           on_armed=self.local.resume).start(wait=1.0)

    @property
    def stats(self) -> Counter[str]:
        """The counters by name (proxy.core.stats), as /metrics and INFO read them."""
        return self.counters.counts

    @property
    def flights(self) -> SingleFlight:
        return self.urls.flights

    @property
    def _redis_value(self) -> Callable[[bytes], tuple[bytes | None, float | None]]:
        """The read role's one-key Redis read (a test gates it to hold loads in flight)."""
        return self.reads.load_value

    @_redis_value.setter
    def _redis_value(self, read: Callable[[bytes], tuple[bytes | None, float | None]]) -> None:
        self.reads.load_value = read

    # ----- the process-wide instance -------------------------------------------------------

    @classmethod
    def get_instance(cls, settings: Settings | None = None) -> "RedisProxy":
        """The one RedisProxy of this process, built from settings on first use."""
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls.from_settings(settings or load_settings())
            return cls._instance

    @classmethod
    def reset_instance(cls) -> None:
        with cls._instance_lock:
            instance, cls._instance = cls._instance, None
        if instance is not None:
            instance.close()

    def close(self) -> None:
        if self.invalidator is not None:
            self.invalidator.close()
        self.health.close()
        for callback in reversed(self._on_close):
            try:
                callback()
            except Exception:  # noqa: BLE001 - closing must go on
                log.exception("error while closing")
        self._on_close.clear()
        self.fetcher.close()
        self.client.close()
        self.client.connection_pool.disconnect()  # a client given a pool does not close it

    # ----- set-up ----------------------------------------------------------------------------

    def configure_memory(self, maxmemory: int, policy: str) -> bool:
        """CONFIG SET maxmemory and maxmemory-policy; a refusal is a warning, not a crash."""
        # A cluster (every primary, each warned) or Sentinel's pool (each new primary too).
        for target in (self.client, self.client.connection_pool):
            if hasattr(target, "configure_memory"):
                return bool(target.configure_memory(maxmemory, policy))
        try:
            self.client.config_set("maxmemory", maxmemory)
            self.client.config_set("maxmemory-policy", policy)
        except redis.RedisError as exc:
            log.warning("could not apply maxmemory=%s maxmemory-policy=%s on %s: %s",
                        maxmemory, policy, self.redis_label or "redis", exc)
            return False
        return True

    # ----- URL role (proxy.core.url_cache) -------------------------------------------------------

    def parse(self, url: str, key: str | None = None, params: Any = None) -> UrlRequest:
        """Validate a URL-role request; BadRequest / URITooLong name what is wrong."""
        return self.urls.parse(url, key, params)

    def redis_get(self, url: str, key: str | None = None, params: Any = None) -> bytes:
        """The body of `url`, from the cache when it holds a fresh copy (the simple call)."""
        return self.urls.fetch(url, key, params).body

    def fetch(self, url: str, key: str | None = None, params: Any = None,
              request: ClientRequest | None = None) -> CacheResult:
        """The response for `url`: from L1, else Redis, else upstream (stored when storable).
        `request`: what the client sent (its conditionals, Cache-Control, Range, and the
        Accept-Encoding that chooses a compressed entry's representation) and, in reverse-proxy
        mode, the headers forwarded to the origin; None is a plain GET with none of them."""
        return self.urls.fetch(url, key, params, request)

    def plain_hit(self, url: str, key: str | None, params: Any, accept_encoding: str | None,
                  client: Callable[[], ClientRequest] | None = None) -> PlainHit | None:
        """`fetch`'s answer to a GET or HEAD with no field its full evaluation reads, when a
        fresh L1 entry gives it as it stands; None: ask `fetch` (proxy.core.plain_hit)."""
        return self.urls.plain_hit(url, key, params, accept_encoding, client)

    def plain_lookup(self, key: str, accept_encoding: str | None) -> PlainHit | None:
        """`lookup`'s answer to `?key=K` when a fresh L1 entry gives it as it stands; None: ask
        `lookup`."""
        return self.urls.plain_lookup(key, accept_encoding)

    def pass_through(self, url: str, request: ClientRequest, body: bytes | None = None) -> UpstreamResponse:
        """Send `request` on to `url` uncached; an unsafe method's success invalidates (RFC 9111 §4.4)."""
        return self.urls.pass_through(url, request, body)

    def lookup(self, key: str, request: ClientRequest | None = None) -> CacheResult:
        """`?key=K` alone: what is stored under K, or KeyNotFound (of `request`, only its
        Accept-Encoding is read)."""
        return self.urls.lookup(key, request)

    def purge(self, url: str | None = None, key: str | None = None, params: Any = None, *,
              tag: str | None = None, soft: bool = False) -> int:
        """Remove an entry (or every entry tagged `tag`) from Redis and every proxy's L1, or
        with `soft` mark them stale; how many."""
        return self.urls.purge(url, key, params, tag=tag, soft=soft)

    def ban(self, host: str, path: str) -> tuple[Ban, int]:
        """Varnish's ban: entries of `host` (glob; "" = any) whose path matches the glob `path`,
        stored before now, are stale from now on, on every proxy (checked when read)."""
        return self.urls.ban(host, path)

    def bans(self) -> tuple[Ban, ...]:
        """The bans in force."""
        return self.urls.bans.bans()

    def check_key(self, key: str) -> bool:
        """Whether an entry is stored under the explicit key `key`."""
        return self.urls.check_key(key)

    # ----- read-proxy role (proxy.core.read_cache) ---------------------------------------------

    def get_value(self, key: bytes | str) -> bytes | None:
        """The value of a backing-Redis key through L1; None when it does not exist."""
        return self.read_value(key)[0]

    def read_value(self, key: bytes | str) -> tuple[bytes | None, str]:
        """The value of a backing-Redis key through L1, and HIT (L1) or MISS (Redis)."""
        return self.reads.read_value(key)

    def get_values(self, keys: list[bytes | str]) -> list[bytes | None]:
        """MGET through L1: hits from memory, the misses in one Redis round trip."""
        return self.reads.get_values(keys)

    def exists(self, keys: list[bytes | str]) -> int:
        """EXISTS: how many of `keys` exist in the backing Redis."""
        return self.reads.exists(keys)

    # ----- health and stats ----------------------------------------------------------------

    def health_report(self) -> dict[str, Any]:
        """/health: `redis` is ok, down, or (a cluster with some shard down while another
        serves) degraded; a cluster adds its `shards` (proxy.store.cluster_health)."""
        report = dict(self.health.report())
        redis_state = report.pop("redis")
        return {"status": "ok" if redis_state == "ok" else "degraded", "redis": redis_state,
                "l1_invalidation": self.l1_invalidation, **report}

    @property
    def l1_invalidation(self) -> str:
        """How L1 follows changes in Redis: tracking, ttl, or connecting (tracking not armed)."""
        return self.invalidator.mode if self.invalidator is not None else TTL_ONLY

    def _invalidate(self, keys: list[bytes] | None) -> None:
        """Redis says these keys changed (None: anything may have): drop their L1 copies."""
        if keys is None:
            self.local.clear()
            return
        self.counters.count(names.INVALIDATIONS, len(keys))
        for key in keys:
            self.local.pop((READ_TIER, key))
            self.local.pop((URL_TIER, key.decode("utf-8", "replace")))

    def _count(self, name: str, amount: int = 1) -> None:
        self.counters.count(name, amount)

    def _on_redis_recover(self) -> None:
        self.local.clear()  # writes missed while Redis was away are not known to L1

    # ----- built from settings ---------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> "RedisProxy":
        """The proxy `settings` describe, starting an embedded redis-server when none is
        configured (closed with the proxy)."""
        if "rules" not in overrides:  # read first: a bad file starts nothing
            overrides["rules"] = rules_of(settings)
        on_close = []
        client: Any
        if settings.redis_cluster_nodes or settings.redis_sentinels:
            client, url = scaled_out_client(settings)
        else:
            if settings.redis_configured:
                url = redis_url_of(settings)
            else:
                embedded = RedisServer().start()
                on_close.append(embedded.cleanup)
                url = embedded.url
                log.info("no REDIS_URL or REDIS_HOST set: started an embedded redis-server at %s", url)
            client = make_client(url, socket_timeout=settings.redis_socket_timeout,
                                 max_connections=settings.redis_max_connections,
                                 password=settings.redis_password or None, tls_ca=settings.redis_tls_ca,
                                 tls_cert=settings.redis_tls_cert, tls_key=settings.redis_tls_key)
        fetcher = Fetcher(timeout=settings.upstream_timeout, max_bytes=settings.upstream_max_bytes,
                          max_fetches=settings.max_fetches,
                          policy=UpstreamPolicy(allowed_hosts=settings.upstream_allowed_hosts,
                                                allowed_ports=settings.upstream_allowed_ports,
                                                allow_private=settings.upstream_allow_private))
        local = LocalCache(capacity=settings.cache_capacity, max_bytes=settings.cache_max_bytes,
                           ttl=settings.cache_ttl)
        policy = Policy(ttl=settings.cache_ttl, store_statuses=settings.cache_store_statuses,
                        store_set_cookie=settings.cache_store_set_cookie,
                        respect_cache_control=settings.respect_cache_control,
                        default_freshness=settings.default_freshness,
                        ttl_caps_origin=settings.cache_ttl_caps_origin,
                        heuristic_fraction=settings.heuristic_fraction,
                        heuristic_max=settings.heuristic_max_age,
                        max_headers=settings.max_stored_headers,
                        max_header_bytes=settings.max_stored_header_bytes)
        proxy = cls(client, fetcher, local, ttl=settings.cache_ttl,
                    stale_ttl=settings.cache_stale_ttl, stale_if_error=settings.stale_if_error,
                    prefix=settings.cache_prefix, policy=policy,
                    max_url_bytes=settings.max_url_bytes, max_key_bytes=settings.max_key_bytes,
                    stale_while_revalidate=settings.stale_while_revalidate,
                    invalidation=settings.l1_invalidation,
                    redis_label=mask_url(url), on_close=on_close,
                    get_allow_cache_prefix=settings.get_allow_cache_prefix,
                    origin=settings.origin_url, origins=[url for _, url in settings.origins],
                    refresh_ahead=settings.refresh_ahead, tag_headers=settings.tag_header,
                    tag_headers_shown=settings.tag_header_shown,
                    compress_min_bytes=settings.compress_min_bytes,
                    max_variants=settings.max_variants, **overrides)
        if check_at_start(client, mask_url(url)):
            proxy.configure_memory(settings.redis_maxmemory, settings.redis_eviction_policy)
        return proxy


def rules_of(settings: Settings) -> Rules:
    """RULES_FILE read and checked (proxy.cache.rules): at start, by --check-config and by each
    reload, so that a bad file is refused as a bad setting is (ConfigError, every problem with
    its line); no rules when it is not set."""
    path = settings.rules_file
    if not path:
        return NO_RULES
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError([f"RULES_FILE={path}: cannot be read ({exc.strerror}); expected a "
                           "readable TOML file of [[rule]] tables"]) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError([f"RULES_FILE={path}: line {line}: byte 0x{data[exc.start]:02x} is not "
                           "UTF-8; expected a TOML file, which is UTF-8"]) from exc
    try:
        return parse_rules(text, max_stale=settings.cache_stale_ttl)
    except RulesError as exc:
        raise ConfigError([f"RULES_FILE={path}: {problem}" for problem in exc.problems]) from exc


def scaled_out_client(settings: Settings) -> tuple[Any, str]:
    """The client of a Redis Cluster (REDIS_CLUSTER_NODES) or of Sentinel's primary
    (REDIS_SENTINELS), and the label logs and /health show for it."""
    timeout, most = settings.redis_socket_timeout, settings.redis_max_connections
    password = settings.redis_password or None
    if settings.redis_cluster_nodes:
        label = "redis-cluster://" + ",".join(settings.redis_cluster_nodes)
        log.info("store: Redis Cluster, seeds %s", ",".join(settings.redis_cluster_nodes))
        try:
            return make_cluster_client(settings.redis_cluster_nodes, tls_ca=settings.redis_tls_ca,
                                       tls_cert=settings.redis_tls_cert,
                                       tls_key=settings.redis_tls_key, socket_timeout=timeout,
                                       max_connections=most, password=password), label
        except RedisClusterException as exc:  # not a RedisError: say it as one, for main()
            raise redis.ConnectionError(f"no Redis Cluster at {label}: {exc}") from exc
    label = f"redis-sentinel://{','.join(settings.redis_sentinels)}/{settings.redis_sentinel_master}"
    log.info("store: the primary of %r through Sentinel at %s", settings.redis_sentinel_master,
             ",".join(settings.redis_sentinels))
    return make_sentinel_client(settings.redis_sentinels, settings.redis_sentinel_master,
                                socket_timeout=timeout, max_connections=most,
                                password=password), label


def redis_url_of(settings: Settings) -> str:
    """REDIS_URL, else one built from REDIS_HOST/PORT/DB (TLS when TLS files are given). The
    password stays out of it: it goes to the client apart, so it can never be logged."""
    if settings.redis_url:
        return settings.redis_url
    host = f"[{settings.redis_host}]" if ":" in settings.redis_host else settings.redis_host
    tls = settings.redis_tls_ca or settings.redis_tls_cert
    return f"{'rediss' if tls else 'redis'}://{host}:{settings.redis_port}/{settings.redis_db}"


__all__ = ["RedisProxy", "CacheResult", "ClientRequest", "ProxyError", "HIT", "MISS", "STALE", "BYPASS", "UrlRequest"]
