"""Reverse-proxy mode: which paths are the origin's, the URL each maps to, and what is forwarded."""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from proxy.cache import keys as cache_keys
from proxy.cache.request import end_to_end
from proxy.serving.request_head import Fields

DEFAULT_ADMIN_PREFIX = "/_proxy"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024  # nginx's client_max_body_size default, 1m
# Request fields the proxy sets itself (Host, X-Forwarded-*), or handles on its own hop (Expect:
# 100-continue is answered here), or replaces (Accept-Encoding: the fetcher asks for identity,
# so what is stored is what every client can read).
NOT_FORWARDED = frozenset({"host", "expect", "accept-encoding", "x-forwarded-proto",
                           "x-forwarded-host"})


# Site.target remembers this many targets of at most this many bytes (path and query).
REMEMBERED_TARGETS, REMEMBERED_TARGET_BYTES = 2048, 2048


@functools.lru_cache(maxsize=REMEMBERED_TARGETS)  # errors are raised again, never remembered
def _target(origin: str, path: str, query: str) -> str:
    normal = urlsplit(cache_keys.target_url("http://site" + path + ("?" + query if query else ""), []))
    return origin.rstrip("/") + normal.path + ("?" + normal.query if normal.query else "")


@dataclass(frozen=True)
class Site:
    """ORIGIN_URL ("" = the URL role alone), ADMIN_PREFIX and MAX_BODY_BYTES, read by routing."""

    origin: str = ""
    admin_prefix: str = DEFAULT_ADMIN_PREFIX
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def route(self, path: str) -> str | None:
        """The proxy's own route that `path` names (`/_proxy/health` -> `/health`), or None
        when the path is the origin's. Without an origin the root routes answer too."""
        prefix = self.admin_prefix
        if path == prefix or path.startswith(prefix + "/"):
            return path[len(prefix):] or "/"
        return None if self.origin else path

    def target(self, path: str, query: str) -> str:
        """The origin's URL for a site request: ORIGIN_URL + path + query, the path normalised
        first (RFC 3986 §6.2.2, dot-segments removed) so that `/../` cannot leave a base path.
        Pure: recent short targets are remembered (a hit asks the same paths again)."""
        if len(path) + len(query) <= REMEMBERED_TARGET_BYTES:
            return _target(self.origin, path, query)
        return _target.__wrapped__(self.origin, path, query)

    def forwarded(self, headers: Fields, peer: str,
                  is_own_credential: Callable[[str], bool]) -> dict[str, str]:
        """The request fields sent to the origin, as nginx sets them in front of a site:
        end-to-end fields only (RFC 9110 §7.6.1), never the proxy's own bearer token; `Host`
        the origin's; `X-Forwarded-For` the client's chain plus the peer's address;
        `X-Forwarded-Proto` http; `X-Forwarded-Host` the Host the client asked for."""
        names: dict[str, str] = {}  # lower-case name -> the name as the client first wrote it
        values: dict[str, list[str]] = {}
        for name, value in end_to_end(list(headers.items())):
            lower = name.lower()
            if lower in NOT_FORWARDED or (lower == "authorization" and is_own_credential(value)):
                continue
            names.setdefault(lower, name)
            values.setdefault(lower, []).append(value)
        # RFC 9110 §5.3: repeated fields combine with commas; cookies with "; " (RFC 6265 §5.4).
        fields = {names[lower]: ("; " if lower == "cookie" else ", ").join(parts)
                  for lower, parts in values.items()}
        chain = fields.pop(names.get("x-forwarded-for", "X-Forwarded-For"), "")
        fields["Host"] = urlsplit(self.origin).netloc
        fields["X-Forwarded-For"] = f"{chain}, {peer}" if chain else peer
        fields["X-Forwarded-Proto"] = "http"
        host = headers.get("Host")
        if host:
            fields["X-Forwarded-Host"] = host
        return fields
