"""RESP pipelining holds at most about SEND_BATCH of replies per connection: past it the pending
replies are sent before the next command runs, so a client that pipelines without reading is
throttled by its own socket, and one that never reads is disconnected within a bound. All
connections together hold at most RESP_MAX_PENDING_BYTES of replies not yet read."""

import logging
import socket

import pytest

from load_env import Settings
from proxy.resp import server as resp_server
from proxy.resp.replies import array, bulk, command, error
from servers import ServerThread, wait_until
from test_metrics import scrape
from test_resp import client, connect, exchange

BIG = 256 * 1024


@pytest.fixture
def sends(monkeypatch) -> list[int]:
    """The size of every sendall the RESP server makes: what it held pending at once."""
    sizes: list[int] = []
    original = resp_server.RespHandler._send

    def recording(handler: resp_server.RespHandler, replies: list[bytes]) -> None:
        sizes.append(sum(len(reply) for reply in replies))
        original(handler, replies)

    monkeypatch.setattr(resp_server.RespHandler, "_send", recording)
    return sizes


def read_replies(sock: socket.socket, expected: list[bytes]) -> None:
    """Read the replies one at a time as they come, each compared byte for byte."""
    buffer = bytearray()
    for index, reply in enumerate(expected):
        while len(buffer) < len(reply):
            chunk = sock.recv(1024 * 1024)
            assert chunk, f"closed before reply {index}"
            buffer += chunk
        assert buffer[:len(reply)] == reply, f"reply {index}"
        del buffer[:len(reply)]
    assert not buffer


def test_a_pipeline_of_large_gets_is_answered_in_order_without_holding_its_replies(
        make_resp_proxy, r, sends):
    values = [bytes([65 + i]) * BIG for i in range(4)]  # distinct, so the order shows
    r.mset({f"big{i}": value for i, value in enumerate(values)})
    resp = make_resp_proxy()
    keys = [f"big{i % 4}".encode() for i in range(200)]
    expected = [bulk(values[i % 4]) for i in range(200)]
    with connect(resp.port) as sock:
        sock.sendall(b"".join(command(b"GET", key) for key in keys))  # 4 KB: all at once
        read_replies(sock, expected)
    # 50 MB of replies, never more than the batch plus one reply pending in the server.
    assert sum(sends) == sum(len(reply) for reply in expected)
    assert max(sends) <= resp_server.SEND_BATCH + len(expected[0])
    assert len(sends) == 200  # each reply is over the batch size: sent as soon as it is made


def test_medium_replies_are_batched_up_to_the_limit(make_resp_proxy, r, sends):
    value = b"m" * 20_000
    r.set("medium", value)
    resp = make_resp_proxy()
    with connect(resp.port) as sock:
        sock.sendall(command(b"GET", b"medium") * 100)
        read_replies(sock, [bulk(value)] * 100)
    assert max(sends) <= resp_server.SEND_BATCH + len(bulk(value))
    assert min(sends[:-1]) >= resp_server.SEND_BATCH  # batched, not one send per reply


def test_small_pipelined_replies_still_go_out_in_one_send(make_resp_proxy, r, sends):
    r.set("k", b"hello")
    resp = make_resp_proxy()
    with connect(resp.port) as sock:
        sock.sendall(command(b"GET", b"k") * 100)  # 2 KB: one segment, one read
        read_replies(sock, [b"$5\r\nhello\r\n"] * 100)
    assert sends == [1100]


def test_a_client_that_pipelines_and_never_reads_is_disconnected(make_resp_proxy, r, sends, caplog):
    caplog.set_level(logging.DEBUG, logger="proxy.resp.server")
    value = b"v" * 16_000
    r.set("v", value)
    r.set("k", b"hello")
    resp = make_resp_proxy(resp_options={"keepalive_timeout": 0.5})
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills soon
    stuck.connect(("127.0.0.1", resp.port))
    with stuck:
        stuck.sendall(command(b"GET", b"v") * 2000)  # 32 MB of replies; never read
        wait_until(lambda: len(sends) > 1)  # it is being answered, and blocks
        # Others are served meanwhile: the stuck send holds its own thread only.
        assert exchange(resp.port, command(b"GET", b"k"), b"$5\r\nhello\r\n") == b"$5\r\nhello\r\n"
        # Bound: KEEPALIVE_TIMEOUT + one batch at MIN_SEND_RATE (about 2 s here).
        wait_until(lambda: resp.thread.server.active_connections == 0, timeout=15)
    assert sum(sends) < 2000 * len(bulk(value))  # it stopped sending
    ended = [rec for rec in caplog.records if "ended" in rec.getMessage()]
    assert ended and all(rec.levelno == logging.DEBUG and rec.exc_info is None for rec in ended)
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert exchange(resp.port, command(b"GET", b"k"), b"$5\r\nhello\r\n") == b"$5\r\nhello\r\n"


# ----- RESP_MAX_PENDING_BYTES: replies held for clients that do not read (issue 19 item 10) ------

