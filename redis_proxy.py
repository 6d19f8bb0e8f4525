"""RedisProxy: the tiered lookup (L1 -> Redis -> upstream) shared by every front end."""

import dataclasses
import functools
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, ClassVar
from urllib.parse import urlsplit

import redis
from redis import crc
from redis.exceptions import RedisClusterException

from load_env import Settings, load_settings
from proxy.cache import entry as cache_entry
from proxy.cache import keys as cache_keys
from proxy.cache.entry import Entry
from proxy.cache.freshness import Policy
from proxy.cache.local_cache import MISSING, LocalCache
from proxy.cache.single_flight import SingleFlight
from proxy.errors import (
    BadGateway,
    BadRequest,
    Forbidden,
    GatewayTimeout,
    KeyNotFound,
    ProxyError,
    ServiceUnavailable,
    StoreUnavailable,
    UnrecordedSource,
)
from proxy.log_limit import LogLimiter
from proxy.store.connection import (
    RedisHealth,
    TrackingConnectionPool,
    check_at_start,
    make_client,
    mask_url,
)
from proxy.store.fetch_lock import FetchLock
from proxy.store.invalidation import TTL_ONLY, Invalidator
from proxy.store.launcher import RedisServer
from proxy.store.purge_marker import PurgeMarkers, Start
from proxy.store.topology import make_cluster_client, make_sentinel_client
from proxy.upstream.fetcher import Fetcher
from proxy.upstream.policy import UpstreamPolicy

log = logging.getLogger(__name__)

HIT, MISS, STALE, BYPASS = "HIT", "MISS", "STALE", "BYPASS"
MAX_REFRESHES = 8  # background stale-while-revalidate refreshes running at once


@dataclasses.dataclass(frozen=True)
class CacheResult:
    """What the URL role answers: the response plus how the cache produced it."""

    status: int
    body: bytes
    headers: dict[str, str]
    cache: str  # HIT, MISS, STALE or BYPASS
    age: int = 0
    ttl: float | None = None  # freshness left, when served from the cache
    forward: str = ""  # RFC 9211 fwd= reason when upstream was asked: miss or stale
    upstream_status: int = 0  # what upstream answered, when it was asked
    stored: bool = False
    detail: str = ""  # RFC 9211 detail= of a STALE answer: stale-if-error or stale-while-revalidate

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "application/octet-stream")


@dataclasses.dataclass(frozen=True)
class UrlRequest:
    target: str  # what is sent upstream
    canonical: str  # what the entry remembers and the derived key hashes
    redis_key: str


