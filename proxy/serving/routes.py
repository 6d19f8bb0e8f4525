"""The HTTP front end's routes that are not plumbing: the URL role (`/`), `/get/<key>` and
reverse-proxy mode's relay to the origin; a mixin of handler.ProxyHandler, which holds the
connection, the parsed head and the reply framing these use."""

import base64
import contextlib
import dataclasses
import io
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

from proxy.cache.request import FULL_EVALUATION, ClientRequest, early_hints, hinted_fields, relayed_fields
from proxy.cache.result import HIT, MISS, CacheResult, PlainHit, cache_status
from proxy.cache.target import split
from proxy.errors import (
    BadRequest,
    KeyNotFound,
    LengthRequired,
    MethodNotAllowed,
    PayloadTooLarge,
    RequestTimeout,
)
from proxy.serving.accept import wants_json
from proxy.serving.auth import Authenticator
from proxy.serving.query import BAD_PERCENT, PURGE_FIELDS, QUERY_FIELDS
from proxy.serving.request_head import Fields
from proxy.serving.site import Site, Sites
from proxy.serving.sockets import DeadlineReader, Gate

# A client must read a large answer at least this fast (bytes/s), or the send times out.
MIN_SEND_RATE = 64 * 1024
# /get/<key>: where the value came from, as Cache-Status (RFC 9211 §2) and the JSON "source".
GET_CACHE_STATUS = {HIT: "redis-proxy; hit", MISS: "redis-proxy; fwd=miss"}
GET_SOURCE = {HIT: "cache", MISS: "redis"}
# A raw value's headers, X-Cache and RFC 9211 Cache-Status saying whether L1 answered or Redis;
# the form depends on Accept (RFC 9110 §12.5.5).
_GET_VALUE_HEADERS = {cache: (("Content-Type", "application/octet-stream"), ("X-Cache", cache),
                              ("Cache-Status", status), ("Vary", "Accept"))
                      for cache, status in GET_CACHE_STATUS.items()}


class Relayed(Protocol):
    """An origin's answer relayed as it came (proxy.upstream.fetcher.UpstreamResponse)."""

    @property
    def status(self) -> int: ...
    @property
    def body(self) -> bytes: ...
    @property
    def fields(self) -> tuple[tuple[str, str], ...]: ...


class Proxy(Protocol):
    """What the HTTP front end asks of redis_proxy.RedisProxy."""

    def fetch(self, url: str, key: str | None = None, params: Any = None,
              request: ClientRequest | None = None) -> CacheResult: ...
    def plain_hit(self, url: str, key: str | None, params: Any, accept_encoding: str | None,
                  client: Callable[[], ClientRequest] | None = None,
                  site_host: Callable[[], str] | None = None) -> PlainHit | None: ...
    def plain_lookup(self, key: str, accept_encoding: str | None) -> PlainHit | None: ...
    def pass_through(self, url: str, request: ClientRequest, body: bytes | None = None) -> Relayed: ...
    def lookup(self, key: str, request: ClientRequest | None = None) -> CacheResult: ...
    def purge(self, url: str | None = None, key: str | None = None, params: Any = None, *,
              tag: str | None = None, soft: bool = False, site_host: str | None = None) -> int: ...
    def read_value(self, key: bytes | str) -> tuple[bytes | None, str]: ...
    def ban(self, host: str, path: str) -> tuple[Any, int]: ...
    def bans(self) -> tuple[Any, ...]: ...
    def health_report(self) -> dict[str, Any]: ...


class Server(Protocol):
    """What these routes ask of handler.ProxyHTTPServer."""

    @property
    def proxy(self) -> Proxy: ...
    @property
    def sites(self) -> Sites: ...
    @property
    def authenticator(self) -> Authenticator: ...
    @property
    def parallel(self) -> Gate: ...
    @property
    def header_timeout(self) -> float: ...
    @property
    def get_format(self) -> str: ...
    @property
    def not_found_body(self) -> bytes | None: ...


