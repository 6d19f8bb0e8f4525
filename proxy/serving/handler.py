"""The HTTP front end: a thin stdlib `http.server` mapping requests onto the proxy (the
server, the handler's connection plumbing and routing; the route bodies are routes.py's, the
replies replying.py's). http_server.py wires it to the settings and a RedisProxy."""

import io
import logging
import socket
import socketserver
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from proxy.errors import (
    HeadersTooLarge,
    MethodNotAllowed,
    MisdirectedRequest,
    NotFound,
    ProxyError,
    URITooLong,
)
from proxy.serving import dashboard
from proxy.serving.access_log import AccessLog
from proxy.serving.auth import Authenticator
from proxy.serving.connection_loop import LoopServerMixIn
from proxy.serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from proxy.serving.metrics import Metrics
from proxy.serving.query import parse_query
from proxy.serving.rate_limit import RateLimiter
from proxy.serving.reply import REJECT as _REJECT
from proxy.serving.replying import Replying
from proxy.serving.request_head import Fields, head_ready, read_head
from proxy.serving.routes import Proxy, Routes
from proxy.serving.site import Site, Sites, host_name
from proxy.serving.sockets import DeadlineReader, Gate, linger
from proxy.serving.syntax import authority, body_framing_error, has_body, host_error, origin_form

# The name these lines had before the front end moved out of http_server.py; kept so a log
# filter or LOG_FORMAT's %(name)s still finds them.
log = logging.getLogger("http_server")

ALLOWED_METHODS = ("GET", "HEAD", "DELETE", "PURGE")  # PURGE: Varnish's dialect, on `/` only
READ_METHODS = ("GET", "HEAD")
BAN_METHODS = ("GET", "HEAD", "DELETE", "PURGE")  # GET lists the bans, DELETE (PURGE) adds one

# The same short names as the errors.py classes for these statuses.
_PROTOCOL_ERRORS = {414: URITooLong.error, 431: HeadersTooLarge.error}


# Routes answered outside MAX_PARALLEL, so a busy proxy can still say how it is.
UNMETERED_ROUTES = frozenset({"/health", "/metrics", "/stats", "/dashboard"})


class ProxyHTTPServer(LoopServerMixIn, HTTPServer):
    """Holds the proxy, the limits and the access checks; handlers stay thin."""

    request_queue_size = 1024  # the default 5 overflows under 64 connections (CONTRACT §8)
    reject_bytes = _REJECT

    def __init__(self, address: tuple[str, int], proxy: Proxy, *, max_clients: int = 1024,
                 max_parallel: int = 4, header_timeout: float = 10.0,
                 keepalive_timeout: float = 15.0, authenticator: Authenticator | None = None,
                 rate_limiter: RateLimiter | None = None, metrics: Metrics | None = None,
                 parallel: Gate | None = None, access_log: AccessLog | None = None,
                 site: Site | None = None, sites: Sites | None = None, get_format: str = "raw",
                 not_found_body: bytes | None = None):
        self.proxy = proxy
        self.get_format = get_format  # GET_FORMAT: /get/<key>'s form when Accept leaves it open
        self.not_found_body = not_found_body  # NOT_FOUND_BODY: /get/<key>'s 404 body; None = ours
        self.access_log = access_log or AccessLog()  # on, when the logger takes INFO
        # The site a request is for (Sites.pick); `site`: the one site whatever the Host (no
        # origin: the URL role alone).
        self.sites = sites or Sites.one(site or Site())
        self.metrics = metrics or Metrics(proxy)
        self.authenticator = authenticator or Authenticator()  # no tokens: open
        self.rate_limiter = rate_limiter  # None: no limit
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.init_limits(max_clients, max_parallel, parallel)
        super().__init__(address, ProxyHandler)
        self.metrics.watch("http", self)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the FQDN, which can wait on DNS; the port is enough.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), port

    @property
    def port(self) -> int:
        return self.server_address[1]

    def admit(self, path: str | None, peer: str, headers: Fields) -> None:
        """CONTRACT §4: authentication first, then the rate limit; raises what refuses. `path`
        None: a request for the origin's site (Authenticator.check_site)."""
        if self.rate_limiter is None and not self.authenticator.enabled:
            return  # open, and no limit: nothing to read
        forwarded_for = headers.get_all("X-Forwarded-For") or []
        authorization = headers.get_all("Authorization") or []
        if path is not None:
            self.authenticator.check(path, authorization, peer, forwarded_for)
        else:
            self.authenticator.check_site(authorization, peer, forwarded_for)
        if self.rate_limiter is not None:
            self.rate_limiter.check(peer, forwarded_for)


