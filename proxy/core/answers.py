"""The URL role's answers: a new upstream response stored when storable and answered, and a
stored entry's answer (its tags shown with TAG_HEADER_SHOWN); a mixin of UrlCache, which holds
the parts it uses."""

import logging
from collections.abc import Callable

from proxy.cache import entry as cache_entry
from proxy.cache.entry import Entry
from proxy.cache.freshness import Policy, with_date, with_vary, without_unvalidated
from proxy.cache.representation import ACCEPT_ENCODING, without
from proxy.cache.result import BYPASS, HEADERS_TOO_LARGE, MISS, CacheResult
from proxy.core.storing import Begun, Storing
from proxy.core.url_request import UrlRequest
from proxy.store.tags import MAX_TAGS, tags_of
from proxy.upstream.fetcher import UpstreamResponse

# Its lines keep the name they had when this was part of url_cache.py (log filters).
log = logging.getLogger("proxy.core.url_cache")


class Answering(Storing):
    """Answers for UrlCache; the parts below are UrlCache's."""

    policy: Policy
    _policy_for: Callable[[UrlRequest, int], Policy]
    _key_varied: Callable[[UrlRequest, dict[str, str]], dict[str, str]]

    def _fresh_answer(self, request: UrlRequest, response: UpstreamResponse, stale: Entry | None,
                      redis_up: bool, now: float, request_time: float, begun: Begun,
                      epoch: int) -> CacheResult:
        """A new response from upstream (not a 304 freshening `stale`): stored when storable
        (`begun`, `epoch`: where the purges stood before the fetch, see `_store`), and the
        client's answer."""
        tag_headers = self.limits.tag_headers
        tags = tags_of(response.headers, tag_headers) if tag_headers else ()
        if tags is None:
            log.info("not storing %s: its %s header holds more than %d tags or one that is not "
                     "1-256 visible ASCII characters", request.redis_key, "/".join(tag_headers),
                     MAX_TAGS)
        policy = self._policy_for(request, response.status)
        refusal = policy.refusal(response.status, response.headers, now) if request.store \
            else "request"
        lifetime = policy.lifetime(response.headers, now, response.status)
        if request.credentials and not refusal:
            # RFC 9111 §3.5: stored only if it says so, fresh only as long as it says.
            shared = policy.credentialed_lifetime(response.headers, now)
            if shared is None:
                refusal = "credentials"
            else:
                lifetime = shared
        # Every end-to-end header is relayed (the tags are the entry's, not a header: shown only
        # with TAG_HEADER_SHOWN); the origin's Date kept (one added if it sent none).
        entry = Entry(status=response.status, body=response.body, url=request.canonical,
                      fetched_at=now - self.policy.initial_age(response.headers, request_time, now),
                      fresh_for=lifetime, stored_at=now,
                      headers=self._key_varied(request, with_date(
                          without(self.policy.stored_headers(response.headers), tag_headers), now)),
                      via=response.hops, vary=self._vary_of(request, response.headers),
                      tags=tags or ())
        if refusal == HEADERS_TOO_LARGE:
            log.info("not storing %s: its headers exceed MAX_STORED_HEADERS (%d fields) or "
                     "MAX_STORED_HEADER_BYTES (%d bytes)", request.redis_key,
                     self.policy.max_headers, self.policy.max_header_bytes)
        kept = self._compressed(entry, response.headers)
        stored = not refusal and tags is not None \
            and self._store(request.redis_key, kept, begun, epoch)
        headers = self._shown(entry, self._key_varied(request, with_date(
            without(cache_entry.kept_headers(response.headers), tag_headers), now)))
        if stored and kept.coding:
            headers = with_vary(headers, ACCEPT_ENCODING)  # as every later answer from the entry
        return CacheResult(response.status, response.body, headers,
                           MISS if redis_up else BYPASS, int(entry.age(now)),
                           forward="stale" if stale else "miss",
                           upstream_status=response.status, stored=stored,
                           detail=HEADERS_TOO_LARGE if refusal == HEADERS_TOO_LARGE else "")

    def _result(self, entry: Entry, now: float, cache: str, forward: str = "",
                detail: str = "", policy: Policy | None = None) -> CacheResult:
        """The answer from a stored entry; `policy` given: reused without revalidation, so less
        the fields its `no-cache="f"` names. Its tags shown with TAG_HEADER_SHOWN."""
        headers = entry.headers if policy is None else without_unvalidated(entry.headers, policy)
        return CacheResult(entry.status, entry.body, self._shown(entry, headers), cache,
                           int(entry.age(now)), entry.remaining(now), forward, detail=detail,
                           coding=entry.coding)

    def _shown(self, entry: Entry, headers: dict[str, str]) -> dict[str, str]:
        """`headers`, and the entry's tags in the first tag header when they are shown."""
        if entry.tags and self.limits.tag_headers_shown and self.limits.tag_headers:
            return {**headers, self.limits.tag_headers[0]: " ".join(entry.tags)}
        return headers