class RedisProxy:
    """The caching core. Build it from its parts for tests; `get_instance()` for the process."""

    _instance: ClassVar["RedisProxy | None"] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, client: redis.Redis, fetcher: Fetcher, local_cache: LocalCache | None = None,
                 *, ttl: float = 3600.0, stale_ttl: float = 300.0, stale_if_error: float = 300.0,
                 prefix: str = "rp:", policy: Policy | None = None, max_url_bytes: int = 8192,
                 max_key_bytes: int = 1024, clock: Callable[[], float] = time.time,
                 stale_while_revalidate: float = 0.0, invalidation: str = "ttl",
                 redis_label: str = "", on_close: Iterable[Callable[[], None]] = (),
                 get_allow_cache_prefix: bool = False):
        self.client = client
        self.fetcher = fetcher
        self.local = local_cache if local_cache is not None else LocalCache(capacity=0)
        self.ttl = ttl
        self.stale_ttl = stale_ttl
        self.stale_if_error = stale_if_error
        self.prefix = prefix
        self.get_allow_cache_prefix = get_allow_cache_prefix
        self.policy = policy or Policy(ttl=ttl)
        self.max_url_bytes = max_url_bytes
        self.max_key_bytes = max_key_bytes
        self.clock = clock
        self.redis_label = redis_label
        # A cluster client brings its own per-node health (redis_topology.ClusterHealth).
        health_class = getattr(client, "health_class", RedisHealth)
        self.health = health_class(client, on_recover=self._on_redis_recover)
        self.stale_while_revalidate = stale_while_revalidate
        self.flights = SingleFlight()
        # Parsing is pure: remember recent results (errors are raised again, never remembered).
        self._parse_cached = functools.lru_cache(maxsize=4096)(self._parse)
        # The owner's section is the fetch plus a re-read and the store, each up to one socket
        # timeout: the lock must not expire before the store.
        socket_timeout = client.connection_pool.connection_kwargs.get("socket_timeout") or 0.5
        self.fetch_lock = FetchLock(client, self.health, hold=fetcher.timeout + 2 * socket_timeout)
        # A purge's marker outlives any fetch that could have begun before it (see PurgeMarkers).
        self.purge_markers = PurgeMarkers(client, self.health, prefix, lifetime=2 * self.fetch_lock.hold)
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._refreshing: set[str] = set()  # keys with a background refresh running
        self.log_limiter = LogLimiter(log)  # repeated store and upstream failures
        self._on_close = list(on_close)
        self.invalidator: Invalidator | Any = None
        pool = client.connection_pool
        if invalidation == "tracking" and hasattr(client, "start_tracking"):
            # A cluster: one invalidation listener per node (redis_topology.ClusterTracking).
            self.invalidator = client.start_tracking(self.local, on_keys=self._invalidate)
        elif invalidation == "tracking" and isinstance(pool, TrackingConnectionPool):
            # L1 takes nothing until Redis tracks what this process reads (CONTRACT §4, issue 3).
            self.local.suspend()
            self.invalidator = Invalidator(pool, on_keys=self._invalidate, on_lost=self.local.suspend,
                                           on_armed=self.local.resume).start(wait=1.0)

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
        if hasattr(self.client, "configure_memory"):  # a cluster: every primary, each warned
            return self.client.configure_memory(maxmemory, policy)
        try:
            self.client.config_set("maxmemory", maxmemory)
            self.client.config_set("maxmemory-policy", policy)
        except redis.RedisError as exc:
            log.warning("could not apply maxmemory=%s maxmemory-policy=%s on %s: %s",
                        maxmemory, policy, self.redis_label or "redis", exc)
            return False
        return True

    # ----- URL role ----------------------------------------------------------------------------

    def parse(self, url: str, key: str | None = None, params: Any = None) -> UrlRequest:
        """Validate a URL-role request; BadRequest / URITooLong name what is wrong."""
        if isinstance(params, (str, type(None))):
            return self._parse_cached(url, key, params)  # the hit path asks the same URLs again
        return self._parse(url, key, params)

    def _parse(self, url: str, key: str | None, params: Any) -> UrlRequest:
        cache_keys.check_url(url, self.max_url_bytes)
        if key is not None:
            cache_keys.check_key(key, self.max_key_bytes)
        pairs = cache_keys.parse_params(params) if isinstance(params, (str, type(None))) \
            else cache_keys.parse_params(_json(params))
        target = cache_keys.target_url(url, pairs)
        if len(target.encode()) > self.max_url_bytes:
            cache_keys.check_url(target, self.max_url_bytes)
        canonical = cache_keys.canonical_url(target)  # the key is what is actually fetched
        return UrlRequest(target, canonical, cache_keys.redis_key(self.prefix, key, canonical))

    def redis_get(self, url: str, key: str | None = None, params: Any = None) -> bytes:
        """The body of `url`, from the cache when it holds a fresh copy (the simple call)."""
        return self.fetch(url, key, params).body

    def fetch(self, url: str, key: str | None = None, params: Any = None) -> CacheResult:
        """The response for `url`: from L1, else Redis, else upstream (stored when storable)."""
        request = self.parse(url, key, params)
        self.fetcher.check(request.target)  # the upstream policy holds for cached entries too
        now = self.clock()
        l1_key = ("u", request.redis_key)
        local = self.local.get(l1_key)
        if (local is not MISSING and local.url == request.canonical and local.remaining(now) > 0
                and self._admitted(local)):
            self._count("hits_l1")
            return self._from_entry(local, now, HIT)
        epoch = self.local.epoch
        stored, redis_up = self._read_entry(request.redis_key)
        if stored is not None and (stored.url != request.canonical or not self._admitted(stored)):
            # The key names another URL's entry, or one that records too little for this
            # policy to judge: a miss, never its body (fetched again, through the policy).
            stored = None
        if stored is not None and stored.remaining(now) > 0:
            self._count("hits_redis")
            self.local.set(l1_key, stored, stored.remaining(now), epoch=epoch)
            return self._from_entry(stored, now, HIT)
        if (stored is not None and 0 < -stored.remaining(now) <= self.stale_while_revalidate
                and self.policy.may_serve_stale(stored.headers)):
            # RFC 5861 §3: answer with the stale copy now and refresh it once, in the background.
            self._count("hits_stale")
            self._refresh_in_background(request, stored)
            return self._from_entry(stored, now, STALE, detail="stale-while-revalidate")
        self._count("misses")
        # Keyed by URL as well: two URLs given one explicit key must never share a fetch.
        result, _shared = self.flights.do(
            (request.redis_key, request.canonical),
            lambda: self._coalesced_forward(request, stored, redis_up),
            wait_timeout=self.fetcher.timeout)
        return result

    def _coalesced_forward(self, request: UrlRequest, stale: Entry | None,
                           redis_up: bool) -> CacheResult:
        """One upstream fetch per entry across every proxy process sharing this Redis."""
        # One lock per key and URL: a fetch of another URL under the same explicit key
        # neither waits for this one nor is taken for it.
        lock = f"{request.redis_key}\x00{cache_keys.url_digest(request.canonical)[:16]}"
        token = self.fetch_lock.acquire(lock) if redis_up else ""
        if token is None:
            self._count("coalesced_waits")
            found = self.fetch_lock.wait(lock,
                                         lambda: self._fresh_stored(request, stale))
            if found is not None:
                return found
            token = ""  # the other fetch failed or was not storable: fetch for ourselves
        try:
            if token:
                # Double-checked: a fetch may have stored the entry and released the lock
                # between our read of Redis and our taking the lock.
                found = self._fresh_stored(request, stale)
                if found is not None:
                    return found
            return self._forward(request, stale, redis_up)
        finally:
            self.fetch_lock.release(lock, token)

    def _fresh_stored(self, request: UrlRequest, stale: Entry | None) -> CacheResult | None:
        """A fresh entry another process has stored since `stale` (or since nothing)."""
        epoch = self.local.epoch
        entry, _up = self._read_entry(request.redis_key)
        now = self.clock()
        if entry is None or entry.url != request.canonical or entry.remaining(now) <= 0:
            return None
        if stale is not None and entry.fetched_at <= stale.fetched_at:
            return None
        try:
            self.fetcher.check_source(entry.url, entry.via)
        except Forbidden:
            return None  # stored by a looser proxy: our own fetch asks the policy, which answers
        self.local.set(("u", request.redis_key), entry, entry.remaining(now), epoch=epoch)
        return self._from_entry(entry, now, HIT)

    def _refresh_in_background(self, request: UrlRequest, stale: Entry) -> None:
        with self._stats_lock:
            # One refresh per key, and a few at once: the stale copy is served either way, and
            # a burst of keys going stale must not become a burst of threads and fetches.
            if request.redis_key in self._refreshing or len(self._refreshing) >= MAX_REFRESHES:
                return
            self._refreshing.add(request.redis_key)

        def refresh() -> None:
            try:
                # Another request or process may have refreshed it since `stale` was read.
                if self._fresh_stored(request, stale) is None:
                    self.flights.do((request.redis_key, request.canonical),
                                    lambda: self._coalesced_forward(request, stale, True))
            except ProxyError as exc:
                log.info("background refresh of %s failed: %s", request.redis_key, exc.detail)
            except Exception:  # noqa: BLE001 - a background thread must log, not die silently
                log.exception("background refresh of %s failed", request.redis_key)
            finally:
                with self._stats_lock:
                    self._refreshing.discard(request.redis_key)

        threading.Thread(target=refresh, name="revalidate", daemon=True).start()

    def lookup(self, key: str) -> CacheResult:
        """`?key=K` alone: what is stored under K, or KeyNotFound."""
        cache_keys.check_key(key, self.max_key_bytes)
        redis_key = self.prefix + key
        now = self.clock()
        local = self.local.get(("u", redis_key))
        if local is not MISSING and local.remaining(now) > 0:
            self.fetcher.check_source(local.url, local.via)
            self._count("hits_l1")
            return self._from_entry(local, now, HIT)
        stored, redis_up = self._read_entry(redis_key)
        if stored is None:
            if not redis_up:
                raise StoreUnavailable()  # not "not cached": Redis could not be asked
            raise KeyNotFound()
        # Whoever stored it, it is served only if this proxy's policy would have fetched it.
        self.fetcher.check_source(stored.url, stored.via)
        self._count("hits_redis")
        return self._from_entry(stored, now, HIT if stored.remaining(now) > 0 else STALE)

    def purge(self, url: str | None = None, key: str | None = None, params: Any = None) -> int:
        """Remove an entry from Redis and L1; other proxies' L1 copies follow by invalidation
        (or expire by their TTL with L1_INVALIDATION=ttl). Returns how many were removed."""
        if url is not None:
            redis_key = self.parse(url, key, params).redis_key
        elif key is not None:
            cache_keys.check_key(key, self.max_key_bytes)
            redis_key = self.prefix + key
        else:
            raise BadRequest("give key=<name> or url=<absolute URL> to purge", error="missing key")
        self.local.pop(("u", redis_key))
        # The marker makes a fetch that was in flight refuse to store its older answer.
        removed = self._redis_call(lambda: self.purge_markers.purge([redis_key]))
        self.local.pop(("u", redis_key))  # a read that raced the delete may have refilled it
        self._count("purges")
        return removed

    def check_key(self, key: str) -> bool:
        """Whether an entry is stored under the explicit key `key`."""
        cache_keys.check_key(key, self.max_key_bytes)
        return bool(self.health.call(lambda: self.client.exists(self.prefix + key)))

    def _admitted(self, entry: Entry) -> bool:
        """Whether this proxy's upstream policy admits `entry` as its fetch recorded it (URL,
        hops, addresses connected to): Forbidden when the policy refuses it, as a fetch would
        be; False when the entry records too little to judge, so it is fetched again."""
        try:
            self.fetcher.check_source(entry.url, entry.via)
        except UnrecordedSource:
            return False
        return True

    def _read_entry(self, redis_key: str) -> tuple[Entry | None, bool]:
        try:
            raw = self.health.call(lambda: self.client.get(redis_key))
        except StoreUnavailable:
            return None, False
        except redis.RedisError as exc:
            self._store_error(exc)
            return None, True
        return (cache_entry.decode(raw) if raw else None), True

    def _forward(self, request: UrlRequest, stale: Entry | None, redis_up: bool) -> CacheResult:
        """Ask upstream (conditionally when a stale copy has validators) and store the answer."""
        conditional = self.policy.validators(stale.headers) if stale else {}
        # Where L1 and the purge markers stand before upstream is asked: a purge from here on
        # means this answer is older than the purge, and it is neither stored nor kept in L1.
        epoch = self.local.epoch
        start = self.purge_markers.start(request.redis_key) if redis_up else None
        fetch_started = time.monotonic()
        try:
            response = self.fetcher.fetch(request.target, conditional)
        except (BadGateway, GatewayTimeout) as exc:
            self._count("upstream_seconds", time.monotonic() - fetch_started)
            self._count("upstream_errors")
            # One line per origin per interval: an origin down must not flood the log.
            # (The origin only: a path or query may carry a client's secrets.)
            origin = urlsplit(request.target).netloc
            self.log_limiter.warning(f"upstream {origin}", "upstream fetch from %s failed: %s",
                                     origin, exc.detail)
            if self._may_serve_stale(stale):
                return self._from_entry(stale, self.clock(), STALE, detail="stale-if-error")  # type: ignore[arg-type]
            raise
        self._count("upstream_seconds", time.monotonic() - fetch_started)
        self._count("upstream_fetches")
        now = self.clock()
        if response.status == 304 and stale is not None:
            # RFC 9111 §4.3.4: freshen the stored response with the 304's headers, then take
            # its freshness from the result (a 304 often carries only the ETag).
            headers = {**stale.headers, **cache_entry.kept_headers(response.headers)}
            # The body is the stored one: it keeps its record, plus the hops of this revalidation.
            via = None if stale.via is None or response.hops is None \
                else tuple(dict.fromkeys(stale.via + response.hops))
            entry = dataclasses.replace(stale, headers=headers, via=via,
                                        fetched_at=now - self.policy.initial_age(response.headers),
                                        fresh_for=self.policy.lifetime(headers, now))
            stored = False
            if self.policy.storable(stale.status, headers):
                stored = self._store(request.redis_key, entry, start, epoch)
            return dataclasses.replace(self._from_entry(entry, now, HIT, forward="stale"),
                                       upstream_status=304, stored=stored)
        if response.status >= 500 and self._may_serve_stale(stale):
            return dataclasses.replace(  # type: ignore[arg-type]
                self._from_entry(stale, now, STALE, detail="stale-if-error"),  # type: ignore[arg-type]
                upstream_status=response.status)
        headers = cache_entry.kept_headers(response.headers)
        entry = Entry(status=response.status, body=response.body, url=request.canonical,
                      fetched_at=now - self.policy.initial_age(response.headers),
                      fresh_for=self.policy.lifetime(response.headers, now), headers=headers,
                      via=response.hops)
        stored = False
        if self.policy.storable(response.status, response.headers):
            stored = self._store(request.redis_key, entry, start, epoch)
        return CacheResult(response.status, response.body, headers,
                           MISS if redis_up else BYPASS, int(entry.age(now)),
                           forward="stale" if stale else "miss",
                           upstream_status=response.status, stored=stored)

    def _may_serve_stale(self, stale: Entry | None) -> bool:
        """stale-if-error: within STALE_IF_ERROR past freshness, unless the entry forbids it."""
        return (stale is not None and self.stale_if_error > 0
                and -stale.remaining(self.clock()) <= self.stale_if_error
                and self.policy.may_serve_stale(stale.headers))

    def _store(self, redis_key: str, entry: Entry, start: Start | None, epoch: int) -> bool:
        """One atomic write with a TTL (SETEX semantics): freshness left plus the stale window.
        Refused when the entry was purged since `start` (None: Redis was not reachable then);
        the L1 copy is kept unless the entry was invalidated since `epoch`."""
        fresh_left = entry.remaining(self.clock())
        keep_for = fresh_left + self.stale_ttl
        if keep_for <= 0 or start is None:
            return False
        value, ttl = cache_entry.encode(entry), max(1, math.ceil(keep_for))
        try:
            # The script reads the key back after the write (a write ends Redis's tracking of
            # it), so the L1 copy hears of a purge or a replacement by another proxy.
            if not self.purge_markers.store(redis_key, value, ttl, start):
                self._count("stores_refused")
                return False
        except StoreUnavailable:
            return False
        except redis.RedisError as exc:  # OOM command not allowed, READONLY, ...
            self._store_error(exc)
            return False
        self.local.set(("u", redis_key), entry, fresh_left, epoch=epoch)
        return True

    def _from_entry(self, entry: Entry, now: float, cache: str, forward: str = "",
                    detail: str = "") -> CacheResult:
        return CacheResult(entry.status, entry.body, entry.headers, cache,
                           int(entry.age(now)), entry.remaining(now), forward, detail=detail)

    # ----- read-proxy role -----------------------------------------------------------------

    def get_value(self, key: bytes | str) -> bytes | None:
        """The value of a backing-Redis key through L1; None when it does not exist."""
        return self.read_value(key)[0]

    def read_value(self, key: bytes | str) -> tuple[bytes | None, str]:
        """The value of a backing-Redis key through L1, and where it came from: HIT (L1) or
        MISS (read from Redis)."""
        raw_key = key.encode() if isinstance(key, str) else key
        self._check_readable([raw_key])
        cached = self.local.get(("g", raw_key))
        if cached is not MISSING:
            self._count("hits_l1")
            return cached, HIT
        return self.local.get_or_load(("g", raw_key), lambda: self._redis_value(raw_key)), MISS

    def get_values(self, keys: list[bytes | str]) -> list[bytes | None]:
        """MGET through L1: hits from memory, the misses in one Redis round trip."""
        raw_keys = [k.encode() if isinstance(k, str) else k for k in keys]
        self._check_readable(raw_keys)
        values: list[bytes | None] = []
        missing: list[int] = []
        for i, key in enumerate(raw_keys):
            cached = self.local.get(("g", key))
            values.append(None if cached is MISSING else cached)
            if cached is MISSING:
                missing.append(i)
            else:
                self._count("hits_l1")
        if missing:
            self._count("reads_redis", len(missing))
            epoch = self.local.epoch
            wanted = [raw_keys[i] for i in missing]
            # One MGET per hash slot: a cluster pipeline refuses an MGET across slots, and sends
            # each slot's to its node; with one Redis they share the round trip all the same.
            groups: dict[int, list[bytes]] = {}
            for key in dict.fromkeys(wanted):
                groups.setdefault(crc.key_slot(key), []).append(key)

            def read(pipe: Any) -> int:
                for group in groups.values():
                    pipe.execute_command("MGET", *group)
                return len(groups)

            replies, pttls = self._read_with_pttls(read, wanted)
            found = {key: value for group, values in zip(groups.values(), replies, strict=True)
                     for key, value in zip(group, values, strict=True)}
            fetched = [found[key] for key in wanted]
            for i, value, pttl in zip(missing, fetched, pttls, strict=True):
                values[i] = value
                if value is not None:
                    self.local.set(("g", raw_keys[i]), value, _l1_ttl(pttl), epoch=epoch)
        return values

    def exists(self, keys: list[bytes | str]) -> int:
        """EXISTS: how many of `keys` exist in the backing Redis (L1 hits count without a trip)."""
        raw_keys = [k.encode() if isinstance(k, str) else k for k in keys]
        self._check_readable(raw_keys)
        unknown = [k for k in raw_keys if self.local.get(("g", k)) is MISSING]
        found = len(raw_keys) - len(unknown)
        if unknown:
            found += int(self._redis_call(lambda: self.client.exists(*unknown)))
        return found

    def _check_readable(self, keys: list[bytes]) -> None:
        """The read-proxy role does not read the URL cache's keys (its entries and their lock
        keys) unless GET_ALLOW_CACHE_PREFIX: there no upstream policy would be applied to them.
        One such key refuses the whole command, as a Redis ACL key pattern does."""
        if self.get_allow_cache_prefix:
            return
        prefix = self.prefix.encode()
        for key in keys:
            if key.startswith(prefix):
                raise Forbidden(
                    f"keys under {self.prefix!r} (CACHE_PREFIX) hold the URL cache's entries and "
                    f"are not read here: read an entry with /?key=<name without {self.prefix!r}>, "
                    "which applies the upstream policy (GET_ALLOW_CACHE_PREFIX=true lifts this)",
                    error="key refused")

    def _redis_value(self, key: bytes) -> tuple[bytes | None, float | None]:
        """The value and how long L1 may keep it: never past the key's own expiry in Redis."""
        self._count("reads_redis")

        def read(pipe: Any) -> int:
            pipe.get(key)
            return 1

        (value,), (pttl,) = self._read_with_pttls(read, [key])
        return value, _l1_ttl(pttl)

    def _read_with_pttls(self, read: Callable[[Any], int], keys: list[bytes]) -> tuple[list, list[int]]:
        """The replies of the commands `read(pipeline)` queues (it returns how many) and the PTTL
        of each key, in one round trip. A plain pipeline,
        not MULTI: Redis does not track reads inside MULTI for L1 invalidation. A write landing
        between the replies is told to L1 by tracking; with L1_INVALIDATION=ttl it is the stale
        window that mode has anyway."""
        def call() -> tuple[list, list[int]]:
            pipe = self.client.pipeline(transaction=False)
            queued = read(pipe)
            for key in keys:
                pipe.pttl(key)
            replies = pipe.execute(raise_on_error=False)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply  # as the command gave it (WRONGTYPE ...), not annotated
            return replies[:queued], replies[queued:]

        return self._redis_call(call)

    def _redis_call(self, fn: Callable[[], Any]) -> Any:
        try:
            return self.health.call(fn)
        except redis.ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                raise BadRequest(f"redis refused the read: {exc}", error="wrong type") from exc
            raise ServiceUnavailable(f"redis refused the command: {exc}",
                                     error="redis refused") from exc

    # ----- health and stats ----------------------------------------------------------------

    def health_report(self) -> dict[str, Any]:
        redis_ok = self.health.check()
        return {"status": "ok" if redis_ok else "degraded", "redis": "ok" if redis_ok else "down",
                "l1_invalidation": self.l1_invalidation}

    @property
    def l1_invalidation(self) -> str:
        """How L1 follows changes in Redis: tracking, ttl, or connecting (tracking not armed)."""
        return self.invalidator.mode if self.invalidator is not None else TTL_ONLY

    def _invalidate(self, keys: list[bytes] | None) -> None:
        """Redis says these keys changed (None: anything may have): drop their L1 copies."""
        if keys is None:
            self.local.clear()
            return
        self._count("invalidations", len(keys))
        for key in keys:
            self.local.pop(("g", key))
            self.local.pop(("u", key.decode("utf-8", "replace")))

    def _count(self, name: str, amount: float = 1) -> None:
        with self._stats_lock:
            self.stats[name] += amount

    def _store_error(self, exc: BaseException) -> None:
        self._count("store_errors")
        self.log_limiter.warning("store error", "redis refused a write on %s: %s",
                                 self.redis_label or "redis", exc)

    def _on_redis_recover(self) -> None:
        self.local.clear()  # writes missed while Redis was away are not known to L1

    # ----- built from settings ---------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> "RedisProxy":
        """The proxy `settings` describe, starting an embedded redis-server when none is
        configured (closed with the proxy)."""
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
                          policy=UpstreamPolicy(allowed_hosts=settings.upstream_allowed_hosts,
                                                allowed_ports=settings.upstream_allowed_ports,
                                                allow_private=settings.upstream_allow_private))
        local = LocalCache(capacity=settings.cache_capacity, max_bytes=settings.cache_max_bytes,
                           ttl=settings.cache_ttl)
        policy = Policy(ttl=settings.cache_ttl, store_statuses=settings.cache_store_statuses,
                        store_set_cookie=settings.cache_store_set_cookie,
                        respect_cache_control=settings.respect_cache_control)
        proxy = cls(client, fetcher, local, ttl=settings.cache_ttl,
                    stale_ttl=settings.cache_stale_ttl, stale_if_error=settings.stale_if_error,
                    prefix=settings.cache_prefix, policy=policy,
                    max_url_bytes=settings.max_url_bytes, max_key_bytes=settings.max_key_bytes,
                    stale_while_revalidate=settings.stale_while_revalidate,
                    invalidation=settings.l1_invalidation,
                    redis_label=mask_url(url), on_close=on_close,
                    get_allow_cache_prefix=settings.get_allow_cache_prefix, **overrides)
        if check_at_start(client, mask_url(url)):
            proxy.configure_memory(settings.redis_maxmemory, settings.redis_eviction_policy)
        return proxy


