"""The README's Limits table, row by row, at its boundary: the largest input each limit admits
and the smallest it refuses. Rows whose boundary another test checks name that test here, and
the number the README states is held against the code's constant."""

import os
import re

import pytest

from load_env import Settings
from proxy.cache import keys as cache_keys
from proxy.resp import commands as resp_commands
from proxy.resp import protocol as wire
from proxy.resp import server as resp_server
from proxy.resp.protocol import ProtocolError, RespParser
from proxy.serving import request_head
from servers import ROOT, q, request

README = os.path.join(ROOT, "README.md")


def limits_table() -> dict[str, tuple[str, str, int]]:
    """`limit` -> (`at most` column, `one more gets` column, the number stated), with the line
    number of the row, from the README's `## Limits` section."""
    with open(README, encoding="utf-8") as f:
        lines = f.read().split("\n")
    start = lines.index("## Limits")
    rows: dict[str, tuple[str, str, int]] = {}
    for number, line in enumerate(lines[start + 1:], start + 2):
        if line.startswith("## "):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")] if line.startswith("| ") else []
        if len(cells) != 3 or cells[0] == "limit":
            continue
        stated = re.match(r"([\d,]+) ", cells[1])
        assert stated, f"README.md:{number}: the 'at most' cell must open with the number: {cells[1]!r}"
        assert cells[0] not in rows, f"README.md:{number}: {cells[0]!r} is stated twice"
        rows[cells[0]] = (cells[1], cells[2], int(stated.group(1).replace(",", "")))
    return rows


LIMITS = limits_table()


def stated(name: str) -> int:
    return LIMITS[name][2]


def refusal(name: str) -> tuple[int, str]:
    """The status and error the README's 'one more gets' cell names for an HTTP limit."""
    match = re.match(r"(\d{3}) `([^`]+)`", LIMITS[name][1])
    assert match, f"the Limits row {name!r} names no status and error"
    return int(match.group(1)), match.group(2)


# Rows whose boundary (N admitted, N + 1 refused) an existing test checks: the constant the
# proxy uses, the file and test that check it, and a fragment of the refusal both state.
HEAD = "tests/e2e/test_hostile.py", "test_a_head_limit_admits_exactly_n_and_refuses_n_plus_one"
RESP_UNIT = "tests/unit/test_resp_protocol.py"
CHECKED_ELSEWHERE = {
    "HTTP request line": (request_head.MAX_REQUEST_LINE, *HEAD, "uri too long"),
    "HTTP header lines": (request_head.MAX_HEADERS, *HEAD, "request headers too large"),
    "HTTP header line": (request_head.MAX_HEADER_LINE, *HEAD, "request headers too large"),
    "HTTP header block": (request_head.MAX_HEADER_BYTES, *HEAD, "request headers too large"),
    "request body (reverse-proxy mode)": (
        Settings().max_body_bytes, "tests/e2e/test_reverse_proxy.py",
        "test_a_body_of_max_body_bytes_passes_and_one_byte_more_is_413", "request body too large"),
    "RESP keys of one `MGET` or `EXISTS`": (
        resp_commands.MAX_KEYS, "tests/e2e/test_resp.py",
        "test_mget_and_exists_take_10000_keys_and_refuse_10001_on_a_usable_connection",
        "too many keys for"),
    "RESP values of one `MGET` reply": (
        resp_commands.MAX_REPLY_BYTES, "tests/e2e/test_resp.py",
        "test_an_mget_reply_may_carry_64_mib_of_values_and_not_a_byte_more", "reply too large"),
    "RESP replies not yet read, all connections together": (
        resp_server.MAX_PENDING_BYTES, "tests/e2e/test_resp_backpressure.py",
        "test_replies_held_for_clients_that_do_not_read_stay_within_resp_max_pending_bytes",
        "bytes not sent"),
    "upstream fetches in flight": (
        Settings().max_fetches, "tests/e2e/test_budgets.py",
        "test_max_fetches_are_in_flight_at_once_and_one_more_gets_503_too_many_fetches",
        "too many fetches"),
    "RESP argument": (wire.MAX_BULK, RESP_UNIT, "test_the_default_bulk_limit_is_1_mib",
                      "invalid bulk length"),
    "RESP arguments of one command before `AUTH` (tokens set)": (
        wire.UNAUTH_MAX_ARRAY, RESP_UNIT, "test_before_authentication_redis_limits_apply_at_the_header",
        "unauthenticated multibulk length"),
    "RESP argument before `AUTH` (tokens set)": (
        wire.UNAUTH_MAX_BULK, RESP_UNIT, "test_before_authentication_redis_limits_apply_at_the_header",
        "unauthenticated bulk length"),
}
URL_ROW = "`url` (and the URL sent, `params` appended)"
CHECKED_HERE = {URL_ROW, "`key`", "`params`", "`params` values", "upstream body",
                "RESP arguments of one command", "RESP inline command line"}


