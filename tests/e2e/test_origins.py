"""Several sites (ORIGINS): a request's Host picks its site's origin; each site's forwarded host,
purges and tags are its own; a Host of no site is 421. Two real origins, a real Redis, the
proxy on port 0."""

import json
import subprocess
from urllib.parse import quote

import pytest

from http_server import sites_of
from load_env import load_settings
from proxy.serving.auth import Authenticator
from proxy.store.launcher import free_port
from servers import Origin, raw_exchange, request, run_proxy, start_proxy, stop_proxy, wait_until


@pytest.fixture
def second_origin():
    server = Origin().start()
    yield server
    server.stop()


@pytest.fixture
def sites_proxy(make_proxy, origin, second_origin):
    """A proxy for `a.example` (the `origin` fixture) and `*.b.example` (`second_origin`), built
    from ORIGINS as the settings read it and http_server wires it."""
    def build(**options):
        settings = load_settings({"ORIGINS": f"a.example={origin.url('')},*.b.example={second_origin.url('')}"},
                                 env_file=None)
        return make_proxy(origins=[url for _, url in settings.origins],
                          server_options={"sites": sites_of(settings), "authenticator": Authenticator(())},
                          **options)
    return build


def get(port: int, path: str, host: str, method: str = "GET", headers: dict[str, str] | None = None):
    return request(port, path, method=method, headers={"Host": host, **(headers or {})})


def tagged(origin: Origin, path: str, body: bytes, tag: str) -> None:
    origin.route(path, lambda h: h.reply(200, body, {"Surrogate-Key": tag, "Cache-Control": "max-age=600"}))


def test_each_host_gets_its_own_sites_page_and_a_wildcard_matches_subdomains_only(
        sites_proxy, origin, second_origin, r):
    origin.serve("/page", b"\x00page of a\xff", headers={"Cache-Control": "max-age=600"})
    second_origin.serve("/page", b"page of b", headers={"Cache-Control": "max-age=600"})
    proxy = sites_proxy()
    answers = [get(proxy.port, "/page", host) for host in
               ("a.example", "c.b.example", "A.Example.:8080", "d.c.b.example")]
    assert [(got.status, got.body, got.headers["X-Cache"]) for got in answers] == [
        (200, b"\x00page of a\xff", "MISS"), (200, b"page of b", "MISS"),
        (200, b"\x00page of a\xff", "HIT"), (200, b"page of b", "HIT")]
    assert (origin.hits["GET /page"], second_origin.hits["GET /page"]) == (1, 1)
    # Each entry is its origin's URL's: two keys, never one for both.
    assert sorted(r.keys("rp:*")) == sorted(
        proxy.proxy.parse(url).redis_key.encode() for url in (origin.url("/page"), second_origin.url("/page")))
    bare = get(proxy.port, "/page", "b.example")  # *.b.example: subdomains only
    assert (bare.status, bare.json()["error"]) == (421, "unknown host")


@pytest.mark.parametrize("host", ["c.example", "x.a.example", "127.0.0.1", "evil.example/c.b.example"])
def test_a_host_of_no_site_is_421_with_a_json_body_and_nothing_is_fetched_or_stored(
        sites_proxy, origin, second_origin, r, host):
    origin.serve("/page", b"page of a")
    proxy = sites_proxy()
    for method in ("GET", "POST"):
        got = get(proxy.port, "/page", host, method=method)
        assert (got.status, got.headers["Content-Type"]) == (421, "application/json")
        assert got.json() == {"error": "unknown host",
                              "detail": f"no site of ORIGINS is {host.split(':')[0]!r}; send the "
                                        "Host of one of the sites this proxy serves"}
    assert (len(origin.seen), len(second_origin.seen), r.dbsize()) == (0, 0, 0)
    assert get(proxy.port, "/page", "a.example").body == b"page of a"  # still serving


def test_an_http_1_0_request_without_a_host_is_421_on_a_sites_path(sites_proxy, origin):
    answer = raw_exchange(sites_proxy().port, b"GET /page HTTP/1.0\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 421 Misdirected Request\r\n")
    assert json.loads(body) == {"error": "unknown host", "detail": "no site of ORIGINS is named (no Host); "
                                "send the Host of one of the sites this proxy serves"}
    assert len(origin.seen) == 0


def test_an_absolute_form_targets_authority_picks_the_site_over_the_host_field(sites_proxy, origin):
    origin.serve("/page", b"page of a")
    proxy = sites_proxy()
    picked = raw_exchange(proxy.port, b"GET http://a.example/page HTTP/1.1\r\nHost: c.example\r\n"
                                      b"Connection: close\r\n\r\n")
    refused = raw_exchange(proxy.port, b"GET http://c.example/page HTTP/1.1\r\nHost: a.example\r\n"
                                       b"Connection: close\r\n\r\n")
    assert picked.startswith(b"HTTP/1.1 200 OK\r\n") and picked.endswith(b"\r\n\r\npage of a")
    assert refused.startswith(b"HTTP/1.1 421 Misdirected Request\r\n")
    assert origin.hits["GET /page"] == 1


