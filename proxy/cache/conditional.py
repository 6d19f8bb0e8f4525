"""The client's side of a cached exchange, pure: its Cache-Control request directives (RFC 9111
§5.2.1), its conditionals (RFC 9110 §13) and its Range (RFC 9110 §14) applied to an answer."""

import dataclasses
import json
import math
import re
from collections.abc import Mapping

from proxy.cache import directives as cc
from proxy.cache.http_dates import parse_http_date
from proxy.cache.result import CacheResult

# RFC 9110 §15.4.5: what a 304 carries of the 200 it stands for (plus the cache's own fields).
NOT_MODIFIED_FIELDS = ("cache-control", "content-location", "date", "etag", "expires", "vary")
_RANGE = re.compile(r"bytes\s*=\s*(\d*)\s*-\s*(\d*)", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Demands:
    """What a request's Cache-Control (or `Pragma: no-cache`, §5.4) asks of this cache."""

    no_store: bool = False  # §5.2.1.5: the answer is not stored (nor, here, taken from the cache)
    revalidate: bool = False  # no-cache (§5.2.1.4), or max-age=0: a stored answer only once validated
    max_age: float | None = None  # §5.2.1.1: no stored answer older than this
    max_stale: float = 0.0  # §5.2.1.2: seconds past freshness accepted (inf: any)
    min_fresh: float = 0.0  # §5.2.1.3: seconds of freshness it must still have
    only_if_cached: bool = False  # §5.2.1.7: a stored answer or 504, never upstream

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> "Demands":
        directives = cc.request_directives(headers)
        max_age = cc.delta_seconds(directives, "max-age")
        if max_age is not None and max_age < 0:
            max_age = 0.0  # an invalid max-age is taken at its strictest
        stale = directives.get("max-stale")
        if stale is None:
            max_stale = 0.0
        elif stale[0] is None:
            max_stale = math.inf  # `max-stale` with no value: any staleness
        else:
            max_stale = max(0.0, cc.delta_seconds(directives, "max-stale") or 0.0)
        min_fresh = max(0.0, cc.delta_seconds(directives, "min-fresh") or 0.0)
        return cls(no_store="no-store" in directives,
                   revalidate="no-cache" in directives or max_age == 0,
                   max_age=max_age, max_stale=max_stale, min_fresh=min_fresh,
                   only_if_cached="only-if-cached" in directives)

    def fresh_enough(self, age: float, remaining: float) -> bool:
        """A fresh stored answer the request accepts without revalidation."""
        return (not self.revalidate and remaining - self.min_fresh > 0
                and (self.max_age is None or age <= self.max_age))

    def stale_accepted(self, age: float, remaining: float) -> bool:
        """A stale stored answer the request accepts as it is (max-stale)."""
        return (not self.revalidate and self.max_stale > 0 and remaining <= 0
                and -remaining <= self.max_stale
                and (self.max_age is None or age <= self.max_age))


def _etags(value: str) -> list[str]:
    return [tag.strip() for tag in re.findall(r'\s*((?:W/)?"[^"]*"|\*)\s*(?:,|$)', value)]


def _weak_match(a: str, b: str) -> bool:
    """RFC 9110 §8.8.3.2 weak comparison: the opaque tags equal, W/ or not."""
    return a.removeprefix("W/") == b.removeprefix("W/")


def not_modified(method: str, headers: Mapping[str, str], status: int,
                 response: Mapping[str, str]) -> bool:
    """RFC 9110 §13.2.2: whether a GET/HEAD answered `status` with `response` headers is a 304.
    If-None-Match first (weak comparison; `*` matches any); If-Modified-Since only without it."""
    if method not in ("GET", "HEAD") or status != 200:
        return False
    if "if-none-match" in headers:
        etag = response.get("etag")
        wanted = _etags(headers["if-none-match"])
        return "*" in wanted or (etag is not None and any(_weak_match(tag, etag) for tag in wanted))
    since = parse_http_date(headers.get("if-modified-since"))
    modified = parse_http_date(response.get("last-modified"))
    return since is not None and modified is not None and modified <= since


def respond(method: str, headers: Mapping[str, str], result: CacheResult) -> CacheResult:
    """The answer to this client: a 304 when its conditional says it has it, a 206 of the
    one range it asked of a full 200, else `result` as it is."""
    if not_modified(method, headers, result.status, result.headers):
        kept = {name: value for name, value in result.headers.items() if name in NOT_MODIFIED_FIELDS}
        return dataclasses.replace(result, status=304, body=b"", headers=kept)
    if "range" in headers and method == "GET" and result.status == 200 \
            and _if_range_holds(headers.get("if-range"), result.headers):
        return _ranged(headers["range"], result)
    return result


def _if_range_holds(if_range: str | None, response: Mapping[str, str]) -> bool:
    """RFC 9110 §13.1.5: the range applies when If-Range is absent, or names this representation
    (a strong ETag, or a date equal to Last-Modified)."""
    if if_range is None:
        return True
    if if_range.startswith('"'):
        return response.get("etag") == if_range
    date = parse_http_date(if_range)
    return date is not None and date == parse_http_date(response.get("last-modified"))


def _ranged(value: str, result: CacheResult) -> CacheResult:
    """One byte range: 206 with Content-Range (RFC 9110 §14.4); several ranges, or a Range that
    is not bytes, get the whole 200 (a server may ignore Range); none satisfiable: 416."""
    if "," in value:
        return result
    match = _RANGE.fullmatch(value.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return result
    size = len(result.body)
    first, last = match.group(1), match.group(2)
    if first == "":  # a suffix: the last N bytes
        start, end = max(0, size - int(last)), size - 1
        if int(last) == 0:
            start = size
    else:
        start, end = int(first), min(size - 1, int(last)) if last else size - 1
        if last and int(last) < start:
            return result  # invalid: ignored (§14.1.1)
    headers = dict(result.headers)
    if start >= size:
        body = json.dumps({"error": "range not satisfiable", "detail": (
            f"the response has {size} bytes; ask for a range that starts before byte {size}, "
            "or send no Range")}).encode()
        return dataclasses.replace(result, status=416, body=body, headers={
            "content-type": "application/json", "content-range": f"bytes */{size}"})
    headers["content-range"] = f"bytes {start}-{end}/{size}"
    return dataclasses.replace(result, status=206, body=result.body[start:end + 1], headers=headers)
