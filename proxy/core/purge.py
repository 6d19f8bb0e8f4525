"""The URL role's purges: by URL, key or tag, hard or soft, and the invalidation an unsafe
method's answer makes (RFC 9111 §4.4); a mixin of UrlCache, which holds the parts it uses."""

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

from proxy.cache import entry as cache_entry
from proxy.cache import keys as cache_keys
from proxy.cache.local_cache import URL_TIER, LocalCache
from proxy.cache.request import SAFE_METHODS, ClientRequest
from proxy.cache.rules import Rules
from proxy.core import stats as names
from proxy.core.read_cache import redis_call
from proxy.core.stats import Stats
from proxy.core.url_request import UrlLimits, UrlRequest
from proxy.errors import BadGateway, BadRequest, GatewayTimeout, ProxyError
from proxy.store.bans import Ban, BanList
from proxy.store.connection import RedisHealth
from proxy.store.connection import get as store_get
from proxy.store.purge_marker import PurgeMarkers, marker_key
from proxy.store.tags import TagIndex, scoped
from proxy.store.variants import Variants
from proxy.upstream.fetcher import Fetcher, UpstreamResponse

log = logging.getLogger("proxy.core.url_cache")  # the URL role's log, as before the split


class Purging:
    """Purge and pass-through for UrlCache; the parts below are UrlCache's."""

    client: Any
    fetcher: Fetcher
    local: LocalCache
    health: RedisHealth
    purge_markers: PurgeMarkers
    tags: TagIndex
    bans: BanList
    variants: Variants
    stats: Stats
    limits: UrlLimits
    clock: Callable[[], float]
    parse: Callable[..., UrlRequest]
    rules: Rules
    _ruled: Callable[[UrlRequest, str | None, str | None], UrlRequest]
    site_host_of: Callable[[ClientRequest | None], str | None]

    def ban(self, host: str, path: str) -> tuple[Ban, int]:
        """Every entry of `host` (a glob, "" = any) whose path and query match the glob `path`,
        stored before now, stale from now on, on every proxy sharing this Redis (read lazily,
        proxy.store.bans); this process's own copies at once. The ban and how many are in force."""
        made = self.bans.add(host, path)
        self.stats.count(names.PURGES)
        return made

    def purge(self, url: str | None = None, key: str | None = None, params: Any = None, *,
              tag: str | None = None, soft: bool = False, site_host: str | None = None) -> int:
        """Remove an entry (or every entry tagged `tag` by `url`'s origin, ORIGIN_URL's by
        default) from Redis and L1; other proxies' L1 copies follow by invalidation (or expire
        by their TTL with L1_INVALIDATION=ttl). `soft`: mark them stale instead, to be
        revalidated on next use. `site_host`: in reverse-proxy mode the host naming the site,
        whose rules (RULES_FILE) gave the entry its key, as they did when it was stored.
        Returns how many."""
        if tag is not None:
            if key is not None or params is not None:
                raise BadRequest("give tag=<tag>, with url=<a URL of its origin> unless it is "
                                 "ORIGIN_URL's, or key= / url= alone to purge one entry",
                                 error="bad query")
            return self._purge_tag(tag, url, soft)
        if url is not None:
            request = self.parse(url, key, params)
            # Under the key the rules give it (RULES_FILE ignore_query / keep_query), matched by
            # the site's host as at store time (else the url's own host).
            redis_key = self._ruled(request, key, site_host).redis_key if self.rules \
                else request.redis_key
        elif key is not None:
            redis_key = self._explicit_key(key)
        else:
            raise BadRequest("give key=<name>, url=<absolute URL> or tag=<tag> to purge",
                             error="missing key")
        return self._purge_keys([redis_key], soft)

    def _purge_tag(self, tag: str, url: str | None, soft: bool) -> int:
        """A tag is its origin's (proxy.store.tags): `url`'s, else ORIGIN_URL's; in the URL
        role, where entries come from any origin, the purge names it."""
        if not cache_entry.TAG.fullmatch(tag):
            raise BadRequest("tag must be 1 to 256 visible ASCII characters, with no space or "
                             "comma", error="bad tag")
        if not self.limits.tag_headers:
            raise BadRequest("purge by tag is off: set TAG_HEADER to the response header that "
                             "carries tags", error="tags off")
        if url is None and not self.limits.origin:
            raise BadRequest("a tag is its origin's: give url=<a URL of the origin whose tag to "
                             "purge> with tag=", error="missing url")
        origin = cache_keys.origin_of(self.parse(url).canonical if url is not None
                                      else self.limits.origin)
        (scoped_tag,) = scoped(origin, (tag,))
        keys: list[str] = redis_call(self.health, lambda: self.tags.begin_purge(scoped_tag))
        return self._purge_keys(keys, soft)

    def _purge_keys(self, redis_keys: list[str], soft: bool) -> int:
        """Purge each key and every further variant (Vary) of its URL beside it."""
        urls = redis_keys
        redis_keys = [*urls, *redis_call(self.health, lambda: self.variants.of(urls))]
        for redis_key in redis_keys:
            self.local.pop((URL_TIER, redis_key))
        removed: int
        if soft:
            removed = redis_call(self.health, lambda: self._mark_stale(redis_keys))
        else:
            # The marker makes a fetch that was in flight refuse to store its older answer.
            removed = redis_call(self.health, lambda: self._purge_hard(urls, redis_keys))
        for redis_key in redis_keys:
            self.local.pop((URL_TIER, redis_key))  # a read that raced the delete may have refilled it
        self.stats.count(names.PURGES)
        return removed

    def pass_through(self, url: str, client: ClientRequest, body: bytes | None) -> UpstreamResponse:
        """A request the cache does not answer (an unsafe method, or one carrying credentials
        for the origin), sent on as it came and never stored. A non-error answer to an unsafe
        method invalidates the stored response for `url` and for its Location and
        Content-Location when they are of the same origin (RFC 9111 §4.4)."""
        request = self.parse(url)
        self.fetcher.check(request.parts)
        try:
            response = self.fetcher.send(client.method, request.parts, client.forwarded, body,
                                         follow_redirects=not self._relays(request.target))
        except (BadGateway, GatewayTimeout):
            self.stats.count(names.UPSTREAM_ERRORS)
            raise
        self.stats.count(names.UPSTREAM_FETCHES)
        if client.method not in SAFE_METHODS and 200 <= response.status < 400:
            self._invalidate(request.target, response, self.site_host_of(client))
        return response

    def _invalidate(self, target: str, response: UpstreamResponse, site_host: str | None) -> None:
        """Purge the target URI, and Location / Content-Location of the same origin."""
        urls = [target]
        for name in ("location", "content-location"):
            value = response.headers.get(name)
            if value:
                try:
                    other = urljoin(target, value.strip())
                except ValueError:
                    continue
                if cache_keys.same_origin(other, target):
                    urls.append(other)
        for url in dict.fromkeys(urls):
            try:
                self.purge(url, site_host=site_host)
            except ProxyError as exc:  # an unusable Location, or Redis away: the rest still go
                log.warning("could not invalidate %s after a %s: %s",
                            url.partition("?")[0], response.status, exc.detail)

    def _relays(self, target: str) -> bool:
        """Whether `target` is a site's origin's (ORIGIN_URL's, or one of ORIGINS'), whose
        redirects go to the client as they are."""
        return any(cache_keys.same_origin(target, origin)
                   for origin in (self.limits.origin, *self.limits.origins) if origin)

    def _purge_hard(self, urls: list[str], redis_keys: list[str]) -> int:
        """Delete and mark `redis_keys` (the URLs' keys and their variants); then the variants
        named since (stored before the marks, so not refused by them), and the indexes."""
        removed = self.purge_markers.purge(redis_keys)
        later = [key for key in self.variants.of(urls) if key not in set(redis_keys)]
        if later:
            removed += self.purge_markers.purge(later)
            for redis_key in later:
                self.local.pop((URL_TIER, redis_key))
        self.variants.drop_index(urls)
        return removed

    def _mark_stale(self, redis_keys: list[str]) -> int:
        """Soft purge: each entry rewritten as stale from now (its TTL kept), so its next use
        revalidates it and stale-if-error may still serve it; a fetch in flight is refused its
        store as by a purge. How many entries were marked."""
        self.purge_markers.purge([], marks=[marker_key(redis_key) for redis_key in redis_keys])
        marked = 0
        for redis_key in redis_keys:
            raw = self.health.call(functools.partial(store_get, self.client, redis_key))
            entry = cache_entry.decode(raw) if raw else None
            if entry is None:
                continue
            now = self.clock()
            stale = dataclasses.replace(entry, fresh_for=min(entry.fresh_for, entry.age(now)))
            # Only if it is still the entry read: a newer store is left as it is.
            marked += self.tags.replace(redis_key, raw, cache_entry.encode(stale))
        return marked

    def _explicit_key(self, key: str) -> str:
        cache_keys.check_key(key, self.limits.max_key_bytes)
        return self.limits.prefix + key
