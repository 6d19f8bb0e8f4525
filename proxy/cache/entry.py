"""The stored entry: a small versioned header, then the body bytes exactly as received."""

import functools
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
# Version 5, what encode writes: the same fields in a fraction of the bytes (a stored entry's
# overhead is its metadata plus Redis's own per key). A fixed header packs the magic, a flags
# byte (the coding's index in CODINGS, whether `via` and `vary` were recorded), the status,
# fetched_at and fresh_for (doubles: exact) and the length of a UTF-8 text of five sections
# split by NUL: the URL; the headers, one `name:value` a line; the hops, one `address` a line
# (the hop was the entry's URL) or `address url`; the vary values, `name:value`, or `name` for
# an absent header; the tags, split by spaces. The separators are the characters no field may
# hold (CR, LF and NUL split a response; a tag has no space), so each field is stored once with
# no quoting; an entry whose fields this cannot carry exactly is written as version 3 or 4.
# Readers of versions 1-4 take a 5 for a miss (its magic is not MAGIC).
BINARY_MAGIC = b"RPE5"
_FIXED = struct.Struct(">4sBHddH")  # magic, flags, status, fetched_at, fresh_for, text length
# _STORED: a sixth text section, stored_at. A reader of an earlier release refuses the unknown
# flag and takes the entry for a miss (it never serves what it cannot read whole).
_CODING_BITS, _VIA, _VARY, _STORED = 0b11, 0b100, 0b1000, 0b10000
# Version of the JSON metadata. 2 adds "via", what admitted the entry; 3 keeps every end-to-end
# header (not only KEPT_HEADERS) and "vary", the request header values the response's Vary names;
# 4 is 3 plus "coding", the content coding the body is stored in (gzip or zstd): a reader of 3
# would serve those bytes as they are, so it must take a 4 for a miss, and an identity body is
# still written as a 3. "tags" (the entry's purge tags; absent = none) is optional in 3 and 4: a
# reader that ignores it serves the entry rightly. Entries of versions 1 (no "v", via=None) and
# 2 are still read; readers of 2 take a 3 as a miss.
META_VERSION = 3
CODED_VERSION = 4
READABLE_VERSIONS = (1, 2, META_VERSION, CODED_VERSION)  # of the JSON metadata; 5 is BINARY_MAGIC

# What versions 1 and 2 kept: headers worth replaying and needed for revalidation.
KEPT_HEADERS = ("content-type", "content-language", "content-disposition", "etag",
                "last-modified", "cache-control", "expires", "vary")
