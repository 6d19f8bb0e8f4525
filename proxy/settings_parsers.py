"""The settings table's value parsers (pure): each takes the raw text and returns the value or
raises ValueError; `.expected` says what it takes, `.show` (when present) writes a value back
as the docs state it. load_env.py's table names them."""

import ipaddress
import os
import re
from collections.abc import Callable
from urllib.parse import urlsplit

# Redis's own size units (redis.conf): k = 1000, kb = 1024, and so on.
SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2,
              "g": 1000**3, "gb": 1024**3}


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError
        return value
    parse.expected = ("an integer" + (f" from {low}" if low is not None else "")  # type: ignore[attr-defined]
                      + (f" to {high}" if high is not None else ""))
    return parse


def workers(raw: str) -> int:
    """HTTP_WORKERS: a count, or `auto`: one per core (nginx's `worker_processes auto`)."""
    if raw.strip().lower() == "auto":
        return os.cpu_count() or 1
    return integer(1)(raw)


workers.expected = "an integer from 1, or auto (one per core)"  # type: ignore[attr-defined]


def seconds(positive: bool) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if value != value or value in (float("inf"),) or value < 0 or (positive and value == 0):
            raise ValueError
        return value
    parse.expected = ("a positive" if positive else "a non-negative") + " number of seconds"  # type: ignore[attr-defined]
    return parse


def size(raw: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([a-z]*)", raw.strip().lower())
    if not match or match.group(2) not in SIZE_UNITS:
        raise ValueError
    return int(match.group(1)) * SIZE_UNITS[match.group(2)]


size.expected = "a size in bytes, optionally with a Redis unit (64mb, 512kb, 1gb)"  # type: ignore[attr-defined]


def show_size(value: int) -> str:
    for unit in ("gb", "mb", "kb"):
        if value and value % SIZE_UNITS[unit] == 0:
            return f"{value // SIZE_UNITS[unit]}{unit}"
    return str(value)


size.show = show_size  # type: ignore[attr-defined]


def boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError


boolean.expected = "true or false"  # type: ignore[attr-defined]


def choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.strip().lower() not in choices:
            raise ValueError
        return raw.strip().lower()
    parse.expected = "one of " + ", ".join(choices)  # type: ignore[attr-defined]
    return parse


def fraction(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 1:  # NaN fails both
        raise ValueError
    return value


fraction.expected = "a number from 0 to 1"  # type: ignore[attr-defined]


def words(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


words.expected = "a comma-separated list"  # type: ignore[attr-defined]


def hosts(raw: str) -> tuple[str, ...]:
    """Host names or `*.suffix` patterns; a URL, a port or a bare `*` is a mistake worth stopping for."""
    hosts = words(raw)
    for host in hosts:
        if not re.fullmatch(r"(\*\.)?[^\s*:/@\[\]]+", host) or host.startswith(".") or ".." in host:
            raise ValueError
    return hosts


hosts.expected = "a comma-separated list of host names or *.suffix patterns (no scheme, port or path)"  # type: ignore[attr-defined]


def ports(raw: str) -> tuple[int, ...]:
    ports = tuple(int(part) for part in words(raw))
    if any(not 1 <= port <= 65535 for port in ports):
        raise ValueError
    return ports


ports.expected = "a comma-separated list of ports from 1 to 65535"  # type: ignore[attr-defined]


def networks(raw: str) -> tuple[str, ...]:
    """Addresses or CIDR networks (`10.0.0.0/8`, `::1`), each checked here so a typo stops the
    start instead of silently trusting nothing."""
    listed = words(raw)
    for word in listed:
        ipaddress.ip_network(word, strict=False)  # ValueError names nothing secret
    return listed


networks.expected = "a comma-separated list of IP addresses or CIDR networks"  # type: ignore[attr-defined]


def addresses(raw: str) -> tuple[str, ...]:
    """`host:port` seeds (Redis Cluster nodes, Sentinels); an IPv6 host goes in brackets."""
    listed = words(raw)
    for word in listed:
        match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^\s:/@\[\]]+):(\d+)", word)
        if not match or not 1 <= int(match.group(2)) <= 65535:
            raise ValueError
    return listed


addresses.expected = "a comma-separated list of host:port (port 1 to 65535)"  # type: ignore[attr-defined]


def statuses(raw: str) -> frozenset[int]:
    """`2xx,404` -> every status from 200 to 299, and 404."""
    statuses: set[int] = set()
    for word in words(raw):
        if re.fullmatch(r"[1-5]xx", word.lower()):
            base = int(word[0]) * 100
            statuses.update(range(base, base + 100))
        elif re.fullmatch(r"[1-5]\d\d", word):
            statuses.add(int(word))
        else:
            raise ValueError
    return frozenset(statuses)


statuses.expected = "a comma-separated list of statuses or classes, like 2xx,404"  # type: ignore[attr-defined]


def show_statuses(statuses: frozenset[int]) -> str:
    words, rest = [], set(statuses)
    for base in range(100, 600, 100):
        if set(range(base, base + 100)) <= rest:
            words.append(f"{base // 100}xx")
            rest -= set(range(base, base + 100))
    return ",".join(words + [str(status) for status in sorted(rest)])


statuses.show = show_statuses  # type: ignore[attr-defined]


def fraction_below_one(raw: str) -> float:
    value = float(raw)
    if not 0 <= value < 1:  # also refuses nan
        raise ValueError
    return value


fraction_below_one.expected = "a fraction from 0 up to (not including) 1"  # type: ignore[attr-defined]


def header_names(raw: str) -> tuple[str, ...]:
    """HTTP field names (RFC 9110 §5.1 tokens), comma-separated; empty = none."""
    names = words(raw)
    if any(not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name) for name in names):
        raise ValueError
    return names


