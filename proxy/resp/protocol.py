"""RESP wire format, the client's side: an incremental parser of client commands (the replies'
encoders are replies.py's).

Pure: no sockets, no proxy. Follows https://redis.io/docs/latest/develop/reference/protocol-spec/
and, for what a server accepts and refuses, Redis's own `processMultibulkBuffer` and
`processInlineBuffer` (src/networking.c): the same limits and the same error texts.
"""

import re
from typing import cast

import hiredis

MAX_ARRAY = 1024 * 1024  # elements in one command; Redis 6 refuses more (7 allows INT_MAX)
# One argument. Redis's proto-max-bulk-len is 512 MB because SET takes values; this read-only
# proxy's arguments are keys (and PING/ECHO messages), so 1 MiB is ample and bounds what one
# argument can make a connection buffer.
MAX_BULK = 1024 * 1024
# Before AUTH (when tokens are configured), Redis accepts at most 10 arguments of 16 KB each
# (src/networking.c processMultibulkBuffer, authRequired): enough for AUTH and HELLO, and a
# client without a token cannot make the server buffer more.
UNAUTH_MAX_ARRAY = 10
UNAUTH_MAX_BULK = 16384
MAX_INLINE = 64 * 1024  # PROTO_INLINE_MAX_SIZE: also bounds the *<n> and $<n> lines

# Redis's string2ll: an optional '-', no '+', no spaces, no leading zeros.
_INTEGER = re.compile(rb"-?(?:0|[1-9][0-9]{0,18})\Z")
_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("a"): b"\a"}
_HEX = b"0123456789abcdefABCDEF"
# An aggregate header of a million elements or more, anywhere in what arrived (even inside a bulk:
# a false alarm only costs speed): hiredis allocates an array's list at its header, before any
# limit of ours is checked (`*2000000000` held the GIL for seconds, `*4294967295` raised
# MemoryError), so such bytes are left to the Python reader, which refuses them at the header.
_HUGE_AGGREGATE = re.compile(rb"[*%~>|]-?[0-9]{7}")
_SPLIT_HEADER = 16  # bytes of the previous feed searched again: a header may span two feeds


class ProtocolError(Exception):
    """The client's bytes are not RESP; Redis answers `-ERR Protocol error: ...` and closes."""


class TooManyArguments(Exception):
    """A well-formed command with more arguments than `max_args`. It has been read whole (its
    arguments dropped as they arrived, never buffered), so the connection can go on."""

    def __init__(self, name: bytes, count: int):
        super().__init__(f"{count} arguments")
        self.name = name
        self.count = count  # the command's words, its name included