class Routes:
    """The route bodies of ProxyHandler; the attributes below are the handler's."""

    server: Server
    command: str
    request_version: str
    close_connection: bool
    headers: Fields
    client_address: Any
    connection: Any
    rfile: io.BufferedReader
    _reader: DeadlineReader
    _unread_body: bool
    # The request's host (site.host_name: no port, lower case) and the Site it picked; None
    # when ORIGINS lists no site for it (the proxy's own routes still answer).
    site_host: str
    site: Site | None
    _reply: Callable[[int, bytes, dict[str, str] | list[tuple[str, str]]], None]
    _reply_json: Callable[..., None]
    _reply_result: Callable[[CacheResult], None]
    _reply_hit: Callable[[PlainHit], None]

    def relay(self, path: str, query: str) -> None:
        """Reverse-proxy mode: a request for the origin. GET and HEAD go through the cache
        (keyed by the origin's URL); a request carrying credentials for the origin, and every
        other method, is passed through with its body and never stored."""
        if self.command == "CONNECT":  # its target is authority-form: the method is what is wrong
            raise MethodNotAllowed("CONNECT is not supported: this is a reverse proxy, not a "
                                   "tunnel", headers={"Allow": "GET, HEAD, POST, PUT, PATCH, DELETE"})
        if not path.startswith("/"):
            raise BadRequest("give the request target in origin-form: a path starting with '/'",
                             error="bad target")
        site, server = self.site, self.server
        assert site is not None  # handler.dispatch answers 421 for a host of no site
        url = site.target(path, query)

        def client() -> ClientRequest:
            return ClientRequest.of(self.command, self.headers.items(), site.forwarded(
                self.headers, self.client_address[0], server.authenticator.is_own, self.site_host))

        reads = self.command in ("GET", "HEAD")
        # The body is read before a MAX_PARALLEL slot is taken: a slow upload holds only its own.
        body = None if reads else self._read_body(site.max_body_bytes)
        with server.parallel, self._early_hints():
            # A plain hit first; with credentials for the origin the full path decides (below).
            if reads and "authorization" not in self.headers and self._plain_hit(
                    lambda codings: server.proxy.plain_hit(
                        url, None, None, codings, client,
                        lambda: site.forwarded_host(self.site_host))):
                return
            request = client()
            # RFC 9111 §3.5: an answer to a request with credentials is the credential holder's.
            cached = reads and not any(name.lower() == "authorization" for name in request.forwarded)
            if cached:
                self._reply_result(server.proxy.fetch(url, None, None, request))
                return
            if self.command == "HEAD":
                request = dataclasses.replace(request, method="GET")
            self._reply_relayed(server.proxy.pass_through(url, request, body))

    @contextlib.contextmanager
    def _early_hints(self) -> Iterator[None]:
        """While the origin is asked on this client's behalf, a 103 Early Hints it sends is
        relayed at once as an interim response (RFC 8297; a proxy forwards 1xx, RFC 9110 §15.2),
        before the final answer; only to an HTTP/1.1 client (HTTP/1.0 has no interim
        responses). Never stored: a later hit has no 103."""
        if self.request_version != "HTTP/1.1":
            yield
            return
        token = early_hints.set(self._send_early_hints)
        try:
            yield
        finally:
            early_hints.reset(token)

    def _send_early_hints(self, pairs: list[tuple[str, str]]) -> None:
        fields = hinted_fields(pairs)
        if not fields:
            return
        head = "".join(f"{name}: {value}\r\n" for name, value in fields)
        try:
            self._reader.send(f"HTTP/1.1 103 Early Hints\r\n{head}\r\n".encode("latin-1", "replace"),
                              self.server.header_timeout)
        except OSError:
            # The client left, or a part was sent: its final answer cannot follow on this framing.
            self.close_connection = True

    def _plain_hit(self, answer: Callable[[str | None], PlainHit | None]) -> bool:
        """A GET or HEAD with no field the full RFC 9111 evaluation reads, answered from a fresh
        L1 entry and the reply head kept beside it (proxy.core.plain_hit): the bytes the full
        path would send. `answer(accept_encoding)` is the proxy's plain hit or None. False when
        the request is not one, or L1 cannot answer it so: the full path answers it. Called
        inside MAX_PARALLEL."""
        if not FULL_EVALUATION.isdisjoint(self.headers):  # the names, lower-case
            return False
        codings = self.headers.get_all("Accept-Encoding")  # combined as ClientRequest.of does
        hit = answer(None if codings is None else ", ".join(codings))
        if hit is None:
            return False
        self._reply_hit(hit)
        return True

    def _read_body(self, most: int) -> bytes:
        """The request body, by its Content-Length, at most `most` bytes (RFC 9112 §6.3)."""
        if "Transfer-Encoding" in self.headers:
            raise LengthRequired("send the request body with a Content-Length; chunked request "
                                 "bodies are not accepted")
        length = int((self.headers.get("Content-Length") or "0").split(",")[0].strip() or 0)
        if length > most:
            raise PayloadTooLarge(f"the request body is {length} bytes; the limit is {most} "
                                  "(MAX_BODY_BYTES)", error="request body too large")
        if (self.headers.get("Expect") or "").lower() == "100-continue" and length:
            self._reader.send(b"HTTP/1.1 100 Continue\r\n\r\n", self.server.header_timeout)  # RFC 9110 §10.1.1
        # As fast as a reply must be read (MIN_SEND_RATE), and at least HEADER_TIMEOUT.
        allowed = max(self.server.header_timeout, length / MIN_SEND_RATE)
        self._reader.deadline = time.monotonic() + allowed
        try:
            body = self.rfile.read(length)
        except (TimeoutError, OSError) as exc:
            raise RequestTimeout(f"the request body did not arrive within {allowed:g} s") from exc
        finally:
            self._reader.deadline = None
        if len(body) < length:
            raise BadRequest("the request body ended before its Content-Length", error="bad body")
        self._unread_body = False
        return body

    def url_role(self, fields: dict[str, str]) -> None:
        purging = self.command in ("DELETE", "PURGE")
        known = PURGE_FIELDS if purging else QUERY_FIELDS
        if any(name not in known for name in fields):
            unknown = sorted(set(fields) - set(known))
            raise BadRequest(f"unknown query field {unknown[0]!r}; use url, key and params"
                             + (", or tag, and soft=true" if purging else
                                " (tag and soft are for DELETE and PURGE)"), error="bad query")
        url, key, params = fields.get("url"), fields.get("key"), fields.get("params")
        proxy = self.server.proxy
        if purging:
            soft = fields.get("soft", "false")
            if soft not in ("true", "false"):
                raise BadRequest("soft must be true or false", error="bad query")
            tag = fields.get("tag")
            site_host = None
            if self.site is not None and self.site.origin:
                site_host = self.site.forwarded_host(self.site_host)
                # Purges are the site's: the Host's origin is the tag's, and `url=/path` its page.
                if url is None and tag is not None:
                    url = self.site.origin
                elif url is not None and url[:1] == "/":
                    path, _, query = url.partition("?")
                    url = self.site.target(path, query)
            removed = proxy.purge(url, key, params, tag=tag, soft=soft == "true", site_host=site_host)
            self._reply_json(200, {"purged": removed})
            return
        if self._plain_hit(lambda codings: proxy.plain_hit(url, key, params, codings) if url is not None
                           else None if key is None else proxy.plain_lookup(key, codings)):
            return
        client = ClientRequest.reading(self.command, self.headers.items())
        if url is None:
            if key is None:
                raise BadRequest("give url=<absolute URL> (and optionally key=<name>), "
                                 "or key=<name> to read a cached entry", error="missing url")
            self._reply_result(proxy.lookup(key, client))
            return
        self._reply_result(proxy.fetch(url, key, params, client))

    def ban(self, fields: dict[str, str]) -> None:
        """`DELETE /ban?path=GLOB[&host=GLOB]`: Varnish's ban (proxy.store.bans); `GET /ban`
        lists the bans in force. In reverse-proxy mode the ban is the site's: its path is the
        site's path (the origin's base path put before it) and its host the origin's."""
        proxy = self.server.proxy
        if self.command in ("GET", "HEAD"):
            if fields:
                raise BadRequest("GET /ban takes no query; DELETE /ban?path=<glob> adds a ban",
                                 error="bad query")
            self._reply_json(200, {"bans": [{"host": ban.host or "*", "path": ban.path, "at": ban.at}
                                            for ban in proxy.bans()]}, {"Cache-Control": "no-store"})
            return
        host, path = ban_fields(fields, self.site)  # the request's site (ORIGINS: by its Host)
        made, count = proxy.ban(host, path)
        self._reply_json(200, {"banned": {"host": made.host or "*", "path": made.path, "at": made.at},
                               "bans": count})

    def get_key(self, encoded: str) -> None:
        if "%" in encoded:
            if BAD_PERCENT.search(encoded.encode("latin-1")):
                raise BadRequest("the key has a '%' not followed by two hex digits", error="bad key")
            key = unquote_to_bytes(encoded)
        else:
            key = encoded.encode()  # what unquote_to_bytes gives for a key without '%'
        if not key:
            raise BadRequest("give a key: /get/<key>, percent-encoded", error="bad key")
        server = self.server
        value, cache = server.proxy.read_value(key)
        if value is None:
            if server.not_found_body is None:
                raise KeyNotFound("no such key in the backing Redis", headers={"Vary": "Accept"})
            # NOT_FOUND_BODY: the body another proxy's clients expect, in place of ours.
            self._reply(404, server.not_found_body, {"Content-Type": content_type_of(server.not_found_body),
                                                     "Vary": "Accept"})
            return
        if not wants_json(self.headers.get("Accept"), server.get_format == "json"):
            self._reply(200, value, list(_GET_VALUE_HEADERS[cache]))
            return
        # X-Cache and RFC 9211 Cache-Status say whether L1 answered or Redis was read.
        headers = {"X-Cache": cache, "Cache-Status": GET_CACHE_STATUS[cache], "Vary": "Accept"}
        try:
            doc = {"key": key.decode(), "value": value.decode()}
        except UnicodeDecodeError:
            doc = {"key": key.decode(errors="replace"), "value": base64.b64encode(value).decode(),
                   "encoding": "base64"}
        doc["source"] = GET_SOURCE[cache]
        self._reply_json(200, doc, headers)

    def _reply_relayed(self, response: Relayed) -> None:
        fields = relayed_fields(list(response.fields))
        fields += [("X-Cache", "MISS"), ("Cache-Status", cache_status(CacheResult(
            response.status, b"", {}, "MISS", forward="method" if self.command not in ("GET", "HEAD")
            else "request", upstream_status=response.status)))]
        self._reply(response.status, response.body, fields)


