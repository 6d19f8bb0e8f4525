"""The urllib3 / requests plumbing under Fetcher: connections that go only to the addresses the
policy checked (no DNS rebinding), pools that bound a response's head by the fetch's deadline and
note each request's peer, the 1xx-skipping response, the adapter, no cookies, no redirects."""

import contextlib
import contextvars
import heapq
import http.client
import http.cookiejar
import itertools
import os
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from proxy.cache.request import early_hints
from proxy.errors import Forbidden
from proxy.upstream.policy import UpstreamPolicy


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
pinned_addresses: contextvars.ContextVar[tuple[str, int, list[str]] | None] = contextvars.ContextVar(
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
        pinned = pinned_addresses.get()
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
    """The origin's response as http.client reads it, held to the framing of RFC 9112:

    - http.client skips only a 100 Continue before the final response; any other interim
      response (a 103 Early Hints before the 200, RFC 9110 §15.2) would be taken as the final
      one. Every 1xx but 101 (which only answers an Upgrade, never sent here) is read and skipped;
      a 103's fields go to the request's `early_hints` callback when the front end set one.
    - A header section that does not parse (a line that is no `name: value`, a name that is no
      token, obs-fold, RFC 9112 §5) would otherwise be cut at the bad line, its later fields
      (Content-Length among them) taken for body, and the read wait for a close that never
      comes: it raises instead, so the fetch is a 502 at once (§5.2 lets a proxy reject it).
    - A response that cannot carry content (1xx, 204, 304, the answer to HEAD: RFC 9112 §6.3)
      ends the exchange on its connection: whatever the origin sends after it (a body it should
      not have sent) can never be read as the next request's answer. And bytes left unread when
      a response is done (past its Content-Length, after its last chunk) retire the connection
      instead of returning it to the pool (response splitting, origin desync)."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any):
        super().__init__(sock, *args, **kwargs)
        self._socket = sock

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 100 <= status < 200 or status == 101:
                return version, status, reason
            fields = http.client.parse_headers(self.fp)  # bounded: 100 fields of 64 KiB
            relay = early_hints.get() if status == 103 else None
            if relay is not None:
                relay(list(fields.items()))

    def begin(self) -> None:
        super().begin()
        problem = malformed_header(self.msg)
        if problem:
            raise http.client.HTTPException(f"malformed header section from the upstream: {problem}")
        if self.status in (204, 304) or 100 <= self.status < 200 or getattr(self, "_method", "") == "HEAD":
            self.will_close = True  # http.client closes its connection; urllib3 opens a new one

    def _close_conn(self) -> None:
        fp = self.fp
        if fp is not None and not self.will_close and _unread(self._socket, fp):
            # The pooled connection would start its next response in these bytes.
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)  # the pool sees it dropped: reconnects
        super()._close_conn()  # type: ignore[misc]


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.1: a field name


def malformed_header(message: http.client.HTTPMessage) -> str:
    """What is wrong with a parsed header section, or "" when nothing is: a line the parser
    could not read (the rest of the section left unparsed), a name that is not a token, or a
    value holding CR, LF (obs-fold, RFC 9112 §5.2) or NUL."""
    if message.defects or message.get_payload():
        return "a line that is not `name: value`"
    for name, value in message.items():
        if not _TOKEN.fullmatch(name):
            return f"the field name {name[:40]!r} is not a token"
        if "\r" in value or "\n" in value or "\x00" in value:
            return f"the field {name[:40]} is folded over lines or holds NUL"
    return ""


def _unread(sock: socket.socket, fp: Any) -> bool:
    """Whether bytes are waiting, in the response's buffer or on its socket, once it is done:
    a peek that does not block (the socket briefly non-blocking)."""
    timeout = sock.gettimeout()
    try:
        sock.settimeout(0.0)
        return bool(fp.peek(1))
    except (BlockingIOError, ssl.SSLWantReadError):
        return False  # nothing there
    except (OSError, ValueError):
        return True  # a reset, a closed file: not a connection to reuse either
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)


# The total deadline of the fetch in progress on this thread (Fetcher._request sets it).
fetch_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("upstream_deadline",
                                                                         default=None)
# The addresses the fetch in progress on this thread has sent requests to, one per request.
fetch_peers: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("upstream_peers",
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


class _Deadlines:
    """One daemon thread that cuts each request's connection at its deadline, rather than a
    timer thread started (and cancelled) per request, which cost a miss more CPU than its
    cutting ever does. Cutters wait in a heap by deadline; a finished one is dropped when it
    comes up. A process forked after the thread started gets a thread (and a heap) of its own."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._heap: list[tuple[float, int, _Cutter]] = []
        self._order = itertools.count()  # ties in deadline never compare cutters
        self._pid = 0  # the process whose thread serves the heap

    def add(self, deadline: float, cutter: "_Cutter") -> None:
        with self._ready:
            if self._pid != os.getpid():
                self._heap = []
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="upstream-deadlines", daemon=True).start()
            heapq.heappush(self._heap, (deadline, next(self._order), cutter))
            if self._heap[0][2] is cutter:
                self._ready.notify()  # the earliest now: the thread waits less

    def _run(self) -> None:
        while True:
            with self._ready:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                wait = self._heap[0][0] - time.monotonic() if self._heap else None
                if wait is None or wait > 0:
                    self._ready.wait(wait)
                    continue
                cutter = heapq.heappop(self._heap)[2]
            cutter.cut()


_deadlines = _Deadlines()


class _DeadlinePoolMixin:
    """Bounds the status line and headers by the fetch's total deadline. urllib3 applies its
    read timeout to each recv, so an origin trickling a header byte at a time would otherwise
    hold the request (and a MAX_PARALLEL slot) for ever; at the deadline the socket is shut."""

    def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> Any:
        deadline = fetch_deadline.get()
        if deadline is None:
            return super()._make_request(conn, *args, **kwargs)  # type: ignore[misc]
        cutter = _Cutter(conn)
        _deadlines.add(deadline, cutter)
        try:
            return super()._make_request(conn, *args, **kwargs)  # type: ignore[misc]
        finally:
            cutter.finish()


class _PeerRecordingPoolMixin:
    """Notes the address each request went to, whether its connection is new or reused from
    the pool (only a new one passes through _new_conn)."""

    def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> Any:
        response = super()._make_request(conn, *args, **kwargs)  # type: ignore[misc]
        peers = fetch_peers.get()
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


class RefuseAllCookies(http.cookiejar.CookiePolicy):
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


class NoRedirectSession(requests.Session):
    """Even with allow_redirects=False, requests reads a redirect's whole body (to 'consume the
    socket') with no cap and only the per-read timeout; Fetcher.fetch follows Location itself,
    so requests is told there is never a redirect to resolve."""

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None