def test_every_stated_limit_has_a_boundary_test_and_every_test_a_row():
    assert set(LIMITS) == set(CHECKED_ELSEWHERE) | CHECKED_HERE


@pytest.mark.parametrize("name", sorted(CHECKED_ELSEWHERE))
def test_the_stated_number_is_the_one_the_proxy_uses_and_its_boundary_test_exists(name):
    constant, path, test_name, fragment = CHECKED_ELSEWHERE[name]
    assert stated(name) == constant
    assert fragment in LIMITS[name][1]
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        source = f.read()
    assert f"def {test_name}(" in source and fragment in source


# ----- the URL role: url, key, params, the upstream body -----------------------------------------

@pytest.fixture
def proxy(make_proxy):
    """A proxy with the default limits of Settings (the README's numbers are those defaults)."""
    defaults = Settings()
    return make_proxy(max_url_bytes=defaults.max_url_bytes, max_key_bytes=defaults.max_key_bytes,
                      max_bytes=defaults.upstream_max_bytes)


def assert_refused(got, name: str) -> None:
    assert (got.status, got.json()["error"]) == refusal(name), got


def test_a_url_of_max_url_bytes_is_fetched_and_one_byte_more_is_refused(proxy, upstream, r):
    limit = stated(URL_ROW)
    assert limit == Settings().max_url_bytes
    base = upstream.serve("/long", b"long url") + "?pad="
    at_limit = base + "a" * (limit - len(base))
    got = request(proxy.port, q(at_limit, "at"))
    assert (got.status, got.body) == (200, b"long url")
    assert_refused(request(proxy.port, q(at_limit + "a", "over")), URL_ROW)
    assert upstream.hits["/long"] == 1 and r.exists("rp:over") == 0


def test_the_url_sent_with_params_appended_is_held_to_the_same_limit(proxy, upstream, r):
    limit = stated(URL_ROW)
    url = upstream.serve("/params", b"with params")
    pad = limit - len(url + "?p=")
    got = request(proxy.port, q(url, "at", {"p": "a" * pad}))
    assert (got.status, got.body) == (200, b"with params")
    assert upstream.requests[-1][0] == "/params?p=" + "a" * pad
    assert_refused(request(proxy.port, q(url, "over", {"p": "a" * (pad + 1)})), URL_ROW)
    assert upstream.hits["/params"] == 1 and r.exists("rp:over") == 0


