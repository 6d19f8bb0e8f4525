"""The upstream URL as one value: split once, then read by the key derivation, the upstream
policy and the fetcher instead of each splitting the string again."""

import dataclasses
from urllib.parse import urlsplit, urlunsplit

from proxy.errors import BadRequest

DEFAULT_PORTS = {"http": 80, "https": 443}
SCHEME_RULE = "url must be an absolute http:// or https:// URL"
HOST_RULE = "url has no host; give an absolute URL like https://example.com/path"


@dataclasses.dataclass(frozen=True)
class Target:
    """A URL's parts as urlsplit reads them (the fragment dropped). `netloc` is as given (user
    info, host, port); `host` is urlsplit's hostname (lower case, no brackets) until the policy
    replaces it with the normalised name it checked."""

    scheme: str  # lower case
    netloc: str
    host: str
    port: int | None  # as written; None: the scheme's default
    path: str
    query: str

    @property
    def url(self) -> str:
        """The URL string: what is sent, what entries and hops record."""
        return urlunsplit((self.scheme, self.netloc, self.path, self.query, ""))

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS.get(self.scheme, 0)

    @property
    def canonical(self) -> str:
        """The identity of what is fetched (keys.py): scheme and host lower-cased, the default
        port dropped, and the query's "&"-separated items sorted as they are sent."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = host if self.port in (None, DEFAULT_PORTS.get(self.scheme)) else f"{host}:{self.port}"
        if "@" in self.netloc:
            user, _, password = self.netloc.rpartition("@")[0].partition(":")
            netloc = f"{user}{':' + password if password else ''}@{netloc}"
        query = "&".join(sorted(self.query.split("&"))) if self.query else ""
        return urlunsplit((self.scheme, netloc, self.path, query, ""))

    @property
    def host_port(self) -> str:
        """`host:port`, the port always given, an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.effective_port}"


def split(url: str) -> Target:
    """`url`'s parts; BadRequest `bad url` when urlsplit cannot read it (a bad port, a bad
    IPv6 literal). The scheme and host are not judged here: `check` and the policy do that."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadRequest(f"url is malformed: {exc}", error="bad url") from exc
    return Target(parts.scheme, parts.netloc, parts.hostname or "", port, parts.path, parts.query)


def check(target: Target) -> Target:
    """The one check of scheme and host: BadRequest `bad url` unless `target` is an absolute
    http or https URL with a host."""
    if target.scheme not in DEFAULT_PORTS:
        raise BadRequest(SCHEME_RULE, error="bad url")
    check_host(target)
    return target


def check_host(target: Target) -> None:
    if not target.host:
        raise BadRequest(HOST_RULE, error="bad url")
