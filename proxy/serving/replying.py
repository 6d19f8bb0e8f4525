"""The HTTP handler's replies (a mixin of handler.ProxyHandler): an answer from the cache, a
plain hit from the reply head kept beside its L1 entry, JSON and error bodies; each framed
(status line, Date, Server, Content-Length, Connection) and held until the request is done,
then sent in one write within a deadline scaled to its size, and its access line recorded."""

import time
from http import HTTPStatus
from typing import Any, Protocol

from proxy.cache.result import HIT, CacheResult, PlainHit, cache_status, hit_status
from proxy.errors import ProxyError
from proxy.serving.access_log import AccessLog, masked_target
from proxy.serving.metrics import Metrics
from proxy.serving.reply import AGE_MARK, TTL_MARK, ReplyHead
from proxy.serving.reply import DATES as _dates
from proxy.serving.reply import UNSAFE_HEADER_VALUE as _UNSAFE_HEADER_VALUE
from proxy.serving.reply import json_bytes as _json_bytes
from proxy.serving.routes import MIN_SEND_RATE
from proxy.serving.sockets import DeadlineReader

SMALL_REPLY = 64 * 1024  # up to this, headers and body go out in one write
_STATUS_LINES = {status.value: f"HTTP/1.1 {status.value} {status.phrase}" for status in HTTPStatus}
_SERVER = "Server: " + "redis-proxy"
_NO_HEAD = "none"  # memo: an entry whose reply head cannot be kept (ReplyHead.of)


class ReplyServer(Protocol):
    """What replies ask of handler.ProxyHTTPServer."""

    @property
    def access_log(self) -> AccessLog: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def draining(self) -> bool: ...
    @property
    def keepalive_timeout(self) -> float: ...