# Never stored nor relayed as received (RFC 9110 §7.6.1 hop-by-hop fields, Content-Length among
# them; Age the proxy recomputes; a cookie that is one client's; the proxy's own Server and
# X-Cache). Location is end-to-end, so a relayed redirect keeps it. Content-Encoding is stored:
# the fetcher drops it from a body it decoded, so one that is left names the coding the stored
# bytes are in as the origin sent them (br, an unknown one), and is served with them. Readers
# before this took an entry with the field for a miss: they never serve coded bytes bare.
NOT_STORED = HOP_BY_HOP | {"age", "set-cookie", "server", "x-cache"}
CONTENT_ENCODING = "content-encoding"
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
# Version 5's header section: `name:value` lines (CR and NUL are refused before it is matched).
_HEADER_LINES = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+:[^\n]*(?:\n[!#$%&'*+.^_`|~0-9a-z-]+:[^\n]*)*")


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
    # When this proxy received it (unix seconds; 0 = not recorded, an entry of an earlier
    # release): what a ban compares with. fetched_at is earlier by the response's age (its Age,
    # and Date's one-second resolution), so it cannot tell a fetch just after a ban from one before.
    stored_at: float = 0.0

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
    """The entry as stored: version 5, or 3/4 (encode_json) for one whose fields version 5
    cannot carry exactly (a separator inside a field, a number struct cannot pack); decode
    judges those as it always has."""
    try:
        return _encode_binary(entry)
    except (ValueError, TypeError, struct.error):  # UnicodeEncodeError is a ValueError
        return encode_json(entry)


def _encode_binary(entry: Entry) -> bytes:
    url = entry.url
    if not isinstance(url, str) or "\n" in url:
        raise ValueError("the URL is one line")
    for name, value in entry.headers.items():
        _check_line(name, value)
    hops = ""
    if entry.via is not None:
        for hop, address in entry.via:
            if not isinstance(hop, str) or not hop or "\n" in hop or not isinstance(address, str) \
                    or " " in address or "\n" in address:
                raise ValueError("a hop is an address and a URL, each on one line")
        hops = "\n".join(address if hop == url else f"{address} {hop}" for hop, address in entry.via)
    vary = ""
    if entry.vary is not None:
        for name, sent in entry.vary.items():
            _check_line(name, "" if sent is None else sent)
        vary = "\n".join(name if sent is None else f"{name}:{sent}" for name, sent in entry.vary.items())
    if not all(isinstance(tag, str) and TAG.fullmatch(tag) for tag in entry.tags):
        raise ValueError("a tag is a TAG")
    sections = [url, "\n".join(f"{name}:{value}" for name, value in entry.headers.items()),
                hops, vary, " ".join(entry.tags)]
    if entry.stored_at:
        if not (math.isfinite(entry.stored_at) and 0 <= entry.stored_at < 1e11):
            raise ValueError("stored_at is a time")
        sections.append(f"{entry.stored_at:.6f}")
    text = "\x00".join(sections)
    if "\r" in text or text.count("\x00") != len(sections) - 1:
        raise ValueError("no field holds CR or NUL")
    meta = text.encode()
    flags = CODINGS.index(entry.coding) | (_VIA if entry.via is not None else 0) \
        | (_VARY if entry.vary is not None else 0) | (_STORED if entry.stored_at else 0)
    return _FIXED.pack(BINARY_MAGIC, flags, entry.status, entry.fetched_at, entry.fresh_for,
                       len(meta)) + meta + entry.body


def _check_line(name: object, value: object) -> None:
    """A `name:value` line of version 5: ValueError for a field it cannot carry exactly."""
    if not isinstance(name, str) or not isinstance(value, str) or ":" in name or "\n" in name \
            or "\n" in value or not name:
        raise ValueError("a field is a name without a colon and a value, on one line")


def encode_json(entry: Entry) -> bytes:
    """Version 3, or 4 for a coded body: MAGIC, the metadata's length, JSON metadata, body."""
    fields: dict[str, object] = {"v": CODED_VERSION if entry.coding else META_VERSION,
                                 "status": entry.status, "url": entry.url,
                                 "fetched_at": entry.fetched_at, "fresh_for": entry.fresh_for,
                                 "headers": entry.headers, "vary": entry.vary,
                                 "via": None if entry.via is None else [list(hop) for hop in entry.via]}
    if entry.tags:
        fields["tags"] = list(entry.tags)
    if entry.coding:
        fields["coding"] = entry.coding
    if entry.stored_at:
        fields["stored_at"] = entry.stored_at  # optional: a reader that ignores it bans nothing
    meta = json.dumps(fields, separators=(",", ":")).encode()
    return MAGIC + _LENGTH.pack(len(meta)) + meta + entry.body


def decode(raw: bytes) -> Entry | None:
    """The entry, or None for bytes that are not an entry of this format (treated as a miss)."""
    if raw[:4] == BINARY_MAGIC:
        return _decode_binary(raw)
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
                      headers=headers, via=via, vary=vary, tags=tuple(tags), coding=coding,
                      stored_at=float(meta.get("stored_at") or 0.0))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    allowed = (lambda name: _FIELD_NAME.fullmatch(name) is not None and name not in NOT_STORED) \
        if version >= META_VERSION else KEPT_HEADERS.__contains__
    # Anyone who can write this Redis can write an entry: replay only headers this format
    # stores (any end-to-end field from version 3; the eight KEPT_HEADERS before), as text with
    # no CR, LF or NUL (which would split the response), a status a client can be given, tags a
    # tag purge could name, and a coding this proxy decodes.
    if not 200 <= entry.status <= 599 or not all(
            math.isfinite(number) and 0 <= number < 1e11
            for number in (entry.fetched_at, entry.fresh_for, entry.stored_at)
    ) or any(
            not allowed(name) or not isinstance(value, str) or _UNSAFE.search(value)
            for name, value in headers.items()) or any(
            not isinstance(tag, str) or not TAG.fullmatch(tag) for tag in entry.tags) or (
            entry.coding not in CODINGS) or ((version == CODED_VERSION) != bool(entry.coding)) or (
            entry.coding and CONTENT_ENCODING in headers):
        return None
    return entry


def _decode_binary(raw: bytes) -> Entry | None:
    """Version 5 (see BINARY_MAGIC), checked as decode checks version 3: anyone who can write
    this Redis can write an entry."""
    try:
        _, flags, status, fetched_at, fresh_for, length = _FIXED.unpack_from(raw)
        start = _FIXED.size
        meta = raw[start:start + length]
        text = meta.decode()
        if len(meta) != length or "\r" in text or flags > _CODING_BITS | _VIA | _VARY | _STORED:
            raise ValueError("a whole text, no CR, known flags")
        stored_at = 0.0
        if flags & _STORED:
            url, header_lines, hop_lines, vary_lines, tag_text, stored_text = text.split("\x00")
            if not re.fullmatch(r"\d{1,11}\.\d{6}", stored_text):
                raise ValueError("stored_at is a time")
            stored_at = float(stored_text)
        else:
            url, header_lines, hop_lines, vary_lines, tag_text = text.split("\x00")
        headers: dict[str, str] = {}
        if header_lines:
            if not _HEADER_LINES.fullmatch(header_lines):
                raise ValueError("headers are name:value lines")
            for line in header_lines.split("\n"):
                name, _, value = line.partition(":")
                headers[name] = value
            if not NOT_STORED.isdisjoint(headers):
                raise ValueError("a header this format never stores")
            if flags & _CODING_BITS and CONTENT_ENCODING in headers:
                raise ValueError("the proxy's coding over the origin's")
        via = None
        if flags & _VIA:
            via = tuple((hop or url, _address(address)) for address, _, hop in
                        (line.partition(" ") for line in hop_lines.split("\n")))
        elif hop_lines:
            raise ValueError("hops with no via")
        vary: dict[str, str | None] | None = None
        if flags & _VARY:
            vary = {}
            for line in vary_lines.split("\n") if vary_lines else ():
                name, colon, value = line.partition(":")
                vary[name] = value if colon else None
        elif vary_lines:
            raise ValueError("vary values with no vary")
        tags = tuple(tag_text.split(" ")) if tag_text else ()
        coding = CODINGS[flags & _CODING_BITS]
    except (ValueError, IndexError, struct.error):  # UnicodeDecodeError is a ValueError
        return None
    # NaN fails every comparison and infinity the bound: no isfinite needed.
    if not (200 <= status <= 599 and 0 <= fetched_at < 1e11 and 0 <= fresh_for < 1e11) or "\n" in url \
            or (tags and not all(TAG.fullmatch(tag) for tag in tags)):
        return None
    return Entry(status=status, body=raw[start + length:], url=url, fetched_at=fetched_at,
                 fresh_for=fresh_for, headers=headers, via=via, vary=vary, tags=tags, coding=coding,
                 stored_at=stored_at)


@functools.lru_cache(maxsize=1024)
def _address(text: str) -> str:
    """A hop's address, normalised as version 3 reads it; ValueError for anything else. Cached:
    a proxy's entries come from few origins."""
    return str(ipaddress.ip_address(text))


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
