"""The request head, read once off the connection: bounded, checked (RFC 9112) and taken apart
into the request line's method, target and version and the header fields, in one pass.

The stdlib's `parse_request` and the `email` header parser are not used: the head was already
read and checked line by line here, and parsing it a second time was half the time of a hit.
"""

import io
import re
from collections.abc import Iterator
from typing import IO, NamedTuple

from proxy.errors import BadRequest, HeadersTooLarge, ProxyError, URITooLong, VersionNotSupported
from proxy.serving.syntax import line_size, valid_header_line, valid_request_line

# The head's limits, each "at most", in bytes of a line without its CRLF (line_size): a request
# line of 64 KiB, and 100 header lines of 8 KiB each and 32 KiB together.
MAX_REQUEST_LINE = 64 * 1024
MAX_HEADER_LINE = 8 * 1024
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADERS = 100
VERSIONS = ("HTTP/1.1", "HTTP/1.0")
_BLANK = (b"\r\n", b"\n")
_OWS = " \t"
# A whole head already in the read buffer, CRLF line ends, HTTP/1.1 or 1.0, every line as
# syntax.py's line checks accept it: matched in one pass. A head this short is within every
# size limit (only the count of lines is left to check); anything else, or any fault, takes the
# line-by-line path, which answers with the precise error.
_WHOLE_HEAD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [\x21-\x7e]+ HTTP/1\.[01]\r\n"
                         rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*\r\n")
_SHORT_HEAD = MAX_HEADER_LINE


class Fields:
    """Header fields in arrival order, looked up by name without regard to case (RFC 9110
    §5.1); `get` and `get_all` read as `email.message.Message`'s do."""

    __slots__ = ("_pairs", "_index")

    def __init__(self, pairs: list[tuple[str, str]]):
        self._pairs = pairs  # (lower-case name, value without surrounding OWS)
        index: dict[str, list[str]] = {}
        for field, value in pairs:
            if field in index:
                index[field].append(value)
            else:
                index[field] = [value]
        self._index = index

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._index.get(name.lower())
        return default if values is None else values[0]

    def get_all(self, name: str, failobj: list[str] | None = None) -> list[str] | None:
        values = self._index.get(name.lower())
        return failobj if values is None else list(values)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __len__(self) -> int:
        return len(self._pairs)

    def __iter__(self) -> Iterator[str]:
        return (field for field, _ in self._pairs)

    def items(self) -> list[tuple[str, str]]:
        return list(self._pairs)


class RequestHead(NamedTuple):
    requestline: str  # without its line end, for logs
    method: str
    target: str
    version: str  # HTTP/1.1 or HTTP/1.0
    fields: Fields
    keep_alive: bool  # what the version and Connection ask for (RFC 9112 §9.3)


def read_head(rfile: IO[bytes]) -> RequestHead | None:
    """The next request's head from `rfile`; None when the client closed (before a request or
    in the middle of its head). A head that is refused raises the ProxyError to answer with
    (414, 431, 400, 505); the connection must close after it."""
    if isinstance(rfile, io.BufferedReader):
        head = _whole_head(rfile)
        if head is not None:
            return head
    return _head_by_lines(rfile)


def head_ready(data: bytes | bytearray) -> bool:
    """Whether read_head, given `data` and then waiting for more, would return or refuse at once:
    a whole head, a line it refuses, a limit passed. The connection loop hands a connection to
    a worker only then, so a client slow to send its head holds no thread while it trickles."""
    if b"\r\n\r\n" in data:
        return True
    end = data.rfind(b"\n") + 1  # lines are judged whole: the line parser waits on a part
    if len(data) - end > (MAX_HEADER_LINE if end else MAX_REQUEST_LINE) + 2:
        return True
    try:
        return _head_by_lines(io.BytesIO(data[:end])) is not None
    except ProxyError:
        return True


def _whole_head(rfile: io.BufferedReader) -> RequestHead | None:
    """The head in one pass when all of it is in the read buffer and well-formed (the usual
    case: a client sends its head in one write); None to read it line by line instead."""
    data = rfile.peek(1)
    end = data.find(b"\r\n\r\n", 0, _SHORT_HEAD + 4)
    if end < 0 or data.count(b"\n", 0, end) > MAX_HEADERS or \
            _WHOLE_HEAD.fullmatch(data, 0, end + 4) is None:
        return None
    rfile.read(end + 4)  # from the buffer: no system call
    requestline, *lines = data[:end].decode("latin-1").split("\r\n")
    method, target, version = requestline.split(" ")
    pairs = []
    for line in lines:
        name, _, value = line.partition(":")
        pairs.append((name.lower(), value.strip(_OWS)))
    return _request_head(requestline, method, target, version, Fields(pairs))


def _request_head(requestline: str, method: str, target: str, version: str,
                  fields: Fields) -> RequestHead:
    if target.startswith("//"):
        # As http.server does (gh-87389): '//host/...' reads as a scheme-relative URL to some.
        target = "/" + target.lstrip("/")
    connection = fields.get("connection")
    if connection is None:
        keep_alive = version == "HTTP/1.1"
    else:
        connection = connection.lower()
        keep_alive = connection == "keep-alive" or (version == "HTTP/1.1" and connection != "close")
    return RequestHead(requestline, method, target, version, fields, keep_alive)


def _head_by_lines(rfile: IO[bytes]) -> RequestHead | None:
    line = rfile.readline(MAX_REQUEST_LINE + 2)  # one byte over and the CRLF tell a long line
    if line in _BLANK:
        line = rfile.readline(MAX_REQUEST_LINE + 2)  # RFC 9112 §2.2: one empty line is ignored
    if not line:
        return None
    if line_size(line) > MAX_REQUEST_LINE:
        raise URITooLong(f"the request line is limited to {MAX_REQUEST_LINE} bytes")
    if not valid_request_line(line):
        raise BadRequest("the request line must be '<METHOD> <target> HTTP/1.1' in visible ASCII")
    pairs = _read_fields(rfile)
    if pairs is None:
        return None
    requestline = line.decode("ascii").rstrip("\r\n")
    method, target, version = requestline.split(" ")
    if version not in VERSIONS:
        raise VersionNotSupported(f"{version} is not supported; send HTTP/1.1 (or HTTP/1.0)")
    return _request_head(requestline, method, target, version, Fields(pairs))


def _read_fields(rfile: IO[bytes]) -> list[tuple[str, str]] | None:
    """The header lines up to the blank one, bounded in line length, count and bytes, as
    (lower-case name, value) pairs; None when the client went away before the blank line."""
    pairs: list[tuple[str, str]] = []
    total = 0
    while True:
        line = rfile.readline(MAX_HEADER_LINE + 2)
        if not line:
            return None
        if line in _BLANK:
            return pairs
        size = line_size(line)
        total += size
        if size > MAX_HEADER_LINE or total > MAX_HEADER_BYTES or len(pairs) == MAX_HEADERS:
            raise HeadersTooLarge(
                f"request headers are limited to {MAX_HEADERS} lines of at most "
                f"{MAX_HEADER_LINE} bytes, {MAX_HEADER_BYTES} bytes in all (not counting "
                "line ends)")
        if not valid_header_line(line):
            raise BadRequest("malformed header line: 'Name: value', no space before the colon, "
                             "no folding, no control bytes")
        name, _, value = line.decode("iso-8859-1").partition(":")
        # RFC 9112 §5.1: OWS around the value is not part of it.
        pairs.append((name.lower(), value.rstrip("\r\n").strip(_OWS)))
