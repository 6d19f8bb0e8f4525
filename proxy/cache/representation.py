"""A cached answer as one client is shown it: a compressed entry's representation chosen by the
client's Accept-Encoding, fields left out, request field values compared as RFC 9111 §4.1 lets."""

import dataclasses

from proxy.cache import compression
from proxy.cache.freshness import with_vary
from proxy.cache.result import CacheResult
from proxy.errors import BadGateway

ACCEPT_ENCODING = "Accept-Encoding"  # what a compressed entry's answers vary on (`represent`)
# Request fields whose values RFC 9111 §4.1 lets a cache compare case-insensitively.
CASELESS = frozenset({"accept", "accept-charset", "accept-encoding", "accept-language"})


def represent(result: CacheResult, accept_encoding: str | None,
              limit: int | None = None) -> CacheResult:
    """A compressed entry's answer for one client: the stored bytes with `Content-Encoding`
    (and the ETag of that representation) when its Accept-Encoding takes the coding, else the
    body decoded, to at most `limit` bytes (UPSTREAM_MAX_BYTES: what the fetch that stored it
    could have held; anyone who can write to Redis can write a bomb); `Vary: Accept-Encoding`
    either way, merged with the origin's Vary. (An entry in a coding of the origin's that the
    proxy does not decode has no `coding`: it is served as stored, its Content-Encoding kept.)"""
    if not result.coding:
        return result
    headers = with_vary(result.headers, ACCEPT_ENCODING)
    if compression.accepts(accept_encoding, result.coding):
        headers["content-encoding"] = result.coding
        if "etag" in headers:
            headers["etag"] = compression.encoded_etag(headers["etag"], result.coding)
        return dataclasses.replace(result, headers=headers)
    try:
        body = compression.decode(result.body, result.coding, limit)
    except compression.TooLarge as exc:
        raise BadGateway(f"the stored entry {exc}, more than UPSTREAM_MAX_BYTES: purge it, "
                         f"or ask with Accept-Encoding: {result.coding}") from exc
    except ValueError as exc:
        raise BadGateway(f"the stored entry does not decode: {exc}") from exc
    return dataclasses.replace(result, body=body, headers=headers, coding="")


def without(headers: dict[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name not in names} if names else headers


def normalised(name: str, value: str) -> str:
    """A request field value as RFC 9111 §4.1 lets a cache compare it: list members trimmed,
    whitespace runs as one space, the Accept family case-insensitive."""
    value = ", ".join(" ".join(part.split()) for part in value.split(","))
    return value.lower() if name in CASELESS else value
