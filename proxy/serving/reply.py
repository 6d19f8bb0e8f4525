"""HTTP reply framing shared by the handler: JSON bodies, the Date header, the MAX_CLIENTS refusal,
and the reply head kept beside an L1 entry."""

import email.utils
import json
import re
import time
from typing import Any

# A CR, LF or NUL in a header value (from a stored entry someone else wrote) would split the reply.
UNSAFE_HEADER_VALUE = re.compile(r"[\r\n\x00]")


def json_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def error_body(error: str, detail: str) -> bytes:
    """The JSON body of every error: {"error": <short>, "detail": <what to do>}."""
    return json_bytes({"error": error, "detail": detail})


class DateCache:
    """The Date header, formatted once a second rather than once a request."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._value = email.utils.formatdate(second, usegmt=True)
            self._second = second
        return self._value


DATES = DateCache()

_REJECT_BODY = error_body("too many clients", "the proxy is at MAX_CLIENTS connections; retry shortly")
# Sent whole to a connection over MAX_CLIENTS, which is then closed.
REJECT = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
          b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
          % (len(_REJECT_BODY), _REJECT_BODY))


# Where a kept reply head takes this answer's Age and Cache-Status ttl: marks no stored field can
# make appear twice unnoticed (a head holding either more than once is not kept: ReplyHead.of).
AGE_MARK, TTL_MARK = "\x01age\x01", "\x01ttl\x01"
_AGE, _TTL = AGE_MARK.encode(), TTL_MARK.encode()


class ReplyHead:
    """The serialized head of an answer from one L1 entry, all but what varies per answer:
    its Age value, its Cache-Status ttl and the Connection line. `render` fills them in."""

    __slots__ = ("status", "_parts", "_age_first")

    def __init__(self, status: int, parts: tuple[bytes, bytes, bytes], age_first: bool):
        self.status = status
        self._parts = parts
        self._age_first = age_first

    @classmethod
    def of(cls, status: int, head: bytes) -> "ReplyHead | None":
        """From a whole head (ending in the blank line, no Connection line) holding AGE_MARK
        and TTL_MARK once each; None when it does not."""
        if head.count(_AGE) != 1 or head.count(_TTL) != 1 or not head.endswith(b"\r\n\r\n"):
            return None
        lines = head[:-2]  # the blank line goes after the Connection line, if any
        age_first = lines.index(_AGE) < lines.index(_TTL)
        first, rest = lines.split(_AGE if age_first else _TTL)
        middle, last = rest.split(_TTL if age_first else _AGE)
        return cls(status, (first, middle, last), age_first)

    def render(self, age: int, ttl: int, connection: bytes) -> bytes:
        """The head of one answer; `connection`: its Connection line with CRLF, or b""."""
        first, middle, last = self._parts
        one, two = (age, ttl) if self._age_first else (ttl, age)
        return b"%b%d%b%d%b%b\r\n" % (first, one, middle, two, last, connection)
