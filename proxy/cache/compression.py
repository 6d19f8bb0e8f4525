"""Compressed storage: which bodies compress, the codings, and Accept-Encoding negotiation.

A body that compresses (text, JSON, JavaScript, CSS, XML, SVG) of at least COMPRESS_MIN_BYTES
is stored in one content coding: `zstd` (the `zstandard` package), or `gzip` from the standard
library where zstandard is absent. A client whose Accept-Encoding accepts that coding (RFC 9110
§12.5.3) gets the stored bytes as they are; any other gets them decoded.
"""

import gzip
import re
import zlib
from collections.abc import Iterator, Mapping

try:
    import zstandard
except ImportError:  # pragma: no cover - zstandard is pinned; gzip keeps working without it
    zstandard = None  # type: ignore[assignment]

IDENTITY = ""
GZIP = "gzip"
ZSTD = "zstd"
DEFLATE = "deflate"
# The codings an upstream body arrives in that the fetcher decodes (decode_received).
DECODED = frozenset({GZIP, "x-gzip", DEFLATE, ZSTD})
_CHUNK = 64 * 1024
STORED_CODING = ZSTD if zstandard is not None else GZIP
ZSTD_LEVEL = 3  # zstd's default: about gzip -6's ratio on text, several times faster
GZIP_LEVEL = 6

_COMPRESSIBLE = re.compile(
    r"\s*(text/[^;\s]+|application/(json|javascript|ecmascript|xml|xhtml\+xml|rss\+xml|atom\+xml"
    r"|ld\+json|manifest\+json|wasm|x-javascript|[\w.\-]+\+(json|xml))|image/svg\+xml)\s*(;|$)",
    re.IGNORECASE)
_Q = re.compile(r"q\s*=\s*([0-9](?:\.[0-9]{0,3})?)\s*$", re.IGNORECASE)


def compressible(headers: Mapping[str, str]) -> bool:
    """Whether a body with these (lower-case) headers is worth storing compressed: a textual
    type, and not already content-coded."""
    coded = headers.get("content-encoding", "").strip().lower()
    return coded in ("", "identity") and bool(_COMPRESSIBLE.match(headers.get("content-type", "")))


def encode(body: bytes, coding: str) -> bytes:
    if coding == ZSTD:
        if zstandard is None:
            raise ValueError("zstd needs the zstandard package")
        return bytes(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(body))
    if coding == GZIP:
        return gzip.compress(body, GZIP_LEVEL, mtime=0)
    raise ValueError(f"unknown content coding {coding!r}")


class TooLarge(ValueError):
    """A body that decodes to more than the limit it was decoded under."""


def decode(body: bytes, coding: str, limit: int | None = None) -> bytes:
    """The body as the upstream sent it (ValueError for an unknown coding or bad bytes;
    TooLarge past `limit` bytes, found without ever holding more than `limit` + one chunk:
    a few bytes of zstd or gzip can claim gigabytes)."""
    if coding == IDENTITY:
        return body
    bound = limit if limit is not None else 1 << 62
    if coding == ZSTD:
        if zstandard is None:
            raise ValueError("zstd needs the zstandard package")
        try:
            with zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True) as reader:
                return _bounded(iter(lambda: reader.read(_CHUNK), b""), bound)
        except zstandard.ZstdError as exc:
            raise ValueError(f"bad zstd body: {exc}") from exc
    if coding in (GZIP, "x-gzip", DEFLATE):
        try:
            return _bounded(_zlib_chunks(body, coding), bound)
        except zlib.error as exc:
            raise ValueError(f"bad {coding} body: {exc}") from exc
    raise ValueError(f"unknown content coding {coding!r}")


def decode_received(body: bytes, content_encoding: str, limit: int) -> bytes | None:
    """An upstream body as it was before its `Content-Encoding` (the codings applied in the
    order listed, RFC 9110 §8.4), or None when one of them is not one this proxy decodes (br,
    compress, an unknown one): that body is kept as it came, header and all. ValueError for
    bytes that do not decode, TooLarge past `limit`."""
    codings = [name.strip().lower() for name in content_encoding.split(",") if name.strip()]
    codings = [name for name in codings if name != "identity"]
    if not all(name in DECODED for name in codings):
        return None
    for name in reversed(codings):
        body = decode(body, name, limit)
    return body


def _bounded(chunks: Iterator[bytes], limit: int) -> bytes:
    parts, size = [], 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"decodes to more than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _zlib_chunks(body: bytes, coding: str) -> Iterator[bytes]:
    """gzip (every member, as gzip.decompress reads them) or deflate (zlib-wrapped, or raw as
    some servers send it), at most _CHUNK bytes out per step."""
    wbits = 16 + zlib.MAX_WBITS
    if coding == DEFLATE:
        zlib_header = len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0
        wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
    data = body
    while data:
        inflater = zlib.decompressobj(wbits)
        chunk = inflater.decompress(data, _CHUNK)
        while chunk or inflater.unconsumed_tail:
            yield chunk
            chunk = inflater.decompress(inflater.unconsumed_tail, _CHUNK)
        if not inflater.eof:
            raise zlib.error("the stream ends early")
        data = inflater.unused_data if coding != DEFLATE else b""
        if not data.strip(b"\x00"):
            return  # zero padding after the last member, which gzip.decompress allows too


def accepts(accept_encoding: str | None, coding: str) -> bool:
    """Whether `Accept-Encoding` accepts `coding` (RFC 9110 §12.5.3): named with a q-value
    above 0, or covered by `*` with one above 0 when not named. No header: not accepted (the
    stored bytes are decoded for a client that says nothing, as curl and most tools do)."""
    if not accept_encoding:
        return False
    named: float | None = None
    star: float | None = None
    for member in accept_encoding.split(","):
        name, _, params = member.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        quality = 1.0
        for param in params.split(";"):
            match = _Q.match(param.strip())
            if match:
                quality = min(1.0, float(match.group(1)))
            elif param.strip():
                continue
        if name == coding or (coding == GZIP and name == "x-gzip"):
            named = quality if named is None else max(named, quality)
        elif name == "*":
            star = quality
    if named is not None:
        return named > 0
    return star is not None and star > 0


def encoded_etag(etag: str, coding: str) -> str:
    """The ETag of the encoded representation: the suffix `-<coding>` inside the quotes, weak
    kept weak (Apache's form; a strong ETag must differ between representations)."""
    weak = etag.startswith("W/")
    opaque = etag[2:] if weak else etag
    if len(opaque) >= 2 and opaque.startswith('"') and opaque.endswith('"'):
        return ("W/" if weak else "") + f'{opaque[:-1]}-{coding}"'
    return etag
