"""The stored entry: a small versioned header, then the body bytes exactly as received."""

import ipaddress
import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

_UNSAFE = re.compile(r"[\r\n\x00]")
# A purge tag: visible ASCII but for the separators of the tag header (space and comma).
TAG = re.compile(r"[!-+\--~]{1,256}")
CODINGS = ("", "gzip", "zstd")  # content codings a body may be stored in ("" = identity)
MAGIC = b"RPE1"  # redis-proxy entry, format 1: MAGIC, the metadata's length, JSON metadata, body
_LENGTH = struct.Struct(">I")
# Version of the JSON metadata. 2 adds "via", what admitted the entry; version 1 entries (no "v")
# are still read, with via=None, and readers of version 1 ignore the new field. Optional fields a
# reader of the same version may ignore: "tags" (the entry's purge tags, absent = none). 3 is 2
# plus "coding", the content coding the body is stored in (absent = identity): a reader of 2
# would serve those bytes as they are, so it must take a version 3 entry for a miss.
META_VERSION = 2
CODED_VERSION = 3
READ_VERSIONS = (1, META_VERSION, CODED_VERSION)

# End-to-end headers worth replaying to clients and needed for revalidation (RFC 9111 §3.1).
KEPT_HEADERS = ("content-type", "content-language", "content-disposition", "etag",
                "last-modified", "cache-control", "expires", "vary")


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
    tags: tuple[str, ...] = ()  # purge tags from the response's tag header (proxy.store.tags)
    coding: str = ""  # content coding of `body` as stored ("" = identity; proxy.cache.compression)

    def age(self, now: float) -> float:
        return max(0.0, now - self.fetched_at)

    def remaining(self, now: float) -> float:
        """Seconds of freshness left; negative once stale."""
        return self.fresh_for - self.age(now)


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: headers[name] for name in KEPT_HEADERS if name in headers}


def encode(entry: Entry) -> bytes:
    fields = {"status": entry.status, "url": entry.url, "fetched_at": entry.fetched_at,
              "fresh_for": entry.fresh_for, "headers": entry.headers}
    if entry.via is not None:
        fields.update(v=META_VERSION, via=[list(hop) for hop in entry.via])
    if entry.tags:
        fields["tags"] = list(entry.tags)
    if entry.coding:
        fields.update(v=CODED_VERSION, coding=entry.coding)
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
        if version not in READ_VERSIONS:
            return None  # a later format: a miss, fetched again and rewritten
        via = None if version == 1 else _via(meta["via"])
        tags = meta.get("tags") or []
        if not isinstance(tags, list):
            raise ValueError("tags is a list")
        tags = tuple(tags)
        coding = str(meta["coding"]) if version == CODED_VERSION else ""  # 3 names one
        entry = Entry(status=int(meta["status"]), body=raw[start + length:], url=str(meta["url"]),
                      fetched_at=float(meta["fetched_at"]), fresh_for=float(meta["fresh_for"]),
                      headers=headers, via=via, tags=tags, coding=coding)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    # Anyone who can write this Redis can write an entry: replay only the headers this format
    # stores, as text with no CR, LF or NUL (which would split the response), and a status a
    # client can be given.
    if not 200 <= entry.status <= 599 or not all(
            math.isfinite(number) and 0 <= number < 1e11 for number in (entry.fetched_at, entry.fresh_for)
    ) or any(
            name not in KEPT_HEADERS or not isinstance(value, str) or _UNSAFE.search(value)
            for name, value in headers.items()) or any(
            not isinstance(tag, str) or not TAG.fullmatch(tag) for tag in entry.tags) or (
            entry.coding not in CODINGS) or (version == CODED_VERSION and not entry.coding):
        return None
    return entry


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
