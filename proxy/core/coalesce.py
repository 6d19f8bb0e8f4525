"""The URL role's coalescing: one upstream fetch per entry across every process sharing Redis
(the fetch lock), and the background refreshes (stale-while-revalidate, REFRESH_AHEAD); a mixin
of UrlCache, which holds the parts it uses."""

import logging
import threading
from collections.abc import Callable

from proxy.budgets import off_cpu
from proxy.cache import keys as cache_keys
from proxy.cache.entry import Entry
from proxy.cache.freshness import Policy
from proxy.cache.local_cache import URL_TIER, LocalCache
from proxy.cache.request import NOT_COALESCED
from proxy.cache.result import HIT, CacheResult
from proxy.cache.single_flight import SingleFlight
from proxy.core import stats as names
from proxy.core.stats import Stats
from proxy.core.storing import Begun
from proxy.core.url_request import UrlLimits, UrlRequest
from proxy.core.variants import UNREAD, VariantSelection
from proxy.errors import Forbidden, ProxyError
from proxy.store.fetch_lock import FetchLock, Held, lock_key
from proxy.store.purge_marker import PurgeMarkers
from proxy.store.tags import TagIndex
from proxy.upstream.fetcher import Fetcher

log = logging.getLogger("proxy.core.url_cache")  # the URL role's log, as before the split

MAX_REFRESHES = 8  # background stale-while-revalidate refreshes running at once


class Coalescing(VariantSelection):
    """Coalesced forwards and background refreshes for UrlCache; the parts below are UrlCache's."""

    fetcher: Fetcher
    local: LocalCache
    fetch_lock: FetchLock
    policy: Policy
    stats: Stats
    limits: UrlLimits
    clock: Callable[[], float]
    flights: SingleFlight
    _refreshing: set[str]
    _refreshing_lock: threading.Lock
    purge_markers: PurgeMarkers
    tags: TagIndex
    _forward: Callable[[UrlRequest, Entry | None, bool, Begun | None], CacheResult]
    _result: Callable[..., CacheResult]
    _unbanned: Callable[[Entry], Entry]

    def _coalesced_forward(self, request: UrlRequest, stale: Entry | None,
                           redis_up: bool) -> CacheResult:
        """One upstream fetch per entry across every proxy process sharing this Redis.

        The lock, the entry read again and the purge numbers go in one round trip (on one
        Redis), and the store's script releases the lock: a miss is the entry's read, this
        round trip, the fetch and the store."""
        # One lock per key and URL: a fetch of another URL under the same explicit key
        # neither waits for this one nor is taken for it. In the entry's hash slot, for the
        # store's script (proxy.store.purge_marker) to release.
        lock = lock_key(request.redis_key, cache_keys.url_digest(request.canonical)[:16])
        begun: Begun | None = None
        token: str | None = ""
        values: list[object] = []
        if redis_up:
            reads = [request.redis_key, self.purge_markers.sequence_key(request.redis_key)]
            if self.limits.tag_headers:
                reads.append(self.tags.sequence)
            token, values = self.fetch_lock.acquire_reading(lock, reads)
            if token is not None:
                begun = Begun(self.purge_markers.start_of(values[1]),
                              self.tags.start_of(values[2]) if self.limits.tag_headers else None,
                              Held(lock, token))
        if token is None:
            self.stats.count(names.COALESCED_WAITS)
            with off_cpu():  # another process's fetch: no MAX_PARALLEL slot held meanwhile
                found = self.fetch_lock.wait(lock, lambda: self._fresh_stored(request, stale))
            if found is not None:
                return found
            token = ""  # the other fetch failed or was not storable: fetch for ourselves
        try:
            if token:
                # Double-checked: a fetch may have stored the entry and released the lock
                # between our read of Redis and our taking the lock (the GET after the SET NX).
                found = self._fresh_stored(request, stale, values[0])
                if found is not None:
                    return found
            return self._forward(request, stale, redis_up, begun)
        finally:
            if begun is None or begun.lock is None or not begun.lock.released:
                self.fetch_lock.release(lock, token)

    def _fresh_stored(self, request: UrlRequest, stale: Entry | None,
                      first: object = UNREAD) -> CacheResult | None:
        """A fresh entry another process has stored since `stale` (or since nothing); `first`:
        the URL's key as read already."""
        epoch = self.local.epoch
        entry, where, _up = self._read_variant(request, first)
        if entry is not None:
            entry = self._unbanned(entry)
        now = self.clock()
        if entry is None or entry.url != request.canonical or entry.remaining(now) <= 0 \
                or not self._matches(request, entry):
            return None
        if stale is not None and entry.fetched_at <= stale.fetched_at:
            return None
        try:
            self.fetcher.check_source(entry.url, entry.via)
        except Forbidden:
            return None  # stored by a looser proxy: our own fetch asks the policy, which answers
        self.local.set((URL_TIER, where), entry, entry.remaining(now), epoch=epoch)
        return self._result(entry, now, HIT, policy=self.policy)

    def _refresh_ahead(self, request: UrlRequest, entry: Entry, now: float) -> None:
        """REFRESH_AHEAD: a hit past that fraction of the entry's freshness starts one background
        refresh (conditional when it has validators), so a hot entry is replaced before it
        expires in front of a client."""
        fraction = self.limits.refresh_ahead
        if fraction > 0 and entry.age(now) >= fraction * entry.fresh_for > 0 \
                and self._refresh_in_background(request, entry):
            self.stats.count(names.REFRESHES_AHEAD)

    def _refresh_in_background(self, request: UrlRequest, stale: Entry) -> bool:
        """Start one refresh of `stale` in a thread; False when one for this key is running
        already or MAX_REFRESHES are."""
        with self._refreshing_lock:
            # One refresh per key, and a few at once: the stale copy is served either way, and
            # a burst of keys going stale must not become a burst of threads and fetches.
            if request.redis_key in self._refreshing or len(self._refreshing) >= MAX_REFRESHES:
                return False
            self._refreshing.add(request.redis_key)

        def refresh() -> None:
            try:
                # Another request or process may have refreshed it since `stale` was read.
                if self._fresh_stored(request, stale) is None:
                    self.flights.do(flight_key(request),
                                    lambda: self._coalesced_forward(request, stale, True))
            except ProxyError as exc:
                log.info("background refresh of %s failed: %s", request.redis_key, exc.detail)
            except Exception:  # noqa: BLE001 - a background thread must log, not die silently
                log.exception("background refresh of %s failed", request.redis_key)
            finally:
                with self._refreshing_lock:
                    self._refreshing.discard(request.redis_key)

        threading.Thread(target=refresh, name="revalidate", daemon=True).start()
        return True


def flight_key(request: UrlRequest) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """What concurrent fetches must share to share one: the key and the URL (two URLs given one
    explicit key never share a fetch), and the headers sent upstream (no client is given the
    answer to another's request), less the per-client ones no response is selected by
    (NOT_COALESCED: X-Forwarded-For), so that clients of a reverse proxy share a cold fetch."""
    return (request.redis_key, request.canonical,
            tuple(pair for pair in request.forwarded if pair[0] not in NOT_COALESCED))
