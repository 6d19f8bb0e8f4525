"""The RESP parser and encoders alone: no sockets, no proxy."""

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.resp import replies as wire
from proxy.resp.protocol import ProtocolError, RespParser, TooManyArguments, split_args


def parse_all(data: bytes, parser: RespParser | None = None) -> list[list[bytes]]:
    parser = parser or RespParser()
    parser.feed(data)
    commands = []
    while (args := parser.next_command()) is not None:
        commands.append(args)
    return commands


def test_an_array_of_bulks():
    assert parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n") == [[b"GET", b"k"]]


def test_pipelined_commands_come_out_in_order():
    data = b"".join(wire.command(b"GET", b"%d" % i) for i in range(100))
    assert parse_all(data) == [[b"GET", b"%d" % i] for i in range(100)]


def test_a_command_split_anywhere_is_put_back_together():
    data = wire.command(b"MGET", b"a\r\nb", b"", b"\x00" * 70000) + b"PING\r\n"
    for cut in (1, 2, 5, 7, 13, 4000, 65536, len(data) - 1):
        parser = RespParser()
        first = parse_all(data[:cut], parser)
        assert first + parse_all(data[cut:], parser) == [[b"MGET", b"a\r\nb", b"", b"\x00" * 70000],
                                                        [b"PING"]]


def test_byte_by_byte():
    parser, out = RespParser(), []
    for byte in wire.command(b"ECHO", b"hi") + b"PING\r\n":
        out += parse_all(bytes([byte]), parser)
        assert parser.pending or out
    assert out == [[b"ECHO", b"hi"], [b"PING"]]
    assert not parser.pending


def test_empty_arrays_and_blank_lines_are_skipped():
    assert parse_all(b"*0\r\n*-1\r\n\r\n   \r\n*1\r\n$4\r\nPING\r\n") == [[b"PING"]]


@pytest.mark.parametrize("line, words", [
    (b"GET k", [b"GET", b"k"]),
    (b"  get   k  ", [b"get", b"k"]),
    (b'SET "a b" \'c d\'', [b"SET", b"a b", b"c d"]),
    (b'ECHO "\\x41\\n\\t\\"q\\""', [b"ECHO", b'A\n\t"q"']),
    (b"ECHO 'it\\'s' \"\"", [b"ECHO", b"it's", b""]),
    (b"ECHO 'a\\nb'", [b"ECHO", b"a\\nb"]),  # no escapes but \' inside single quotes
])
def test_inline_words_split_like_redis(line, words):
    assert split_args(line) == words
    assert parse_all(line + b"\r\n") == [words]


@pytest.mark.parametrize("data, reason", [
    (b"*x\r\n", "invalid multibulk length"),
    (b"*+1\r\n", "invalid multibulk length"),
    (b"*01\r\n", "invalid multibulk length"),
    (b"*1048577\r\n", "invalid multibulk length"),
    (b"*1\r\n$-1\r\n", "invalid bulk length"),
    (b"*1\r\n$-2\r\n", "invalid bulk length"),
    (b"*1\r\n$536870913\r\n", "invalid bulk length"),
    (b"*1\r\n$1x\r\n", "invalid bulk length"),
    (b"*1\r\n+OK\r\n", "expected '$', got '+'"),
    (b"*1\r\n\x00", "expected '$', got '\\x00'"),
    (b"*1\r\n$1\r\nab\r\n", "expected CRLF after a bulk string"),
    (b'GET "k', "unbalanced quotes in request"),
    (b"GET 'k'x\n", "unbalanced quotes in request"),
    (b"x" * 65537, "too big inline request"),
    (b"*" + b"1" * 65537, "too big mbulk count string"),
    (b"*1\r\n$" + b"1" * 65537, "too big bulk count string"),
])
def test_malformed_input_raises_the_redis_reason(data, reason):
    with pytest.raises(ProtocolError) as err:
        parse_all(data if data.startswith(b"*") else data + b"\n")
    assert str(err.value) == reason


def test_limits_are_configurable():
    parser = RespParser(max_array=2, max_bulk=4)
    assert parse_all(wire.command(b"GET", b"abcd"), parser) == [[b"GET", b"abcd"]]
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        parse_all(wire.command(b"GET", b"abcde"), parser)
    with pytest.raises(ProtocolError, match="invalid multibulk length"):
        parse_all(wire.command(b"MGET", b"a", b"b"), RespParser(max_array=2))


