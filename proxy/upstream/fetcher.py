"""The upstream fetcher: the one place that opens outbound HTTP connections."""

import contextlib
import contextvars
import functools
import http.client
import http.cookiejar
import logging
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NameResolutionError, NewConnectionError
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from proxy import __version__
from proxy.errors import BadGateway, BadRequest, Forbidden, GatewayTimeout, PayloadTooLarge
from proxy.upstream.policy import SCHEMES, UpstreamPolicy

log = logging.getLogger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK = 64 * 1024
USER_AGENT = f"redis-proxy/{__version__}"


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes
    url: str  # after redirects
    fetched_at: float = field(default_factory=time.time)
    # Each hop's URL and the address it connected to (None if one was not seen): what admitted
    # the response, for a proxy with a stricter policy to check before serving it from the cache.
    hops: tuple[tuple[str, str], ...] | None = None
    # Every header line as received, repeated names apart (Set-Cookie): what a relay passes on.
    fields: tuple[tuple[str, str], ...] = ()


def open_socket(addresses: Sequence[str], port: int, timeout: Any,
                source_address: tuple[str, int] | None,
                socket_options: Sequence[tuple[int, int, Any]] | None) -> socket.socket:
    """Connect to the first of `addresses` (each already checked by the policy) that answers;
    like urllib3's create_connection, minus the name resolution."""
    error: OSError | None = None
    for address in addresses:
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET,
                             socket.SOCK_STREAM)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            if timeout is not _DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect((address, port))
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error or OSError(f"no address to connect to on port {port}")


# The addresses Fetcher.fetch resolved and checked for the hop in progress on this thread:
# (name, port, addresses). A new connection to that name and port goes to these, unresolved.
_pinned: contextvars.ContextVar[tuple[str, int, list[str]] | None] = contextvars.ContextVar(
    "upstream_pinned_addresses", default=None)


class _CheckedConnectionMixin:
    """Replaces urllib3 2.x's HTTPConnection._new_conn: the socket goes to one of the addresses
    the policy resolved and checked for this hop (Fetcher.fetch pins them), so a name cannot
    resolve to a public address at check time and to an internal one at connect time (DNS
    rebinding), and it is looked up once per hop, not again here. Outside Fetcher.fetch the
    policy resolves and checks here. `host` stays the name: the Host header, TLS SNI and
    certificate verification (HTTPSConnection.connect) still use it."""

    policy: UpstreamPolicy
    _dns_host: str
    host: str
    port: int
    timeout: Any
    source_address: tuple[str, int] | None
    socket_options: Sequence[tuple[int, int, Any]] | None
    peer_address: str = ""  # the checked address this connection's socket went to

    def _new_conn(self) -> socket.socket:
        pinned = _pinned.get()
        if pinned is not None and pinned[:2] == (self._dns_host.strip("[]"), self.port):
            addresses = pinned[2]
        else:
            try:
                addresses = self.policy.check_connect(self._dns_host, self.port)
            except socket.gaierror as exc:
                raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        try:
            sock = open_socket(addresses, self.port, self.timeout, self.source_address,
                               self.socket_options)
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out. "
                                      f"(connect timeout={self.timeout})") from exc
        except OSError as exc:
            # The mixin is only ever mixed into an HTTPConnection, which the stub cannot know.
            raise NewConnectionError(
                self, f"Failed to establish a new connection: {exc}") from exc  # type: ignore[arg-type]
        self.peer_address = str(sock.getpeername()[0])
        sys.audit("http.client.connect", self, self.host, self.port)
        return sock


class InterimSkippingResponse(http.client.HTTPResponse):
    """http.client skips only a 100 Continue before the final response; any other interim
    response (a 103 Early Hints before the 200, RFC 9110 §15.2) would be taken as the final
    one. Every 1xx but 101 (which only answers an Upgrade, never sent here) is read and skipped."""

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 100 <= status < 200 or status == 101:
                return version, status, reason
            http.client.parse_headers(self.fp)  # the interim response's fields, discarded