class ProxyHandler(Routes, Replying, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "redis-proxy"
    server: ProxyHTTPServer
    # The handler parses its own head once (request_head.read_head), not with the email parser.
    headers: Fields  # type: ignore[assignment]
    rfile: io.BufferedReader

    # ----- connection plumbing (connection_loop calls serve() when a request is ready) --------

    def __init__(self, request: socket.socket, client_address: Any, server: ProxyHTTPServer):
        # Not the stdlib's, which serves the connection to its end at once: the loop calls serve().
        self.request, self.client_address, self.server = request, client_address, server
        self.connection = request
        # Responses go out in one send; NODELAY keeps Nagle from holding back the next one.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = DeadlineReader(request, server.keepalive_timeout)
        self.rfile = io.BufferedReader(self._reader, 65536)
        self.wfile = io.BytesIO()  # only the stdlib's 100-continue path writes here
        self._unread_body = False  # the last request announced a body that was not read
        self._started = 0.0  # the request's dispatch time, for the access log; 0: not dispatched
        # Until the loop closes the connection: a new one must deliver its first headers within
        # HEADER_TIMEOUT, and a request begun must be whole within HEADER_TIMEOUT of its first
        # byte (slowloris); between requests, KEEPALIVE_TIMEOUT.
        self.deadline = time.monotonic() + server.header_timeout
        self._kept_alive = False  # between requests: the next one's first byte is awaited

    def received(self, data: memoryview) -> bool:
        if self._kept_alive:
            self._kept_alive = False
            self.deadline = time.monotonic() + self.server.header_timeout
        self._reader.early += data
        return head_ready(self._reader.early)

    def serve(self) -> bool:
        """The requests ready on the connection, one after another (pipelined ones too); True
        to wait for the next in the loop, False once the connection is done."""
        try:
            while True:
                self.handle_one_request()
                if self.close_connection:
                    break
                if not self._next_ready():
                    return True
        except (TimeoutError, ConnectionError, OSError) as exc:
            log.debug("connection from %s ended: %s", self.client_address[0], exc)
            return False
        if self._unread_body or self.server.draining:
            # The client may still be sending the body it announced, or (draining) a request
            # pipelined behind the last one answered.
            linger(self.connection)
        return False

    def _next_ready(self) -> bool:
        """Whether the next request's head is whole in what was received already; what there is
        of it goes back to the reader's `early` for the loop to add to."""
        reader = self._reader
        reader.nowait = True  # the buffered bytes only: no system call
        try:
            pending = self.rfile.read(len(self.rfile.peek(1)))
        finally:
            reader.nowait = False
        if not pending:
            self._kept_alive = True
            self.deadline = time.monotonic() + self.server.keepalive_timeout
            return False
        reader.early[:0] = pending
        self.deadline = time.monotonic() + self.server.header_timeout
        return head_ready(reader.early)

    def close(self) -> None:
        self.rfile.close()

    def closes_on_drain(self) -> bool:
        """Never while it waits: its next request, which the client may be sending as the close
        would reach it (and lose it to a reset), is answered with `Connection: close` (RFC 9112
        §9.6) and then it closes; one that sends none is closed when it expires (its
        KEEPALIVE_TIMEOUT) or the drain ends."""
        return False

    def handle_one_request(self) -> None:
        """One request; its reply is built while processing and sent at the end, outside
        MAX_PARALLEL, so a client slow to read holds its own connection and nothing else."""
        self._pending: tuple[bytes, bytes] | None = None
        self._logged: tuple[str, str, int, str, int, float] | None = None  # the access line's fields
        try:
            self._handle_one_request()
        finally:
            self._send()

    def _handle_one_request(self) -> None:
        self.close_connection = True
        self.command = self.request_version = ""
        self.requestline = ""
        self._reader.deadline = self.deadline  # what is still to come of the head: in time
        try:
            head = read_head(self.rfile)  # the one parse of the head (no parse_request)
        except ProxyError as exc:
            self._reply_error(exc, close=True)
            return
        if head is None:
            return
        self._reader.deadline = None
        self.requestline, self.command, self.path = head.requestline, head.method, head.target
        self.request_version, self.headers = head.version, head.fields
        self.close_connection = not head.keep_alive
        # (An Expect: 100-continue needs no answer: request bodies are never read.)
        problem = host_error(self.headers, self.request_version) or body_framing_error(self.headers)
        if problem is not None:
            self.send_error(HTTPStatus.BAD_REQUEST, problem)
            return
        if has_body(self.headers):
            # Read only by a relayed request (_read_body); otherwise never: do not reuse the stream.
            self.close_connection = self._unread_body = True
        self.dispatch()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Every protocol-level error as a real HTTP/1.1 response with a JSON body, then close.

        The stdlib answers an HTTP/0.9-style request line with a bare body and no status line."""
        status = HTTPStatus(code)
        error = ProxyError(explain or message or status.description,
                           error=_PROTOCOL_ERRORS.get(code, status.phrase.lower()))
        error.status = code
        self.request_version = "HTTP/1.1"
        self._reply_error(error, close=True)

    # ----- routing -----------------------------------------------------------------------------

    def dispatch(self) -> None:
        started = self._started = time.perf_counter()
        self._status = 0
        try:
            target, _, query = (self.path if self.path[:1] == "/" else origin_form(self.path)).partition("?")
            sites = self.server.sites
            # RFC 9112 §3.2.2: an absolute-form target's authority stands for the Host field.
            self.site_host = host_name(authority(self.path) or self.headers.get("Host"))
            self.site = sites.pick(self.site_host)
            path = sites.route(target)
            self.server.admit(path, self.client_address[0], self.headers)
            if path is None:
                if self.site is None:
                    named = f"is {self.site_host!r}" if self.site_host else "is named (no Host)"
                    raise MisdirectedRequest(f"no site of ORIGINS {named}; send the Host of one "
                                             "of the sites this proxy serves")
                self.relay(target, query)
            elif self.command not in route_methods(path):
                # RFC 9110 §15.5.6: Allow lists what this resource accepts, not the server.
                methods = route_methods(path)
                raise MethodNotAllowed(f"{self.command} is not supported here; use "
                                       + ", ".join(methods), headers={"Allow": ", ".join(methods)})
            elif path in UNMETERED_ROUTES:
                self.route(path, query)
            else:
                with self.server.parallel:
                    self.route(path, query)
        except ProxyError as exc:
            self._reply_error(exc)
        except Exception:
            # The path only: a query may carry an upstream URL with credentials in it.
            log.exception("unhandled error for %s %s", self.command, self.path.partition("?")[0])
            self._reply_error(ProxyError())
        self.server.metrics.observe("http", self._status, started)

    def route(self, path: str, query: str) -> None:
        if path.startswith("/get/"):
            self.get_key(path[len("/get/"):])
        elif path == "/":
            self.url_role(parse_query(query.encode("latin-1")))
        elif path == "/health":
            report = self.server.proxy.health_report()
            # 503 only when the store cannot serve at all; a cluster with a shard down is 200.
            self._reply_json(503 if report["redis"] == "down" else 200, report)
        elif path == "/metrics":
            self._reply(200, self.server.metrics.render(), {"Content-Type": METRICS_CONTENT_TYPE})
        elif path == "/stats":
            self._reply_json(200, self.server.metrics.stats(), {"Cache-Control": "no-store"})
        elif path == "/dashboard":
            self._reply(200, dashboard.page(), dashboard.HEADERS)
        elif path == "/ban":
            self.ban(parse_query(query.encode("latin-1")))
        else:
            raise NotFound()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.client_address[0], *args)


def route_methods(path: str) -> tuple[str, ...]:
    """The methods a path accepts: DELETE and PURGE (purge) on the URL role only. An unknown path gets
    404 for any of the proxy's methods."""
    if path.startswith("/get/") or path in UNMETERED_ROUTES:
        return READ_METHODS
    if path == "/ban":
        return BAN_METHODS
    return ALLOWED_METHODS


def make_server(host: str, port: int, proxy: Proxy, **options: Any) -> ProxyHTTPServer:
    """An unstarted server (port 0 picks a free one; read it back from `server.port`).
    `options`: the limits, `authenticator` (default open) and `rate_limiter` (default none)."""
    return ProxyHTTPServer((host, port), proxy, **options)
