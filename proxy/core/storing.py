"""The URL role's writes to Redis: one atomic write with a TTL, refused when a purge of the key,
its URL or one of its tags came since the fetch began, the body compressed when that pays; a
mixin of UrlCache, which holds the parts it uses."""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import redis

from proxy.cache import compression
from proxy.cache import entry as cache_entry
from proxy.cache.entry import Entry
from proxy.cache.keys import origin_of
from proxy.cache.local_cache import URL_TIER, LocalCache
from proxy.core import stats as names
from proxy.core.stats import Stats
from proxy.core.url_request import UrlLimits
from proxy.core.variants import VariantSelection
from proxy.errors import StoreUnavailable
from proxy.log_limit import LogLimiter
from proxy.store.fetch_lock import Held
from proxy.store.purge_marker import PurgeMarkers, Start, marker_key
from proxy.store.tags import TagIndex, scoped
from proxy.store.variants import Variants


@dataclasses.dataclass(frozen=True)
class Begun:
    """Where a fetch began: the purge numbers read before it asked upstream (`start`: its
    entry's slot's sequence, `tag_start`: the tag counter; None when Redis could not say, so
    nothing, or nothing tagged, is stored), and the fetch lock it holds, which the store's
    script releases with the write."""

    start: Start | None
    tag_start: int | None = None
    lock: Held | None = None


class Storing(VariantSelection):
    """Stores for UrlCache; the parts below are UrlCache's."""

    local: LocalCache
    purge_markers: PurgeMarkers
    tags: TagIndex
    variants: Variants
    stats: Stats
    limits: UrlLimits
    clock: Callable[[], float]
    redis_label: str
    log_limiter: LogLimiter

    def _store(self, redis_key: str, entry: Entry, begun: Begun, epoch: int) -> bool:
        """One atomic write with a TTL (SETEX semantics): freshness left plus the stale window.
        Refused when the entry was purged since `begun.start` (None: Redis was not reachable
        then), or one of its tags since `begun.tag_start` (proxy.store.tags: named in each tag's
        set, then checked, then written through the purge markers); the fetch lock released in
        the same script; the L1 copy is kept unless the entry was invalidated since `epoch`."""
        start, tag_start = begun.start, begun.tag_start
        fresh_left = entry.remaining(self.clock())
        keep_for = fresh_left + self.limits.stale_ttl
        if keep_for <= 0 or start is None:
            return False
        if not self.limits.tag_headers:
            entry = dataclasses.replace(entry, tags=())
        elif entry.tags and tag_start is None:
            return False
        value, ttl = cache_entry.encode(entry), max(1, math.ceil(keep_for))
        try:
            primary, redis_key = redis_key, self._place(redis_key, entry)
            if redis_key != primary:
                # Named before it is stored, so a purge that reads the index finds it (or the
                # purge's marker on the URL's key refuses the store: `marks`).
                gone = self.variants.record(primary, redis_key, ttl, self.limits.max_variants - 1)
                if gone:
                    self.purge_markers.purge(gone)
                    for key in gone:
                        self.local.pop((URL_TIER, key))
            tags = scoped(origin_of(entry.url), entry.tags) if entry.tags else ()
            if tags and tag_start is not None and (
                    not self.tags.add(redis_key, tags, ttl)
                    or self.tags.purged_since(tags, tag_start)):
                self.stats.count(names.STORES_REFUSED)
                return False
            # The script reads the key back after the write (a write ends Redis's tracking of
            # it), so the L1 copy hears of a purge or a replacement by another proxy.
            if not self.purge_markers.store(redis_key, value, ttl, start, lock=begun.lock,
                                            marks=[marker_key(primary)] if redis_key != primary else []):
                self.stats.count(names.STORES_REFUSED)
                return False
        except StoreUnavailable:
            return False
        except redis.RedisError as exc:  # OOM command not allowed, READONLY, ...
            self._store_error(exc)
            return False
        self.local.set((URL_TIER, redis_key), entry, fresh_left, epoch=epoch)
        return True

    def _compressed(self, entry: Entry, upstream_headers: Any) -> Entry:
        """The entry as stored: its body compressed when it is large enough, of a type that
        compresses, not content-coded already, and smaller for it."""
        least = self.limits.compress_min_bytes
        if not least or entry.coding or len(entry.body) < least or not compression.compressible(
                {"content-type": upstream_headers.get("content-type", ""),
                 "content-encoding": upstream_headers.get("content-encoding", "")}):
            return entry
        coding = compression.STORED_CODING
        body = compression.encode(entry.body, coding)
        return dataclasses.replace(entry, body=body, coding=coding) if len(body) < len(entry.body) \
            else entry

    def _store_error(self, exc: BaseException) -> None:
        self.stats.count(names.STORE_ERRORS)
        self.log_limiter.warning("store error", "redis refused a write on %s: %s",
                                 self.redis_label or "redis", exc)
