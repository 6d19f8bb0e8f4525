"""Cache-Control (RFC 9111 §5.2) and its targeted forms (RFC 9213), parsed as lists of members:
quoted arguments kept whole (commas and all), names case-insensitive, repeats remembered."""

import re
from collections.abc import Mapping

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
MAX_DELTA = 2**31  # §1.2.2: a larger delta-seconds is taken as this
# RFC 9213 §2.1: fields targeted at this cache, most specific first, then Cache-Control.
TARGETED_FIELDS = ("redisproxy-cache-control", "cdn-cache-control")

Directives = dict[str, list[str | None]]


def parse(value: str | None) -> Directives:
    """`max-age=60, no-cache="a, b"` -> {'max-age': ['60'], 'no-cache': ['a, b']}; a malformed
    member is skipped up to the next comma."""
    found: Directives = {}
    text, at = value or "", 0
    while at < len(text):
        while at < len(text) and text[at] in " \t,":
            at += 1
        name = _TOKEN.match(text, at)
        if name is None:
            at = _next_comma(text, at)
            continue
        at = name.end()
        while at < len(text) and text[at] in " \t":
            at += 1
        argument: str | None = None
        if at < len(text) and text[at] == "=":
            at += 1
            while at < len(text) and text[at] in " \t":
                at += 1
            if at < len(text) and text[at] == '"':
                argument, at = _quoted(text, at)
            elif token := _TOKEN.match(text, at):
                argument, at = token.group(), token.end()
            else:
                argument = ""
        while at < len(text) and text[at] in " \t":
            at += 1
        if at < len(text) and text[at] != ",":
            at = _next_comma(text, at)  # trailing junk: the member is malformed
            continue
        found.setdefault(name.group().lower(), []).append(argument)
    return found


def _quoted(text: str, at: int) -> tuple[str, int]:
    """The quoted-string starting at `at` (RFC 9110 §5.6.4), unescaped, and where it ends."""
    chars, at = [], at + 1
    while at < len(text) and text[at] != '"':
        if text[at] == "\\" and at + 1 < len(text):
            at += 1
        chars.append(text[at])
        at += 1
    return "".join(chars), at + 1


def _next_comma(text: str, at: int) -> int:
    quoted = False
    while at < len(text) and (quoted or text[at] != ","):
        if text[at] == '"':
            quoted = not quoted
        at += 1
    return at


def delta_seconds(directives: Directives, name: str) -> float | None:
    """The directive's delta-seconds (token or quoted form); None when absent. A value that is not
    1*DIGIT (`-1`, `1.5`, empty), or repeats that disagree, is -1: invalid, so stale (§4.2.1)."""
    values = directives.get(name)
    if not values:
        return None
    if len(set(values)) > 1 or values[0] is None or not values[0].isdigit() \
            or not values[0].isascii():
        return -1.0
    return float(min(int(values[0]), MAX_DELTA))


def field_names(directives: Directives, name: str) -> tuple[bool, frozenset[str]]:
    """`no-cache` / `private`: (bare, the header names listed in its argument, lower-case)."""
    values = directives.get(name, [])
    bare = any(value is None for value in values)
    names = frozenset(part.strip().lower() for value in values if value
                      for part in value.split(",") if part.strip())
    return bare or (bool(values) and not names), names


def response_directives(headers: Mapping[str, str]) -> Directives:
    """The directives that govern this cache: the first targeted field with a valid, non-empty
    value (RFC 9213 §2.1; then Cache-Control and Expires are ignored), else Cache-Control."""
    for name in TARGETED_FIELDS:
        parsed = parse(headers.get(name))
        if parsed:
            parsed["\0targeted"] = [name]  # Expires is ignored too
            return parsed
    return parse(headers.get("cache-control"))


def request_directives(headers: Mapping[str, str]) -> Directives:
    """A request's Cache-Control; `Pragma: no-cache` counts as `no-cache` only without one
    (RFC 9111 §5.4)."""
    if "cache-control" in headers:
        return parse(headers["cache-control"])
    pragma = parse(headers.get("pragma"))
    return {"no-cache": [None]} if "no-cache" in pragma else {}
