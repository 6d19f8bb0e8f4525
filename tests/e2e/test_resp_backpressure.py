"""RESP pipelining holds at most about SEND_BATCH of replies per connection: past it the pending
replies are sent before the next command runs, so a client that pipelines without reading is
throttled by its own socket, and one that never reads is disconnected within a bound."""

import logging
import socket

import pytest

from proxy.resp import server as resp_server
from proxy.resp.replies import bulk, command
from servers import wait_until
from test_resp import connect, exchange

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