def test_a_command_over_max_args_is_read_whole_then_refused_and_the_next_one_parses():
    parser = RespParser(max_args=3)
    parser.feed(wire.command(b"MGET", b"a", b"b") + wire.command(b"MGET", b"a", b"b", b"c")
                + wire.command(b"GET", b"k") + b"MGET a b c\r\n" + b"PING\r\n")
    assert parser.next_command() == [b"MGET", b"a", b"b"]
    with pytest.raises(TooManyArguments) as caught:
        parser.next_command()
    assert (caught.value.name, caught.value.count) == (b"MGET", 4)
    assert parser.next_command() == [b"GET", b"k"]
    with pytest.raises(TooManyArguments) as inline:
        parser.next_command()
    assert (inline.value.name, inline.value.count) == (b"MGET", 4)
    assert parser.next_command() == [b"PING"]
    assert parser.next_command() is None and not parser.pending


def test_a_dropped_command_keeps_no_more_than_its_name_while_it_arrives():
    parser = RespParser(max_args=3)
    data = wire.command(b"MGET", *[b"k%d" % i for i in range(1000)])
    body, last = data[:-1], data[-1:]
    for i in range(0, len(body), 100):
        parser.feed(body[i:i + 100])
        assert parser.next_command() is None
        assert parser._args == [b"MGET"]  # the keys are skipped, not collected
    parser.feed(last)
    with pytest.raises(TooManyArguments) as caught:
        parser.next_command()
    assert caught.value.count == 1001


def test_before_authentication_redis_limits_apply_at_the_header():
    parser = RespParser()
    parser.authenticated = False
    assert parse_all(wire.command(*[b"x" * 16384] * 10), parser) == [[b"x" * 16384] * 10]
    with pytest.raises(ProtocolError, match="^unauthenticated multibulk length$"):
        parse_all(b"*11\r\n", parser)
    parser = RespParser()
    parser.authenticated = False
    with pytest.raises(ProtocolError, match="^unauthenticated bulk length$"):
        parse_all(b"*2\r\n$4\r\nECHO\r\n$16385\r\n", parser)  # no body needed
    # The general limits come first, as in Redis.
    unauthenticated = RespParser(max_array=20, max_bulk=20000)
    unauthenticated.authenticated = False
    with pytest.raises(ProtocolError, match="^invalid multibulk length$"):
        parse_all(b"*21\r\n", unauthenticated)
    with pytest.raises(ProtocolError, match="^invalid bulk length$"):
        parse_all(b"*1\r\n$20001\r\n", unauthenticated)


def test_authentication_lifts_the_limits_for_the_next_command():
    parser = RespParser()
    parser.authenticated = False
    parser.feed(wire.command(b"AUTH", b"t") + wire.command(b"MGET", *[b"k"] * 11))
    assert parser.next_command() == [b"AUTH", b"t"]
    parser.authenticated = True
    assert parser.next_command() == [b"MGET"] + [b"k"] * 11


def test_the_default_bulk_limit_is_1_mib():
    assert parse_all(wire.command(b"GET", b"k" * 1024 * 1024)) == [[b"GET", b"k" * 1024 * 1024]]
    with pytest.raises(ProtocolError, match="^invalid bulk length$"):
        parse_all(b"*2\r\n$3\r\nGET\r\n$1048577\r\n")


def test_encoders():
    assert wire.bulk(b"a\r\n") == b"$3\r\na\r\n\r\n"
    assert wire.bulk(None) == b"$-1\r\n"
    assert wire.integer(-3) == b":-3\r\n"
    assert wire.array([wire.bulk(b"x"), wire.NULL]) == b"*2\r\n$1\r\nx\r\n$-1\r\n"
    assert wire.error("ERR bad\r\nthing") == b"-ERR bad  thing\r\n"  # cannot end the line early
    assert wire.simple("OK") == wire.OK


def test_resp3_encoders():
    assert wire.null(3) == wire.bulk(None, 3) == b"_\r\n"
    assert wire.bulk(b"x", 3) == wire.bulk(b"x") == b"$1\r\nx\r\n"  # strings are the same
    assert wire.array([wire.bulk(None, 3)]) == b"*1\r\n_\r\n"
    pairs = [(wire.bulk(b"proto"), wire.integer(3)), (wire.bulk(b"m"), wire.EMPTY_ARRAY)]
    assert wire.mapping(pairs, 3) == b"%2\r\n$5\r\nproto\r\n:3\r\n$1\r\nm\r\n*0\r\n"
    assert wire.mapping([], 3) == b"%0\r\n"
    assert wire.members([wire.simple("fast")], 3) == b"~1\r\n+fast\r\n"
    assert wire.members([], 3) == b"~0\r\n"
    # The length counts the "txt:" prefix (RESP3 spec: verbatim strings).
    assert wire.verbatim(b"# Server\r\na:1\r\n", 3) == b"=19\r\ntxt:# Server\r\na:1\r\n\r\n"
    assert wire.verbatim(b"", 3) == b"=4\r\ntxt:\r\n"


