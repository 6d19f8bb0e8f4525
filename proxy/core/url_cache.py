"""The URL role: a request's URL validated once, then L1 -> Redis -> upstream, stored when storable."""

import dataclasses
import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from proxy.budgets import off_cpu
from proxy.cache import conditional
from proxy.cache import entry as cache_entry
from proxy.cache import keys as cache_keys
from proxy.cache.conditional import Demands
from proxy.cache.entry import Entry
from proxy.cache.freshness import (
    Policy,
    freshened,
    may_serve_stale_if_error,
    may_serve_stale_while_revalidate,
)
from proxy.cache.local_cache import MISSING, URL_TIER, LocalCache
from proxy.cache.representation import represent, without
from proxy.cache.request import CREDENTIALS, ClientRequest, fill_fields
from proxy.cache.result import (
    HIT,
    STALE,
    STALE_IF_ERROR,
    STALE_WHILE_REVALIDATE,
    CacheResult,
)
from proxy.cache.rules import NO_RULES, Rules, Timing
from proxy.cache.single_flight import SingleFlight
from proxy.core import stats as names
from proxy.core.answers import Answering
from proxy.core.coalesce import Coalescing, flight_key
from proxy.core.plain_hit import PlainHits
from proxy.core.purge import Purging
from proxy.core.stats import Stats
from proxy.core.storing import Begun
from proxy.core.url_request import UrlLimits, UrlRequest
from proxy.core.url_rules import Ruling
from proxy.errors import (
    BadGateway,
    BadRequest,
    GatewayTimeout,
    KeyNotFound,
    NotCached,
    StoreUnavailable,
    TooManyFetches,
    UnrecordedSource,
)
from proxy.log_limit import LogLimiter
from proxy.store.bans import BanList
from proxy.store.connection import RedisHealth
from proxy.store.connection import get as store_get
from proxy.store.fetch_lock import FetchLock
from proxy.store.purge_marker import PurgeMarkers
from proxy.store.tags import TagIndex
from proxy.store.variants import Variants
from proxy.upstream.fetcher import Fetcher

log = logging.getLogger(__name__)

PLAIN = ClientRequest()  # a GET with no headers of its own: the card's behaviour
NO_DEMANDS = Demands()  # what a request without Cache-Control or Pragma asks
MAX_STALE = "max-stale"  # Cache-Status detail of a stale answer the request's max-stale accepted


