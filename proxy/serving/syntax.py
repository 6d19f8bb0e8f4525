"""HTTP/1.1 message syntax checks (RFC 9112) applied before a request reaches the router.

Front proxies and this server must agree on where a request starts and ends and what its
target is; every shape they could read differently is refused here with 400, so nothing can be
smuggled past them and no raw control byte reaches a route or a log line.
"""

import re
from typing import Protocol

# RFC 9112 §3: request-line = method SP request-target SP HTTP-version; the method a token
# (RFC 9110 §5.6.2), the target visible ASCII only.
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [\x21-\x7e]+ HTTP/[0-9]\.[0-9]\r?\n")
# RFC 9112 §5: field-name ":" OWS field-value OWS. Whitespace before the colon and obs-fold
# continuation lines MUST be refused by a server (§5.1, §5.2); NUL, bare CR and the other
# controls in a value are refused too (RFC 9110 §5.5).
_HEADER_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r?\n")
_ABSOLUTE_FORM = re.compile(r"https?://[^/?#]*", re.IGNORECASE)


def line_size(line: bytes) -> int:
    """The size of a line as the head limits count it: without the CRLF (or LF) that ends it."""
    if line.endswith(b"\r\n"):
        return len(line) - 2
    return len(line) - 1 if line.endswith(b"\n") else len(line)


class Message(Protocol):
    """Header fields as the checks read them (request_head.Fields, email.message.Message)."""

    def get(self, name: str, default: str | None = None, /) -> str | None: ...

    def get_all(self, name: str, failobj: list[str] | None = None, /) -> list[str] | None: ...

    def __contains__(self, name: object, /) -> bool: ...


def valid_request_line(line: bytes) -> bool:
    return _REQUEST_LINE.fullmatch(line) is not None


def valid_header_line(line: bytes) -> bool:
    return _HEADER_LINE.fullmatch(line) is not None


def origin_form(target: str) -> str:
    """The path and query of a request-target. RFC 9112 §3.2.2: a server MUST accept the
    absolute-form; its authority names no other server (this is not a forward proxy), only,
    with ORIGINS, the site (`authority`)."""
    match = _ABSOLUTE_FORM.match(target)
    if match is None:
        return target
    rest = target[match.end():]
    return rest if rest.startswith("/") else "/" + rest


def authority(target: str) -> str | None:
    """The authority of an absolute-form request-target (`http://a.example:8080/x` ->
    `a.example:8080`), None for any other form."""
    match = _ABSOLUTE_FORM.match(target)
    return None if match is None else match.group(0).partition("://")[2]


def host_error(headers: Message, version: str) -> str | None:
    """RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, or any with more than one."""
    hosts = headers.get_all("Host") or []
    if len(hosts) > 1 or (not hosts and version == "HTTP/1.1"):
        return "send exactly one Host header"
    return None


def body_framing_error(headers: Message) -> str | None:
    """Why the request's body framing is unacceptable, if it is (RFC 9112 §6).

    Bodies are never read here, so the danger is a front proxy and this server disagreeing on
    where a request ends: an invalid or conflicting Content-Length (§6.3), or one beside
    Transfer-Encoding (§6.1 allows refusing it), is refused."""
    values = headers.get_all("Content-Length")
    if not values:
        return None  # Transfer-Encoding alone is refused where a body would be read
    lengths = [part.strip() for value in values for part in value.split(",")]
    if any(not (length.isascii() and length.isdigit()) for length in lengths) or len(set(lengths)) > 1:
        return "Content-Length must be one decimal number"
    if "Transfer-Encoding" in headers:
        return "Content-Length and Transfer-Encoding together are refused"
    return None


def has_body(headers: Message) -> bool:
    """Whether the request carries a body (which is never read: the connection then closes)."""
    return (headers.get("Content-Length") or "0").strip() not in ("", "0") or "Transfer-Encoding" in headers
