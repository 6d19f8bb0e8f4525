"""The head of a request is parsed once, by the handler: neither http.server's parse_request
nor the email package's header parser runs while the proxy answers."""

import http.client
from http.server import BaseHTTPRequestHandler

import pytest

from servers import raw_exchange


@pytest.fixture
def no_second_parse(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the request head was parsed a second time")

    # What the email parser builds for http.server and http.client (redis-py reads its own
    # package metadata with the email package too, into other classes).
    monkeypatch.setattr(http.client.HTTPMessage, "__init__", refuse)
    monkeypatch.setattr(BaseHTTPRequestHandler, "parse_request", refuse)


def test_get_key_hits_are_answered_without_email_parsing(make_proxy, r, no_second_parse):
    proxy = make_proxy()
    r.set("k", b"value")
    ask = b"GET /get/k HTTP/1.1\r\nHost: p\r\nAccept: */*\r\n\r\n"
    raw = raw_exchange(proxy.port, ask + ask.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    first, _, rest = raw.partition(b"\r\n\r\n")
    second, _, last_body = rest.removeprefix(b"value").partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nContent-Length: 5" in first
    assert rest.startswith(b"value")
    assert second.startswith(b"HTTP/1.1 200 OK\r\n") and second.endswith(b"\r\nConnection: close")
    assert last_body == b"value"
    assert proxy.proxy.stats["hits_l1"] == 1 and proxy.proxy.stats["reads_redis"] == 1
