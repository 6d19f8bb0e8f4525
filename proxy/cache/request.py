"""The client's request as the cache sees it: method, headers, and what goes to the origin; and
the hop-by-hop rules that decide which of a request's or response's fields cross the proxy."""

import contextvars
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

_EMPTY: Mapping[str, str] = MappingProxyType({})
# RFC 9110 §7.6.1: hop-by-hop fields, which a proxy never forwards (plus those a Connection
# header names). Proxy-Connection is the pre-standard one clients still send; Transfer-Encoding
# and Content-Length are the framing of this hop, recomputed for the next.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                        "transfer-encoding", "upgrade", "proxy-authorization",
                        "proxy-authenticate", "content-length"})
# Request fields that would let one client's request shape a response stored for everyone
# (RFC 9111 §4.3.2: a cache filling itself sends its own conditionals; a Range answer is not the
# full response): sent to the origin only when the request is passed through, not cached. The
# cache answers the client's own conditionals and Range from the stored response.
CACHE_FILL_DROPPED = frozenset({"if-none-match", "if-modified-since", "if-match",
                                "if-unmodified-since", "if-range", "range"})
# Forwarded fields that differ per client but never select a response (an origin varying on them
# would vary on every client): left out of the single-flight key so that concurrent cold requests
# from clients behind different addresses share one origin fetch.
NOT_COALESCED = frozenset({"x-forwarded-for"})
# Request fields that make an answer the sender's own (RFC 9111 §3.5 names Authorization; a
# Cookie's answer is as personal): stored only when the response says it may be shared.
CREDENTIALS = frozenset({"authorization", "cookie"})
# The request fields the URL role reads of `headers`: Cache-Control and Pragma (its directives),
# the conditionals and Range (proxy.cache.conditional), Accept-Encoding (its representation).
CACHE_READ = frozenset({"cache-control", "pragma", "if-none-match", "if-modified-since",
                        "if-match", "if-unmodified-since", "if-range", "range", "accept-encoding"})


@dataclass(frozen=True)
class ClientRequest:
    """The client's side of a URL-role (or reverse-proxy) request.

    `headers`: the header fields the client sent, names lower-case, a repeated field's values
    joined with ", " (RFC 9110 §5.3); read for its conditionals, its Cache-Control request
    directives and Range. `forwarded`: the end-to-end header fields sent upstream on its behalf
    (names lower-case): empty in the URL role, where every client's upstream request is the same;
    the reverse-proxy mode fills it. The Vary secondary key is computed from `forwarded` plus
    the proxy's own fixed upstream headers, never from `headers`."""

    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    forwarded: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    @classmethod
    def of(cls, method: str, fields: "list[tuple[str, str]] | Mapping[str, str]",
           forwarded: Mapping[str, str] | None = None) -> "ClientRequest":
        """From header fields as received (pairs, any case, repeats allowed): lower-case
        names, repeated fields combined in order."""
        pairs = fields.items() if isinstance(fields, Mapping) else fields
        combined: dict[str, str] = {}
        for name, value in pairs:
            name = name.lower()
            combined[name] = f"{combined[name]}, {value}" if name in combined else value
        return cls(method.upper(), MappingProxyType(combined),
                   MappingProxyType({k.lower(): v for k, v in (forwarded or {}).items()}))

    @classmethod
    def reading(cls, method: str, fields: list[tuple[str, str]]) -> "ClientRequest":
        """A URL-role request (nothing forwarded) as the cache reads it: `of` its CACHE_READ
        fields alone; with none of them, as most requests are, the one plain request of its
        method, built once."""
        read = [(name, value) for name, value in fields if name.lower() in CACHE_READ]
        return cls.of(method, read) if read else _plain(method.upper())


@functools.lru_cache(maxsize=16)  # the methods routed to the URL role: GET and HEAD
def _plain(method: str) -> ClientRequest:
    return ClientRequest(method)


def connection_named(headers: Mapping[str, str]) -> frozenset[str]:
    """The fields a Connection header names (RFC 9110 §7.6.1), lower-cased: also hop-by-hop."""
    return frozenset(token.strip().lower() for token in headers.get("connection", "").split(",")
                     if token.strip())


def end_to_end(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`pairs` without the hop-by-hop fields and those their Connection header names."""
    named = connection_named({"connection": ",".join(value for name, value in pairs
                                                     if name.lower() == "connection")})
    return [(name, value) for name, value in pairs
            if name.lower() not in HOP_BY_HOP and name.lower() not in named]


# The request fields whose presence takes a GET or HEAD through the full evaluation
# (UrlCache.fetch) rather than answering it from the reply kept beside its L1 entry (PlainHit):
# all the URL role reads but Accept-Encoding, which only a compressed entry's answer depends on.
FULL_EVALUATION = CACHE_READ - {"accept-encoding"}


def fill_fields(request: "ClientRequest") -> tuple[tuple[str, str], ...]:
    """The client's headers a cache fill sends upstream (cache_fill_headers), names lower-case,
    sorted: the UrlRequest's `forwarded`, which selects the Vary variant."""
    if not request.forwarded:
        return ()
    return tuple(sorted((name.lower(), value) for name, value in cache_fill_headers(request).items()))


def cache_fill_headers(request: "ClientRequest | None") -> dict[str, str]:
    """What a cache fill sends the origin of the client's forwarded headers."""
    if request is None:
        return {}
    return {name: value for name, value in request.forwarded.items()
            if name.lower() not in CACHE_FILL_DROPPED}


# RFC 9110 §9.2.1: the safe methods. Any other, unknown ones included, may change the origin's
# state, so its non-error answer invalidates what is stored (RFC 9111 §4.4).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Response fields a relay does not copy: hop-by-hop ones (end_to_end), the proxy's own Date and
# Server. (Content-Encoding is relayed: the fetcher drops it from a body it decoded, and keeps
# it with one it did not, whose bytes go on as the origin coded them.)
RELAY_DROPPED = frozenset({"date", "server"})


def relayed_fields(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The origin's response fields a relayed (uncached) answer carries to the client."""
    return [(name, value) for name, value in end_to_end(pairs) if name.lower() not in RELAY_DROPPED]


# RFC 8297 / RFC 9110 §15.2: where a 103 Early Hints that the origin sends before its final answer
# goes, for the request this thread serves: the front end sets it for a client that can take an
# interim response, the fetcher calls it with the 103's fields as received (the fetcher's
# connections.InterimSkippingResponse). Unset (a background refresh's thread, a waiter that did
# not fetch): discarded.
early_hints: contextvars.ContextVar[Callable[[list[tuple[str, str]]], None] | None] = \
    contextvars.ContextVar("early_hints", default=None)


def hinted_fields(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The fields of an origin's 103 relayed to the client: the end-to-end ones (`Link` above all)
    as relayed_fields keeps them, less Set-Cookie (never relayed for a cached request) and any
    value that holds a CR, LF or NUL (an obs-fold would split the interim response)."""
    return [(name, value) for name, value in relayed_fields(pairs)
            if name.lower() != "set-cookie" and not any(char in value for char in "\r\n\0")]