# The total deadline of the fetch in progress on this thread (Fetcher._request sets it).
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("upstream_deadline",
                                                                         default=None)
# The addresses the fetch in progress on this thread has sent requests to, one per request.
_peers: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("upstream_peers",
                                                                          default=None)


class _Cutter:
    """Shuts a connection's socket at the deadline, unless the request finished first (the
    connection may be back in the pool, serving another request, by the time a timer fires)."""

    def __init__(self, conn: Any):
        self.conn = conn
        self.done = False
        self.lock = threading.Lock()

    def cut(self) -> None:
        with self.lock:
            sock = None if self.done else getattr(self.conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        with self.lock:
            self.done = True


class _DeadlinePoolMixin:
    """Bounds the status line and headers by the fetch's total deadline. urllib3 applies its
    read timeout to each recv, so an origin trickling a header byte at a time would otherwise
    hold the request (and a MAX_PARALLEL slot) for ever; at the deadline the socket is shut."""

    def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> Any:
        deadline = _deadline.get()
        if deadline is None:
            return super()._make_request(conn, *args, **kwargs)  # type: ignore[misc]
        cutter = _Cutter(conn)
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), cutter.cut)
        timer.daemon = True
        timer.start()
        try:
            return super()._make_request(conn, *args, **kwargs)  # type: ignore[misc]
        finally:
            cutter.finish()
            timer.cancel()


class _PeerRecordingPoolMixin:
    """Notes the address each request went to, whether its connection is new or reused from
    the pool (only a new one passes through _new_conn)."""

    def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> Any:
        response = super()._make_request(conn, *args, **kwargs)  # type: ignore[misc]
        peers = _peers.get()
        if peers is not None and getattr(conn, "peer_address", None):
            peers.append(conn.peer_address)
        return response


class PolicyAdapter(HTTPAdapter):
    """requests' adapter whose connections resolve and connect through the policy."""

    def __init__(self, policy: UpstreamPolicy, **kwargs: Any):
        self.policy = policy
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        # urllib3 builds a pool per host from these classes, and each pool its connections
        # from ConnectionCls; subclasses bound to this policy put the check in every one.
        bound = {"policy": self.policy, "response_class": InterimSkippingResponse}
        http_cls = type("CheckedHTTPConnection", (_CheckedConnectionMixin, HTTPConnection), bound)
        https_cls = type("CheckedHTTPSConnection", (_CheckedConnectionMixin, HTTPSConnection),
                         bound)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("CheckedHTTPConnectionPool",
                         (_PeerRecordingPoolMixin, _DeadlinePoolMixin, HTTPConnectionPool),
                         {"ConnectionCls": http_cls}),
            "https": type("CheckedHTTPSConnectionPool",
                          (_PeerRecordingPoolMixin, _DeadlinePoolMixin, HTTPSConnectionPool),
                          {"ConnectionCls": https_cls}),
        }

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # Through a forward proxy the address connected is the proxy's: nothing to check.
        raise Forbidden("fetching through a forward proxy is not supported by the upstream policy")


class _RefuseAllCookies(http.cookiejar.CookiePolicy):
    """No cookie is kept, so none is ever sent upstream: one session serves every client, and a
    cookie one upstream set in answer to one client's URL would otherwise go out with every
    later request to its domain (any port, any client, redirects too) and grow without bound."""

    netscape, rfc2965, hide_cookie2 = True, False, True

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: Any) -> bool:
        return False

    def path_return_ok(self, path: str, request: Any) -> bool:
        return False


class _NoRedirectSession(requests.Session):
    """Even with allow_redirects=False, requests reads a redirect's whole body (to 'consume the
    socket') with no cap and only the per-read timeout; Fetcher.fetch follows Location itself,
    so requests is told there is never a redirect to resolve."""

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