def test_the_origin_gets_the_sites_host_as_x_forwarded_host_and_its_own_host(
        sites_proxy, origin, second_origin):
    origin.serve("/page", b"a")
    second_origin.serve("/page", b"b")
    proxy = sites_proxy()
    get(proxy.port, "/page", "A.Example.:8080", headers={"X-Forwarded-Host": "spoofed.example"})
    get(proxy.port, "/page", "c.b.example:8443")
    (to_a,), (to_b,) = origin.seen, second_origin.seen
    assert (to_a.header("X-Forwarded-Host"), to_a.header("Host")) == (["a.example"], [f"127.0.0.1:{origin.port}"])
    assert (to_b.header("X-Forwarded-Host"), to_b.header("Host")) == \
        (["c.b.example"], [f"127.0.0.1:{second_origin.port}"])


def test_subdomains_of_a_wildcard_share_its_origins_entries_unless_it_varies_on_x_forwarded_host(
        sites_proxy, second_origin):
    """The key is the origin's URL (as nginx's proxy_cache_key), so an origin whose page depends
    on the host says so with Vary: X-Forwarded-Host, and each host gets its own variant."""
    second_origin.route("/same", lambda h: h.reply(200, b"one page", {"Cache-Control": "max-age=600"}))
    second_origin.route("/own", lambda h: h.reply(200, b"page for " + h.headers["X-Forwarded-Host"].encode(), {
        "Cache-Control": "max-age=600", "Vary": "X-Forwarded-Host"}))
    proxy = sites_proxy()
    same = [get(proxy.port, "/same", host) for host in ("c.b.example", "d.b.example")]
    own = [get(proxy.port, "/own", host) for host in ("c.b.example", "d.b.example", "c.b.example")]
    assert [(got.body, got.headers["X-Cache"]) for got in same] == [(b"one page", "MISS"), (b"one page", "HIT")]
    assert [(got.body, got.headers["X-Cache"]) for got in own] == [
        (b"page for c.b.example", "MISS"), (b"page for d.b.example", "MISS"), (b"page for c.b.example", "HIT")]
    assert (second_origin.hits["GET /same"], second_origin.hits["GET /own"]) == (1, 2)


def test_a_tag_purge_on_one_sites_host_purges_that_sites_entries_only(sites_proxy, origin, second_origin):
    tagged(origin, "/t", b"a tagged", "news")
    tagged(second_origin, "/t", b"b tagged", "news")
    proxy = sites_proxy()
    for host in ("a.example", "c.b.example"):
        assert get(proxy.port, "/t", host).headers["X-Cache"] == "MISS"
    purged = get(proxy.port, "/_proxy/?tag=news", "a.example", method="DELETE")
    assert (purged.status, purged.json()) == (200, {"purged": 1})
    assert [get(proxy.port, "/t", host).headers["X-Cache"] for host in ("a.example", "c.b.example")] == \
        ["MISS", "HIT"]
    assert (origin.hits["GET /t"], second_origin.hits["GET /t"]) == (2, 1)
    purged = get(proxy.port, "/_proxy/?tag=news", "d.b.example", method="PURGE")
    assert (purged.status, purged.json()) == (200, {"purged": 1})
    assert [get(proxy.port, "/t", host).headers["X-Cache"] for host in ("a.example", "c.b.example")] == \
        ["HIT", "MISS"]
    assert (origin.hits["GET /t"], second_origin.hits["GET /t"]) == (2, 2)


def test_a_purge_by_url_path_on_one_sites_host_purges_that_sites_page_only(sites_proxy, origin, second_origin):
    for server in (origin, second_origin):
        server.serve("/page", b"page", headers={"Cache-Control": "max-age=600"})
    proxy = sites_proxy()
    for host in ("a.example", "c.b.example"):
        get(proxy.port, "/page?x=1", host)
    purged = get(proxy.port, "/_proxy/?url=" + quote("/page?x=1", safe=""), "A.example", method="DELETE")
    assert (purged.status, purged.json()) == (200, {"purged": 1})
    assert [get(proxy.port, "/page?x=1", host).headers["X-Cache"] for host in ("a.example", "c.b.example")] == \
        ["MISS", "HIT"]
    assert (origin.hits["GET /page"], second_origin.hits["GET /page"]) == (2, 1)
    # An absolute url= names its origin itself, whichever Host the purge comes on.
    purged = get(proxy.port, "/_proxy/?url=" + quote(second_origin.url("/page?x=1"), safe=""), "a.example",
                 method="DELETE")
    assert (purged.status, purged.json()) == (200, {"purged": 1})
    assert get(proxy.port, "/page?x=1", "c.b.example").headers["X-Cache"] == "MISS"
    assert second_origin.hits["GET /page"] == 2


