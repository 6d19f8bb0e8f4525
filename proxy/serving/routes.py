"""The HTTP front end's routes that are not plumbing: the URL role (`/`), `/get/<key>` and
reverse-proxy mode's relay to the origin; a mixin of handler.ProxyHandler, which holds the
connection, the parsed head and the reply framing these use."""

import base64
import dataclasses
import io
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

from proxy.cache.request import FULL_EVALUATION, ClientRequest, relayed_fields
from proxy.cache.result import HIT, MISS, CacheResult, PlainHit, cache_status
from proxy.errors import (
    BadRequest,
    KeyNotFound,
    LengthRequired,
    MethodNotAllowed,
    PayloadTooLarge,
    RequestTimeout,
)
from proxy.serving.auth import Authenticator
from proxy.serving.query import BAD_PERCENT, PURGE_FIELDS, QUERY_FIELDS
from proxy.serving.request_head import Fields
from proxy.serving.site import Site
from proxy.serving.sockets import DeadlineReader, Gate

# A client must read a large answer at least this fast (bytes/s), or the send times out.
MIN_SEND_RATE = 64 * 1024
# /get/<key>: where the value came from, as Cache-Status (RFC 9211 §2) and the JSON "source".
GET_CACHE_STATUS = {HIT: "redis-proxy; hit", MISS: "redis-proxy; fwd=miss"}
GET_SOURCE = {HIT: "cache", MISS: "redis"}
# A raw value's headers, X-Cache and RFC 9211 Cache-Status saying whether L1 answered or Redis.
_GET_VALUE_HEADERS = {cache: (("Content-Type", "application/octet-stream"), ("X-Cache", cache),
                              ("Cache-Status", status)) for cache, status in GET_CACHE_STATUS.items()}


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
                  client: Callable[[], ClientRequest] | None = None) -> PlainHit | None: ...
    def plain_lookup(self, key: str, accept_encoding: str | None) -> PlainHit | None: ...
    def pass_through(self, url: str, request: ClientRequest, body: bytes | None = None) -> Relayed: ...
    def lookup(self, key: str, request: ClientRequest | None = None) -> CacheResult: ...
    def purge(self, url: str | None = None, key: str | None = None, params: Any = None, *,
              tag: str | None = None, soft: bool = False) -> int: ...
    def read_value(self, key: bytes | str) -> tuple[bytes | None, str]: ...
    def health_report(self) -> dict[str, Any]: ...


class Server(Protocol):
    """What these routes ask of handler.ProxyHTTPServer."""

    @property
    def proxy(self) -> Proxy: ...
    @property
    def site(self) -> Site: ...
    @property
    def authenticator(self) -> Authenticator: ...
    @property
    def parallel(self) -> Gate: ...
    @property
    def header_timeout(self) -> float: ...


class Routes:
    """The route bodies of ProxyHandler; the attributes below are the handler's."""

    server: Server
    command: str
    headers: Fields
    client_address: Any
    connection: Any
    rfile: io.BufferedReader
    _reader: DeadlineReader
    _unread_body: bool
    _reply: Callable[[int, bytes, dict[str, str] | list[tuple[str, str]]], None]
    _reply_json: Callable[..., None]
    _reply_result: Callable[[CacheResult], None]
    _reply_hit: Callable[[PlainHit], None]

    def relay(self, path: str, query: str) -> None:
        """Reverse-proxy mode: a request for the origin. GET and HEAD go through the cache
        (keyed by the origin's URL); a request carrying credentials for the origin, and every
        other method, is passed through with its body and never stored."""
        if not path.startswith("/"):
            raise BadRequest("give the request target in origin-form: a path starting with '/'",
                             error="bad target")
        if self.command == "CONNECT":
            raise MethodNotAllowed("CONNECT is not supported: this is a reverse proxy, not a "
                                   "tunnel", headers={"Allow": "GET, HEAD, POST, PUT, PATCH, DELETE"})
        site, server = self.server.site, self.server
        url = site.target(path, query)

        def client() -> ClientRequest:
            return ClientRequest.of(self.command, self.headers.items(), site.forwarded(
                self.headers, self.client_address[0], server.authenticator.is_own))

        reads = self.command in ("GET", "HEAD")
        # The body is read before a MAX_PARALLEL slot is taken: a slow upload holds only its own.
        body = None if reads else self._read_body(site.max_body_bytes)
        with server.parallel:
            # A plain hit first; with credentials for the origin the full path decides (below).
            if reads and "authorization" not in self.headers and self._plain_hit(
                    lambda codings: server.proxy.plain_hit(url, None, None, codings, client)):
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
            removed = proxy.purge(url, key, params, tag=fields.get("tag"), soft=soft == "true")
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

    def get_key(self, encoded: str) -> None:
        if "%" in encoded:
            if BAD_PERCENT.search(encoded.encode("latin-1")):
                raise BadRequest("the key has a '%' not followed by two hex digits", error="bad key")
            key = unquote_to_bytes(encoded)
        else:
            key = encoded.encode()  # what unquote_to_bytes gives for a key without '%'
        if not key:
            raise BadRequest("give a key: /get/<key>, percent-encoded", error="bad key")
        value, cache = self.server.proxy.read_value(key)
        if value is None:
            raise KeyNotFound("no such key in the backing Redis")
        accept = self.headers.get("Accept")
        if accept is None or "application/json" not in accept:
            self._reply(200, value, list(_GET_VALUE_HEADERS[cache]))
            return
        # X-Cache and RFC 9211 Cache-Status say whether L1 answered or Redis was read.
        headers = {"X-Cache": cache, "Cache-Status": GET_CACHE_STATUS[cache]}
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
