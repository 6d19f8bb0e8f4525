"""The URL role's query string (`?url=U&key=K&params=P`), read strictly."""

import re
from urllib.parse import unquote_to_bytes

from proxy.errors import BadRequest

QUERY_FIELDS = ("url", "key", "params")
PURGE_FIELDS = ("url", "key", "params", "tag", "soft")  # DELETE and PURGE take these
BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")  # a '%' not followed by two hex digits


def parse_query(raw: bytes) -> dict[str, str]:
    """The URL role's query fields, strictly: bad percent-encoding, invalid UTF-8 and a field
    given twice are 400 (two values for one field are how caches get poisoned)."""
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