class Replying:
    """Reply framing of ProxyHandler; the attributes below are the handler's."""

    server: ReplyServer
    command: str
    path: str
    request_version: str
    close_connection: bool
    client_address: Any
    _reader: DeadlineReader
    _status: int
    _started: float
    _pending: tuple[bytes, bytes] | None
    _logged: tuple[str, str, int, str, int, float] | None

    def _reply_result(self, result: CacheResult) -> None:
        self._reply(result.status, result.body,
                    _result_headers(result, str(result.age), cache_status(result)))

    def _reply_hit(self, hit: PlainHit) -> None:
        """A plain hit sent from the reply head kept beside its L1 entry, built once from the
        full answer: the bytes _reply_result sends for it, with this answer's Age, Cache-Status
        ttl and Connection filled in (the Date of a stored answer is the origin's: fixed)."""
        head = hit.memo.get(hit.variant)
        if head is None:
            result = hit.result()
            headers = _result_headers(result, AGE_MARK, hit_status(TTL_MARK))
            # No Date stored: _reply's would be now, so no head is kept (each answer built whole).
            kept = ReplyHead.of(result.status, _head(result.status, len(result.body), headers, "")) \
                if "Date" in headers else None
            head = hit.memo[hit.variant] = kept or _NO_HEAD
        if not isinstance(head, ReplyHead):
            self._reply_result(hit.result())
            return
        self._pend(head.status, head.render(hit.age, hit.ttl, self._connection().encode()),
                   hit.body, HIT)

    def _reply_json(self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._reply(status, _json_bytes(doc), {"Content-Type": "application/json", **(headers or {})})

    def _reply_error(self, exc: ProxyError, close: bool = False) -> None:
        if close:
            self.close_connection = True
        if exc.status >= 500:  # the dashboard's last errors
            self.server.metrics.note_error(exc.status, exc.error, exc.detail,
                                           masked_target(self.path) if self.command else "-")
        self._reply_json(exc.status, {"error": exc.error, "detail": exc.detail}, exc.headers)

    def _reply(self, status: int, body: bytes,
               headers: dict[str, str] | list[tuple[str, str]]) -> None:
        """Status line, headers and body in one send (piecemeal writes stall on delayed ACKs)."""
        head = _head(status, len(body), headers, self._connection())
        pairs = headers.items() if isinstance(headers, dict) else headers
        self._pend(status, head, body,
                   next((v for n, v in pairs if n == "X-Cache"), "-") if self.server.access_log.enabled
                   else "-")

    def _connection(self) -> str:
        """The Connection line this reply needs, or ""."""
        if self.server.draining:  # the process stops: this answer is the connection's last
            self.close_connection = True
        if self.close_connection:
            return "Connection: close\r\n"
        if self.request_version == "HTTP/1.0":
            return "Connection: keep-alive\r\n"  # RFC 9112 §9.3: 1.0 keeps alive only if told
        return ""

    def _pend(self, status: int, head: bytes, body: bytes, cache: str) -> None:
        """The reply `_send` writes once the request is done (`cache`: its X-Cache, logged)."""
        self._status = status
        self._pending = (head, b"" if self.command == "HEAD" else body)
        if self.server.access_log.enabled:  # decided once: off, the hit path pays this test
            # Written by _send, after the reply: outside MAX_PARALLEL, and its duration whole.
            self._logged = (self.command, self.path if self.command else "", status, cache,
                            len(self._pending[1]), self._started)
        self._started = 0.0

    def _send(self) -> None:
        """Send the reply in one write, with a deadline scaled to its size. A failed or partial
        send ends the connection: nothing more may be written on a broken framing."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        logged, self._logged = self._logged, None
        try:
            self._write(*pending)
        finally:
            if logged is not None:
                self.server.access_log.record(*logged, self.client_address[0])

    def _write(self, head: bytes, body: bytes) -> None:
        allowed = max(self.server.keepalive_timeout, (len(head) + len(body)) / MIN_SEND_RATE)
        try:
            if len(body) <= SMALL_REPLY:
                self._reader.send(head + body, allowed)
            else:
                # A large body is not copied behind its headers: an L1 hit shares the cached
                # bytes while a slow client takes them. TCP_NODELAY sends both writes at once.
                deadline = time.monotonic() + allowed
                for part in (head, body):
                    self._reader.send(part, max(0.001, deadline - time.monotonic()))
        except OSError:
            self.close_connection = True
            raise  # handle() ends the connection with a debug line


def _result_headers(result: CacheResult, age: str, status: str) -> dict[str, str]:
    """The header fields of an answer from the cache, `age` its Age and `status` its
    Cache-Status member."""
    headers = {name.title(): value for name, value in result.headers.items()}
    if result.status != 304:  # a 304 sends no representation metadata (RFC 9110 §15.4.5)
        headers["Content-Type"] = result.content_type
    headers["X-Cache"] = result.cache
    headers["Age"] = age
    # RFC 9211 §2: caches nearer the client append their member to upstream ones.
    upstream = headers.get("Cache-Status")
    headers["Cache-Status"] = f"{upstream}, {status}" if upstream else status
    return headers


def _head(status: int, length: int, headers: dict[str, str] | list[tuple[str, str]],
          connection: str) -> bytes:
    """A reply's status line and header block; `connection`: its Connection line, or ""."""
    # The origin's Date when relaying a stored response (RFC 9110 §6.6.1), else now.
    date = (headers.pop("Date", None) if isinstance(headers, dict) else None) or _dates.now()
    lines = [_STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown", "Date: " + date, _SERVER]
    if status != 304:  # a 304's Content-Length would have to be the 200's (RFC 9110 §8.6)
        lines.append(f"Content-Length: {length}")
    pairs = headers.items() if isinstance(headers, dict) else headers
    lines += [f"{name}: {value}" for name, value in pairs]
    lines.append(connection)  # with its own CRLF, or nothing
    text = "\r\n".join(lines) + "\r\n"
    line_ends = len(lines) + bool(connection)
    if text.count("\n") != line_ends or text.count("\r") != line_ends or "\x00" in text:
        # A CR, LF or NUL in a value (from a stored entry someone else wrote) would split
        # the reply: such a header is left out.
        text = "\r\n".join(line for line in lines[:-1]
                             if not _UNSAFE_HEADER_VALUE.search(line.partition(": ")[2])) + "\r\n" \
            + connection + "\r\n"
    return text.encode("latin-1", "replace")
