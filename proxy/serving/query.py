"""The URL role's query string (`?url=U&key=K&params=P`), read strictly."""

import functools
import re
from urllib.parse import unquote_to_bytes

from proxy.errors import BadRequest

QUERY_FIELDS = ("url", "key", "params")
PURGE_FIELDS = ("url", "key", "params", "tag", "soft")  # DELETE and PURGE take these
BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")  # a '%' not followed by two hex digits
# Queries up to this size are remembered (the last MEMO_QUERIES of them): a hit asks the same
# query again and again, and reading one is a fifth of the URL role's own work on an L1 hit.
MEMO_QUERY_BYTES = 2048
MEMO_QUERIES = 2048


def parse_query(raw: bytes) -> dict[str, str]:
    """The URL role's query fields, strictly: bad percent-encoding, invalid UTF-8 and a field
    given twice are 400 (two values for one field are how caches get poisoned)."""
    if len(raw) <= MEMO_QUERY_BYTES:
        return dict(_remembered(raw))  # a copy: the caller's to change
    return _parse(raw)


@functools.lru_cache(maxsize=MEMO_QUERIES)
def _remembered(raw: bytes) -> dict[str, str]:
    return _parse(raw)  # pure; a BadRequest is raised again each time, never remembered


def _parse(raw: bytes) -> dict[str, str]:
    if BAD_PERCENT.search(raw):
        raise BadRequest("the query has a '%' not followed by two hex digits; percent-encode "
                         "'%' as %25", error="bad query")
    fields: dict[str, str] = {}
    for part in raw.split(b"&"):
        if not part:
            continue
        name_raw, _, value_raw = part.partition(b"=")
        try:
            name = unquote_to_bytes(name_raw.replace(b"+", b" ")).decode()
            value = unquote_to_bytes(value_raw.replace(b"+", b" ")).decode()
        except UnicodeDecodeError as exc:
            raise BadRequest("the query is not valid UTF-8 once percent-decoded",
                             error="bad query") from exc
        if name in fields:
            raise BadRequest(f"'{name}' is given twice; give it once", error="bad query")
        fields[name] = value
    return fields