def content_type_of(body: bytes) -> str:
    """NOT_FOUND_BODY's type: JSON when it parses as JSON, else plain text."""
    try:
        json.loads(body)
    except ValueError:
        return "text/plain; charset=utf-8"
    return "application/json"


MAX_BAN_GLOB = 1024  # bytes of a ban's path or host glob
_BAN_PATH = re.compile(r"[/*][!-~]*")  # visible ASCII, from '/' (or a leading '*')
_BAN_HOST = re.compile(r"[a-z0-9*?.\[\]-]+")


def ban_fields(fields: dict[str, str], site: Site | None) -> tuple[str, str]:
    """The (host, path) globs of a ban request, checked; in reverse-proxy mode the site's."""
    if any(name not in ("path", "host") for name in fields):
        unknown = sorted(set(fields) - {"path", "host"})[0]
        raise BadRequest(f"unknown query field {unknown!r}; give path=<glob> and optionally "
                         "host=<glob>", error="bad query")
    path, host = fields.get("path"), fields.get("host", "").lower()
    if path is None:
        raise BadRequest("give path=<glob>, e.g. path=/blog/* (percent-encoded)", error="bad ban")
    if len(path) > MAX_BAN_GLOB or not _BAN_PATH.fullmatch(path):
        raise BadRequest(f"path must start with '/' or '*', hold visible ASCII only and be at most "
                         f"{MAX_BAN_GLOB} bytes", error="bad ban")
    if host and (len(host) > MAX_BAN_GLOB or not _BAN_HOST.fullmatch(host)):
        raise BadRequest("host must be a host name or a glob of one (letters, digits, '.', '-', "
                         "'*'), without scheme or port", error="bad ban")
    if site is not None and site.origin:
        if host:
            raise BadRequest("in reverse-proxy mode a ban is the site's: give path= alone",
                             error="bad ban")
        # The origin by host and port (Ban.matches): ORIGINS may list one host on two ports.
        origin = split(site.origin)
        return origin.host_port, origin.path.rstrip("/") + path
    return host, path
