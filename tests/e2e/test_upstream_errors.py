"""Upstream failures say what failed in plain words (issue 11): a name that does not resolve, a
port that refuses, an origin that does not answer in time. Real sockets on loopback; names go
through an injected resolver."""

import logging
import socket
import threading

import pytest

from net_guard import FakeDNS, loopback_only  # noqa: F401
from proxy.upstream.policy import UpstreamPolicy
from servers import q, request, wait_until

pytestmark = pytest.mark.usefixtures("loopback_only")


def closed_port() -> int:
    """A loopback port nothing listens on: bound, then released (connecting to it is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_refused_port_is_502_naming_host_and_port(make_proxy, r):
    port = closed_port()
    proxy = make_proxy()

    got = request(proxy.port, q(f"http://127.0.0.1:{port}/page", "refused"))

    assert got.status == 502
    assert got.json() == {"error": "bad gateway", "detail": f"connection refused by 127.0.0.1:{port}"}
    assert r.exists("rp:refused") == 0


def test_a_refused_port_behind_a_name_names_the_name(make_proxy):
    port = closed_port()
    dns = FakeDNS({"origin.test": ["127.0.0.1"]})
    proxy = make_proxy(upstream_policy=UpstreamPolicy(allow_private=True, resolver=dns,
                                                      allowed_ports=(port,)))

    got = request(proxy.port, q(f"http://origin.test:{port}/page"))

    assert got.status == 502
    assert got.json()["detail"] == f"connection refused by origin.test:{port}"


def test_a_name_that_does_not_resolve_is_502_could_not_resolve(upstream, make_proxy):
    dns = FakeDNS({})
    proxy = make_proxy(upstream_policy=UpstreamPolicy(allow_private=True, resolver=dns,
                                                      allowed_ports=(upstream.port,)))

    got = request(proxy.port, q(f"http://example.test:{upstream.port}/"))

    assert got.status == 502
    assert got.json()["detail"].startswith("could not resolve example.test (")


def test_an_origin_that_does_not_answer_is_504_timed_out_after_n_s(upstream, make_proxy, r):
    release = threading.Event()
    upstream.route("/hang", lambda handler: (release.wait(10), handler.reply(200, b"late")))
    proxy = make_proxy(timeout=0.3)
    try:
        got = request(proxy.port, q(upstream.url("/hang"), "hang"))
    finally:
        release.set()

    assert got.status == 504
    assert got.json() == {"error": "upstream timeout",
                          "detail": f"timed out after 0.3 s waiting for 127.0.0.1:{upstream.port}"}
    assert r.exists("rp:hang") == 0


def test_an_origin_refusing_again_and_again_is_warned_about_once(make_proxy, caplog):
    caplog.set_level(logging.WARNING, logger="redis_proxy")
    port = closed_port()
    proxy = make_proxy()

    statuses = [request(proxy.port, q(f"http://127.0.0.1:{port}/p{i}")).status for i in range(5)]

    assert statuses == [502] * 5
    assert proxy.proxy.stats["upstream_errors"] == 5
    warnings = [r.getMessage() for r in caplog.records if "upstream fetch" in r.getMessage()]
    assert warnings == [f"upstream fetch from 127.0.0.1:{port} failed: "
                        f"connection refused by 127.0.0.1:{port}"]


def test_an_origin_trickling_its_header_is_cut_at_the_deadline_one_request_after_another(
        upstream, make_proxy, r):
    # Each byte comes well within the per-read timeout: only the fetch's total deadline (the
    # cutter, one thread for every request) ends it. Twice: a cut request's successor is cut too.
    stop, ends = threading.Event(), []

    def trickle(handler):
        handler.close_connection = True
        try:
            handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            for _ in range(60):  # 3 s of header, past the 0.5 s deadline; then a whole answer
                if stop.wait(0.05):
                    return
                handler.wfile.write(b"a")
            handler.wfile.write(b"\r\nContent-Length: 4\r\nConnection: close\r\n\r\nlate")
            ends.append("sent whole")
        except OSError:
            ends.append("cut")

    upstream.route("/trickle", trickle)
    proxy = make_proxy(timeout=0.5)
    try:
        for number, key in enumerate(("t1", "t2"), 1):
            got = request(proxy.port, q(upstream.url("/trickle"), key))
            assert (got.status, got.json()["error"]) == (504, "upstream timeout")
            assert got.json()["detail"].startswith("timed out after 0.5 s")
            assert r.exists(f"rp:{key}") == 0
            wait_until(lambda n=number: len(ends) == n)
    finally:
        stop.set()
    assert ends == ["cut", "cut"]  # the origin found its socket shut, mid-header
    fine = request(proxy.port, q(upstream.serve("/fine", b"fine"), "fine"))
    assert (fine.status, fine.body) == (200, b"fine")
