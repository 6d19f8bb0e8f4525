"""The upstream fetcher: the one place that opens outbound HTTP connections."""

import functools
import logging
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import requests
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.util.timeout import Timeout

from proxy import __version__
from proxy.budgets import Gate, off_cpu
from proxy.cache import compression
from proxy.cache.target import Target, split
from proxy.errors import BadGateway, BadRequest, GatewayTimeout, PayloadTooLarge, TooManyFetches
from proxy.upstream.connections import (
    NoRedirectSession,
    PolicyAdapter,
    RefuseAllCookies,
    fetch_deadline,
    fetch_peers,
    pinned_addresses,
)
from proxy.upstream.policy import UpstreamPolicy

log = logging.getLogger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK = 64 * 1024
MAX_FETCHES = 64  # upstream fetches in flight at once (MAX_FETCHES), as many as the pool keeps
FETCH_WAIT = 1.0  # seconds a fetch over MAX_FETCHES waits for one to end, then 503
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


class Fetcher:
    """GET a URL with a total deadline, a body cap and at most `max_redirects` checked hops;
    at most `max_fetches` at once, a fetch over them waiting at most `fetch_wait` seconds."""

    def __init__(self, *, timeout: float = 10.0, max_bytes: int = 10 * 1024**2,
                 max_redirects: int = 5, policy: UpstreamPolicy | None = None,
                 pool_size: int = 64, max_fetches: int = MAX_FETCHES,
                 fetch_wait: float = FETCH_WAIT):
        self.timeout = timeout
        self.in_flight = Gate(max_fetches)
        self.fetch_wait = fetch_wait
        self.fetches_refused = 0  # over MAX_FETCHES for fetch_wait: 503
        self._refused_lock = threading.Lock()
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.policy = policy or UpstreamPolicy()
        self.session = self._new_session(pool_size)
        # The check without DNS is pure for a given policy: remember targets that passed (a
        # refused one raises, is never remembered, and is counted each time).
        self._checked = functools.lru_cache(maxsize=4096)(
            lambda target: self.policy.check_target(target, resolve=False))
        self._sources = functools.lru_cache(maxsize=4096)(self.policy.check_source)

    def _new_session(self, pool_size: int) -> requests.Session:
        session = NoRedirectSession()
        session.trust_env = False  # never route through proxies from the environment
        session.cookies.set_policy(RefuseAllCookies())
        adapter = PolicyAdapter(self.policy, pool_connections=pool_size, pool_maxsize=pool_size,
                                max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update({"User-Agent": USER_AGENT,
                                # Bodies are stored as the client will see them: ask for them
                                # plain; if the origin codes one anyway, _decoded decodes it.
                                "Accept-Encoding": "identity"})
        return session

    def close(self) -> None:
        self.session.close()

    def check(self, target: Target) -> None:
        """The upstream policy without name resolution: for a request that may be answered from
        the cache, so an entry stored under a looser policy is not served under a stricter one."""
        self._checked(target)

    def check_source(self, url: str, hops: tuple[tuple[str, str], ...] | None) -> None:
        """The policy for a cached response, by what its fetch recorded (UpstreamPolicy.check_source)."""
        self._sources(url, hops)

    def fetch(self, url: Target | str, headers: Mapping[str, str] | None = None, *,
              follow_redirects: bool = True) -> UpstreamResponse:
        """Fetch `url`; raise BadGateway, GatewayTimeout, PayloadTooLarge or Forbidden.
        `follow_redirects=False`: a redirect is the answer (a reverse proxy relays it)."""
        return self.send("GET", url, headers, follow_redirects=follow_redirects)

    def send(self, method: str, url: Target | str, headers: Mapping[str, str] | None = None,
             body: bytes | None = None, *, follow_redirects: bool = False) -> UpstreamResponse:
        """`method` to `url` with `body`, through the same policy, deadline and caps as fetch;
        a redirect is followed only when `follow_redirects`. One of MAX_FETCHES, taken with
        the caller's MAX_PARALLEL slot given back: waiting on an origin is not CPU work."""
        with off_cpu():
            if not self.in_flight.acquire(self.fetch_wait):
                with self._refused_lock:
                    self.fetches_refused += 1
                raise TooManyFetches(f"{self.in_flight.slots} upstream fetches are in flight "
                                     f"(MAX_FETCHES) and none ended within {self.fetch_wait:g} s; "
                                     "retry shortly")
            try:
                return self._send(method, url, headers, body, follow_redirects)
            finally:
                self.in_flight.release()

    def _send(self, method: str, url: Target | str, headers: Mapping[str, str] | None,
              body: bytes | None, follow_redirects: bool) -> UpstreamResponse:
        deadline = time.monotonic() + self.timeout
        hops: list[tuple[str, str]] | None = []
        for hop in range(self.max_redirects + 1):
            try:
                # Every hop: a redirect is a new request (a new Target). The name is looked up
                # once, below. The check without DNS is remembered (`check`, the same check).
                target = self._checked(split(url) if isinstance(url, str) else url)
            except BadRequest as exc:
                if hop == 0:
                    raise
                raise BadGateway(f"upstream redirected to an unusable url: {exc.detail}") from exc
            pinned = self._resolve(target, deadline)
            peers: list[str] = []
            token = fetch_peers.set(peers)
            try:
                response = self._request(target, headers, deadline, pinned, method, body)
            finally:
                fetch_peers.reset(token)
            hops = hops + [(target.url, peers[-1])] if hops is not None and peers else None
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
                    url = urljoin(target.url, location)
                except ValueError as exc:
                    raise BadGateway(f"upstream redirected to an unusable url: {exc}") from exc
                continue
            with response:
                body = self._read_body(response, deadline)
            headers, fields = response.headers, tuple(response.raw.headers.items())
            decoded = self._decoded(body, headers.get("Content-Encoding", ""))
            if decoded is not None:
                # The body handed over is decoded: no field describes the coding it lost.
                body, headers = decoded, CaseInsensitiveDict(headers)
                headers.pop("Content-Encoding")
                fields = tuple(pair for pair in fields if pair[0].lower() != "content-encoding")
            return UpstreamResponse(response.status_code, headers, body, target.url,
                                    hops=tuple(hops) if hops is not None else None, fields=fields)
        raise BadGateway(f"upstream redirected more than {self.max_redirects} times")

    def _resolve(self, target: Target, deadline: float) -> tuple[str, int, list[str]]:
        """The hop's one name lookup, bounded by the fetch's deadline, and the policy's check of
        every address: (name, port, addresses) for the connection to use."""
        host, port = target.host, target.effective_port  # as the policy checked them
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

    def _request(self, target: Target, headers: Mapping[str, str] | None, deadline: float,
                 pinned: tuple[str, int, list[str]] | None = None, method: str = "GET",
                 body: bytes | None = None) -> requests.Response:
        remaining = deadline - time.monotonic()
        where = target.host_port
        if remaining <= 0:
            raise GatewayTimeout(f"timed out after {self.timeout:g} s waiting for {where}")
        token = fetch_deadline.set(deadline)
        pin_token = pinned_addresses.set(pinned)
        try:
            return self._open(method, target.url, headers, body, remaining)
        except (requests.RequestException, HTTPError, OSError, ValueError) as exc:
            if _timed_out(exc) or time.monotonic() >= deadline:  # or the deadline shut the socket
                raise GatewayTimeout(f"timed out after {self.timeout:g} s waiting for {where}") from exc
            raise BadGateway(_connect_failure(exc, where)) from exc
        finally:
            pinned_addresses.reset(pin_token)
            fetch_deadline.reset(token)

    def _decoded(self, body: bytes, content_encoding: str) -> bytes | None:
        """The body before the codings this proxy decodes (gzip, deflate, zstd), within the body
        cap; None when it has none, or one the proxy does not decode (br, an unknown one): that
        body and its Content-Encoding go on exactly as the origin sent them (RFC 9110 §8.4)."""
        if not body or content_encoding.strip().lower() in ("", "identity"):
            return None
        try:
            return compression.decode_received(body, content_encoding, self.max_bytes)
        except compression.TooLarge as exc:
            raise PayloadTooLarge(f"upstream body {exc}; the cap is {self.max_bytes}") from exc
        except ValueError as exc:
            raise BadGateway(f"upstream body does not decode as its Content-Encoding "
                             f"{content_encoding[:40]!r}: {exc}") from exc

    def _open(self, method: str, url: str, headers: Mapping[str, str] | None, body: bytes | None,
              timeout: float) -> requests.Response:
        """The request through the session's adapter's pool, as `session.request(stream=True,
        allow_redirects=False)` sends it, without the session's per-request machinery (settings
        and cookie jars merged, hooks, the response's cookies extracted: none is kept, see
        RefuseAllCookies), about half of a miss's fetch CPU. The request is prepared by requests
        (URL quoting, credentials in the URL as Basic auth, Content-Length) and the pool chosen
        and its TLS verification set by the adapter, as `HTTPAdapter.send` does."""
        session, prepared = self.session, requests.PreparedRequest()
        prepared.prepare_method(method)
        prepared.prepare_url(url, None)
        sent = CaseInsensitiveDict(session.headers)
        sent.update(headers or {})
        prepared.prepare_headers(sent)
        prepared.prepare_body(body or None, None)
        prepared.prepare_auth(None, url)
        adapter: Any = session.get_adapter(prepared.url or url)  # a PolicyAdapter (_new_session)
        pool: Any = adapter.get_connection_with_tls_context(prepared, session.verify,
                                                            cert=session.cert)
        adapter.cert_verify(pool, prepared.url or url, session.verify, session.cert)
        raw = pool.urlopen(method=prepared.method, url=prepared.path_url, body=prepared.body,
                           headers=prepared.headers, redirect=False, assert_same_host=False,
                           preload_content=False, decode_content=False,
                           retries=adapter.max_retries, chunked=False,
                           timeout=Timeout(connect=timeout, read=timeout))
        response = requests.Response()
        response.status_code, response.reason, response.raw = raw.status, raw.reason, raw
        response.headers = CaseInsensitiveDict(raw.headers)
        response.url, response.request = prepared.url or url, prepared
        return response

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
                chunk = response.raw.read1(CHUNK, decode_content=False)  # _decoded decodes
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


def _timed_out(exc: BaseException) -> bool:
    """A connect or read timeout, as requests' adapter tells them (HTTPAdapter.send): urllib3's
    NewConnectionError is a ConnectTimeoutError too, but a refused or failed connect."""
    reason = exc.reason if isinstance(exc, MaxRetryError) else exc
    return isinstance(exc, requests.Timeout) or (
        isinstance(reason, (ConnectTimeoutError, ReadTimeoutError))
        and not isinstance(reason, NewConnectionError))


def _is_timeout(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TimeoutError) or "timed out" in str(seen).lower():
            return True
        seen = seen.__context__ or seen.__cause__
    return False


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