def test_the_same_replies_in_resp2():
    assert wire.null(2) == wire.bulk(None, 2) == wire.NULL == b"$-1\r\n"
    pairs = [(wire.bulk(b"save"), wire.bulk(b""))]
    assert wire.mapping(pairs) == wire.mapping(pairs, 2) == b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
    assert wire.mapping([], 2) == wire.EMPTY_ARRAY
    assert wire.members([wire.simple("fast")], 2) == b"*1\r\n+fast\r\n"
    assert wire.verbatim(b"a:1\r\n", 2) == b"$5\r\na:1\r\n\r\n"


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=512), cuts=st.lists(st.integers(0, 512), max_size=8))
def test_arbitrary_bytes_only_ever_raise_the_protocol_error(data, cuts):
    parser = RespParser(max_array=64, max_bulk=256, max_inline=128)
    try:
        for piece in _pieces(data, cuts):
            for args in parse_all(piece, parser):
                assert args and all(isinstance(a, bytes) for a in args)
    except ProtocolError:
        pass


protocol_like = st.lists(st.sampled_from([b"*", b"$", b"0", b"1", b"2", b"-1", b"\r\n", b"\n",
                                          b"\r", b"GET", b" ", b"\"", b"'", b"\\x4"]), max_size=60)


@settings(max_examples=200, deadline=None)
@given(tokens=protocol_like, cuts=st.lists(st.integers(0, 200), max_size=8))
def test_near_miss_frames_only_ever_raise_the_protocol_error(tokens, cuts):
    parser = RespParser()
    try:
        for piece in _pieces(b"".join(tokens), cuts):
            parse_all(piece, parser)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(commands=st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=6), max_size=10),
       cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_any_encoded_commands_come_back_unchanged_however_they_are_cut(commands, cuts):
    data = b"".join(wire.command(*args) for args in commands)
    parser, out = RespParser(), []
    for piece in _pieces(data, cuts):
        out += parse_all(piece, parser)
    assert out == commands
    assert not parser.pending


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)] or [b""]


def test_whole_commands_are_read_by_the_c_reader(monkeypatch):
    def python_reader(self):
        raise AssertionError("the Python reader read a whole, canonical command")

    monkeypatch.setattr(RespParser, "_start_array", python_reader)
    data = b"".join(wire.command(b"GET", b"k%d" % i) for i in range(100))
    assert parse_all(data) == [[b"GET", b"k%d" % i] for i in range(100)]


@pytest.mark.parametrize("data, reason", [
    (b"*1\r\n=8\r\ntxt:abcd\r\n", "expected '$', got '='"),  # RESP3 types the C reader takes
    (b"*2\r\n$3\r\nGET\r\n:1\r\n", "expected '$', got ':'"),
    (b"*1\r\n*1\r\n$1\r\nk\r\n", "expected '$', got '*'"),
    (b"*2\r\n$3\r\nGET\r\n$-1\r\n", "invalid bulk length"),
])
def test_shapes_the_c_reader_accepts_get_the_redis_reason(data, reason):
    with pytest.raises(ProtocolError) as err:
        parse_all(data)
    assert str(err.value) == reason


def test_unauthenticated_limits_hold_for_whole_commands():
    for data, reason in ((wire.command(*[b"k"] * 11), "unauthenticated multibulk length"),
                         (wire.command(b"ECHO", b"x" * 16385), "unauthenticated bulk length")):
        parser = RespParser()
        parser.authenticated = False
        with pytest.raises(ProtocolError) as err:
            parse_all(data, parser)
        assert str(err.value) == reason


# ----- an aggregate header claiming more than the limits is refused before anything is allocated

@pytest.mark.parametrize("data", [
    b"*4294967295\r\n",  # past what a list can hold: MemoryError from the C reader
    b"*2000000000\r\n",
    b"*2\r\n$3\r\nGET\r\n*2000000000\r\n",  # nested, inside a command that starts well
    b"*2\r\n$3\r\nGET\r\n*20000",  # the header split across two reads ...
])
def test_a_huge_array_header_is_a_protocol_error_that_allocates_nothing_for_it(data):
    parser = RespParser()
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            parser.feed(data)
            if data.endswith(b"20000"):
                parser.feed(b"00000\r\n")  # ... and completed by the next
            parser.next_command()
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024  # a list of 2e9 slots would be 16 GB