class UrlCache(PlainHits, Coalescing, Answering, Purging, Ruling):
    """`GET /?url=U&key=K`: parse, look up, coalesce the forward, revalidate, store, purge."""

    def __init__(self, client: Any, fetcher: Fetcher, local: LocalCache, health: RedisHealth,
                 fetch_lock: FetchLock, purge_markers: PurgeMarkers, policy: Policy, stats: Stats,
                 limits: UrlLimits, *, clock: Callable[[], float] = time.time,
                 redis_label: str = "", tags: TagIndex | None = None, rules: Rules = NO_RULES):
        self.client = client
        self.fetcher = fetcher
        self.local = local
        self.health = health
        self.fetch_lock = fetch_lock
        self.purge_markers = purge_markers
        self.tags = tags or TagIndex(client, health, limits.prefix, purge_markers.lifetime)
        self.variants = Variants(client, health)
        self.bans = BanList(client, health, limits.prefix, clock)
        self.policy = policy
        self.stats = stats
        self.limits = limits
        self.clock = clock
        self.redis_label = redis_label
        self.flights = SingleFlight(waiting=off_cpu)  # a waiter gives its MAX_PARALLEL slot back
        # Parsing is pure: remember recent results (errors are raised again, never remembered).
        self._parse_cached = functools.lru_cache(maxsize=4096)(self._parse)
        self._refreshing: set[str] = set()  # keys with a background refresh running
        self._refreshing_lock = threading.Lock()
        self.log_limiter = LogLimiter(log)  # repeated store and upstream failures
        self.rules = rules  # RULES_FILE (proxy.core.url_rules)
        self._ruled_policies: dict[Timing, Policy] = {}

    def parse(self, url: str, key: str | None = None, params: Any = None) -> UrlRequest:
        """Validate a URL-role request; BadRequest / URITooLong name what is wrong."""
        if isinstance(params, (str, type(None))):
            return self._parse_cached(url, key, params)  # the hit path asks the same URLs again
        return self._parse(url, key, params)

    def _parse(self, url: str, key: str | None, params: Any) -> UrlRequest:
        max_url_bytes = self.limits.max_url_bytes
        given = cache_keys.check_url(url, max_url_bytes)  # the url's one split
        if key is not None:
            cache_keys.check_key(key, self.limits.max_key_bytes)
        pairs = cache_keys.parse_params(params) if isinstance(params, (str, type(None))) \
            else cache_keys.parse_params(_json(params))
        target = cache_keys.checked_target(given, pairs, max_url_bytes)
        canonical = target.canonical  # the key is what is actually fetched
        return UrlRequest(target.url, canonical,
                          cache_keys.redis_key(self.limits.prefix, key, canonical), target)

    def fetch(self, url: str, key: str | None = None, params: Any = None,
              client: ClientRequest | None = None) -> CacheResult:
        """The response for `url`: from L1, else Redis, else upstream (stored when storable).
        `client`: what the client sent; its request directives choose what may be reused, its
        Accept-Encoding chooses a compressed entry's representation (`represent`), and its
        conditionals and Range apply to that representation (proxy.cache.conditional); its
        forwarded headers, less those (cache_fill_headers), go to the origin on a fill and select
        the variant (Vary)."""
        request = self.parse(url, key, params)
        self.fetcher.check(request.parts)  # the upstream policy holds for cached entries too
        client = client or PLAIN
        demands = Demands.of(client.headers) if client.headers else NO_DEMANDS
        forwarded = fill_fields(client)
        if forwarded or demands.no_store:
            request = dataclasses.replace(request, forwarded=forwarded, store=not demands.no_store,
                                          credentials=any(name in CREDENTIALS for name, _ in forwarded))
        if self.rules.rules:  # the key and bypass decided here, before L1 or Redis is looked in
            request = self._ruled(request, key, self.site_host_of(client))
        result = represent(self._answer(request, demands), client.headers.get("accept-encoding"),
                           self.fetcher.max_bytes)
        return conditional.respond(client.method, client.headers, result) if client.headers else result

    def _answer(self, request: UrlRequest, demands: Demands) -> CacheResult:
        now = self.clock()
        if request.rule is not None and request.rule.bypass:
            return self._bypassed(request)  # RULES_FILE bypass = true
        if not request.store:
            # RFC 9111 §5.2.1.5 no-store: nothing of this exchange is stored (nor, here, reused).
            self.stats.count(names.MISSES)
            return dataclasses.replace(self._forward(request, None, True), forward="request")
        local = self.local.get((URL_TIER, request.redis_key))
        other = None if local is MISSING else self._selected(request, local)
        if other is not None:
            local = self.local.get((URL_TIER, other))
        if local is not MISSING:
            local = self._unbanned(local)
        if local is not MISSING and local.url == request.canonical and self._admitted(local):
            reused = self._reuse(request, local, now, demands)
            if reused is not None:
                self.stats.count(names.HITS_L1)
                if reused.cache == HIT:
                    self._refresh_ahead(request, local, now)
                return reused
        epoch = self.local.epoch
        stored, where, redis_up = self._read_variant(request)
        if stored is not None:
            stored = self._unbanned(stored)
        if stored is not None and (stored.url != request.canonical or not self._admitted(stored)
                                   or not self._matches(request, stored)):
            # The key names another URL's entry, or one that records too little for this
            # policy to judge: a miss, never its body (fetched again, through the policy).
            # Or another variant (Vary), this request's not stored: fetched, stored beside it.
            stored = None
        if stored is not None:
            reused = self._reuse(request, stored, now, demands)
            if reused is not None and reused.cache == HIT:
                self.stats.count(names.HITS_REDIS)
                self.local.set((URL_TIER, where), stored, stored.remaining(now), epoch=epoch)
                self._refresh_ahead(request, stored, now)
                return reused
            if reused is not None:
                self.stats.count(names.HITS_STALE)
                return reused
        window = 0.0 if stored is None else self._policy_for(request, stored.status).stale_window(
            stored.headers, STALE_WHILE_REVALIDATE, self.limits.stale_while_revalidate,
            self.limits.stale_ttl)
        if stored is not None and not demands.revalidate and may_serve_stale_while_revalidate(
                self.policy, stored, now, window):
            # RFC 5861 §3: answer with the stale copy now and refresh it once, in the background.
            self.stats.count(names.HITS_STALE)
            self._refresh_in_background(request, stored)
            return self._result(stored, now, STALE, detail=STALE_WHILE_REVALIDATE, policy=self.policy)
        if demands.only_if_cached:
            raise NotCached()  # RFC 9111 §5.2.1.7: a stored answer or 504, never upstream
        self.stats.count(names.MISSES)
        result, _shared = self.flights.do(
            flight_key(request), lambda: self._coalesced_forward(request, stored, redis_up),
            wait_timeout=self.fetcher.timeout)
        if stored is not None and stored.remaining(now) > 0 and result.forward == "stale":
            return dataclasses.replace(result, forward="request")  # RFC 9211: fresh, not allowed
        return result

    def _reuse(self, request: UrlRequest, entry: Entry, now: float,
               demands: Demands) -> CacheResult | None:
        """The stored `entry` as this request's answer without asking upstream (RFC 9111 §4):
        its variant, fresh enough for the request, or stale within its max-stale; else None."""
        if not self._matches(request, entry):
            return None
        age, remaining = entry.age(now), entry.remaining(now)
        if demands.fresh_enough(age, remaining):
            return self._result(entry, now, HIT, policy=self.policy)
        if demands.stale_accepted(age, remaining) and self.policy.may_serve_stale(entry.headers):
            return self._result(entry, now, STALE, detail=MAX_STALE, policy=self.policy)
        return None

    def lookup(self, key: str, client: ClientRequest | None = None) -> CacheResult:
        """`?key=K` alone: what is stored under K, or KeyNotFound; of `client`, only its
        Accept-Encoding is read (no conditionals, no Range here)."""
        return represent(self._lookup(key), (client or PLAIN).headers.get("accept-encoding"),
                         self.fetcher.max_bytes)

    def _lookup(self, key: str) -> CacheResult:
        redis_key = self._explicit_key(key)
        now = self.clock()
        local = self.local.get((URL_TIER, redis_key))
        if local is not MISSING:
            local = self._unbanned(local)
        if local is not MISSING and local.remaining(now) > 0:
            self.fetcher.check_source(local.url, local.via)
            self.stats.count(names.HITS_L1)
            return self._result(local, now, HIT, policy=self.policy)
        epoch = self.local.epoch
        stored, redis_up = self._read_entry(redis_key)
        if stored is not None:
            stored = self._unbanned(stored)
        if stored is None:
            if not redis_up:
                raise StoreUnavailable()  # not "not cached": Redis could not be asked
            raise KeyNotFound()
        # Whoever stored it, it is served only if this proxy's policy would have fetched it.
        self.fetcher.check_source(stored.url, stored.via)
        self.stats.count(names.HITS_REDIS)
        remaining = stored.remaining(now)
        if remaining > 0:
            # Into L1 as a ?url= read keeps it: the same tier and key, so the invalidation of
            # that key (tracking, a purge) drops it for both; not if one came since `epoch`.
            self.local.set((URL_TIER, redis_key), stored, remaining, epoch=epoch)
        return self._result(stored, now, HIT if remaining > 0 else STALE, policy=self.policy)

    def check_key(self, key: str) -> bool:
        """Whether an entry is stored under the explicit key `key`."""
        redis_key = self._explicit_key(key)
        return bool(self.health.call(lambda: self.client.exists(redis_key)))

    def _unbanned(self, entry: Entry) -> Entry:
        """`entry`, or, when a ban made after its fetch matches its URL, the same entry stale
        from the ban's time on (proxy.store.bans): revalidated before use, as after a soft purge."""
        at = self.bans.stale_from(entry.url, entry.stored_at or entry.fetched_at)
        if at is None:
            return entry
        return dataclasses.replace(entry, fresh_for=min(entry.fresh_for, at - entry.fetched_at))

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
            raw = self.health.call(lambda: store_get(self.client, redis_key))
        except (StoreUnavailable, redis.RedisError) as exc:
            raw = exc
        return self._decoded(raw)

    def _decoded(self, raw: object) -> tuple[Entry | None, bool]:
        """An entry's GET as read (its bytes, None, or the exception that stopped it): the
        entry, and whether Redis answered."""
        if isinstance(raw, StoreUnavailable):
            return None, False
        if isinstance(raw, redis.RedisError):
            self._store_error(raw)
            return None, True
        return (cache_entry.decode(raw) if isinstance(raw, bytes) and raw else None), True

    def _forward(self, request: UrlRequest, stale: Entry | None, redis_up: bool,
                 begun: Begun | None = None) -> CacheResult:
        """Ask upstream (conditionally when a stale copy has validators) and store the answer.
        `begun`: the purge numbers read already, with the fetch lock (Coalescing); else read here."""
        sent = {**dict(request.forwarded), **(self.policy.validators(stale.headers) if stale else {})}
        # Where L1 and the purge markers stand before upstream is asked: a purge from here on
        # means this answer is older than the purge, and it is neither stored nor kept in L1.
        epoch = self.local.epoch
        if begun is None:
            read = redis_up and request.store  # a no-store answer is not stored: nothing to read
            begun = Begun(self.purge_markers.start(request.redis_key) if read else None,
                          self.tags.start() if read and self.limits.tag_headers else None)
        window = self.limits.stale_if_error if stale is None else self._policy_for(
            request, stale.status).stale_window(stale.headers, STALE_IF_ERROR,
                                                self.limits.stale_if_error, self.limits.stale_ttl)
        request_time = self.clock()
        fetch_started = time.monotonic()
        try:
            response = self.fetcher.fetch(request.parts, sent,
                                          follow_redirects=not self._relays(request.target))
        except (BadGateway, GatewayTimeout, TooManyFetches) as exc:
            # TooManyFetches: the origin could not be asked (MAX_FETCHES in flight, counted by
            # the fetcher): a copy stale-if-error allows stands in for the 503 too, as RFC 9111
            # §4.2.4 lets a cache do when the origin cannot be reached (nginx's
            # proxy_cache_use_stale updating).
            if not isinstance(exc, TooManyFetches):
                self.stats.count(names.UPSTREAM_SECONDS, time.monotonic() - fetch_started)
                self.stats.count(names.UPSTREAM_ERRORS)
                # One line per origin per interval: an origin down must not flood the log.
                # (The origin only: a path or query may carry a client's secrets.)
                origin = request.parts.netloc
                self.log_limiter.warning(f"upstream {origin}", "upstream fetch from %s failed: %s",
                                         origin, exc.detail)
            now = self.clock()
            if stale is not None and may_serve_stale_if_error(self.policy, stale, now, window):
                return self._result(stale, now, STALE, detail=STALE_IF_ERROR)
            raise
        self.stats.count(names.UPSTREAM_SECONDS, time.monotonic() - fetch_started)
        self.stats.count(names.UPSTREAM_FETCHES)
        now = self.clock()
        if response.status == 304 and stale is not None:
            # The entry keeps its body, coding and tags; a tag header on the 304 is not a header.
            policy = self._policy_for(request, stale.status)
            entry = freshened(policy, stale, response.headers, response.hops, now, request_time)
            entry = dataclasses.replace(entry, headers=without(entry.headers, self.limits.tag_headers))
            stored = policy.storable(stale.status, entry.headers, now) \
                and self._store(request.redis_key, entry, begun, epoch)
            return dataclasses.replace(self._result(entry, now, HIT, forward="stale"),
                                       upstream_status=304, stored=stored)
        if (response.status >= 500 and stale is not None
                and may_serve_stale_if_error(self.policy, stale, now, window)):
            return dataclasses.replace(self._result(stale, now, STALE, detail=STALE_IF_ERROR),
                                       upstream_status=response.status)
        return self._fresh_answer(request, response, stale, redis_up, now, request_time,
                                  begun, epoch)


def _json(params: Any) -> str:
    try:
        return json.dumps(params)
    except (TypeError, ValueError) as exc:
        raise BadRequest("params must be JSON-serialisable", error="bad params") from exc
