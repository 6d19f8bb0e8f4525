"""RULES_FILE, rule by rule, against a real origin, Redis and proxy: TTL default, minimum and
maximum (the Redis TTLs), bypass, query parameters left out of or kept in the key, a request
header added to it, TTLs by status, stale windows, hosts; and a bad file refused at start."""

from urllib.parse import quote

import pytest

from proxy.cache.freshness import Policy
from proxy.cache.keys import canonical_url, url_digest
from proxy.cache.rules import parse_rules
from proxy.serving.site import Site
from proxy.store.variants import variant_key
from servers import q, request, run_proxy, wait_until

BYPASSED = "redis-proxy; fwd=bypass; fwd-status=200; detail=rule"


def key_of(url: str) -> str:
    return "rp:" + url_digest(canonical_url(url))


def ruled(make_proxy, text: str, **options):
    """A URL-role proxy with these rules (CACHE_TTL 3600 unless `ttl` is given)."""
    return make_proxy(rules=parse_rules(text), **options)


@pytest.fixture
def site_proxy(make_proxy, origin):
    """A proxy in front of `origin` (ORIGIN_URL) with the given rules."""
    def build(text: str, base: str = "", **options):
        return make_proxy(origin=origin.url(base), rules=parse_rules(text),
                          server_options={"site": Site(origin.url(base))}, **options)
    return build


# ----- ttl, ttl_min, ttl_max -----------------------------------------------------------------------


def test_a_rules_ttl_is_the_redis_ttl_of_a_response_that_states_no_freshness(upstream, make_proxy, r):
    ruled_url = upstream.serve("/static/app.js", b"js")
    other_url = upstream.serve("/page", b"page")
    proxy = ruled(make_proxy, '[[rule]]\npath = "/static/"\nttl = 600\n')

    assert request(proxy.port, q(ruled_url)).headers["X-Cache"] == "MISS"
    request(proxy.port, q(other_url))

    assert 595 <= r.ttl(key_of(ruled_url)) <= 600
    assert 3595 <= r.ttl(key_of(other_url)) <= 3600  # CACHE_TTL, where no rule matches


def test_a_rules_ttl_is_not_capped_by_cache_ttl(upstream, make_proxy, r):
    url = upstream.serve("/static/long.css", b"css")
    proxy = ruled(make_proxy, '[[rule]]\npath = "/static/"\nttl = 7200\n', ttl=3600)
    request(proxy.port, q(url))
    assert 7195 <= r.ttl(key_of(url)) <= 7200


def test_ttl_min_keeps_a_response_the_origin_says_is_stale_at_once(upstream, make_proxy, r):
    url = upstream.serve("/news/today", b"today", headers={"Cache-Control": "max-age=0"})
    proxy = ruled(make_proxy, '[[rule]]\npath = "/news/"\nttl_min = 60\n')

    request(proxy.port, q(url))
    got = request(proxy.port, q(url))

    assert (got.body, got.headers["X-Cache"], upstream.hits["/news/today"]) == (b"today", "HIT", 1)
    assert 55 <= r.ttl(key_of(url)) <= 60


def test_ttl_max_caps_the_freshness_the_origin_states(upstream, make_proxy, r):
    url = upstream.serve("/feed", b"feed", headers={"Cache-Control": "max-age=86400"})
    proxy = ruled(make_proxy, '[[rule]]\npath = "/feed"\nttl_max = 120\n')
    request(proxy.port, q(url))
    assert 115 <= r.ttl(key_of(url)) <= 120


# ----- bypass --------------------------------------------------------------------------------------


def test_bypass_asks_the_origin_every_time_and_stores_nothing(upstream, make_proxy, r):
    url = upstream.serve("/account/me", b"mine")
    proxy = ruled(make_proxy, '[[rule]]\npath = "/account/"\nbypass = true\n')

    answers = [request(proxy.port, q(url)) for _ in range(2)]

    assert [(got.status, got.body) for got in answers] == [(200, b"mine")] * 2
    assert {(got.headers["X-Cache"], got.headers["Cache-Status"]) for got in answers} == {("BYPASS", BYPASSED)}
    assert upstream.hits["/account/me"] == 2
    assert r.keys("*") == []


def test_a_later_rule_with_bypass_false_caches_a_path_under_a_bypassed_one(upstream, make_proxy, r):
    url = upstream.serve("/account/public/logo", b"logo")
    proxy = ruled(make_proxy, '[[rule]]\npath = "/account/"\nbypass = true\n\n'
                              '[[rule]]\npath = "/account/public/"\nbypass = false\n')
    assert [request(proxy.port, q(url)).headers["X-Cache"] for _ in range(2)] == ["MISS", "HIT"]
    assert upstream.hits["/account/public/logo"] == 1 and r.exists(key_of(url))


