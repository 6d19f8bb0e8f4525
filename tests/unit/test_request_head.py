"""The request head read in one pass: its parts, its fields and its limits, off a byte stream."""

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import BadRequest, HeadersTooLarge, URITooLong, VersionNotSupported
from proxy.serving import request_head
from proxy.serving.request_head import (
    MAX_HEADER_BYTES,
    MAX_HEADER_LINE,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    read_head,
)


def head_of(data: bytes):
    return read_head(io.BufferedReader(io.BytesIO(data)))


def test_the_request_line_and_fields_come_from_one_read():
    stream = io.BufferedReader(io.BytesIO(
        b"GET /get/k?x=1 HTTP/1.1\r\nHost: proxy\r\nX-Forwarded-For: 10.0.0.1\r\n"
        b"x-forwarded-for:\t10.0.0.2 \r\nAccept:  application/json  \r\n\r\nNEXT"))
    head = read_head(stream)
    assert (head.requestline, head.method, head.target, head.version) == (
        "GET /get/k?x=1 HTTP/1.1", "GET", "/get/k?x=1", "HTTP/1.1")
    assert head.fields.get("HOST") == "proxy"
    assert head.fields.get_all("X-Forwarded-For") == ["10.0.0.1", "10.0.0.2"]  # in order, OWS gone
    assert head.fields.get("accept") == "application/json"
    assert head.fields.get("Authorization") is None and head.fields.get_all("Authorization") is None
    assert "host" in head.fields and "Transfer-Encoding" not in head.fields
    assert head.keep_alive
    assert stream.read() == b"NEXT"  # nothing past the blank line is consumed


@pytest.mark.parametrize("version, connection, keep_alive", [
    ("HTTP/1.1", None, True), ("HTTP/1.1", "close", False), ("HTTP/1.1", "Close", False),
    ("HTTP/1.0", None, False), ("HTTP/1.0", "keep-alive", True), ("HTTP/1.0", "Keep-Alive", True),
])
def test_keep_alive_follows_version_and_connection(version, connection, keep_alive):
    line = f"Connection: {connection}\r\n" if connection else ""
    head = head_of(f"GET / {version}\r\nHost: p\r\n{line}\r\n".encode())
    assert head.keep_alive is keep_alive


def test_a_double_slash_target_is_reduced_as_http_server_does():
    assert head_of(b"GET //evil.example/x HTTP/1.1\r\nHost: p\r\n\r\n").target == "/evil.example/x"


def test_one_empty_line_before_the_request_line_is_ignored():
    assert head_of(b"\r\nGET /health HTTP/1.1\r\nHost: p\r\n\r\n").target == "/health"


@pytest.mark.parametrize("data", [b"", b"GET / HTTP/1.1\r\nHost: p\r\n", b"GET / HTTP/1.1\r\n"])
def test_a_client_gone_before_the_blank_line_is_none(data):
    assert head_of(data) is None


def test_the_request_line_limit_is_at_most_64_kib():
    prefix = b"GET /"
    suffix = b" HTTP/1.1"
    fits = prefix + b"k" * (MAX_REQUEST_LINE - len(prefix) - len(suffix)) + suffix
    assert len(head_of(fits + b"\r\nHost: p\r\n\r\n").requestline) == MAX_REQUEST_LINE
    with pytest.raises(URITooLong):
        head_of(fits.replace(b"/", b"/k", 1) + b"\r\nHost: p\r\n\r\n")


def test_header_limits_are_at_most_n():
    name = b"X-A: "
    line = name + b"v" * (MAX_HEADER_LINE - len(name))
    assert len(head_of(b"GET / HTTP/1.1\r\n" + line + b"\r\n\r\n").fields) == 1
    with pytest.raises(HeadersTooLarge):
        head_of(b"GET / HTTP/1.1\r\n" + line + b"v\r\n\r\n")
    hundred = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS))
    assert len(head_of(b"GET / HTTP/1.1\r\n" + hundred + b"\r\n").fields) == MAX_HEADERS
    with pytest.raises(HeadersTooLarge):
        head_of(b"GET / HTTP/1.1\r\n" + hundred + b"X-last: v\r\n\r\n")
    # 32 KiB in all: four full lines fit exactly, one more byte does not.
    four = b"".join(b"X-%d: " % i + b"v" * (MAX_HEADER_BYTES // 4 - 5) + b"\r\n" for i in range(4))
    assert len(head_of(b"GET / HTTP/1.1\r\n" + four + b"\r\n").fields) == 4
    with pytest.raises(HeadersTooLarge):
        head_of(b"GET / HTTP/1.1\r\n" + four + b"Y:\r\n\r\n")


@pytest.mark.parametrize("data, error", [
    (b"GET / HTTP/2.0\r\nHost: p\r\n\r\n", VersionNotSupported),
    (b"GET / HTTP/1.2\r\nHost: p\r\n\r\n", VersionNotSupported),
    (b"GET / HTTP/0.9\r\nHost: p\r\n\r\n", VersionNotSupported),
    (b"GET /\r\n\r\n", BadRequest),
    (b"GET / HTTP/1.1\r\nHost : p\r\n\r\n", BadRequest),
    (b"GET / HTTP/1.1\r\nHost: p\r\n folded\r\n\r\n", BadRequest),
])
def test_refused_heads_raise_what_to_answer(data, error):
    with pytest.raises(error):
        head_of(data)


# ----- the one-pass path for a whole head in the buffer agrees with the line-by-line path -------

def _outcome(read, data: bytes):
    stream = io.BufferedReader(io.BytesIO(data))
    try:
        head = read(stream)
    except Exception as exc:  # noqa: BLE001 - the refusal is the outcome compared
        return type(exc), None
    return head and (head[:4], head.fields.items(), head.keep_alive), stream.read()


_TOKENS = st.sampled_from(["GET", "HEAD", "DELETE", "G\x00T", "get", ""])
_TARGETS = st.sampled_from(["/", "/get/k", "//x/../y", "/?url=http%3A%2F%2Fa&key=k", "/a b", "/\x7f",
                            "http://h/p", "*"])
_VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "http/1.1"])
_FIELDS = st.lists(st.tuples(
    st.sampled_from(["Host", "Connection", "X-Forwarded-For", "Content-Length", "Bad Name", "",
                     "Accept"]),
    st.sampled_from([": a", ":b", ": keep-alive", ": close ", ":\tv\t", ": \x00", ": caf\xe9",
                     " : v", ": a\rb"])), max_size=6)
_ENDS = st.sampled_from(["\r\n", "\n"])


@settings(max_examples=400, deadline=None)
@given(_TOKENS, _TARGETS, _VERSIONS, _FIELDS, _ENDS, st.booleans())
def test_a_whole_head_read_in_one_pass_reads_as_line_by_line(method, target, version, fields, end,
                                                              leading_blank):
    text = ("\r\n" if leading_blank else "") + f"{method} {target} {version}{end}" \
        + "".join(f"{name}{value}{end}" for name, value in fields) + end + "NEXT"
    data = text.encode("latin-1")
    whole = _outcome(request_head._whole_head, data)
    if whole[0] is not None:  # taken in one pass: exactly what the line-by-line path gives
        assert whole == _outcome(request_head._head_by_lines, data)
    assert _outcome(read_head, data) == _outcome(request_head._head_by_lines, data)


def test_a_head_of_100_fields_is_read_in_one_pass_and_101_line_by_line():
    for count, taken in ((MAX_HEADERS, True), (MAX_HEADERS + 1, False)):
        data = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * count + b"\r\n"
        assert (request_head._whole_head(io.BufferedReader(io.BytesIO(data))) is not None) is taken