class RespParser:
    """Feed bytes as they arrive; `next_command()` returns each complete command (a list of
    bytes arguments, never empty) or None until more bytes are needed.

    State survives between feeds, so a command may arrive in any number of pieces.
    While `authenticated` is False the unauthenticated limits apply; the server sets it before
    each `next_command()`, so an AUTH lifts them from the very next command of a pipeline.

    A command whole in the buffer is read by hiredis's C reader (the parser redis-py uses) and
    kept only if it is exactly the canonical encoding of what came out, within the limits;
    anything else (inline commands, a command still arriving, every error) is read by the
    Python reader below, which holds Redis's rules and words and bounds a bulk at its $ line.
    """

    def __init__(self, max_array: int = MAX_ARRAY, max_bulk: int = MAX_BULK,
                 max_inline: int = MAX_INLINE, max_args: int = MAX_ARRAY):
        self.max_array = max_array
        self.max_bulk = max_bulk
        self.max_inline = max_inline
        # A command of more words than this (and at most max_array) is read and dropped, then
        # refused with TooManyArguments; the connection stays usable.
        self.max_args = max_args
        self.authenticated = True
        self._buffer = bytearray()
        self._pos = 0
        self._args: list[bytes] | None = None  # the array being read
        self._remaining = 0  # its elements still to come
        self._dropped = 0  # its elements read and dropped (over max_args: only the name is kept)
        self._bulk = -1  # length of the bulk being read, -1 while its $ line is awaited
        self._fast: hiredis.Reader | None = None  # while in use, it holds _buffer[_pos:] too
        self._fast_off = False  # the C reader declined a command: the Python one until the next feed
        self._slow_until = 0  # the C reader is not used before this point of the buffer

    def feed(self, data: bytes | memoryview) -> None:
        if self._pos and self._pos == len(self._buffer):
            self._buffer.clear()
            self._pos = self._slow_until = 0
        elif self._pos > 65536:
            del self._buffer[:self._pos]  # drop what is consumed before it piles up
            self._slow_until = max(0, self._slow_until - self._pos)
            self._pos = 0
        start = max(self._pos, len(self._buffer) - _SPLIT_HEADER)
        self._buffer += data
        if _HUGE_AGGREGATE.search(self._buffer, start):
            self._fast = None
            self._slow_until = len(self._buffer)
        elif self._fast is not None:
            self._fast.feed(data)  # type: ignore[arg-type]  # any buffer; the stub says bytes
        self._fast_off = False

    @property
    def pending(self) -> bool:
        """Whether part of a command has been received (and the rest is awaited)."""
        return self._args is not None or self._pos < len(self._buffer)

    def next_command(self) -> list[bytes] | None:
        if self._args is None:
            if self._pos >= len(self._buffer):
                return None
            if not self._fast_off and self.authenticated and self._pos >= self._slow_until:
                args = self._next_whole_command()
                if args is not None:
                    return args
            else:
                self._fast = None  # the Python reader moves on: the C one would be behind
        while True:
            if self._args is None:
                if self._pos >= len(self._buffer):
                    return None
                if self._buffer[self._pos] == 0x2A:  # '*'
                    if not self._start_array():
                        return None
                    continue
                command = self._inline()
                if command is None:
                    return None
                if command:
                    return command
                continue  # an empty line: Redis ignores it
            if self._remaining == 0:
                args, self._args = self._args, None
                if self._dropped:
                    dropped, self._dropped = self._dropped, 0
                    raise TooManyArguments(args[0], len(args) + dropped)
                if args:
                    return args
                continue  # *0 / *-1: an empty command, ignored as Redis does
            if not self._read_bulk():
                return None

    def _next_whole_command(self) -> list[bytes] | None:
        """The next command through the C reader, if it takes it; else None (and the C reader
        is off until the next feed, so a pipeline of odd commands is not read twice over)."""
        reader = self._fast
        if reader is None:
            if self._buffer[self._pos] != 0x2A:  # '*'
                return None
            reader = self._fast = hiredis.Reader()
            reader.feed(self._buffer, self._pos)  # type: ignore[arg-type]  # any buffer
        try:
            args = reader.gets()
        except hiredis.ProtocolError:
            args = None
        encoded = self._canonical(args)
        if encoded is None or not self._buffer.startswith(encoded, self._pos):
            # Not whole yet, or not an array of bulk strings as Redis reads one (a nested
            # type, a leading zero, a limit passed): the Python reader takes it from here.
            self._fast, self._fast_off = None, True
            return None
        self._pos += len(encoded)
        return cast(list[bytes], args)

    def _canonical(self, args: object) -> bytes | None:
        """The one encoding Redis accepts for `args` (what the C reader returned), if they are
        a non-empty list of bulk strings within this parser's limits."""
        if type(args) is not list or not args:
            return None
        count = len(args)
        if count > self.max_args or count > self.max_array:
            return None
        limit = self.max_bulk
        if not self.authenticated:
            if count > UNAUTH_MAX_ARRAY:
                return None
            limit = min(limit, UNAUTH_MAX_BULK)
        if count == 2:  # GET key, the hot command: one format, no list
            name, key = args
            if type(name) is not bytes or type(key) is not bytes or len(name) > limit \
                    or len(key) > limit:
                return None
            return b"*2\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(name), name, len(key), key)
        for arg in args:
            if type(arg) is not bytes or len(arg) > limit:
                return None
        return b"*%d\r\n" % count + b"".join([b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args])

    # ----- multibulk: *<count>\r\n then <count> times $<len>\r\n<bytes>\r\n ------------------

    def _line(self, too_long: str) -> bytes | None:
        end = self._buffer.find(b"\r\n", self._pos)
        if end < 0:
            if len(self._buffer) - self._pos > self.max_inline:
                raise ProtocolError(too_long)
            return None
        if end - self._pos > self.max_inline:
            raise ProtocolError(too_long)
        line = bytes(self._buffer[self._pos:end])
        self._pos = end + 2
        return line

    def _start_array(self) -> bool:
        line = self._line("too big mbulk count string")
        if line is None:
            return False
        count = parse_integer(line[1:])
        if count is None or count > self.max_array:
            raise ProtocolError("invalid multibulk length")
        if count > UNAUTH_MAX_ARRAY and not self.authenticated:
            raise ProtocolError("unauthenticated multibulk length")
        self._args = []
        self._remaining = max(count, 0)
        self._bulk = -1
        return True

    def _read_bulk(self) -> bool:
        if self._bulk < 0:
            if self._pos >= len(self._buffer):
                return False
            first = self._buffer[self._pos]
            if first != 0x24:  # '$'
                raise ProtocolError(f"expected '$', got '{_printable(first)}'")
            line = self._line("too big bulk count string")
            if line is None:
                return False
            length = parse_integer(line[1:])
            # A request argument is never null: Redis refuses $-1 as it refuses any negative.
            if length is None or length < 0 or length > self.max_bulk:
                raise ProtocolError("invalid bulk length")
            # Refused at the $ line, so an announced bulk is never buffered.
            if length > UNAUTH_MAX_BULK and not self.authenticated:
                raise ProtocolError("unauthenticated bulk length")
            self._bulk = length
        end = self._pos + self._bulk
        if len(self._buffer) < end + 2:
            return False
        if self._buffer[end:end + 2] != b"\r\n":
            raise ProtocolError("expected CRLF after a bulk string")
        assert self._args is not None
        if self._args and self._remaining + len(self._args) + self._dropped > self.max_args:
            self._dropped += 1  # too many to run: skipped, not copied
        else:
            self._args.append(bytes(self._buffer[self._pos:end]))
        self._pos = end + 2
        self._remaining -= 1
        self._bulk = -1
        return True

    # ----- inline: a line of space-separated words, as typed into telnet ---------------------

    def _inline(self) -> list[bytes] | None:
        end = self._buffer.find(b"\n", self._pos)
        if end < 0:
            if len(self._buffer) - self._pos > self.max_inline:
                raise ProtocolError("too big inline request")
            return None
        if end - self._pos > self.max_inline:
            raise ProtocolError("too big inline request")
        line = bytes(self._buffer[self._pos:end])
        self._pos = end + 1
        args = split_args(line.removesuffix(b"\r"))
        if len(args) > self.max_args:
            raise TooManyArguments(args[0], len(args))
        return args