def test_bypass_in_reverse_proxy_mode(site_proxy, origin, r):
    origin.counter("/cart")
    proxy = site_proxy('[[rule]]\npath = "/cart"\nbypass = true\n')
    answers = [request(proxy.port, "/cart") for _ in range(2)]
    assert [got.body for got in answers] == [b"version 1", b"version 2"]
    assert {got.headers["Cache-Status"] for got in answers} == {BYPASSED}
    assert r.keys("*") == []


# ----- ignore_query, keep_query --------------------------------------------------------------------


def test_urls_differing_in_an_ignored_parameter_share_one_entry_and_the_origin_gets_it(upstream, make_proxy):
    upstream.serve("/article", b"article")
    proxy = ruled(make_proxy, '[[rule]]\npath = "/"\nignore_query = ["utm_*", "fbclid"]\n')

    first = request(proxy.port, q(upstream.url("/article?id=7&utm_source=mail")))
    second = request(proxy.port, q(upstream.url("/article?fbclid=x1&id=7&utm_medium=web")))
    other = request(proxy.port, q(upstream.url("/article?id=8&utm_source=mail")))

    assert [got.headers["X-Cache"] for got in (first, second, other)] == ["MISS", "HIT", "MISS"]
    assert second.body == b"article"
    assert upstream.hits["/article"] == 2  # id=7 once, id=8 once
    assert upstream.requests[0][0] == "/article?id=7&utm_source=mail"  # still sent, as asked


def test_only_kept_parameters_make_the_key(upstream, make_proxy, r):
    upstream.serve("/list", b"list")
    proxy = ruled(make_proxy, '[[rule]]\npath = "/list"\nkeep_query = ["page"]\n')

    statuses = [request(proxy.port, q(upstream.url(path))).headers["X-Cache"]
                for path in ("/list?page=2&ref=a", "/list?ref=b&page=2", "/list?page=3&ref=a")]

    assert statuses == ["MISS", "HIT", "MISS"] and upstream.hits["/list"] == 2
    assert r.exists(key_of(upstream.url("/list?page=2")), key_of(upstream.url("/list?page=3"))) == 2


def test_a_purge_by_url_removes_the_entry_its_ignored_parameters_share(upstream, make_proxy):
    upstream.serve("/promo", b"promo")
    proxy = ruled(make_proxy, '[[rule]]\nignore_query = ["utm_*"]\n')
    request(proxy.port, q(upstream.url("/promo?utm_source=a")))

    purged = request(proxy.port, q(upstream.url("/promo?utm_source=b")), method="DELETE")

    assert (purged.status, purged.json()) == (200, {"purged": 1})
    assert request(proxy.port, q(upstream.url("/promo"))).headers["X-Cache"] == "MISS"
    assert upstream.hits["/promo"] == 2


# ----- key_headers ---------------------------------------------------------------------------------


def test_a_key_header_keeps_one_entry_per_value_and_says_so_in_vary(site_proxy, origin, r):
    url = origin.route("/home", lambda h: h.reply(200, b"home for " + h.headers["X-Device"].encode()))
    proxy = site_proxy('[[rule]]\npath = "/"\nkey_headers = ["X-Device"]\n')

    mobile = request(proxy.port, "/home", headers={"X-Device": "mobile"})
    desktop = request(proxy.port, "/home", headers={"X-Device": "desktop"})
    again = [request(proxy.port, "/home", headers={"X-Device": device}) for device in ("mobile", "desktop")]

    assert [got.body for got in (mobile, desktop, *again)] == [b"home for mobile", b"home for desktop"] * 2
    assert [got.headers["X-Cache"] for got in (mobile, desktop, *again)] == ["MISS", "MISS", "HIT", "HIT"]
    assert origin.hits["GET /home"] == 2
    assert mobile.headers["Vary"] == "x-device"
    primary = key_of(url)
    assert r.exists(primary, variant_key(primary, {"x-device": "desktop"})) == 2


# ----- status ------------------------------------------------------------------------------------


def test_a_rule_scoped_by_status_sets_the_ttl_of_those_statuses_only(upstream, make_proxy, r):
    missing = upstream.serve("/gone", b"not here", status=404)
    found = upstream.serve("/here", b"here")
    proxy = ruled(make_proxy, '[[rule]]\npath = "/"\nstatus = [404, 410]\nttl = 30\n',
                  policy=Policy(ttl=3600, store_statuses=frozenset({200, 404})))

    assert request(proxy.port, q(missing)).status == 404
    assert request(proxy.port, q(missing)).headers["X-Cache"] == "HIT"
    request(proxy.port, q(found))

    assert 25 <= r.ttl(key_of(missing)) <= 30
    assert 3595 <= r.ttl(key_of(found)) <= 3600