@pytest.mark.parametrize("unit", ["k", "\u00e9"], ids=["ascii", "two-byte UTF-8"])
def test_a_key_of_max_key_bytes_is_stored_and_one_byte_more_is_refused(proxy, upstream, r, unit):
    limit = stated("`key`")
    assert limit == Settings().max_key_bytes
    url = upstream.serve("/keyed", b"keyed")
    key = unit * (limit // len(unit.encode()))
    assert len(key.encode()) == limit
    got = request(proxy.port, q(url, key))
    assert (got.status, got.body) == (200, b"keyed")
    assert r.get(b"rp:" + key.encode()) is not None
    assert_refused(request(proxy.port, q(url, key + "k")), "`key`")
    assert upstream.hits["/keyed"] == 1 and r.dbsize() == 1


def test_params_of_the_stated_bytes_are_taken_and_one_byte_more_is_refused(proxy, upstream, r):
    limit = stated("`params`")
    assert limit == cache_keys.MAX_PARAMS_BYTES
    url = upstream.serve("/p", b"params")
    head, tail = '{"p": "v"', "}"  # padded with JSON whitespace, so the URL sent stays short
    at_limit = head + " " * (limit - len(head + tail)) + tail
    got = request(proxy.port, q(url, "at", at_limit))
    assert (got.status, got.body) == (200, b"params")
    over = request(proxy.port, q(url, "over", at_limit[:-1] + " }"))
    assert_refused(over, "`params`")
    assert over.json()["detail"] == f"params is longer than {limit} bytes"
    assert upstream.hits["/p"] == 1 and r.exists("rp:over") == 0


def test_params_of_the_stated_values_are_sent_and_one_value_more_is_refused(proxy, upstream, r):
    limit = stated("`params` values")
    assert limit == cache_keys.MAX_PARAMS_ITEMS
    url = upstream.serve("/v", b"values")
    got = request(proxy.port, q(url, "at", {"v": [1] * (limit - 1), "w": True}))
    assert (got.status, got.body) == (200, b"values")
    assert upstream.requests[-1][0] == "/v?" + "v=1&" * (limit - 1) + "w=true"
    over = request(proxy.port, q(url, "over", {"v": [1] * limit, "w": True}))
    assert_refused(over, "`params` values")
    assert over.json()["detail"] == f"params has more than {limit} values"
    assert upstream.hits["/v"] == 1 and r.exists("rp:over") == 0


def chunked(body: bytes):
    """An upstream route sending `body` with no Content-Length, so the cap holds while reading."""
    def route(handler):
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.send_header("Connection", "close")
        handler.end_headers()
        for i in range(0, len(body), 1 << 20):
            piece = body[i:i + (1 << 20)]
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        handler.wfile.write(b"0\r\n\r\n")
    return route


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_upstream_body_of_the_cap_is_stored_and_one_byte_more_is_413(proxy, upstream, r, framing):
    limit = stated("upstream body")
    assert limit == Settings().upstream_max_bytes
    for path, size in (("/at", limit), ("/over", limit + 1)):
        body = b"b" * size
        if framing == "chunked":
            upstream.route(path, chunked(body))
        else:
            upstream.serve(path, body)
    got = request(proxy.port, q(upstream.url("/at"), "at"), timeout=60)
    assert got.status == 200 and got.body == b"b" * limit
    assert r.exists("rp:at") == 1
    assert_refused(request(proxy.port, q(upstream.url("/over"), "over"), timeout=60), "upstream body")
    assert r.exists("rp:over") == 0


# ----- RESP framing limits, at the parser that enforces them ----------------------------------

def test_a_command_of_the_stated_arguments_is_read_and_one_more_is_a_protocol_error():
    limit = stated("RESP arguments of one command")
    assert limit == wire.MAX_ARRAY
    parser = RespParser()
    parser.feed(b"*%d\r\n" % limit)
    assert parser.next_command() is None  # admitted: waiting for its arguments
    parser = RespParser()
    parser.feed(b"*%d\r\n" % (limit + 1))
    with pytest.raises(ProtocolError, match="^invalid multibulk length$"):
        parser.next_command()
    assert "invalid multibulk length" in LIMITS["RESP arguments of one command"][1]


def test_an_inline_line_of_the_stated_bytes_is_read_and_one_more_is_a_protocol_error():
    limit = stated("RESP inline command line")
    assert limit == wire.MAX_INLINE
    parser = RespParser()
    parser.feed(b"GET " + b"k" * (limit - 4) + b"\n")
    assert parser.next_command() == [b"GET", b"k" * (limit - 4)]
    parser = RespParser()
    parser.feed(b"GET " + b"k" * (limit - 3) + b"\n")
    with pytest.raises(ProtocolError, match="^too big inline request$"):
        parser.next_command()
    assert "too big inline request" in LIMITS["RESP inline command line"][1]


def test_the_limits_table_states_each_number_once_as_at_most():
    """One place, one way: no other README line restates a limit's number as 'over N' or
    'more than N'."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    for phrase in ("over 64 KiB", "over 8190", "more than 100", "over 32 KiB", "over 1 MiB",
                   "over 1,048,576"):
        assert phrase not in text, f"README restates a limit outside the Limits table: {phrase!r}"
