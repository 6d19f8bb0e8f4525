"""The upstream session keeps no cookie (issue 8): every fetch sends the same request headers
upstream, whatever an upstream set before, for whichever client and to whichever upstream.

Two real upstreams on two ports of 127.0.0.1 (a cookie for a host is sent to every port of it),
the proxy on port 0. The upstreams record the header lines of each request as received, in
order, and the tests compare them byte for byte, Host aside (it names the port)."""


import pytest

from servers import Upstream, q, request

SECRET_COOKIE = "session=alice-secret; Path=/"


def header_lines(handler) -> bytes:  # noqa: ANN001 - an UpstreamHandler
    """The request's header lines as the upstream received them, in order, without Host."""
    return b"".join(f"{name}: {value}\r\n".encode("latin-1")
                    for name, value in handler.headers.items() if name.lower() != "host")


def recording(seen: list[bytes], status: int = 200, headers: dict[str, str] | None = None):
    """A route that records the request's header lines and answers with the Cookie it got."""
    def route(handler) -> None:  # noqa: ANN001
        seen.append(header_lines(handler))
        cookie = handler.headers.get("Cookie", "").encode("latin-1")
        handler.reply(status, b"cookie=" + cookie, {"Content-Type": "text/plain", **(headers or {})})
    return route


@pytest.fixture
def other():
    server = Upstream().start()
    yield server
    server.stop()


def test_a_cookie_one_upstream_set_is_sent_to_neither_upstream_afterwards(upstream, other,
                                                                         make_proxy):
    seen_login, seen_a, seen_b = [], [], []
    upstream.route("/login", recording(seen_login, headers={"Set-Cookie": SECRET_COOKIE}))
    upstream.route("/page", recording(seen_a))
    other.route("/page", recording(seen_b))
    proxy = make_proxy()

    login = request(proxy.port, q(upstream.url("/login"), "login"))  # client 1
    page_a = request(proxy.port, q(upstream.url("/page"), "page-a"))  # client 2, same upstream
    page_b = request(proxy.port, q(other.url("/page"), "page-b"))  # client 3, another port

    assert (login.status, login.body) == (200, b"cookie=")
    assert (page_a.status, page_a.body, page_a.headers["X-Cache"]) == (200, b"cookie=", "MISS")
    assert (page_b.status, page_b.body, page_b.headers["X-Cache"]) == (200, b"cookie=", "MISS")
    assert len(seen_login) == len(seen_a) == len(seen_b) == 1
    assert seen_a[0] == seen_login[0] and seen_b[0] == seen_login[0]
    assert b"cookie:" not in seen_login[0].lower()
    # What was stored and is served as a hit is the anonymous page, to any client.
    again = request(proxy.port, q(upstream.url("/page"), "page-a"))
    assert (again.status, again.body, again.headers["X-Cache"]) == (200, b"cookie=", "HIT")
    assert upstream.hits == {"/login": 1, "/page": 1} and other.hits == {"/page": 1}
    assert len(proxy.proxy.fetcher.session.cookies) == 0


def test_a_cookie_set_on_a_redirect_is_not_sent_to_the_redirect_target(upstream, make_proxy):
    seen_hop, seen_page = [], []
    upstream.route("/hop", recording(seen_hop, status=302,
                                     headers={"Set-Cookie": SECRET_COOKIE, "Location": "/page"}))
    upstream.route("/page", recording(seen_page))
    proxy = make_proxy()

    got = request(proxy.port, q(upstream.url("/hop"), "hop"))

    assert (got.status, got.body) == (200, b"cookie=")
    assert upstream.hits == {"/hop": 1, "/page": 1}
    assert seen_page == seen_hop and b"cookie:" not in seen_page[0].lower()


def test_64_cookie_setting_urls_do_not_grow_the_outbound_headers(upstream, make_proxy):
    seen = []
    for i in range(64):
        upstream.route(f"/set{i}", recording(seen, headers={
            "Set-Cookie": f"c{i}={'x' * 1024}; Path=/; Max-Age=3600"}))
    upstream.route("/page", recording(seen))
    proxy = make_proxy()

    for i in range(64):
        got = request(proxy.port, q(upstream.url(f"/set{i}"), f"set{i}"))
        assert (got.status, got.body) == (200, b"cookie="), i
    page = request(proxy.port, q(upstream.url("/page"), "page"))

    assert (page.status, page.body) == (200, b"cookie=")
    assert len(seen) == 65 and set(seen) == {seen[0]}
    assert b"cookie:" not in seen[0].lower() and len(seen[0]) < 200