# ----- stale windows -----------------------------------------------------------------------------


def test_a_rules_stale_if_error_serves_the_stale_copy_where_the_setting_would_not(upstream, make_proxy):
    ruled_url = upstream.serve("/sie/a", b"good a", headers={"Cache-Control": "max-age=1"})
    plain_url = upstream.serve("/plain", b"good b", headers={"Cache-Control": "max-age=1"})
    now = [1_000_000.0]
    proxy = ruled(make_proxy, '[[rule]]\npath = "/sie/"\nstale_if_error = 100\n',
                  stale_ttl=300, stale_if_error=0, clock=lambda: now[0])
    request(proxy.port, q(ruled_url))
    request(proxy.port, q(plain_url))
    upstream.serve("/sie/a", b"broken", status=503)
    upstream.serve("/plain", b"broken", status=503)

    now[0] += 50  # 49 s past freshness: within the rule's window
    stale = request(proxy.port, q(ruled_url))
    plain = request(proxy.port, q(plain_url))
    now[0] += 60  # 109 s past: beyond it
    late = request(proxy.port, q(ruled_url))

    assert (stale.status, stale.body, stale.headers["X-Cache"]) == (200, b"good a", "STALE")
    assert "detail=stale-if-error" in stale.headers["Cache-Status"]
    assert (plain.status, plain.body) == (503, b"broken")
    assert (late.status, late.body) == (503, b"broken")


def test_a_rules_stale_while_revalidate_answers_stale_and_refreshes_once(upstream, make_proxy):
    version = [b"v1"]
    url = upstream.route("/swr/x", lambda h: h.reply(200, version[0], {"Cache-Control": "max-age=1"}))
    now = [1_000_000.0]
    proxy = ruled(make_proxy, '[[rule]]\npath = "/swr/"\nstale_while_revalidate = 60\n',
                  stale_ttl=300, clock=lambda: now[0])
    request(proxy.port, q(url))
    version[0] = b"v2"
    now[0] += 5

    got = request(proxy.port, q(url))

    assert (got.body, got.headers["X-Cache"]) == (b"v1", "STALE")
    assert "detail=stale-while-revalidate" in got.headers["Cache-Status"]
    wait_until(lambda: request(proxy.port, q(url)).body == b"v2")
    assert upstream.hits["/swr/x"] == 2


# ----- host --------------------------------------------------------------------------------------


def test_a_rules_ttl_max_caps_an_answer_to_a_request_with_credentials(site_proxy, origin, r):
    """RFC 9111 §3.5: stored because it says public, fresh as long as it says (600 s), within
    the rule's ttl_max (20 s) as within CACHE_TTL where no rule matches."""
    origin.route("/private", lambda handler: handler.reply(
        200, b"mine", {"Content-Type": "text/plain", "Cache-Control": "public, max-age=600"}))
    proxy = site_proxy('[[rule]]\npath = "/private"\nttl_max = 20\n')

    got = request(proxy.port, "/private", headers={"Cookie": "sid=alice"})

    assert (got.status, got.body, got.headers["X-Cache"]) == (200, b"mine", "MISS")
    assert 15 <= r.ttl(key_of(origin.url("/private"))) <= 20


HOST_RULES = ('[[rule]]\nhost = "*.example.com"\nbypass = true\n\n'
              '[[rule]]\nhost = "shop.example.com"\nbypass = false\nttl = 60\nignore_query = ["utm_*"]\n')


def test_in_reverse_proxy_mode_a_rules_host_is_the_sites_never_the_clients_host(make_proxy, origin, r):
    """With ORIGIN_URL any Host reaches the one site, and every client shares its entries: the
    rules are the site's host's (PUBLIC_HOST here), whatever Host a client writes, or a client
    would choose the key, bypass and freshness of the entry the others are served."""
    origin.counter("/p")
    proxy = make_proxy(origin=origin.url(""), rules=parse_rules(HOST_RULES), server_options={
        "site": Site(origin.url(""), public_host="shop.example.com")})

    answers = [request(proxy.port, "/p", headers={"Host": host}) for host in (
        "www.example.com:8080", "www.example.com", "shop.example.com", "example.com")]

    assert [got.headers["X-Cache"] for got in answers] == ["MISS", "HIT", "HIT", "HIT"]
    assert 55 <= r.ttl(key_of(origin.url("/p"))) <= 60  # shop's rule stored it
    assert origin.hits["GET /p"] == 1