def test_the_proxys_own_routes_answer_on_every_host_a_host_of_no_site_too(sites_proxy, origin, second_origin):
    proxy = sites_proxy()
    for host in ("a.example", "c.b.example", "c.example", f"127.0.0.1:{proxy.port}"):
        health = get(proxy.port, "/_proxy/health", host)
        assert (health.status, health.json()["redis"]) == (200, "ok")
    # Off a site, a tag is no site's: the purge must name its origin, as in the URL role.
    unsited = get(proxy.port, "/_proxy/?tag=news", "c.example", method="DELETE")
    assert (unsited.status, unsited.json()["error"]) == (400, "missing url")
    # A path outside ADMIN_PREFIX is the site's, even one the proxy has at the root without origins.
    get(proxy.port, "/health", "a.example")
    assert (origin.hits["GET /health"], len(second_origin.seen)) == (1, 0)


def test_a_redirect_from_any_sites_origin_is_relayed_not_followed(sites_proxy, second_origin):
    second_origin.route("/moved", lambda h: h.reply(302, b"", {"Location": "/elsewhere"}))
    second_origin.serve("/elsewhere", b"followed")
    proxy = sites_proxy()
    got = get(proxy.port, "/moved", "c.b.example")
    assert (got.status, got.headers["Location"]) == (302, "/elsewhere")
    assert second_origin.hits["GET /elsewhere"] == 0


def test_each_sites_origin_is_fetched_through_the_upstream_policy(sites_proxy, origin, second_origin, r):
    origin.serve("/page", b"private")
    proxy = sites_proxy(allow_private=False)  # the policy's default: loopback refused
    got = get(proxy.port, "/page", "a.example")
    assert (got.status, got.json()["error"]) == (403, "url refused")
    assert (len(origin.seen), r.dbsize()) == (0, 0)


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "10", *args],
                          capture_output=True, timeout=20)


def test_the_proxy_started_with_origins_serves_each_host_its_sites_page(origin, second_origin, redis_url, tmp_path):
    origin.serve("/p", b"from a")
    second_origin.serve("/p", b"from b")
    port = free_port()
    process = start_proxy({"REDIS_URL": redis_url, "HTTP_PORT": str(port), "RESP_PORT": "0",
                           "ORIGINS": f"a.example={origin.url('')},*.b.example={second_origin.url('')}",
                           "UPSTREAM_ALLOW_PRIVATE": "true",
                           "UPSTREAM_ALLOWED_PORTS": f"{origin.port},{second_origin.port}",
                           "LOG_FILE": str(tmp_path / "proxy.log")})
    try:
        wait_until(lambda: curl(f"http://127.0.0.1:{port}/_proxy/health").returncode == 0, timeout=20)
        bodies = [curl("-H", f"Host: {host}", f"http://127.0.0.1:{port}/p").stdout
                  for host in ("a.example", "c.b.example")]
        unknown = curl("-i", f"http://127.0.0.1:{port}/p")
        assert bodies == [b"from a", b"from b"]
        assert unknown.stdout.startswith(b"HTTP/1.1 421 Misdirected Request\r\n")
        assert json.loads(unknown.stdout.partition(b"\r\n\r\n")[2])["error"] == "unknown host"
        assert (origin.hits["GET /p"], second_origin.hits["GET /p"]) == (1, 1)
    finally:
        stop_proxy(process)


@pytest.mark.parametrize("environ, message", [
    ({"ORIGINS": "a.example=http://127.0.0.1:8081,b.example"},
     "redis-proxy: bad setting ORIGINS='a.example=http://127.0.0.1:8081,b.example': expected "
     "comma-separated HOST=URL pairs (HOST a host name, or *.suffix for its subdomains; URL as "
     "ORIGIN_URL's); 'b.example': expected HOST=URL, HOST a host name or *.suffix without a port\n"),
    ({"ORIGINS": "a.example=http://127.0.0.1:8081", "ORIGIN_URL": "http://127.0.0.1:8082"},
     "redis-proxy: bad setting ORIGINS and ORIGIN_URL are both set: expected one of them "
     "(ORIGIN_URL for one site whatever the Host, ORIGINS for a site per Host)\n"),
    ({"ORIGINS": "a.example=http://127.0.0.1:8081", "PUBLIC_HOST": "www.example"},
     "redis-proxy: bad setting ORIGINS and PUBLIC_HOST are both set: with ORIGINS each site's own "
     "Host is sent as X-Forwarded-Host; leave PUBLIC_HOST empty\n"),
])
def test_a_bad_origins_setting_stops_the_start_with_exit_2_and_the_reason(environ, message, tmp_path):
    done = run_proxy({"HTTP_PORT": str(free_port()), "RESP_PORT": "0", **environ})
    assert (done.returncode, done.stderr) == (2, message)
