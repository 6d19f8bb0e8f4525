"""Compressed storage: which bodies compress, the codings, and Accept-Encoding negotiation.

A body that compresses (text, JSON, JavaScript, CSS, XML, SVG) of at least COMPRESS_MIN_BYTES
is stored in one content coding: `zstd` (the `zstandard` package), or `gzip` from the standard
library where zstandard is absent. A client whose Accept-Encoding accepts that coding (RFC 9110
§12.5.3) gets the stored bytes as they are; any other gets them decoded.
"""

import gzip
import re
from collections.abc import Mapping

try:
    import zstandard
except ImportError:  # pragma: no cover - zstandard is pinned; gzip keeps working without it
    zstandard = None  # type: ignore[assignment]

IDENTITY = ""
GZIP = "gzip"
ZSTD = "zstd"
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


def decode(body: bytes, coding: str) -> bytes:
    """The body as the upstream sent it (ValueError for an unknown coding or bad bytes)."""
    if coding == IDENTITY:
        return body
    if coding == ZSTD:
        if zstandard is None:
            raise ValueError("zstd needs the zstandard package")
        try:
            return bytes(zstandard.ZstdDecompressor().decompress(body))
        except zstandard.ZstdError as exc:
            raise ValueError(f"bad zstd body: {exc}") from exc
    if coding == GZIP:
        try:
            return gzip.decompress(body)
        except (OSError, EOFError) as exc:
            raise ValueError(f"bad gzip body: {exc}") from exc
    raise ValueError(f"unknown content coding {coding!r}")


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