def test_without_public_host_a_rules_host_is_the_origins_host(make_proxy, origin):
    origin.counter("/p")
    proxy = make_proxy(origin=origin.url(""), rules=parse_rules(HOST_RULES),
                       server_options={"site": Site(origin.url(""))})

    answers = [request(proxy.port, "/p", headers={"Host": "www.example.com"}) for _ in range(2)]

    assert [got.headers["X-Cache"] for got in answers] == ["MISS", "HIT"]  # no *.example.com bypass
    assert origin.hits["GET /p"] == 1


def test_a_purge_by_path_finds_the_entry_under_the_key_the_sites_rules_gave_it(make_proxy, origin, r):
    """The site's rule leaves utm_* out of the key: a purge of the page, with any utm_ value,
    removes the entry stored under that key (the rules matched by the same site host)."""
    origin.counter("/p")
    proxy = make_proxy(origin=origin.url(""), rules=parse_rules(HOST_RULES), server_options={
        "site": Site(origin.url(""), public_host="shop.example.com")})
    assert request(proxy.port, "/p?id=1&utm_source=a").headers["X-Cache"] == "MISS"
    assert r.exists(key_of(origin.url("/p?id=1"))) == 1

    purged = request(proxy.port, "/_proxy/?url=" + quote("/p?id=1&utm_source=b", safe=""), method="DELETE")

    assert (purged.status, purged.json()) == (200, {"purged": 1})
    assert r.exists(key_of(origin.url("/p?id=1"))) == 0


def test_in_the_url_role_a_rules_host_is_the_urls_host(upstream, make_proxy):
    url = upstream.serve("/x", b"x")
    proxy = ruled(make_proxy, '[[rule]]\nhost = "127.0.0.1"\nbypass = true\n')
    other = ruled(make_proxy, '[[rule]]\nhost = "localhost"\nbypass = true\n')
    assert request(proxy.port, q(url)).headers["X-Cache"] == "BYPASS"
    assert request(other.port, q(url)).headers["X-Cache"] == "MISS"


# ----- paths -------------------------------------------------------------------------------------


def test_a_rules_path_matches_the_normalised_path_sent_upstream(upstream, make_proxy):
    upstream.serve("/static/app.js", b"js")
    proxy = ruled(make_proxy, '[[rule]]\npath = "/static/"\nbypass = true\n')
    for path in ("/%73tatic/app.js", "/x/../static/app.js"):
        assert request(proxy.port, q(upstream.url(path))).headers["X-Cache"] == "BYPASS"
    assert request(proxy.port, q(upstream.url("/STATIC/app.js"))).headers["X-Cache"] == "MISS"


def test_in_reverse_proxy_mode_a_rules_path_includes_the_origins_base_path(site_proxy, origin):
    origin.counter("/base/cart")
    proxy = site_proxy('[[rule]]\npath = "/base/cart"\nbypass = true\n', base="/base")
    assert request(proxy.port, "/cart").headers["X-Cache"] == "BYPASS"
    other = site_proxy('[[rule]]\npath = "/cart"\nbypass = true\n', base="/base")
    assert request(other.port, "/cart").headers["X-Cache"] == "MISS"


# ----- a bad file: the process refuses to start ------------------------------------------------------


def test_a_bad_rules_file_stops_the_start_with_its_line_and_exit_2(tmp_path, redis_url):
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\npath = "/a/"\nttl = -5\n')
    done = run_proxy({"RULES_FILE": str(path), "REDIS_URL": redis_url, "HTTP_PORT": "0", "RESP_PORT": "0"})
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"redis-proxy: bad setting RULES_FILE={path}: line 3: ttl = -5 is negative; expected a "
        "number of seconds from 0 to 2147483648"]


def test_check_config_reports_a_bad_rules_file(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nbypass = true\n[[rule]]\nkeep_query = ["a"]\nignore_query = ["b"]\n')
    done = run_proxy({"RULES_FILE": str(path)}, args=("--check-config",))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        f"redis-proxy: bad setting RULES_FILE={path}: line 5: both ignore_query and keep_query in one "
        "rule; expected one of them: the parameters left out of the cache key, or the ones kept"]


def test_check_config_takes_a_good_rules_file(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\npath = "/static/"\nttl = 600\n')
    done = run_proxy({"RULES_FILE": str(path)}, args=("--check-config",))
    assert done.returncode == 0, done.stderr
    assert f"RULES_FILE={path}" in done.stdout.splitlines()
