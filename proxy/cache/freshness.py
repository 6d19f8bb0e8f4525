"""Shared-cache decisions on upstream responses (RFC 9111), pure: no I/O, the time passed in."""

import copy
import dataclasses
from collections.abc import Mapping

from proxy.cache import directives as cc
from proxy.cache.entry import CONTENT_ENCODING, NOT_STORED, Entry, header_bytes, kept_headers
from proxy.cache.http_dates import format_http_date, parse_http_date
from proxy.cache.rules import NO_TIMING, Timing

SUCCESS = frozenset(range(200, 300))
# RFC 9110 §15.1: statuses heuristically cacheable; the only ones given heuristic freshness.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
# RFC 9111 §5.2.2.3 must-understand: the statuses whose caching this cache implements.
UNDERSTOOD_STATUSES = HEURISTIC_STATUSES - {206} | {302, 303, 307}
# The response fields that carry this cache's directives (RFC 9213 §2.1, then RFC 9111 §5.2).
DIRECTIVE_FIELDS = (*cc.TARGETED_FIELDS, "cache-control")
TTL, RFC = "ttl", "rfc"  # DEFAULT_FRESHNESS: what a response that states no freshness gets
# RFC 9111 §3.5: the directives by which a response to a request with credentials says a shared
# cache may store it.
SHARED_DESPITE_CREDENTIALS = ("public", "s-maxage", "must-revalidate")


