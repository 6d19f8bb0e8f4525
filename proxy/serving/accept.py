"""`/get/<key>`'s two forms chosen by the client's Accept (RFC 9110 §12.5.1): pure."""

import functools

JSON = "application/json"
RAW = "application/octet-stream"


@functools.lru_cache(maxsize=256)
def wants_json(accept: str | None, default_json: bool) -> bool:
    """Whether `/get/<key>` answers in JSON for this Accept field value. The form with the higher
    quality wins; `q=0` means "not acceptable" (§12.4.2); names are case-insensitive (§8.3.1);
    the most specific range names a type's quality (§12.5.1: `application/json;q=0, */*` refuses
    JSON). A tie, no Accept, or an Accept that admits neither: the GET_FORMAT default (a server
    may disregard an Accept it cannot satisfy, §12.5.1)."""
    if accept is None or not accept.strip():
        return default_json
    json_q, raw_q = _quality(accept, JSON), _quality(accept, RAW)
    if json_q == raw_q:
        return default_json
    return json_q > raw_q


def _quality(accept: str, media_type: str) -> float:
    """The quality `accept` gives `media_type`: that of its most specific matching range, else 0."""
    main = media_type.split("/")[0]
    best, specificity = 0.0, -1
    for member in accept.split(","):
        range_, *params = (part.strip() for part in member.split(";"))
        range_ = range_.lower()
        level = 2 if range_ == media_type else 1 if range_ == main + "/*" else 0 if range_ == "*/*" else -1
        if level <= specificity:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    quality = 0.0  # a malformed weight: the range is not taken as acceptable
        best, specificity = quality, level
    return best