header_names.expected = "a comma-separated list of header names"  # type: ignore[attr-defined]


def text(raw: str) -> str:
    return raw


text.expected = "text"  # type: ignore[attr-defined]


def origin(raw: str) -> str:
    """`http://host[:port][/base]`: where reverse-proxy mode sends the site's requests."""
    parts = urlsplit(raw.strip())
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.query
            or "@" in parts.netloc or "?" in raw or "#" in raw):
        raise ValueError
    parts.port  # noqa: B018 - raises ValueError for a bad port
    return raw.strip().rstrip("/")


origin.expected = ("an http:// or https:// URL with a host and optionally a port and a base path, "  # type: ignore[attr-defined]
                    "no user, query or fragment")


class Invalid(ValueError):
    """A bad value whose message names the part that is wrong (a pair of a list), so the
    settings error can say which; the message never holds more than that part."""


# An ORIGINS host: a DNS name (RFC 1123 labels; `_` tolerated as resolvers do), optionally
# `*.` before it for its subdomains, or an IPv6 literal in brackets; lower case, no port.
_SITE_HOST = re.compile(r"(\*\.)?[a-z0-9_](?:[a-z0-9_\-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_\-]*[a-z0-9_])?)*"
                        r"|\[[0-9a-f:.]+\]")


def site_host(raw: str) -> str:
    """A Host as ORIGINS matches it: lower-cased (DNS names are case-insensitive, RFC 4343),
    one trailing dot dropped (`a.example.` is the fully qualified `a.example`)."""
    name = raw.strip().lower()
    return name[:-1] if name.endswith(".") and not name.endswith("..") else name


def origins(raw: str) -> tuple[tuple[str, str], ...]:
    """`a.example=http://127.0.0.1:8081,*.b.example=http://127.0.0.1:8082`: (host, origin URL)
    pairs in the order given, each URL as ORIGIN_URL's (`origin`); a host given twice is a
    mistake (which of the two would be meant?)."""
    pairs: list[tuple[str, str]] = []
    for word in words(raw):
        name, equals, url = word.partition("=")
        host = site_host(name)
        if not equals or not _SITE_HOST.fullmatch(host):
            raise Invalid(f"{word!r}: expected HOST=URL, HOST a host name or *.suffix without a port")
        try:
            pairs.append((host, origin(url)))
        except ValueError:
            raise Invalid(f"{word!r}: expected the URL to be {origin.expected}") from None  # type: ignore[attr-defined]
        if host in (seen for seen, _ in pairs[:-1]):
            raise Invalid(f"{word!r}: {host} is given twice; give each host one origin")
    if not pairs:
        raise ValueError
    return tuple(pairs)


origins.expected = ("comma-separated HOST=URL pairs (HOST a host name, or *.suffix for its "  # type: ignore[attr-defined]
                    "subdomains; URL as ORIGIN_URL's)")
origins.show = lambda pairs: ",".join(f"{host}={url}" for host, url in pairs)  # type: ignore[attr-defined]


def host(raw: str) -> str:
    """`www.example.com[:port]` (RFC 9110 §7.2 uri-host, an IPv6 literal in brackets): a Host
    value sent as it is, so nothing that could split or bend a header."""
    value = raw.strip()
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~]+)(?::(\d{1,5}))?", value)
    if not match or (match.group(2) is not None and not 1 <= int(match.group(2)) <= 65535):
        raise ValueError
    return value


host.expected = "a host name, optionally with :port (no scheme or path)"  # type: ignore[attr-defined]


def prefix(raw: str) -> str:
    """`/_proxy`: a path of one or more segments, where the proxy's own routes answer."""
    prefix = raw.strip().rstrip("/")
    if not re.fullmatch(r"(/[A-Za-z0-9\-._~!$&'()*+,;=:@]+)+", prefix) or "/." in prefix:
        raise ValueError
    return prefix


prefix.expected = "a path like /_proxy (letters, digits and -._~!$&'()*+,;=:@; not /)"  # type: ignore[attr-defined]


def optional_seconds(raw: str) -> float | None:
    return seconds(positive=True)(raw)


optional_seconds.expected = "a positive number of requests per second"  # type: ignore[attr-defined]
