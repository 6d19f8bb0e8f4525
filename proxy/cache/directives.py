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
        parsed = targeted(headers.get(name))
        if parsed is not None:
            parsed["\0targeted"] = [name]  # Expires is ignored too
            return parsed
    return parse(headers.get("cache-control"))


# RFC 9213 §2.1: the types a directive's value is inferred to have in a targeted field.
_INTEGER = frozenset({"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"})
_TRUE_OR_STRING = frozenset({"no-cache", "private"})
_TRUE = frozenset({"no-store", "must-revalidate", "proxy-revalidate", "public", "no-transform",
                   "must-understand", "immutable"})


def targeted(value: str | None) -> Directives | None:
    """A targeted field (RFC 9213 §2.1) as directives, or None when it is to be ignored: absent,
    empty, not a Structured Fields Dictionary (RFC 8941 §4.2.2: `max-age=60, &&&`, `Max-Age=60`,
    `max-age =60`), or a known directive with a value of the wrong type (`max-age="60"`,
    `max-age=1.5`, `max-age=-1`, `no-store=?0`). Parameters are ignored."""
    if not value:
        return None
    try:
        members = structured_dictionary(value)
    except ValueError:
        return None
    found: Directives = {}
    for name, item in members.items():
        if name in _INTEGER and not (type(item) is int and item >= 0) \
                or name in _TRUE_OR_STRING and not (item is True or type(item) is str) \
                or name in _TRUE and item is not True:
            return None  # "SHOULD NOT consume values that violate these inferred constraints"
        found[name] = [str(item) if type(item) in (int, str) else None]
    return found or None


class _Token(str):
    """An sf-token (a plain str is an sf-string)."""


_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_SF_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_SF_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]*)?")
_SF_BYTES = re.compile(r":[A-Za-z0-9+/=]*:")


def structured_dictionary(text: str) -> dict[str, object]:
    """RFC 8941 §4.2.2: a Dictionary field value, member name -> its item's value (parameters
    dropped; an inner list as a list); raise ValueError where the RFC's algorithm fails."""
    if not text.isascii():
        raise ValueError("not ASCII")
    at, end = len(text) - len(text.lstrip(" ")), len(text.rstrip(" "))
    members: dict[str, object] = {}
    while at < end:
        key = _SF_KEY.match(text, at, end)
        if key is None:
            raise ValueError("bad key")
        at = key.end()
        item: object
        if at < end and text[at] == "=":
            if at + 1 < end and text[at + 1] == "(":
                item, at = _sf_inner_list(text, at + 2, end)
            else:
                item, at = _sf_bare_item(text, at + 1, end)
        else:
            item = True
        members[key.group()] = item  # a repeated key: the last one wins
        at = _sf_parameters(text, at, end)
        while at < end and text[at] in " \t":
            at += 1
        if at < end:
            if text[at] != ",":
                raise ValueError("expected ','")
            at += 1
            while at < end and text[at] in " \t":
                at += 1
            if at == end:
                raise ValueError("trailing ','")
    return members


def _sf_inner_list(text: str, at: int, end: int) -> tuple[list[object], int]:
    items: list[object] = []
    while at < end:
        while at < end and text[at] == " ":
            at += 1
        if at < end and text[at] == ")":
            return items, at + 1
        item, at = _sf_bare_item(text, at, end)
        items.append(item)
        at = _sf_parameters(text, at, end)
        if at < end and text[at] not in " )":
            raise ValueError("bad inner list")
    raise ValueError("unterminated inner list")


def _sf_parameters(text: str, at: int, end: int) -> int:
    while at < end and text[at] == ";":
        at += 1
        while at < end and text[at] == " ":
            at += 1
        key = _SF_KEY.match(text, at, end)
        if key is None:
            raise ValueError("bad parameter key")
        at = key.end()
        if at < end and text[at] == "=":
            _value, at = _sf_bare_item(text, at + 1, end)
    return at


def _sf_bare_item(text: str, at: int, end: int) -> tuple[object, int]:
    """RFC 8941 §4.2.3.1: an Integer or Decimal, String, Token, Byte Sequence or Boolean."""
    first = text[at] if at < end else ""
    if first == "-" or first.isdigit():
        number = _SF_NUMBER.match(text, at, end)
        if number is None:
            raise ValueError("bad number")
        whole, _, fraction = number.group().lstrip("-").partition(".")
        if number.group(1) is None:
            if len(whole) > 15:
                raise ValueError("integer too long")
            return int(number.group()), number.end()
        if len(whole) > 12 or not 1 <= len(fraction) <= 3:
            raise ValueError("bad decimal")
        return float(number.group()), number.end()
    if first == '"':
        chars, at = [], at + 1
        while at < end:
            char = text[at]
            if char == "\\":
                if at + 1 >= end or text[at + 1] not in '"\\':
                    raise ValueError("bad escape")
                chars.append(text[at + 1])
                at += 2
            elif char == '"':
                return "".join(chars), at + 1
            elif not " " <= char <= "~":
                raise ValueError("bad string character")
            else:
                chars.append(char)
                at += 1
        raise ValueError("unterminated string")
    if token := _SF_TOKEN.match(text, at, end):
        return _Token(token.group()), token.end()
    if byte_sequence := _SF_BYTES.match(text, at, end):
        return bytes(byte_sequence.group()[1:-1], "ascii"), byte_sequence.end()
    if first == "?" and text[at + 1:at + 2] in ("0", "1"):
        return text[at + 1] == "1", at + 2
    raise ValueError("bad item")


def request_directives(headers: Mapping[str, str]) -> Directives:
    """A request's Cache-Control; `Pragma: no-cache` counts as `no-cache` only without one
    (RFC 9111 §5.4)."""
    if "cache-control" in headers:
        return parse(headers["cache-control"])
    pragma = parse(headers.get("pragma"))
    return {"no-cache": [None]} if "no-cache" in pragma else {}
