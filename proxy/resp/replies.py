"""RESP replies: encoders for RESP2 and RESP3 (a connection's protocol is what its last HELLO
chose; 2 until then). Encoders of the types whose encoding differs between the protocols take
`resp` (2 or 3): RESP3 adds a null, maps, sets and verbatim strings; a RESP2 client gets what Redis
sends it instead (src/networking.c addReplyNull, addReplyMapLen, addReplySetLen,
addReplyVerbatim)."""

RESP2, RESP3 = 2, 3
OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
NULL = b"$-1\r\n"  # RESP2's null bulk string
NULL3 = b"_\r\n"  # RESP3's one null, for a missing string and a missing array alike
EMPTY_ARRAY = b"*0\r\n"


def simple(text: str) -> bytes:
    return b"+" + text.encode() + b"\r\n"


def error(message: str | bytes) -> bytes:
    """An error reply; CR and LF would end it early, so they become spaces (as Redis does)."""
    raw = message.encode("utf-8", "replace") if isinstance(message, str) else message
    return b"-" + raw.replace(b"\r", b" ").replace(b"\n", b" ") + b"\r\n"


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


def null(resp: int = RESP2) -> bytes:
    return NULL3 if resp == RESP3 else NULL


def bulk(value: bytes | None, resp: int = RESP2) -> bytes:
    if value is None:
        return null(resp)
    return b"$%d\r\n%b\r\n" % (len(value), value)


def array(encoded_items: list[bytes]) -> bytes:
    """An array of already-encoded replies."""
    return b"*%d\r\n" % len(encoded_items) + b"".join(encoded_items)


def mapping(encoded_pairs: list[tuple[bytes, bytes]], resp: int = RESP2) -> bytes:
    """A map of already-encoded keys and values: `%<pairs>` in RESP3, in RESP2 an array of
    key, value, key, value ... (HELLO, CONFIG GET, COMMAND DOCS)."""
    flat = b"".join(key + value for key, value in encoded_pairs)
    if resp == RESP3:
        return b"%%%d\r\n" % len(encoded_pairs) + flat
    return b"*%d\r\n" % (2 * len(encoded_pairs)) + flat


def members(encoded_items: list[bytes], resp: int = RESP2) -> bytes:
    """A set (no order, no duplicates): `~<n>` in RESP3, an array in RESP2 (COMMAND's flags)."""
    if resp == RESP3:
        return b"~%d\r\n" % len(encoded_items) + b"".join(encoded_items)
    return array(encoded_items)


def verbatim(text: bytes, resp: int = RESP2, kind: bytes = b"txt") -> bytes:
    """Text meant for people (INFO): RESP3's `=<len>\\r\\ntxt:<text>`, whose three-letter kind
    tells a client how to show it; a bulk string in RESP2."""
    if resp == RESP3:
        return b"=%d\r\n%b:%b\r\n" % (len(kind) + 1 + len(text), kind, text)
    return bulk(text)


def command(*args: bytes) -> bytes:
    """A command as clients send it: an array of bulk strings (for tests and tools)."""
    return array([bulk(arg) for arg in args])
