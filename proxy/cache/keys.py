"""Request parsing for the URL role: the url, its params, and the Redis key they map to."""

import dataclasses
import hashlib
import json
import math
import re
import string
from urllib.parse import urlencode, urlsplit

from proxy.cache.target import DEFAULT_PORTS, Target, check, split
from proxy.errors import BadRequest, URITooLong

MAX_PARAMS_BYTES = 8192
MAX_PARAMS_ITEMS = 256
KEY_RULE = 2  # the derivation of keys from URLs (README, Key rules); a new rule, a new number

Pairs = list[tuple[str, str]]

# RFC 3986 §2.3: a percent-encoded unreserved character is equivalent to the character itself.
UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# What a path (§3.3: pchar and "/") or a query (§3.4: also "?") holds unencoded; any other
# character can only be sent percent-encoded (as UTF-8). A percent-encoding stays one.
_PATH_OTHER = re.compile(r"%([0-9A-Fa-f]{2})|[^A-Za-z0-9\-._~!$&'()*+,;=:@/]")
_QUERY_OTHER = re.compile(r"%([0-9A-Fa-f]{2})|[^A-Za-z0-9\-._~!$&'()*+,;=:@/?]")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_DOT_SEGMENT = re.compile(r"(?:^|/)\.\.?(?:/|$)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # C0 controls and DEL: never in a url or a key


def check_url(url: str, max_bytes: int) -> Target:
    """The parts of `url`; 400 for a URL that cannot be fetched as given, 414 for one over the
    limit."""
    if len(url.encode()) > max_bytes:
        raise URITooLong(f"url is longer than {max_bytes} bytes (MAX_URL_BYTES)")
    if _CONTROL.search(url):
        raise BadRequest("url contains control characters; percent-encode them", error="bad url")
    given = split(url)
    if _BAD_PERCENT.search(given.path) or _BAD_PERCENT.search(given.query):
        raise BadRequest("url has a '%' not followed by two hex digits; percent-encode '%' "
                         "as %25", error="bad url")
    return check(given)


def check_key(key: str, max_bytes: int) -> None:
    if key == "":
        raise BadRequest("key is empty; give a non-empty key or leave it out", error="bad key")
    if len(key.encode("utf-8", "surrogatepass")) > max_bytes:
        raise BadRequest(f"key is longer than {max_bytes} bytes (MAX_KEY_BYTES)", error="bad key")
    if _CONTROL.search(key):
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


def _encode(match: re.Match[str]) -> str:
    if match.group(1) is None:  # a character a URI cannot hold raw: its UTF-8, encoded
        return "".join(f"%{byte:02X}" for byte in match.group(0).encode())
    char = chr(int(match.group(1), 16))
    return char if char in UNRESERVED else f"%{match.group(1).upper()}"


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, on a path that starts with "/"."""
    if not _DOT_SEGMENT.search(path):
        return path
    output: list[str] = []  # segments, each with its leading "/"
    for segment in path.split("/")[1:]:
        if segment == "..":
            if output:
                output.pop()
        elif segment != ".":
            output.append("/" + segment)
    if path.endswith(("/.", "/..")):
        output.append("/")  # "/a/b/.." is "/a/", not "/a"
    return "".join(output) or "/"


def checked_target(given: Target, params: Pairs, max_bytes: int) -> Target:
    """`sent(given, params)`; 414 when params take it over `max_bytes`."""
    target = sent(given, params)
    if len(target.url.encode()) > max_bytes:
        raise URITooLong(f"url is longer than {max_bytes} bytes (MAX_URL_BYTES)")
    return target


def sent(given: Target, params: Pairs) -> Target:
    """The target sent upstream: `given` with `params` appended to its own query (order kept),
    in the normal form of RFC 3986 §6.2.2-6.2.3: percent-encodings upper-cased, those of
    unreserved characters decoded, characters a URI cannot hold raw (non-ASCII, space,
    quote...) encoded as UTF-8, dot-segments removed, an empty path sent as "/", an empty query
    and the fragment dropped. requests sends such a URL's path and query byte for byte (it would
    otherwise re-quote them, remove dot-segments and drop a bare "?" itself), so its `url` is
    the exact request-target the origin receives, and its `canonical` the identity of what is
    fetched: scheme and host lower-cased, the default port dropped, and the query's
    "&"-separated items sorted as they are sent (still encoded, so "+" and "%20", ";" and
    "%3B", "a=b=c" and "a=b%3Dc", "flag" and "flag=" stay apart)."""
    query = given.query
    if params:
        extra = urlencode(params)  # unreserved, %XX, "+", "=" and "&" only: already normal
        query = f"{query}&{extra}" if query else extra
    path = _remove_dot_segments(_PATH_OTHER.sub(_encode, given.path) or "/")
    return dataclasses.replace(given, path=path, query=_QUERY_OTHER.sub(_encode, query))


def target_url(url: str, params: Pairs) -> str:
    """`sent` for a URL string: the URL sent upstream."""
    return sent(split(url), params).url


def canonical_url(url: str, params: Pairs = ()) -> str:  # type: ignore[assignment]
    """`sent(...).canonical` for a URL string: the identity of what is fetched."""
    return sent(split(url), list(params)).canonical


def url_digest(canonical: str) -> str:
    # The rule's number goes into the hash: entries derived by the first rule (which decoded
    # the query and so merged URLs sent differently) are misses under this one, never hits.
    return hashlib.sha256(f"{KEY_RULE} {canonical}".encode()).hexdigest()


def redis_key(prefix: str, key: str | None, canonical: str) -> str:
    """`prefix + key` for an explicit key, else `prefix + sha256("2 " + canonical url)`."""
    return prefix + (key if key is not None else url_digest(canonical))


def origin_of(url: str) -> str:
    """RFC 6454 §4: `scheme://host:port` of an absolute URL, the port always written, no user
    information (what scopes a purge tag, proxy.store.tags); ValueError for a bad port."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    port = parts.port or DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def same_origin(url: str, other: str) -> bool:
    """RFC 6454 §5: the same scheme, host and port (the default port written or not)."""
    first, second = urlsplit(url), urlsplit(other)
    try:
        return ((first.scheme.lower(), (first.hostname or "").lower(),
                 first.port or DEFAULT_PORTS.get(first.scheme.lower()))
                == (second.scheme.lower(), (second.hostname or "").lower(),
                    second.port or DEFAULT_PORTS.get(second.scheme.lower())))
    except ValueError:  # a port that is not a number
        return False