def parse_integer(text: bytes) -> int | None:
    """An integer as Redis's string2ll reads one, else None."""
    return int(text) if _INTEGER.match(text) else None


def _printable(byte: int) -> str:
    return chr(byte) if 0x20 < byte < 0x7F else f"\\x{byte:02x}"


def split_args(line: bytes) -> list[bytes]:
    """Redis's sdssplitargs: words split on whitespace, "double quotes" with \\n \\xHH escapes,
    'single quotes' with only \\'. A closing quote must end the word."""
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in b" \t\r\n\v\f":
            i += 1
        if i >= n:
            return args
        word = bytearray()
        quote = line[i] if line[i] in b"\"'" else 0
        if quote:
            i += 1
        while True:
            if i >= n:
                if quote:
                    raise ProtocolError("unbalanced quotes in request")
                break
            c = line[i]
            if not quote:
                if c in b" \t\r\n\v\f":
                    break
                word.append(c)
                i += 1
            elif c == quote:
                i += 1
                if i < n and line[i] not in b" \t\r\n\v\f":
                    raise ProtocolError("unbalanced quotes in request")
                break
            elif c == 0x5C and i + 1 < n:  # backslash
                nxt = line[i + 1]
                if quote == 0x27:  # inside '...' only \' is an escape
                    if nxt == 0x27:
                        word.append(nxt)
                        i += 2
                    else:
                        word.append(c)
                        i += 1
                elif nxt == ord("x") and i + 3 < n and line[i + 2] in _HEX and line[i + 3] in _HEX:
                    word.append(int(line[i + 2:i + 4], 16))
                    i += 4
                else:
                    word += _ESCAPES.get(nxt, bytes([nxt]))
                    i += 2
            else:
                word.append(c)
                i += 1
        args.append(bytes(word))
