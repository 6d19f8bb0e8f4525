"""The stored entry: a small versioned header, then the body bytes exactly as received."""

import ipaddress
import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from proxy.cache.request import HOP_BY_HOP, connection_named

_UNSAFE = re.compile(r"[\r\n\x00]")
# A purge tag: visible ASCII but for the separators of the tag header (space and comma).
TAG = re.compile(r"[!-+\--~]{1,256}")
CODINGS = ("", "gzip", "zstd")  # content codings a body may be stored in ("" = identity)
MAGIC = b"RPE1"  # redis-proxy entry, format 1: MAGIC, the metadata's length, JSON metadata, body
_LENGTH = struct.Struct(">I")
# Version of the JSON metadata. 2 adds "via", what admitted the entry; 3 keeps every end-to-end
# header (not only KEPT_HEADERS) and "vary", the request header values the response's Vary names;
# 4 is 3 plus "coding", the content coding the body is stored in (gzip or zstd): a reader of 3
# would serve those bytes as they are, so it must take a 4 for a miss, and an identity body is
# still written as a 3. "tags" (the entry's purge tags; absent = none) is optional in 3 and 4: a
# reader that ignores it serves the entry rightly. Entries of versions 1 (no "v", via=None) and
# 2 are still read; readers of 2 take a 3 as a miss.
META_VERSION = 3
CODED_VERSION = 4
READABLE_VERSIONS = (1, 2, META_VERSION, CODED_VERSION)

# What versions 1 and 2 kept: headers worth replaying and needed for revalidation.
KEPT_HEADERS = ("content-type", "content-language", "content-disposition", "etag",
                "last-modified", "cache-control", "expires", "vary")
# Never stored nor relayed as received (RFC 9110 §7.6.1 hop-by-hop fields, Content-Length among
# them; Age the proxy recomputes; a body requests has decoded; a cookie that is one client's; the
# proxy's own Server and X-Cache). Location is end-to-end, so a relayed redirect keeps it.
NOT_STORED = HOP_BY_HOP | {"content-encoding", "age", "set-cookie", "server", "x-cache"}
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")


@dataclass(frozen=True)
class Entry:
    status: int
    body: bytes
    url: str  # the canonical URL it came from
    fetched_at: float  # unix seconds
    fresh_for: float  # seconds of freshness from fetched_at
    headers: dict[str, str] = field(default_factory=dict)
    # What admitted it: each hop the fetch made (the URL, redirects included, and the address it
    # connected to), so a proxy with a stricter upstream policy can refuse it. None for an entry
    # of metadata version 1, which recorded nothing of the kind.
    via: tuple[tuple[str, str], ...] | None = None
    # The values of the request headers its Vary names, as sent upstream (RFC 9111 §4.1), names
    # lower-case, an absent header as None; None when the response has no Vary.
    vary: dict[str, str | None] | None = None
    tags: tuple[str, ...] = ()  # purge tags from the response's tag header (proxy.store.tags)
    coding: str = ""  # content coding of `body` as stored ("" = identity; proxy.cache.compression)

    def age(self, now: float) -> float:
        return max(0.0, now - self.fetched_at)

    def remaining(self, now: float) -> float:
        """Seconds of freshness left; negative once stale."""
        return self.fresh_for - self.age(now)


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Every end-to-end header of a response (names lower-case): all but NOT_STORED and the
    fields its Connection names (RFC 9110 §7.6.1)."""
    named = connection_named(headers)
    return {name.lower(): value for name, value in headers.items()
            if name.lower() not in NOT_STORED and name.lower() not in named}


def header_bytes(headers: Mapping[str, str]) -> int:
    """The size of a header block as sent: `name: value` plus CRLF per field."""
    return sum(len(name) + len(value) + 4 for name, value in headers.items())


def encode(entry: Entry) -> bytes:
    fields: dict[str, object] = {"v": CODED_VERSION if entry.coding else META_VERSION,
                                 "status": entry.status, "url": entry.url,
                                 "fetched_at": entry.fetched_at, "fresh_for": entry.fresh_for,
                                 "headers": entry.headers, "vary": entry.vary,
                                 "via": None if entry.via is None else [list(hop) for hop in entry.via]}
    if entry.tags:
        fields["tags"] = list(entry.tags)
    if entry.coding:
        fields["coding"] = entry.coding
    meta = json.dumps(fields, separators=(",", ":")).encode()
    return MAGIC + _LENGTH.pack(len(meta)) + meta + entry.body


def decode(raw: bytes) -> Entry | None:
    """The entry, or None for bytes that are not an entry of this format (treated as a miss)."""
    if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + _LENGTH.size:
        return None
    start = len(MAGIC) + _LENGTH.size
    (length,) = _LENGTH.unpack_from(raw, len(MAGIC))
    try:
        meta = json.loads(raw[start:start + length])
        headers = dict(meta.get("headers") or {})
        version = meta.get("v", 1)
        if version not in READABLE_VERSIONS:
            return None  # a later format: a miss, fetched again and rewritten
        via = None if version == 1 or meta.get("via") is None else _via(meta["via"])
        vary = _vary(meta.get("vary")) if version >= META_VERSION else None
        tags = meta.get("tags") or []
        if not isinstance(tags, list):
            raise ValueError("tags is a list")
        # Only a 4 names a coding, and it must: a coded body under any other number is no entry.
        coding = meta["coding"] if version == CODED_VERSION else meta.get("coding", "")
        entry = Entry(status=int(meta["status"]), body=raw[start + length:], url=str(meta["url"]),
                      fetched_at=float(meta["fetched_at"]), fresh_for=float(meta["fresh_for"]),
                      headers=headers, via=via, vary=vary, tags=tuple(tags), coding=coding)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    allowed = (lambda name: _FIELD_NAME.fullmatch(name) is not None and name not in NOT_STORED) \
        if version >= META_VERSION else KEPT_HEADERS.__contains__
    # Anyone who can write this Redis can write an entry: replay only headers this format
    # stores (any end-to-end field from version 3; the eight KEPT_HEADERS before), as text with
    # no CR, LF or NUL (which would split the response), a status a client can be given, tags a
    # tag purge could name, and a coding this proxy decodes.
    if not 200 <= entry.status <= 599 or not all(
            math.isfinite(number) and 0 <= number < 1e11 for number in (entry.fetched_at, entry.fresh_for)
    ) or any(
            not allowed(name) or not isinstance(value, str) or _UNSAFE.search(value)
            for name, value in headers.items()) or any(
            not isinstance(tag, str) or not TAG.fullmatch(tag) for tag in entry.tags) or (
            entry.coding not in CODINGS) or ((version == CODED_VERSION) != bool(entry.coding)):
        return None
    return entry


def _vary(values: object) -> dict[str, str | None] | None:
    if values is None:
        return None
    if not isinstance(values, dict) or not all(
            isinstance(name, str) and (value is None or isinstance(value, str))
            for name, value in values.items()):
        raise ValueError("vary is not a map of header names to strings")
    return dict(values)


def _via(hops: list[list[str]]) -> tuple[tuple[str, str], ...]:
    """The stored hops, each a URL and an IP address; ValueError for anything else."""
    checked = []
    for url, address in hops:
        if not isinstance(url, str) or not isinstance(address, str) or _UNSAFE.search(url):
            raise ValueError("a hop is not two strings")
        checked.append((url, str(ipaddress.ip_address(address))))
    if not checked:
        raise ValueError("an entry of version 2 names at least one hop")
    return tuple(checked)
