"""Request parsing for the URL role: the url, its params, and the Redis key they map to."""

import hashlib
import json
import math
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from proxy.errors import BadRequest, URITooLong

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_PARAMS_BYTES = 8192
MAX_PARAMS_ITEMS = 256

Pairs = list[tuple[str, str]]


def check_url(url: str, max_bytes: int) -> None:
    """400 for a URL that cannot be fetched as given, 414 for one over the limit."""
    if len(url.encode()) > max_bytes:
        raise URITooLong(f"url is longer than {max_bytes} bytes (MAX_URL_BYTES)")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise BadRequest("url contains control characters; percent-encode them", error="bad url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise BadRequest(f"url is malformed: {exc}", error="bad url") from exc
    if parts.scheme.lower() not in DEFAULT_PORTS:
        raise BadRequest("url must be an absolute http:// or https:// URL", error="bad url")
    if not parts.hostname:
        raise BadRequest("url has no host; give an absolute URL like https://example.com/path",
                         error="bad url")


def check_key(key: str, max_bytes: int) -> None:
    if key == "":
        raise BadRequest("key is empty; give a non-empty key or leave it out", error="bad key")
    if len(key.encode("utf-8", "surrogatepass")) > max_bytes:
        raise BadRequest(f"key is longer than {max_bytes} bytes (MAX_KEY_BYTES)", error="bad key")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        raise BadRequest("key contains control characters", error="bad key")


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError  # 1e999 parses as infinity
    if isinstance(value, (str, int, float)):
        return value if isinstance(value, str) else json.dumps(value)
    raise ValueError


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def parse_params(raw: str | None) -> Pairs:
    """`params`: a JSON object of strings, numbers, booleans, or lists of those."""
    if raw is None or raw == "":
        return []
    detail = ('params must be a JSON object whose values are strings, numbers, booleans '
              'or lists of those, like {"q": "redis", "page": 2}')
    if len(raw.encode()) > MAX_PARAMS_BYTES:
        raise BadRequest(f"params is longer than {MAX_PARAMS_BYTES} bytes", error="bad params")
    try:
        # NaN and Infinity are not JSON (RFC 8259 §6); deep nesting exhausts the recursion
        # limit before the size cap is reached.
        doc = json.loads(raw, parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(detail, error="bad params") from exc
    if not isinstance(doc, dict):
        raise BadRequest(detail, error="bad params")
    pairs: Pairs = []
    try:
        for name, value in doc.items():
            for item in (value if isinstance(value, list) else [value]):
                pairs.append((name, _scalar(item)))
    except ValueError as exc:
        raise BadRequest(detail, error="bad params") from exc
    if len(pairs) > MAX_PARAMS_ITEMS:
        raise BadRequest(f"params has more than {MAX_PARAMS_ITEMS} values", error="bad params")
    return pairs


def target_url(url: str, params: Pairs) -> str:
    """The URL sent upstream: `url` with `params` appended to its own query, order kept."""
    if not params:
        return url
    parts = urlsplit(url)
    extra = urlencode(params)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def canonical_url(url: str, params: Pairs = ()) -> str:  # type: ignore[assignment]
    """Scheme and host lower-cased, default port dropped, fragment dropped, whole query sorted."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port in (None, DEFAULT_PORTS.get(scheme)) else f"{host}:{parts.port}"
    if parts.username is not None:
        netloc = f"{parts.username}{':' + parts.password if parts.password else ''}@{netloc}"
    query = sorted(parse_qsl(parts.query, keep_blank_values=True) + list(params))
    return urlunsplit((scheme, netloc, parts.path or "/", urlencode(query), ""))


def url_digest(canonical: str) -> str:
    return hashlib.sha256(canonical.encode()).hexdigest()


def redis_key(prefix: str, key: str | None, canonical: str) -> str:
    """`prefix + key` for an explicit key, else `prefix + sha256(canonical url)`."""
    return prefix + (key if key is not None else url_digest(canonical))