class Fetcher:
    """GET a URL with a total deadline, a body cap and at most `max_redirects` checked hops."""

    def __init__(self, *, timeout: float = 10.0, max_bytes: int = 10 * 1024**2,
                 max_redirects: int = 5, policy: UpstreamPolicy | None = None,
                 pool_size: int = 64):
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.policy = policy or UpstreamPolicy()
        self.session = self._new_session(pool_size)
        # The check without DNS is pure for a given policy: remember URLs that passed (a refused
        # one raises, is never remembered, and is counted each time).
        self._checked = functools.lru_cache(maxsize=4096)(
            lambda url: self.policy.check_url(url, resolve=False))
        self._sources = functools.lru_cache(maxsize=4096)(self.policy.check_source)

    def _new_session(self, pool_size: int) -> requests.Session:
        session = _NoRedirectSession()
        session.trust_env = False  # never route through proxies from the environment
        session.cookies.set_policy(_RefuseAllCookies())
        adapter = PolicyAdapter(self.policy, pool_connections=pool_size, pool_maxsize=pool_size,
                                max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update({"User-Agent": USER_AGENT,
                                # Bodies are stored as the client will see them: ask for them
                                # plain; if the origin encodes anyway, requests decodes.
                                "Accept-Encoding": "identity"})
        return session

    def close(self) -> None:
        self.session.close()

    def check(self, url: str) -> None:
        """The upstream policy without name resolution: for a request that may be answered from
        the cache, so an entry stored under a looser policy is not served under a stricter one."""
        self._checked(url)

    def check_source(self, url: str, hops: tuple[tuple[str, str], ...] | None) -> None:
        """The policy for a cached response, by what its fetch recorded (UpstreamPolicy.check_source)."""
        self._sources(url, hops)

    def fetch(self, url: str, headers: Mapping[str, str] | None = None, *,
              follow_redirects: bool = True) -> UpstreamResponse:
        """Fetch `url`; raise BadGateway, GatewayTimeout, PayloadTooLarge or Forbidden.
        `follow_redirects=False`: a redirect is the answer (a reverse proxy relays it)."""
        return self.send("GET", url, headers, follow_redirects=follow_redirects)

    def send(self, method: str, url: str, headers: Mapping[str, str] | None = None,
             body: bytes | None = None, *, follow_redirects: bool = False) -> UpstreamResponse:
        """`method` to `url` with `body`, through the same policy, deadline and caps as fetch;
        a redirect is followed only when `follow_redirects`."""
        deadline = time.monotonic() + self.timeout
        hops: list[tuple[str, str]] | None = []
        for hop in range(self.max_redirects + 1):
            try:
                # Every hop: a redirect is a new request. The name is looked up once, below.
                url = self.policy.check_url(url, resolve=False)
            except BadRequest as exc:
                if hop == 0:
                    raise
                raise BadGateway(f"upstream redirected to an unusable url: {exc.detail}") from exc
            pinned = self._resolve(url, deadline)
            peers: list[str] = []
            token = _peers.set(peers)
            try:
                response = self._request(url, headers, deadline, pinned, method, body)
            finally:
                _peers.reset(token)
            hops = hops + [(url, peers[-1])] if hops is not None and peers else None
            if not 200 <= response.status_code <= 599:
                # A 1xx relayed as final, or 999, would break the client's framing.
                response.close()
                raise BadGateway(f"upstream answered with status {response.status_code}")
            location = response.headers.get("Location")
            if response.status_code in REDIRECT_STATUSES and location and follow_redirects:
                response.close()
                if response.status_code not in (307, 308):  # RFC 9110 §15.4: these keep both
                    method, body = "GET", None
                try:
                    url = urljoin(url, location)
                except ValueError as exc:
                    raise BadGateway(f"upstream redirected to an unusable url: {exc}") from exc
                continue
            with response:
                body = self._read_body(response, deadline)
            return UpstreamResponse(response.status_code, response.headers, body, url,
                                    hops=tuple(hops) if hops is not None else None,
                                    fields=tuple(response.raw.headers.items()))
        raise BadGateway(f"upstream redirected more than {self.max_redirects} times")

    def _resolve(self, url: str, deadline: float) -> tuple[str, int, list[str]]:
        """The hop's one name lookup, bounded by the fetch's deadline, and the policy's check of
        every address: (name, port, addresses) for the connection to use."""
        parts = urlsplit(url)  # already checked and rebuilt by the policy
        host, port = parts.hostname or "", parts.port or SCHEMES[parts.scheme]
        try:
            addresses = self.policy.check_connect(host, port,
                                                  timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError as exc:
            raise GatewayTimeout(f"timed out after {self.timeout:g} s resolving {host}") from exc
        except socket.gaierror as exc:
            raise BadGateway(f"could not resolve {host} ({_reason(exc)})") from exc
        except OSError as exc:
            raise BadGateway(f"could not resolve {host}: {_reason(exc)}") from exc
        return host, port, addresses

    def _request(self, url: str, headers: Mapping[str, str] | None, deadline: float,
                 pinned: tuple[str, int, list[str]] | None = None, method: str = "GET",
                 body: bytes | None = None) -> requests.Response:
        remaining = deadline - time.monotonic()
        where = _host_port(url)
        if remaining <= 0:
            raise GatewayTimeout(f"timed out after {self.timeout:g} s waiting for {where}")
        token = _deadline.set(deadline)
        pin_token = _pinned.set(pinned)
        try:
            return self.session.request(method, url, headers=dict(headers or {}), data=body,
                                        stream=True, allow_redirects=False,
                                        timeout=(remaining, remaining))
        except requests.Timeout as exc:
            raise GatewayTimeout(f"timed out after {self.timeout:g} s waiting for {where}") from exc
        except (requests.RequestException, ValueError) as exc:
            if time.monotonic() >= deadline:  # the deadline shut the socket mid-headers
                raise GatewayTimeout(f"timed out after {self.timeout:g} s waiting for {where}") from exc
            raise BadGateway(_connect_failure(exc, where)) from exc
        finally:
            _pinned.reset(pin_token)
            _deadline.reset(token)

    def _read_body(self, response: requests.Response, deadline: float) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise PayloadTooLarge(f"upstream declared {declared} bytes; the cap is {self.max_bytes}")
        chunks, size = [], 0
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GatewayTimeout(f"timed out after {self.timeout:g} s receiving the body")
                _bound_next_read(response, remaining)
                chunk = response.raw.read1(CHUNK, decode_content=True)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    raise PayloadTooLarge(f"upstream body exceeds the cap of {self.max_bytes} bytes")
                chunks.append(chunk)
        except (requests.RequestException, OSError, HTTPError) as exc:
            if _is_timeout(exc):
                raise GatewayTimeout(f"timed out after {self.timeout:g} s receiving the body") from exc
            raise BadGateway(f"upstream body incomplete: {_reason(exc)}") from exc
        return b"".join(chunks)


def _bound_next_read(response: requests.Response, remaining: float) -> None:
    """Make the next socket read wait at most `remaining` seconds (a total deadline, not per read)."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(max(remaining, 0.001))


def _is_timeout(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TimeoutError) or "timed out" in str(seen).lower():
            return True
        seen = seen.__context__ or seen.__cause__
    return False


def _host_port(url: str) -> str:
    """`host:port` of a URL the policy has checked, the port always given."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{f'[{host}]' if ':' in host else host}:{parts.port or SCHEMES[parts.scheme]}"


def _connect_failure(exc: BaseException, where: str) -> str:
    """What went wrong reaching `where`, in plain words: refused, reset, or the innermost cause."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return f"connection refused by {where}"
        if isinstance(seen, ConnectionResetError):
            return f"connection reset by {where}"
        seen = seen.__cause__ or seen.__context__
    return f"could not get an answer from {where}: {_reason(exc)}"


def _reason(exc: BaseException) -> str:
    """The innermost cause, short: 'Connection refused' rather than a urllib3 repr."""
    seen: BaseException = exc
    while seen.__context__ is not None or seen.__cause__ is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    text = str(seen) or type(seen).__name__
    return text.split("] ", 1)[-1][:200]