MIB = 1024 * 1024
BIG_KEYS = [f"big{i}".encode() for i in range(4)]
BIG_VALUES = [bytes([97 + i]) * (2 * MIB) for i in range(4)]
BIG_MGET = command(b"MGET", *BIG_KEYS)
BIG_REPLY = array([bulk(value) for value in BIG_VALUES])  # 8 MiB: more than the kernel buffers


def test_resp_max_pending_bytes_defaults_to_256_mib():
    assert Settings().resp_max_pending_bytes == resp_server.MAX_PENDING_BYTES == 256 * MIB
    server = resp_server.RespServer(("127.0.0.1", 0), None)  # type: ignore[arg-type]
    try:
        assert server.pending.limit == 256 * MIB
    finally:
        server.server_close()


def not_reading(port: int) -> socket.socket:
    """A connection whose client will not read: a small receive buffer, so the proxy's send of
    a large reply blocks once its own socket buffer (at most 4 MiB here) is full."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def receive(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size and (chunk := sock.recv(min(size - len(data), 1 << 20))):
        data += chunk
    return bytes(data)


def refused_reply(size: int, held: int, limit: int) -> bytes:
    return error(f"ERR reply of {size} bytes not sent: RESP clients have {held} bytes of replies "
                 f"not yet read, and RESP_MAX_PENDING_BYTES is {limit}; retry shortly")


def test_replies_held_for_clients_that_do_not_read_stay_within_resp_max_pending_bytes(make_proxy, r):
    r.mset(dict(zip(BIG_KEYS, BIG_VALUES, strict=True)))
    fits = b"f" * 16384
    r.mset({"fits": fits, "over": fits + b"f", "k": b"hello"})
    held_two = 2 * len(BIG_REPLY)
    limit = held_two + len(bulk(fits))  # two big replies and one GET of `fits`, not a byte more
    http = make_proxy()
    server = resp_server.make_server("127.0.0.1", 0, http.proxy, max_pending_bytes=limit,
                                     keepalive_timeout=30)
    http.thread.server.metrics.watch("resp", server)
    resp = ServerThread(server).start()
    stuck: list[socket.socket] = []
    try:
        for count in (1, 2):
            stuck.append(not_reading(resp.port))
            stuck[-1].sendall(BIG_MGET)  # and never reads
            wait_until(lambda count=count: server.pending.held == count * len(BIG_REPLY))
        # A third reply that would pass the bound is not built up in memory: an error instead.
        stuck.append(not_reading(resp.port))
        stuck[-1].sendall(BIG_MGET)
        refusal = refused_reply(len(BIG_REPLY), held_two, limit)
        assert receive(stuck[-1], len(refusal)) == refusal
        assert server.pending.held == held_two
        # Other clients are answered, up to the room left exactly; one byte more is refused and
        # the connection stays usable.
        with connect(resp.port) as other:
            other.sendall(command(b"GET", b"fits"))
            assert receive(other, len(bulk(fits))) == bulk(fits)
            other.sendall(command(b"GET", b"over"))
            refusal = refused_reply(len(bulk(fits)) + 1, held_two, limit)
            assert receive(other, len(refusal)) == refusal
            assert exchange(resp.port, command(b"GET", b"k"), bulk(b"hello")) == bulk(b"hello")
        with client(resp.port) as redis_py:
            info = redis_py.info()
        assert (info["pending_reply_bytes"], info["max_pending_reply_bytes"]) == (held_two, limit)
        assert info["rejected_replies"] == 2
        assert scrape(http.port)[("redis_proxy_resp_pending_reply_bytes", ())] == held_two
    finally:
        for sock in stuck:
            sock.close()  # unread data: a reset, which ends the proxy's sends at once
    wait_until(lambda: server.pending.held == 0)
    with connect(resp.port) as sock:  # room again: the same MGET is answered whole
        sock.sendall(BIG_MGET)
        assert receive(sock, len(BIG_REPLY)) == BIG_REPLY
    resp.stop()


def test_a_client_that_stops_reading_a_large_reply_is_dropped_after_the_keepalive_timeout(
        make_resp_proxy, r):
    r.mset(dict(zip(BIG_KEYS, BIG_VALUES, strict=True)))
    resp = make_resp_proxy(resp_options={"keepalive_timeout": 2})
    server = resp.thread.server
    with not_reading(resp.port) as sock:
        sock.sendall(BIG_MGET)
        wait_until(lambda: server.pending.held == len(BIG_REPLY))  # being sent, and held for it
        # Dropped once KEEPALIVE_TIMEOUT passes with nothing taken, not when the whole reply's
        # allowance runs out (2 s + 8 MiB at MIN_SEND_RATE: 130 s).
        wait_until(lambda: server.active_connections == 0 and server.pending.held == 0, timeout=15)
        got = bytearray()
        while chunk := sock.recv(1 << 20):  # what its socket buffers had taken, then the close
            got += chunk
    assert 0 < len(got) < len(BIG_REPLY) and BIG_REPLY.startswith(got)