class Policy:
    """What may be stored, and for how long it stays fresh."""

    def __init__(self, *, ttl: float, store_statuses: frozenset[int] = SUCCESS,
                 store_set_cookie: bool = False, respect_cache_control: bool = True,
                 default_freshness: str = TTL, heuristic_fraction: float = 0.1,
                 heuristic_max: float = 86400.0, max_headers: int = 100,
                 max_header_bytes: int = 32 * 1024, ttl_caps_origin: bool = True):
        self.ttl = ttl
        self.ttl_caps_origin = ttl_caps_origin  # False: `ttl` does not cap explicit freshness
        self.store_statuses = store_statuses
        self.store_set_cookie = store_set_cookie
        self.respect_cache_control = respect_cache_control
        self.default_freshness = default_freshness
        self.heuristic_fraction = heuristic_fraction
        self.heuristic_max = heuristic_max
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.timing = NO_TIMING  # a RULES_FILE rule's freshness parts: see `ruled`

    def ruled(self, timing: Timing) -> "Policy":
        """This policy for a response a rule of RULES_FILE matches (proxy.cache.rules): its
        `ttl` the freshness of a response that states none (in place of CACHE_TTL or the
        heuristic), its `ttl_min` and `ttl_max` bounds on the freshness, stated or not
        (`ttl_max` in place of CACHE_TTL's cap), its stale windows in place of the settings."""
        if timing == NO_TIMING:
            return self
        ruled = copy.copy(self)
        ruled.timing = timing
        return ruled

    def directives(self, headers: Mapping[str, str]) -> cc.Directives:
        """The response's directives for this cache (targeted field first, RFC 9213)."""
        return cc.response_directives(headers) if self.respect_cache_control else {}

    def storable(self, status: int, headers: Mapping[str, str], now: float | None = None) -> bool:
        return not self.refusal(status, headers, now)

    def refusal(self, status: int, headers: Mapping[str, str], now: float | None = None) -> str:
        """Why a response may not be stored (RFC 9111 §3), or "" when it may."""
        directives = self.directives(headers)
        if "must-understand" in directives:
            # §5.2.2.3: stored only with a status this cache understands, and then no-store
            # (which an older cache would obey instead) is overridden.
            if status not in UNDERSTOOD_STATUSES or status not in self.store_statuses:
                return "status"
        elif status not in self.store_statuses or status == 206:
            return "status"  # a 206 is a part: this cache does not combine parts (§3.3)
        elif "no-store" in directives:
            return "no-store"
        if "set-cookie" in headers and not self.store_set_cookie:
            return "set-cookie"  # a cookie is one client's; a shared cache must not hand it to others
        bare_private, _fields = cc.field_names(directives, "private")
        if "private" in directives and bare_private:
            return "private"  # §5.2.2.7: not for a shared cache (private="f": stored without f)
        if "*" in vary_names(headers):
            return "vary-star"  # §4.1: matches no later request
        stored = kept_headers(headers)
        if len(stored) > self.max_headers or header_bytes(stored) > self.max_header_bytes:
            return "headers-too-large"
        if (self.default_freshness == RFC and self.lifetime(headers, now or 0.0, status) <= 0
                and not ("etag" in headers or "last-modified" in headers)):
            return "no-freshness"  # §4.2: nothing to reuse it by, and no way to revalidate it
        return ""

    def stored_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The headers kept with the entry: end-to-end ones, less what `private="f"` names
        (§5.2.2.7: a shared cache must not store those fields)."""
        _bare, private = cc.field_names(self.directives(headers), "private")
        return {name: value for name, value in kept_headers(headers).items() if name not in private}

    def explicit_lifetime(self, headers: Mapping[str, str], now: float) -> float | None:
        """§4.2.1: s-maxage, then max-age, then Expires − Date; None when none is given. An
        invalid value of any of them is 0: stale."""
        directives = self.directives(headers)
        for name in ("s-maxage", "max-age"):  # s-maxage wins for a shared cache
            seconds = cc.delta_seconds(directives, name)
            if seconds is not None:
                return max(0.0, seconds)
        if "expires" in headers and "\0targeted" not in directives:
            expires = parse_http_date(headers["expires"], now)
            if expires is None:
                return 0.0  # §5.3: an invalid Expires (`0`, any other form) means already expired
            date = parse_http_date(headers.get("date"), now)
            # At most what a delta-seconds can say (§1.2.2), so a far Expires (year 9999) keeps
            # an entry readable when CACHE_TTL does not cap it.
            return max(0.0, min(float(cc.MAX_DELTA), expires - (now if date is None else date)))
        return None

    def heuristic_lifetime(self, status: int, headers: Mapping[str, str], now: float) -> float:
        """§4.2.2: a fraction of the time since Last-Modified, for a heuristically cacheable
        status or a `public` response, capped; 0 without Last-Modified."""
        if status not in HEURISTIC_STATUSES and "public" not in self.directives(headers):
            return 0.0
        modified = parse_http_date(headers.get("last-modified"), now)
        if modified is None:
            return 0.0
        date = parse_http_date(headers.get("date"), now)
        since = (now if date is None else date) - modified
        return max(0.0, min(self.heuristic_max, self.heuristic_fraction * since))

    def lifetime(self, headers: Mapping[str, str], now: float, status: int = 200) -> float:
        """Seconds of freshness: explicit (§4.2.1; at most CACHE_TTL unless `ttl_caps_origin`
        is off), else CACHE_TTL (DEFAULT_FRESHNESS=ttl, the card's SETEX TTL) or the heuristic
        (rfc, §4.2.2, at most CACHE_TTL); a rule's parts (`ruled`) in place of these."""
        rule = self.timing
        if not self.respect_cache_control:
            return self._bounded(self.ttl if rule.ttl is None else rule.ttl)
        directives = self.directives(headers)
        if cc.field_names(directives, "no-cache")[0]:
            return 0.0  # §5.2.2.4: stored, but revalidated before every use (a rule's too)
        explicit = self.explicit_lifetime(headers, now)
        if explicit is not None:
            capped = self.ttl_caps_origin and rule.ttl_max is None
            return self._bounded(min(self.ttl, explicit) if capped else explicit)
        if rule.ttl is not None:
            return self._bounded(rule.ttl)
        if self.default_freshness == RFC:
            return self._bounded(min(self.ttl, self.heuristic_lifetime(status, headers, now)))
        return self._bounded(self.ttl)

    def _bounded(self, lifetime: float) -> float:
        """`lifetime` within a rule's ttl_min and ttl_max (none: as it is)."""
        rule = self.timing
        if rule.ttl_min is not None:
            lifetime = max(lifetime, rule.ttl_min)
        return lifetime if rule.ttl_max is None else min(lifetime, rule.ttl_max)

    def credentialed_lifetime(self, headers: Mapping[str, str], now: float) -> float | None:
        """For a response to a request with credentials (RFC 9111 §3.5: Authorization; Cookie
        here too, whose answers are as personal: web cache deception stores them under a
        static-looking path): None when it may not be stored, which is unless it says
        `public`, `s-maxage` or `must-revalidate`; else its explicit freshness alone, at most
        CACHE_TTL (a rule's ttl_max in its place; never raised by a ttl_min), never CACHE_TTL
        by default nor a heuristic (§4.2.2), so the origin's own words are what shares it.
        Stored with no freshness, it needs a validator."""
        directives = self.directives(headers)
        if not any(name in directives for name in SHARED_DESPITE_CREDENTIALS):
            return None
        explicit = self.explicit_lifetime(headers, now)
        lifetime = 0.0 if explicit is None or cc.field_names(directives, "no-cache")[0] \
            else min(self.ttl if self.timing.ttl_max is None else self.timing.ttl_max, explicit)
        if lifetime <= 0 and not ("etag" in headers or "last-modified" in headers):
            return None  # nothing to reuse it by, and no way to revalidate it
        return lifetime

    def may_serve_stale(self, headers: Mapping[str, str]) -> bool:
        """Whether a stored response may be served stale at all: not when it says no-cache,
        must-revalidate, proxy-revalidate or s-maxage (RFC 9111 §4.2.4, §5.2.2.2, .4, .8, .10)."""
        directives = self.directives(headers)
        return not cc.field_names(directives, "no-cache")[0] and not any(
            name in directives for name in ("must-revalidate", "proxy-revalidate", "s-maxage"))

    def stale_window(self, headers: Mapping[str, str], name: str, setting: float,
                     cap: float) -> float:
        """RFC 5861: the response's own stale-while-revalidate / stale-if-error, at most `cap`
        (how long a stale entry is kept); the setting (or a rule's, RULES_FILE) when it says
        nothing."""
        ruled = self.timing.stale_while_revalidate if name == "stale-while-revalidate" \
            else self.timing.stale_if_error if name == "stale-if-error" else None
        setting = setting if ruled is None else ruled
        seconds = cc.delta_seconds(self.directives(headers), name)
        return setting if seconds is None or seconds < 0 else min(seconds, cap)

    @staticmethod
    def initial_age(headers: Mapping[str, str], request_time: float | None = None,
                    response_time: float | None = None) -> float:
        """§4.2.3 corrected_initial_age: the larger of the apparent age (response_time − Date)
        and the upstream `Age` plus the response delay. Age is its first member (§5.1:
        `Age: 7200, 0` is 7200); an invalid one is ignored."""
        first = headers.get("age", "").split(",")[0].strip()
        age_value = float(min(int(first), cc.MAX_DELTA)) if first.isdigit() and first.isascii() else 0.0
        if response_time is None:
            return age_value
        delay = max(0.0, response_time - (response_time if request_time is None else request_time))
        date = parse_http_date(headers.get("date"), response_time)
        apparent = 0.0 if date is None else max(0.0, response_time - date)
        return max(apparent, age_value + delay)

    def validators(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Headers for a conditional request revalidating a stored response (RFC 9110 §13.1)."""
        conditional = {}
        if headers.get("etag"):
            conditional["If-None-Match"] = headers["etag"]
        if headers.get("last-modified"):
            conditional["If-Modified-Since"] = headers["last-modified"]
        return conditional


def vary_names(headers: Mapping[str, str]) -> list[str]:
    """The request header names a response's Vary lists, lower-case (`*` kept)."""
    return [name.strip().lower() for name in headers.get("vary", "").split(",") if name.strip()]


def with_vary(headers: Mapping[str, str], name: str) -> dict[str, str]:
    """`headers` with `name` in their Vary: appended to what the origin listed, never twice
    (compared without case), and nothing added to `Vary: *`, which already covers it."""
    listed = vary_names(headers)
    if name.lower() in listed or "*" in listed:
        return dict(headers)
    vary = headers.get("vary", "").strip()
    return {**headers, "vary": f"{vary}, {name}" if vary else name}


def with_date(headers: Mapping[str, str], response_time: float) -> dict[str, str]:
    """RFC 9110 §6.6.1: a response without Date gets the time it was received."""
    return dict(headers) if "date" in headers else {**headers, "date": format_http_date(response_time)}


def without_unvalidated(headers: Mapping[str, str], policy: Policy) -> dict[str, str]:
    """A stored response's headers for reuse without revalidation: less what `no-cache="f"`
    names (RFC 9111 §5.2.2.4)."""
    for name in DIRECTIVE_FIELDS:
        value = headers.get(name)
        if value and "no-cache" in value.lower():
            break
    else:
        return dict(headers)  # no field can name it: nothing to parse (most responses)
    _bare, fields = cc.field_names(policy.directives(headers), "no-cache")
    return {name: value for name, value in headers.items() if name not in fields} \
        if fields else dict(headers)


def may_serve_stale_if_error(policy: Policy, stale: Entry | None, now: float, window: float) -> bool:
    """RFC 5861 §4 stale-if-error: within `window` seconds past freshness, unless the entry
    forbids serving it stale, and only in place of an error: a stored success (2xx) or
    redirect (3xx) stands in, a stored error (4xx, 5xx) never does (the origin's new answer is
    the answer)."""
    return (stale is not None and stale.status < 400 and window > 0
            and -stale.remaining(now) <= window and policy.may_serve_stale(stale.headers))


def may_serve_stale_while_revalidate(policy: Policy, stale: Entry | None, now: float,
                                     window: float) -> bool:
    """RFC 5861 §3 stale-while-revalidate: stale by at most `window` seconds, and allowed to be."""
    return (stale is not None and 0 < -stale.remaining(now) <= window
            and policy.may_serve_stale(stale.headers))


# RFC 9111 §3.2: fields a 304 does not update (besides those never stored); Content-Encoding
# describes the stored bytes (§3.2's own example).
_NOT_UPDATED = NOT_STORED | {"content-type", "content-range", CONTENT_ENCODING}


def freshened(policy: Policy, stale: Entry, headers: Mapping[str, str],
              hops: tuple[tuple[str, str], ...] | None, now: float,
              request_time: float | None = None) -> Entry:
    """The stored response freshened by a 304's `headers` (RFC 9111 §4.3.4): every field it
    carries replaces the stored one (§3.2), but the framing and the body's own; its freshness
    taken from the result (a 304 often carries only the ETag). The body is the stored one: it
    keeps its record, plus the `hops` of this revalidation."""
    update = {name: value for name, value in policy.stored_headers(headers).items()
              if name not in _NOT_UPDATED}
    merged = {**stale.headers, **with_date(update, now)}
    via = None if stale.via is None or hops is None else tuple(dict.fromkeys(stale.via + hops))
    return dataclasses.replace(stale, headers=merged, via=via, stored_at=now,
                               fetched_at=now - policy.initial_age(headers, request_time, now),
                               fresh_for=policy.lifetime(merged, now, stale.status))
