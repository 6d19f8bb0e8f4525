"""RedisProxy: the facade over the URL role and the read role, shared by every front end."""

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import redis

from load_env import Settings, load_settings
from proxy.cache.freshness import Policy
from proxy.cache.local_cache import READ_TIER, URL_TIER, LocalCache
from proxy.cache.request import ClientRequest
from proxy.cache.result import BYPASS, HIT, MISS, STALE, CacheResult, PlainHit
from proxy.cache.rules import NO_RULES, Rules
from proxy.cache.single_flight import SingleFlight
from proxy.core import stats as names
from proxy.core.read_cache import ReadCache
from proxy.core.stats import Stats
from proxy.core.url_cache import UrlCache
from proxy.core.url_request import UrlLimits, UrlRequest
from proxy.errors import ProxyError
from proxy.parts import fetcher_of, local_cache_of, policy_of, redis_client_of, rules_of
from proxy.store.bans import Ban
from proxy.store.connection import RedisHealth, TrackingConnectionPool, check_at_start
from proxy.store.fetch_lock import FetchLock
from proxy.store.invalidation import TRACKING, TTL_ONLY, Invalidator
from proxy.store.purge_marker import PurgeMarkers
from proxy.upstream.fetcher import Fetcher, UpstreamResponse

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
    def get_instance(cls, settings: Settings | None = None, rules: Rules | None = None) -> "RedisProxy":
        """The one RedisProxy of this process, built from settings on first use (`rules`:
        RULES_FILE already read, else read from the settings)."""
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls.from_settings(settings or load_settings(),
                                                  **({} if rules is None else {"rules": rules}))
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
                  client: Callable[[], ClientRequest] | None = None,
                  site_host: Callable[[], str] | None = None) -> PlainHit | None:
        """`fetch`'s answer to a GET or HEAD with no field its full evaluation reads, when a
        fresh L1 entry gives it as it stands; None: ask `fetch` (proxy.core.plain_hit).
        `site_host()`: in reverse-proxy mode the host naming the site (its rules)."""
        return self.urls.plain_hit(url, key, params, accept_encoding, client, site_host)

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
              tag: str | None = None, soft: bool = False, site_host: str | None = None) -> int:
        """Remove an entry (or every entry tagged `tag`) from Redis and every proxy's L1, or
        with `soft` mark them stale; how many. `site_host`: the host naming the site (its rules)."""
        return self.urls.purge(url, key, params, tag=tag, soft=soft, site_host=site_host)

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
        """The proxy `settings` describe (its parts: proxy.parts), starting an embedded
        redis-server when none is configured (closed with the proxy)."""
        if "rules" not in overrides:  # read first: a bad file starts nothing
            overrides["rules"] = rules_of(settings)
        client, label, on_close = redis_client_of(settings)
        proxy = cls(client, fetcher_of(settings), local_cache_of(settings), ttl=settings.cache_ttl,
                    stale_ttl=settings.cache_stale_ttl, stale_if_error=settings.stale_if_error,
                    prefix=settings.cache_prefix, policy=policy_of(settings),
                    max_url_bytes=settings.max_url_bytes, max_key_bytes=settings.max_key_bytes,
                    stale_while_revalidate=settings.stale_while_revalidate,
                    invalidation=settings.l1_invalidation,
                    redis_label=label, on_close=on_close,
                    get_allow_cache_prefix=settings.get_allow_cache_prefix,
                    origin=settings.origin_url, origins=[url for _, url in settings.origins],
                    refresh_ahead=settings.refresh_ahead, tag_headers=settings.tag_header,
                    tag_headers_shown=settings.tag_header_shown,
                    compress_min_bytes=settings.compress_min_bytes,
                    max_variants=settings.max_variants, **overrides)
        if check_at_start(client, label):
            proxy.configure_memory(settings.redis_maxmemory, settings.redis_eviction_policy)
        return proxy


__all__ = ["RedisProxy", "CacheResult", "ClientRequest", "ProxyError", "HIT", "MISS", "STALE", "BYPASS", "UrlRequest"]
