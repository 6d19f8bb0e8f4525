"""Reverse-proxy mode: which paths are the origin's, the URL each maps to, and what is forwarded;
with ORIGINS, which site a request's Host names."""

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from proxy.cache import keys as cache_keys
from proxy.cache.request import end_to_end
from proxy.serving.rate_limit import ClientAddress
from proxy.serving.request_head import Fields

DEFAULT_ADMIN_PREFIX = "/_proxy"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024  # nginx's client_max_body_size default, 1m
# Request fields the proxy sets itself (Host, X-Forwarded-Host), or handles on its own hop
# (Expect: 100-continue is answered here), or replaces (Accept-Encoding: the fetcher asks for
# identity and decodes the codings it knows, so what is stored does not depend on one client's
# Accept-Encoding; an origin's other coding is kept with its header). The client's Host is never
# forwarded: it is not in the cache key, so an origin building a page from it would have one
# client's Host served to all (cache poisoning).
NOT_FORWARDED = frozenset({"host", "expect", "accept-encoding", "x-forwarded-host"})
# Fields by which a proxy in front tells the origin who the client is or what it asked for, and
# the method overrides frameworks honour: from a peer not in TRUSTED_PROXIES they are the
# client's own word, unkeyed, and an origin believing them (`X-Original-URL: /admin`) would have
# its answer stored for everyone. Every `X-Forwarded-*` field is dropped likewise.
SPOOFABLE = frozenset({"forwarded", "x-real-ip", "x-client-ip", "true-client-ip",
                       "x-cluster-client-ip", "x-original-url", "x-rewrite-url", "x-original-host",
                       "x-host", "x-http-host-override", "x-http-method-override",
                       "x-http-method", "x-method-override"})
FORWARDED_PREFIX = "x-forwarded-"
PROTOCOLS = ("http", "https")  # the X-Forwarded-Proto values a trusted proxy may pass on
# A host name of non-empty labels: what a subdomain must be to match a `*.suffix` of ORIGINS
# (it is then sent as X-Forwarded-Host, so nothing else, `evil/x.b.example`, may pass).
_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_\-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_\-]*[a-z0-9_])?)*")


# Site.target remembers this many targets of at most this many bytes (path and query).
REMEMBERED_TARGETS, REMEMBERED_TARGET_BYTES = 2048, 2048


@functools.lru_cache(maxsize=REMEMBERED_TARGETS)  # errors are raised again, never remembered
def _target(origin: str, path: str, query: str) -> str:
    normal = urlsplit(cache_keys.target_url("http://site" + path + ("?" + query if query else ""), []))
    return origin.rstrip("/") + normal.path + ("?" + normal.query if normal.query else "")