def scaled_out_client(settings: Settings) -> tuple[Any, str]:
    """The client of a Redis Cluster (REDIS_CLUSTER_NODES) or of Sentinel's primary
    (REDIS_SENTINELS), and the label logs and /health show for it."""
    options = dict(socket_timeout=settings.redis_socket_timeout,
                   max_connections=settings.redis_max_connections,
                   password=settings.redis_password or None)
    if settings.redis_cluster_nodes:
        label = "redis-cluster://" + ",".join(settings.redis_cluster_nodes)
        log.info("store: Redis Cluster, seeds %s", ",".join(settings.redis_cluster_nodes))
        try:
            return make_cluster_client(settings.redis_cluster_nodes, tls_ca=settings.redis_tls_ca,
                                       tls_cert=settings.redis_tls_cert,
                                       tls_key=settings.redis_tls_key, **options), label
        except RedisClusterException as exc:  # not a RedisError: say it as one, for main()
            raise redis.ConnectionError(f"no Redis Cluster at {label}: {exc}") from exc
    label = f"redis-sentinel://{','.join(settings.redis_sentinels)}/{settings.redis_sentinel_master}"
    log.info("store: the primary of %r through Sentinel at %s", settings.redis_sentinel_master,
             ",".join(settings.redis_sentinels))
    return make_sentinel_client(settings.redis_sentinels, settings.redis_sentinel_master,
                                **options), label


def _l1_ttl(pttl: int) -> float | None:
    """L1 life of a value whose key has `pttl` ms left in Redis: -1 (no expiry) is L1's own TTL,
    -2 (gone since the read) is none."""
    if pttl == -1:
        return None
    return max(0, pttl) / 1000


def _json(params: Any) -> str:
    try:
        return json.dumps(params)
    except (TypeError, ValueError) as exc:
        raise BadRequest("params must be JSON-serialisable", error="bad params") from exc


def redis_url_of(settings: Settings) -> str:
    """REDIS_URL, else one built from REDIS_HOST/PORT/DB (TLS when TLS files are given). The
    password stays out of it: it goes to the client apart, so it can never be logged."""
    if settings.redis_url:
        return settings.redis_url
    host = f"[{settings.redis_host}]" if ":" in settings.redis_host else settings.redis_host
    tls = settings.redis_tls_ca or settings.redis_tls_cert
    return f"{'rediss' if tls else 'redis'}://{host}:{settings.redis_port}/{settings.redis_db}"


__all__ = ["RedisProxy", "CacheResult", "ProxyError", "HIT", "MISS", "STALE", "BYPASS"]
