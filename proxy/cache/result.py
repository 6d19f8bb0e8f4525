"""What the URL role answers (`CacheResult`) and its RFC 9211 `Cache-Status` rendering."""

import dataclasses
import math
from collections.abc import Callable, Hashable
from typing import Any

HIT, MISS, STALE, BYPASS = "HIT", "MISS", "STALE", "BYPASS"
STALE_IF_ERROR = "stale-if-error"  # RFC 5861 §4
STALE_WHILE_REVALIDATE = "stale-while-revalidate"  # RFC 5861 §3
HEADERS_TOO_LARGE = "headers-too-large"  # detail= of a response not stored for its header block
RULE = "rule"  # detail= of a BYPASS that a RULES_FILE rule (bypass = true) made


@dataclasses.dataclass
class CacheResult:
    """What the URL role answers: the response plus how the cache produced it. A value: changed
    only by `dataclasses.replace`, never by assignment (not `frozen`, whose `__init__` costs an
    `object.__setattr__` per field: a tenth of the URL role's own work on a hit)."""

    status: int
    body: bytes
    headers: dict[str, str]
    cache: str  # HIT, MISS, STALE or BYPASS
    age: int = 0
    ttl: float | None = None  # freshness left, when served from the cache
    forward: str = ""  # RFC 9211 fwd= reason when upstream was asked: miss or stale
    upstream_status: int = 0  # what upstream answered, when it was asked
    stored: bool = False
    detail: str = ""  # RFC 9211 detail= of a STALE answer: stale-if-error or stale-while-revalidate
    coding: str = ""  # content coding of `body` as stored ("" = identity; proxy.cache.compression)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "application/octet-stream")


def hit_status(ttl: str) -> str:
    """The Cache-Status of a plain hit, as most answers are; `ttl` its whole seconds of
    freshness left (the serialized head of an L1 entry holds a mark there, proxy.serving.reply)."""
    return f"redis-proxy; hit; ttl={ttl}"


def cache_status(result: CacheResult) -> str:
    """The RFC 9211 Cache-Status value: how this response came from the cache."""
    if result.cache == HIT and not result.forward and result.ttl is not None:
        return hit_status(str(math.floor(result.ttl)))
    parts = ["redis-proxy"]
    if result.cache == HIT and not result.forward:
        parts.append("hit")
    elif result.cache == STALE and result.detail == STALE_IF_ERROR:
        # Forwarded, and upstream failed: the stale copy stood in (RFC 9211 §2.2: not a hit).
        parts.append("fwd=stale")
        if result.upstream_status:
            parts.append(f"fwd-status={result.upstream_status}")
        parts.append(f"detail={STALE_IF_ERROR}")
    elif result.cache == STALE:
        parts += ["hit", f"detail={result.detail or 'stale'}"]
    elif result.cache == BYPASS and result.detail == RULE:
        parts += ["fwd=bypass", f"fwd-status={result.upstream_status}", f"detail={RULE}"]
    elif result.cache == BYPASS:
        parts += ["fwd=bypass", "detail=redis-unavailable"]
    else:
        parts += [f"fwd={result.forward or 'miss'}", f"fwd-status={result.upstream_status}"]
        if result.stored:
            parts.append("stored")
        elif result.detail:
            parts.append(f"detail={result.detail}")
    if result.ttl is not None:
        parts.append(f"ttl={math.floor(result.ttl)}")  # negative: served stale (RFC 9211 §2.7)
    return "; ".join(parts)


@dataclasses.dataclass
class PlainHit:
    """A fresh L1 entry answering a plain GET or HEAD (one carrying no field the full RFC 9111
    evaluation reads) as it stands: what the handler sends from the reply head it keeps in
    `memo[variant]` (beside the entry in L1, gone with it), and the full answer, built only
    to make that head."""

    status: int
    body: bytes  # the entry's bytes, as stored (a compressed one only for a client taking them)
    age: int  # the Age header
    ttl: int  # the Cache-Status ttl: whole seconds of freshness left
    memo: dict[Hashable, Any]
    variant: str  # the representation answered: "identity" or the stored coding
    result: Callable[[], CacheResult]  # the answer the full evaluation gives this request
