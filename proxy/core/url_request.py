"""The URL role's request, validated once, and its settings."""

import dataclasses

from proxy.cache.rules import Decision
from proxy.cache.target import Target


@dataclasses.dataclass(frozen=True)
class UrlRequest:
    target: str  # what is sent upstream
    canonical: str  # what the entry remembers and the derived key hashes
    redis_key: str
    parts: Target  # `target` split, read by the upstream policy and the fetcher as it is
    # The client's headers sent upstream (ClientRequest.forwarded, less its conditionals and
    # Range: cache_fill_headers), names lower-case, sorted.
    forwarded: tuple[tuple[str, str], ...] = ()
    store: bool = True  # False for a request saying no-store: its answer is not stored
    credentials: bool = False  # it forwards Authorization or Cookie (RFC 9111 §3.5)
    # What the RULES_FILE rules matching it decide (proxy.core.url_rules); None: none matched.
    rule: Decision | None = None


@dataclasses.dataclass(frozen=True)
class UrlLimits:
    """The URL role's settings: sizes, prefix and the stale windows (seconds)."""

    prefix: str = "rp:"
    max_url_bytes: int = 8192
    max_key_bytes: int = 1024
    stale_ttl: float = 300.0  # kept in Redis past freshness, for revalidation and stale serving
    stale_if_error: float = 300.0
    stale_while_revalidate: float = 0.0
    # ORIGIN_URL in reverse-proxy mode: a redirect from this origin is the answer, relayed to
    # the client, never followed; "" in the URL role alone. The default origin of a tag purge.
    origin: str = ""
    origins: tuple[str, ...] = ()  # ORIGINS' origin URLs: their redirects are relayed likewise
    # Fraction of freshness after which a hit starts one background refresh; 0 = off.
    refresh_ahead: float = 0.0
    # Response headers whose tags index the entry for purge by tag (lower case); () = off.
    tag_headers: tuple[str, ...] = ("surrogate-key", "cache-tag")
    tag_headers_shown: bool = False  # replay the tags to clients (in the first tag header)
    compress_min_bytes: int = 0  # bodies this large that compress are stored compressed; 0 = off
    max_variants: int = 8  # Vary: variants of one URL kept at once (least recently stored replaced)
