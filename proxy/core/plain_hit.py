"""The URL role's plain hits: a GET or HEAD carrying none of the request fields the full RFC 9111
evaluation reads (Cache-Control, Pragma, the conditionals, Range: request.FULL_EVALUATION),
answered from a fresh L1 entry without building its answer again: the front end keeps the
serialized reply head beside the entry (LocalCache.get_with_memo) and fills in Age and the
Cache-Status ttl. Anything else goes through UrlCache.fetch, and so does every case this does
not take (returns None for); a mixin of UrlCache, which holds the parts it uses."""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from proxy.cache import compression
from proxy.cache.entry import Entry
from proxy.cache.freshness import Policy
from proxy.cache.local_cache import MISSING, URL_TIER, LocalCache
from proxy.cache.representation import represent
from proxy.cache.request import ClientRequest, fill_fields
from proxy.cache.result import HIT, CacheResult, PlainHit
from proxy.cache.rules import Rules
from proxy.cache.rules import site_host as rule_host
from proxy.core import stats as names
from proxy.core.stats import Stats
from proxy.core.url_request import UrlLimits, UrlRequest
from proxy.core.variants import VariantSelection
from proxy.upstream.fetcher import Fetcher

ADMITTED = "admitted"  # memo: the upstream policy admitted the entry (fixed for a process)
IDENTITY = "identity"  # PlainHit.variant of an entry stored uncompressed


class PlainHits(VariantSelection):
    """Plain hits for UrlCache; the parts below are UrlCache's."""

    fetcher: Fetcher
    local: LocalCache
    policy: Policy
    stats: Stats
    limits: UrlLimits
    clock: Callable[[], float]
    parse: Callable[..., UrlRequest]
    _admitted: Callable[[Entry], bool]
    _explicit_key: Callable[[str], str]
    _result: Callable[..., CacheResult]
    _unbanned: Callable[[Entry], Entry]
    rules: Rules

    def plain_hit(self, url: str, key: str | None, params: Any, accept_encoding: str | None,
                  client: Callable[[], ClientRequest] | None = None,
                  site_host: Callable[[], str] | None = None) -> PlainHit | None:
        """The answer `fetch` gives a plain GET or HEAD when L1 holds a fresh entry for it, or
        None for `fetch` to answer: no such entry in L1, or another URL's, or another Vary
        variant (`client()` builds the request, read only for an entry with Vary), or one whose
        REFRESH_AHEAD refresh is due (fetch starts it), or a compressed entry for a client that
        does not take its coding (decoded per answer), or one a RULES_FILE rule matches by its
        site's host (`site_host()`, else the url's) and path: the rule decides its key and
        bypass first, the full path (fetch). BadRequest, Forbidden as fetch raises."""
        request = self.parse(url, key, params)
        if self.rules.rules and self.rules.match(
                rule_host(site_host()) if site_host is not None else request.parts.host,
                request.parts.path) is not None:
            return None
        self.fetcher.check(request.parts)  # the upstream policy holds for cached entries too
        entry, memo = self.local.get_with_memo((URL_TIER, request.redis_key))
        if entry is MISSING or entry.url != request.canonical or self._unbanned(entry) is not entry:
            return None  # (a banned entry: the full path revalidates it)
        now = self.clock()
        age, remaining = entry.age(now), entry.remaining(now)
        fraction = self.limits.refresh_ahead
        if remaining <= 0 or (fraction > 0 and age >= fraction * entry.fresh_for > 0):
            return None
        if entry.vary is not None:  # RFC 9111 §4.1: the headers it names, as sent upstream
            forwarded = fill_fields(client()) if client is not None else ()
            if not self._matches(dataclasses.replace(request, forwarded=forwarded), entry):
                return None
        if entry.coding and not compression.accepts(accept_encoding, entry.coding):
            return None
        if ADMITTED not in memo:
            if not self._admitted(entry):  # Forbidden raised as fetch raises it
                return None
            memo[ADMITTED] = True
        return self._plain(entry, memo, now, accept_encoding)

    def plain_lookup(self, key: str, accept_encoding: str | None) -> PlainHit | None:
        """The answer `lookup` gives `?key=K` when L1 holds a fresh entry under K, or None for
        `lookup` to answer (none in L1, stale, or compressed for a client not taking its coding).
        BadRequest, Forbidden as lookup raises."""
        entry, memo = self.local.get_with_memo((URL_TIER, self._explicit_key(key)))
        if entry is MISSING or self._unbanned(entry) is not entry:
            return None
        now = self.clock()
        if entry.remaining(now) <= 0 or (
                entry.coding and not compression.accepts(accept_encoding, entry.coding)):
            return None
        if ADMITTED not in memo:
            self.fetcher.check_source(entry.url, entry.via)  # raised as lookup raises it
            memo[ADMITTED] = True
        return self._plain(entry, memo, now, accept_encoding)

    def _plain(self, entry: Entry, memo: dict[Any, Any], now: float,
               accept_encoding: str | None) -> PlainHit:
        """A fresh L1 entry's answer (a HIT, as `_result` gives it with the policy)."""
        self.stats.count(names.HITS_L1)
        return PlainHit(entry.status, entry.body, int(entry.age(now)), math.floor(entry.remaining(now)),
                        memo, entry.coding or IDENTITY,
                        lambda: represent(self._result(entry, now, HIT, policy=self.policy),
                                          accept_encoding))
