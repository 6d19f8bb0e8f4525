"""The URL role's RULES_FILE rules applied (proxy.cache.rules): a request's cache key and bypass
decided before any lookup (L1 included), its response's freshness and stale windows by the
matching rules' parts; a mixin of UrlCache, which holds the parts it uses."""

import dataclasses
from collections.abc import Callable

from proxy.cache import keys as cache_keys
from proxy.cache.entry import Entry
from proxy.cache.freshness import Policy, with_vary
from proxy.cache.request import ClientRequest
from proxy.cache.result import BYPASS, RULE, CacheResult
from proxy.cache.rules import Rules, Timing, site_host
from proxy.core.url_request import UrlLimits, UrlRequest


class Ruling:
    """Rules for UrlCache; the parts below are UrlCache's."""

    rules: Rules
    policy: Policy
    limits: UrlLimits
    _ruled_policies: dict[Timing, Policy]
    _forward: Callable[[UrlRequest, Entry | None, bool], CacheResult]

    def _ruled(self, request: UrlRequest, key: str | None, host: str | None) -> UrlRequest:
        """`request` as the rules matching its site's host and its path decide: its key less
        the query parameters they leave out of it (the origin is still sent them all, as
        nginx's proxy_cache_key or Varnish's vcl_hash leave what is sent alone), and the rules
        kept with it for its bypass, its Vary and its response's freshness. `host`: the site's
        host (site_host_of), else the url's own (the URL role). An explicit key= stays the key."""
        parts = request.parts
        decision = self.rules.match(site_host(host) if host else parts.host, parts.path)
        if decision is None:
            return request
        query = decision.key_query(parts.query)
        if query == parts.query:
            return dataclasses.replace(request, rule=decision)
        canonical = dataclasses.replace(parts, query=query).canonical
        return dataclasses.replace(request, canonical=canonical, rule=decision,
                                   redis_key=request.redis_key if key is not None
                                   else cache_keys.redis_key(self.limits.prefix, None, canonical))

    @staticmethod
    def site_host_of(client: ClientRequest | None) -> str | None:
        """In reverse-proxy mode, the host that names the request's site: the X-Forwarded-Host
        the proxy itself sends the origin (handler's Site.forwarded: PUBLIC_HOST or the origin's
        host with ORIGIN_URL, the listed host that picked the site with ORIGINS), never the
        client's Host as sent, which with ORIGIN_URL is anything a client writes: it would
        choose the rules (key, bypass, freshness) of an entry every client shares."""
        return client.forwarded.get("x-forwarded-host") if client is not None and client.forwarded \
            else None

    def _policy_for(self, request: UrlRequest, status: int) -> Policy:
        """The policy for a response of `status` to `request`: with its rules' freshness parts."""
        if request.rule is None:
            return self.policy
        timing = request.rule.timing(status)
        policy = self._ruled_policies.get(timing)
        if policy is None:  # one per distinct set of parts: as many as the rules make, no more
            policy = self._ruled_policies[timing] = self.policy.ruled(timing)
        return policy

    def _bypassed(self, request: UrlRequest) -> CacheResult:
        """A rule's `bypass = true`: the origin asked, nothing read from nor written to Redis
        or L1 (RFC 9211 fwd=bypass: the cache was configured not to handle it)."""
        result = self._forward(dataclasses.replace(request, store=False), None, False)
        return dataclasses.replace(result, cache=BYPASS, forward="bypass", detail=RULE, stored=False)

    @staticmethod
    def _key_varied(request: UrlRequest, headers: dict[str, str]) -> dict[str, str]:
        """`headers` (lower-case names) with the rules' key_headers in their Vary: the entry is
        selected by them (proxy.core.variants) and a cache after this one learns it too."""
        if request.rule is None:
            return headers
        for name in request.rule.key_headers:
            headers = with_vary(headers, name)
        return headers