@dataclass(frozen=True)
class Site:
    """ORIGIN_URL ("" = the URL role alone), ADMIN_PREFIX, MAX_BODY_BYTES, PUBLIC_HOST and
    TRUSTED_PROXIES: which paths are the origin's, and what a request for it forwards. `name`:
    the host (or `*.suffix`) of ORIGINS this site answers for; "" for ORIGIN_URL's, any Host."""

    origin: str = ""
    admin_prefix: str = DEFAULT_ADMIN_PREFIX
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    public_host: str = ""  # "": the origin's own host
    trusted_proxies: tuple[str, ...] = ()
    name: str = ""
    _clients: ClientAddress = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_clients", ClientAddress(self.trusted_proxies))

    def route(self, path: str) -> str | None:
        """The proxy's own route that `path` names (`/_proxy/health` -> `/health`), or None
        when the path is the origin's. Without an origin the root routes answer too. In front
        of an origin the path is decided normalised, as `target` sends it (RFC 3986 §6.2.2):
        `/x/../_proxy/stats` is the proxy's, `/_proxy/../p` the origin's `/p`."""
        if self.origin and path[:1] == "/" and ("%" in path or "/." in path):
            path = self.normal_path(path)  # only these can change what the prefix matches
        prefix = self.admin_prefix
        if path == prefix or path.startswith(prefix + "/"):
            return path[len(prefix):] or "/"
        return None if self.origin else path

    @staticmethod
    def normal_path(path: str) -> str:
        """`path` in the normal form of RFC 3986 §6.2.2: percent-encodings of unreserved
        characters decoded, the others upper-cased, dot-segments removed."""
        return urlsplit(cache_keys.target_url("http://site" + path, [])).path

    def target(self, path: str, query: str) -> str:
        """The origin's URL for a site request: ORIGIN_URL + path + query, the path normalised
        first (RFC 3986 §6.2.2, dot-segments removed) so that `/../` cannot leave a base path.
        Pure: recent short targets are remembered (a hit asks the same paths again)."""
        if len(path) + len(query) <= REMEMBERED_TARGET_BYTES:
            return _target(self.origin, path, query)
        return _target.__wrapped__(self.origin, path, query)

    def forwarded(self, headers: Fields, peer: str,
                  is_own_credential: Callable[[str], bool], host: str = "") -> dict[str, str]:
        """The request fields sent to the origin, as nginx sets them in front of a site:
        end-to-end fields only (RFC 9110 §7.6.1), never the proxy's own bearer token; `Host`
        the origin's; `X-Forwarded-Host` PUBLIC_HOST (else the origin's host), never the
        client's Host, unless this is a site of ORIGINS: then `host`, the request's host name
        that picked it (`host_name`), which the operator listed. From a peer in TRUSTED_PROXIES its forwarding fields pass, its
        `X-Forwarded-For` chain gets the peer appended (nginx's $proxy_add_x_forwarded_for)
        and its `X-Forwarded-Proto` (http or https) is kept; from any other peer they are
        dropped (SPOOFABLE, every X-Forwarded-*), `X-Forwarded-For` is the peer's address and
        `X-Forwarded-Proto` http."""
        trusted = self._clients.trusts(peer)
        names: dict[str, str] = {}  # lower-case name -> the name as the client first wrote it
        values: dict[str, list[str]] = {}
        for name, value in end_to_end(list(headers.items())):
            lower = name.lower()
            if lower in NOT_FORWARDED or (lower == "authorization" and is_own_credential(value)):
                continue
            if not trusted and (lower in SPOOFABLE or lower.startswith(FORWARDED_PREFIX)):
                continue
            names.setdefault(lower, name)
            values.setdefault(lower, []).append(value)
        # RFC 9110 §5.3: repeated fields combine with commas; cookies with "; " (RFC 6265 §5.4).
        fields = {names[lower]: ("; " if lower == "cookie" else ", ").join(parts)
                  for lower, parts in values.items()}
        chain = fields.pop(names.get("x-forwarded-for", "X-Forwarded-For"), "")
        proto = fields.pop(names.get("x-forwarded-proto", "X-Forwarded-Proto"), "").strip().lower()
        fields["Host"] = urlsplit(self.origin).netloc
        fields["X-Forwarded-For"] = f"{chain}, {peer}" if chain else peer
        fields["X-Forwarded-Proto"] = proto if proto in PROTOCOLS else "http"
        fields["X-Forwarded-Host"] = self.forwarded_host(host)
        return fields

    def forwarded_host(self, host: str) -> str:
        """The host naming this site to its origin (X-Forwarded-Host) and to RULES_FILE's rules:
        PUBLIC_HOST, else with ORIGINS `host`, the request's host name that picked the site,
        else the origin's host; never a Host a client chose freely."""
        return self.public_host or (self.name and host) or urlsplit(self.origin).netloc


def host_name(value: str | None) -> str:
    """The host a request names, as ORIGINS matches it: its Host field (or the authority of an
    absolute-form target) without the port, lower-cased (RFC 4343), one trailing dot dropped
    (`a.example.` is the fully qualified `a.example`); "" when there is none."""
    value = (value or "").strip().lower()
    if value.startswith("["):  # an IPv6 literal keeps its brackets (RFC 3986 §3.2.2)
        name = value[:value.find("]") + 1]
    else:
        name = value.partition(":")[0]
    return name[:-1] if name.endswith(".") else name


class Sites:
    """The Site a request is for. ORIGINS: one Site per listed host (its `name`), an exact name
    before the longest `*.suffix` that matches (a wildcard matches subdomains only, as a
    certificate's does, RFC 6125 §6.4.3), None for any other host; else the one Site, without a
    name (ORIGIN_URL's, or the URL role's without an origin), whatever the Host. The proxy's
    own routes are the same for all (one ADMIN_PREFIX)."""

    def __init__(self, sites: Sequence[Site] = ()):
        self.sites = tuple(sites) or (Site(),)
        self.any_host = self.sites[0] if not self.sites[0].name else None
        self.exact = {site.name: site for site in self.sites if site.name and site.name[:2] != "*."}
        # Longest first: `*.x.b.example` is more specific than `*.b.example`.
        self.wildcards = sorted(((site.name[1:], site) for site in self.sites if site.name[:2] == "*."),
                                key=lambda pair: -len(pair[0]))

    @classmethod
    def one(cls, site: Site) -> "Sites":
        """ORIGIN_URL's form: `site` for any Host."""
        return cls((dataclasses.replace(site, name=""),))

    def route(self, path: str) -> str | None:
        """Site.route: the proxy's own route `path` names, None when it is a site's path."""
        return self.sites[0].route(path)

    def pick(self, host: str) -> Site | None:
        """The Site for `host` (as `host_name` gives it); None when ORIGINS lists no match."""
        if self.any_host is not None:
            return self.any_host
        site = self.exact.get(host)
        if site is not None:
            return site
        for suffix, site in self.wildcards:
            if host.endswith(suffix) and _HOST_NAME.fullmatch(host[:-len(suffix)]):
                return site
        return None
