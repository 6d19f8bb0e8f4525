"""Shared-cache decisions on upstream responses (RFC 9111), pure: no I/O, the time passed in."""

import dataclasses
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from proxy.cache.entry import Entry, kept_headers


def parse_cache_control(value: str | None) -> dict[str, str | None]:
    """`max-age=60, no-cache` -> {'max-age': '60', 'no-cache': None} (RFC 9111 §5.2)."""
    directives: dict[str, str | None] = {}
    for part in (value or "").split(","):
        name, _, arg = part.strip().partition("=")
        if name:
            directives[name.strip().lower()] = arg.strip().strip('"') if arg else None
    return directives


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(int(value))) if value is not None else None
    except ValueError:
        return None


SUCCESS = frozenset(range(200, 300))


class Policy:
    """What may be stored, and for how long it stays fresh."""

    def __init__(self, *, ttl: float, store_statuses: frozenset[int] = SUCCESS,
                 store_set_cookie: bool = False, respect_cache_control: bool = True):
        self.ttl = ttl
        self.store_statuses = store_statuses
        self.store_set_cookie = store_set_cookie
        self.respect_cache_control = respect_cache_control

    def storable(self, status: int, headers: Mapping[str, str]) -> bool:
        if status not in self.store_statuses:
            return False
        if "set-cookie" in headers and not self.store_set_cookie:
            return False  # a cookie is one client's; a shared cache must not hand it to others
        if self.respect_cache_control:
            directives = parse_cache_control(headers.get("cache-control"))
            # RFC 9111 §3: no-store forbids storing; §5.2.2.7: private forbids a shared cache.
            if "no-store" in directives or "private" in directives:
                return False
        return True

    def lifetime(self, headers: Mapping[str, str], now: float) -> float:
        """Seconds of freshness: CACHE_TTL, bounded by the response's own (RFC 9111 §4.2.1)."""
        if not self.respect_cache_control:
            return self.ttl
        directives = parse_cache_control(headers.get("cache-control"))
        if "no-cache" in directives:
            return 0.0  # §5.2.2.4: stored, but revalidated before every use
        for name in ("s-maxage", "max-age"):  # s-maxage wins for a shared cache
            if name in directives:
                seconds = _seconds(directives[name])
                # §4.2.1: invalid freshness information is best taken as already stale.
                return 0.0 if seconds is None else min(self.ttl, seconds)
        if "expires" in headers:
            expires = _http_date(headers.get("expires"))
            if expires is None:
                return 0.0  # §5.3: an invalid Expires means already expired
            date = _http_date(headers.get("date")) or now
            return min(self.ttl, max(0.0, expires - date))
        return self.ttl

    def may_serve_stale(self, headers: Mapping[str, str]) -> bool:
        """Whether a stored response may be served stale at all: not when it says no-cache,
        must-revalidate, proxy-revalidate or s-maxage (RFC 9111 §4.2.4, §5.2.2.2, .4, .8, .10)."""
        if not self.respect_cache_control:
            return True
        directives = parse_cache_control(headers.get("cache-control"))
        return not any(name in directives for name in
                       ("no-cache", "must-revalidate", "proxy-revalidate", "s-maxage"))

    @staticmethod
    def initial_age(headers: Mapping[str, str]) -> float:
        """Seconds the response had already spent in caches upstream: its `Age` (RFC 9111
        §4.2.3, corrected_age_value without response_delay). `Date` is not used: origin clocks
        drift, and a skewed one would age every response."""
        return _seconds(headers.get("age")) or 0.0

    def validators(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Headers for a conditional request revalidating a stored response (RFC 9110 §13.1)."""
        conditional = {}
        if headers.get("etag"):
            conditional["If-None-Match"] = headers["etag"]
        if headers.get("last-modified"):
            conditional["If-Modified-Since"] = headers["last-modified"]
        return conditional


def may_serve_stale_if_error(policy: Policy, stale: Entry | None, now: float, window: float) -> bool:
    """RFC 5861 §4 stale-if-error: within `window` seconds past freshness, unless the entry
    forbids serving it stale."""
    return (stale is not None and window > 0 and -stale.remaining(now) <= window
            and policy.may_serve_stale(stale.headers))


def may_serve_stale_while_revalidate(policy: Policy, stale: Entry | None, now: float,
                                     window: float) -> bool:
    """RFC 5861 §3 stale-while-revalidate: stale by at most `window` seconds, and allowed to be."""
    return (stale is not None and 0 < -stale.remaining(now) <= window
            and policy.may_serve_stale(stale.headers))


def freshened(policy: Policy, stale: Entry, headers: Mapping[str, str],
              hops: tuple[tuple[str, str], ...] | None, now: float) -> Entry:
    """The stored response freshened by a 304's `headers` (RFC 9111 §4.3.4), its freshness
    taken from the result (a 304 often carries only the ETag). The body is the stored one: it
    keeps its record, plus the `hops` of this revalidation."""
    merged = {**stale.headers, **kept_headers(headers)}
    via = None if stale.via is None or hops is None else tuple(dict.fromkeys(stale.via + hops))
    return dataclasses.replace(stale, headers=merged, via=via,
                               fetched_at=now - policy.initial_age(headers),
                               fresh_for=policy.lifetime(merged, now))
