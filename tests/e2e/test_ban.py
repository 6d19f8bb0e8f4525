"""Bans (`DELETE /ban?path=GLOB[&host=GLOB]`, Varnish's ban): matching entries stored before the
ban are stale from then on, checked when read, on every proxy sharing the Redis; a real Redis,
a real upstream counting its hits, proxies on port 0, and an injected clock for the ban's life."""

import time
from urllib.parse import quote

import pytest

from proxy.store.bans import BAN_LIFETIME, KEY, MAX_BANS
from servers import q, request, wait_until
from test_origins import second_origin, sites_proxy  # noqa: F401 - fixtures
from test_reverse_proxy import site_proxy  # noqa: F401 - a fixture

BANS = "rp:" + KEY


class Clock:
    """Starts at the real time: the upstream's Date is real, and an entry's age is measured from it."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def page(upstream, path: str) -> str:
    return upstream.serve(path, b"page " + path.encode(), headers={"Cache-Control": "max-age=600"})


def ban(port: int, path: str, host: str = "", method: str = "DELETE"):
    query = "path=" + quote(path, safe="") + ("&host=" + quote(host, safe="") if host else "")
    return request(port, "/ban?" + query, method=method)


def x_cache(port: int, url: str) -> str:
    return request(port, q(url)).headers["X-Cache"]


@pytest.mark.parametrize("method", ["DELETE", "PURGE"])
def test_a_ban_makes_matching_entries_stale_and_leaves_the_others(make_proxy, upstream, r, method):
    proxy = make_proxy()
    blog_a, blog_b, news = page(upstream, "/blog/a"), page(upstream, "/blog/2026/b") + "?x=1", page(upstream, "/news")
    for url in (blog_a, blog_b, news):
        assert x_cache(proxy.port, url) == "MISS"
        assert x_cache(proxy.port, url) == "HIT"

    made = ban(proxy.port, "/blog/*", method=method)

    assert made.status == 200
    assert made.json() == {"banned": {"host": "*", "path": "/blog/*", "at": made.json()["banned"]["at"]},
                           "bans": 1}
    assert r.zcard(BANS) == 1 and 86400 - 5 <= r.ttl(BANS) <= 86400
    answer = request(proxy.port, q(blog_a))
    assert (answer.status, answer.body, answer.headers["X-Cache"]) == (200, b"page /blog/a", "MISS")
    assert x_cache(proxy.port, blog_b) == "MISS"  # `*` crosses '/' and the query
    assert x_cache(proxy.port, news) == "HIT"
    assert (upstream.hits["/blog/a"], upstream.hits["/blog/2026/b"], upstream.hits["/news"]) == (2, 2, 1)
    # Fetched after the ban: not banned again.
    assert [x_cache(proxy.port, url) for url in (blog_a, blog_b)] == ["HIT", "HIT"]
    assert upstream.hits["/blog/a"] == 2


def test_a_ban_through_one_proxy_reaches_the_l1_of_another(make_proxy, upstream):
    first, second = make_proxy(), make_proxy()
    url = page(upstream, "/blog/shared")
    for proxy in (first, second):
        x_cache(proxy.port, url)
        assert x_cache(proxy.port, url) == "HIT"  # from its L1
    assert upstream.hits["/blog/shared"] == 1  # one fetch for both (the second read Redis)

    assert ban(first.port, "/blog/*").status == 200

    # The other proxy reads the bans again within a second (proxy.store.bans.REFRESH).
    wait_until(lambda: x_cache(second.port, url) == "MISS", timeout=5)
    assert upstream.hits["/blog/shared"] == 2
    assert x_cache(first.port, url) == "HIT"  # the second's fetch, stored after the ban


def test_a_host_glob_bans_only_its_hosts(make_proxy, upstream):
    proxy = make_proxy()
    url = page(upstream, "/blog/h")
    x_cache(proxy.port, url)
    assert ban(proxy.port, "/blog/*", host="other.example").json()["banned"]["host"] == "other.example"
    assert x_cache(proxy.port, url) == "HIT"
    assert ban(proxy.port, "/blog/*", host="127.0.0.*").status == 200
    assert x_cache(proxy.port, url) == "MISS"


def test_get_ban_lists_the_bans_in_force(make_proxy):
    proxy = make_proxy()
    ban(proxy.port, "/a/*")
    ban(proxy.port, "/b", host="api.example")
    listed = request(proxy.port, "/ban")
    assert listed.status == 200 and listed.headers["Cache-Control"] == "no-store"
    assert [(b["host"], b["path"]) for b in listed.json()["bans"]] == [("*", "/a/*"), ("api.example", "/b")]


def test_a_ban_lasts_its_lifetime_and_no_longer(make_proxy, upstream):
    clock = Clock()
    proxy = make_proxy(clock=clock, ttl=10 * BAN_LIFETIME)
    early, late = (upstream.serve(p, b"old " + p.encode(), headers={"Cache-Control": "max-age=900000"})
                   for p in ("/blog/early", "/blog/late"))
    x_cache(proxy.port, early)
    x_cache(proxy.port, late)
    clock.now += 10
    assert ban(proxy.port, "/blog/*").status == 200

    clock.now += BAN_LIFETIME  # the ban's last instant
    assert x_cache(proxy.port, early) == "MISS"
    clock.now += 1  # past it: an entry stored before the ban is reused again
    assert x_cache(proxy.port, late) == "HIT"
    assert (upstream.hits["/blog/early"], upstream.hits["/blog/late"]) == (2, 1)


def test_at_most_1000_bans_and_one_more_is_503(make_proxy, r):
    assert MAX_BANS == 1000
    proxy = make_proxy()
    assert [ban(proxy.port, f"/p{i}").status for i in range(MAX_BANS)] == [200] * MAX_BANS
    refused = ban(proxy.port, "/one-more")
    assert refused.status == 503 and refused.headers["Retry-After"] == "60"
    assert refused.json() == {"error": "too many bans", "detail": (
        "1000 bans are in force, each for 86400 s: purge by URL, key or tag instead, or wait for "
        "the oldest to end")}
    assert r.zcard(BANS) == MAX_BANS


@pytest.mark.parametrize("query, detail", [
    ("", "give path=<glob>, e.g. path=/blog/* (percent-encoded)"),
    ("path=blog", "path must start with '/' or '*', hold visible ASCII only and be at most 1024 bytes"),
    ("path=/a%20b", "path must start with '/' or '*', hold visible ASCII only and be at most 1024 bytes"),
    ("path=/" + "a" * 1024, "path must start with '/' or '*', hold visible ASCII only and be at most 1024 bytes"),
    ("path=/a&host=http://x", "host must be a host name or a glob of one (letters, digits, '.', '-', '*'), "
                              "without scheme or port"),
    ("path=/a&url=x", "unknown query field 'url'; give path=<glob> and optionally host=<glob>"),
])
def test_a_bad_ban_is_400_and_bans_nothing(make_proxy, r, query, detail):
    proxy = make_proxy()
    answer = request(proxy.port, "/ban?" + query, method="DELETE")
    assert answer.status == 400 and answer.json()["detail"] == detail
    assert r.exists(BANS) == 0
    assert request(proxy.port, "/health").status == 200


def test_a_path_of_1024_bytes_is_taken(make_proxy):
    assert ban(make_proxy().port, "/" + "a" * 1023).status == 200


def test_post_on_ban_is_405_with_allow(make_proxy):
    answer = request(make_proxy().port, "/ban?path=/a", method="POST")
    assert answer.status == 405 and answer.headers["Allow"] == "GET, HEAD, DELETE, PURGE"


def test_in_reverse_proxy_mode_a_ban_is_the_sites_paths(site_proxy, origin):  # noqa: F811
    proxy = site_proxy("/base")
    blog, other = origin.counter("/base/blog/x"), origin.counter("/base/news")
    for path in ("/blog/x", "/news"):
        request(proxy.port, path)
        assert request(proxy.port, path).headers["X-Cache"] == "HIT"
    assert request(proxy.port, "/_proxy/ban?path=/blog/*&host=a.example", method="DELETE").status == 400

    made = request(proxy.port, "/_proxy/ban?path=" + quote("/blog/*", safe=""), method="DELETE")

    assert made.json()["banned"] == {"host": f"127.0.0.1:{origin.port}", "path": "/base/blog/*", "at": made.json()["banned"]["at"]}
    answer = request(proxy.port, "/blog/x")
    assert (answer.body, answer.headers["X-Cache"]) == (b"version 2", "MISS")
    assert request(proxy.port, "/news").headers["X-Cache"] == "HIT"
    assert (origin.hits["GET /base/blog/x"], origin.hits["GET /base/news"]) == (2, 1)
    assert blog and other


# ----- ORIGINS: several sites (their two origins both on 127.0.0.1, on two ports) --------------

def on_host(port: int, path: str, host: str, method: str = "GET"):
    return request(port, path, method=method, headers={"Host": host})


def test_a_ban_on_one_sites_host_stales_that_sites_entries_only_on_every_proxy(
        sites_proxy, origin, second_origin):  # noqa: F811
    first, second = sites_proxy(), sites_proxy()
    origin.counter("/blog/x", b"a ")
    second_origin.counter("/blog/x", b"b ")
    for proxy in (first, second):
        for host in ("a.example", "c.b.example"):
            on_host(proxy.port, "/blog/x", host)
            assert on_host(proxy.port, "/blog/x", host).headers["X-Cache"] == "HIT"  # its L1
    assert (origin.hits["GET /blog/x"], second_origin.hits["GET /blog/x"]) == (1, 1)
    refused = on_host(first.port, "/_proxy/ban?path=/blog/*&host=127.0.0.1", "a.example", method="DELETE")
    assert (refused.status, refused.json()["error"]) == (400, "bad ban")  # on a site's Host, the site's

    made = on_host(first.port, "/_proxy/ban?path=" + quote("/blog/*", safe=""), "a.example", method="DELETE")

    # The site's origin, by host and port: the other site's origin is the same host on another port.
    assert made.status == 200
    assert made.json()["banned"] == {"host": f"127.0.0.1:{origin.port}", "path": "/blog/*",
                                     "at": made.json()["banned"]["at"]}
    kept = on_host(first.port, "/blog/x", "c.b.example")
    assert (kept.body, kept.headers["X-Cache"]) == (b"b 1", "HIT")
    # The second proxy reads the bans again within a second (proxy.store.bans.REFRESH): its L1
    # copy of a.example's page is refetched, b.example's is not.
    wait_until(lambda: on_host(second.port, "/blog/x", "a.example").headers["X-Cache"] == "MISS", timeout=5)
    assert [(got.body, got.headers["X-Cache"]) for got in (
        on_host(second.port, "/blog/x", "a.example"), on_host(second.port, "/blog/x", "c.b.example"),
        on_host(first.port, "/blog/x", "a.example"))] == [(b"a 2", "HIT"), (b"b 1", "HIT"), (b"a 2", "HIT")]
    assert (origin.hits["GET /blog/x"], second_origin.hits["GET /blog/x"]) == (2, 1)


def test_a_ban_on_a_host_of_no_site_without_host_bans_the_path_on_every_site(
        sites_proxy, origin, second_origin):  # noqa: F811
    proxy = sites_proxy()
    for server in (origin, second_origin):
        server.counter("/blog/x")
        server.counter("/news")
    for host in ("a.example", "c.b.example"):
        for path in ("/blog/x", "/news"):
            on_host(proxy.port, path, host)

    made = on_host(proxy.port, "/_proxy/ban?path=" + quote("/blog/*", safe=""), f"127.0.0.1:{proxy.port}",
                   method="DELETE")

    # Off a site, a ban is the URL role's: any host when host= is absent.
    assert made.json()["banned"] == {"host": "*", "path": "/blog/*", "at": made.json()["banned"]["at"]}
    assert [on_host(proxy.port, path, host).headers["X-Cache"]
            for host in ("a.example", "c.b.example") for path in ("/blog/x", "/news")] == \
        ["MISS", "HIT", "MISS", "HIT"]
    assert [server.hits[f"GET {path}"] for server in (origin, second_origin) for path in ("/blog/x", "/news")] == \
        [2, 1, 2, 1]
