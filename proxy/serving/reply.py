"""HTTP reply framing shared by the handler: JSON bodies, the Date header, the MAX_CLIENTS refusal."""

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
