"""Vary (RFC 9111 §4.1) in reverse-proxy mode: several variants of one URL stored side by side,
bounded by MAX_VARIANTS, purged together; against a real origin, Redis and proxy."""

import pytest

from proxy.cache import entry as cache_entry
from proxy.cache.keys import canonical_url, url_digest
from proxy.cache.request import ClientRequest
from proxy.serving.auth import Authenticator
from proxy.serving.site import Site
from proxy.store.variants import index_key, variant_key
from servers import q, request

LANGUAGES = ["de", "en", "fr", "it", "es", "nl", "pt", "sv", "da"]


@pytest.fixture
def site_proxy(make_proxy, origin):
    def build(**options):
        site = Site(origin.url(""), max_body_bytes=1024 * 1024)
        return make_proxy(origin=origin.url(""), server_options={
            "site": site, "authenticator": Authenticator(())}, **options)
    return build


def by_language(origin, path: str, vary: str = "Accept-Language") -> str:
    def route(handler):
        language = handler.headers.get("Accept-Language", "none")
        handler.reply(200, f"page in {language}".encode(),
                      {"Cache-Control": "max-age=60", "Vary": vary})
    return origin.route(path, route)


def ask(proxy, path: str, language: str):
    got = request(proxy.port, path, headers={"Accept-Language": language})
    return got.status, got.body, got.headers["X-Cache"]


def redis_key_of(url: str) -> str:
    return "rp:" + url_digest(canonical_url(url))


def test_three_language_variants_coexist_each_fetched_once(site_proxy, origin, r):
    url = by_language(origin, "/page")
    proxy = site_proxy()
    for language in ("de", "en", "fr"):
        assert ask(proxy, "/page", language) == (200, f"page in {language}".encode(), "MISS")
    for language in ("de", "en", "fr", "en", "de"):
        assert ask(proxy, "/page", language) == (200, f"page in {language}".encode(), "HIT")
    assert origin.hits["/page"] == 3
    key = redis_key_of(url)
    assert cache_entry.decode(r.get(key)).vary == {"accept-language": "de"}
    for language in ("en", "fr"):
        stored = variant_key(key, {"accept-language": language})
        assert cache_entry.decode(r.get(stored)).body == f"page in {language}".encode()
        assert 55 <= r.ttl(stored) <= 60
    assert r.zcard(index_key(key)) == 2


def test_variants_are_served_from_redis_when_l1_is_off(site_proxy, origin):
    by_language(origin, "/cold")
    proxy = site_proxy(capacity=0)
    for language in ("de", "en", "de", "en"):
        ask(proxy, "/cold", language)
    assert ask(proxy, "/cold", "en") == (200, b"page in en", "HIT")
    assert origin.hits["/cold"] == 2


def test_a_variant_past_max_variants_replaces_the_least_recently_stored(site_proxy, origin, r):
    url = by_language(origin, "/many")
    proxy = site_proxy(max_variants=8)
    for language in LANGUAGES:  # 9 variants: de at the URL's key, 8 beside it, 7 kept
        assert ask(proxy, "/many", language)[2] == "MISS"
    key = redis_key_of(url)
    assert r.zcard(index_key(key)) == 7
    assert r.exists(variant_key(key, {"accept-language": "en"})) == 0
    for language in ["de", *LANGUAGES[2:]]:
        assert ask(proxy, "/many", language) == (200, f"page in {language}".encode(), "HIT")
    assert origin.hits["/many"] == 9
    assert ask(proxy, "/many", "en") == (200, b"page in en", "MISS")  # the one let go
    assert origin.hits["/many"] == 10
    assert r.exists(variant_key(key, {"accept-language": "fr"})) == 0  # now the oldest beside


def test_max_variants_of_one_keeps_the_latest_variant_only(site_proxy, origin, r):
    url = by_language(origin, "/one")
    proxy = site_proxy(max_variants=1)
    for language in ("de", "en", "en", "de"):
        ask(proxy, "/one", language)
    assert origin.hits["/one"] == 3
    assert cache_entry.decode(r.get(redis_key_of(url))).vary == {"accept-language": "de"}
    assert r.exists(index_key(redis_key_of(url))) == 0


@pytest.mark.parametrize("soft", [False, True])
def test_purge_by_url_removes_every_variant(site_proxy, origin, r, soft):
    url = by_language(origin, "/purged")
    proxy = site_proxy()
    for language in ("de", "en", "fr"):
        ask(proxy, "/purged", language)
    purge = q(url) + ("&soft=true" if soft else "")
    got = request(proxy.port, "/_proxy" + purge, method="DELETE")
    assert (got.status, got.json()) == (200, {"purged": 3})
    key = redis_key_of(url)
    if not soft:
        assert r.exists(key, index_key(key), *(variant_key(key, {"accept-language": language})
                                               for language in ("en", "fr"))) == 0
    for language in ("de", "en", "fr"):
        status, body, cache = ask(proxy, "/purged", language)
        assert (status, body) == (200, f"page in {language}".encode()) and cache != "HIT"
    assert origin.hits["/purged"] == 6


def test_vary_star_is_never_served_from_the_cache(site_proxy, origin, r):
    url = by_language(origin, "/star", vary="*")
    proxy = site_proxy()
    for _ in range(3):
        assert ask(proxy, "/star", "de") == (200, b"page in de", "MISS")
    assert origin.hits["/star"] == 3
    assert r.exists(redis_key_of(url), index_key(redis_key_of(url))) == 0


def test_purge_by_tag_removes_every_variant(site_proxy, origin, r):
    def route(handler):
        language = handler.headers.get("Accept-Language", "none")
        handler.reply(200, f"news in {language}".encode(),
                      {"Cache-Control": "max-age=60", "Vary": "Accept-Language",
                       "Surrogate-Key": "news"})
    url = origin.route("/news", route)
    proxy = site_proxy()
    for language in ("de", "en", "fr"):
        ask(proxy, "/news", language)
    got = request(proxy.port, "/_proxy?tag=news", method="DELETE")
    assert (got.status, got.json()) == (200, {"purged": 3})
    key = redis_key_of(url)
    assert r.exists(key, index_key(key), *(variant_key(key, {"accept-language": language})
                                           for language in ("en", "fr"))) == 0
    for language in ("de", "en", "fr"):
        assert ask(proxy, "/news", language) == (200, f"news in {language}".encode(), "MISS")
    assert origin.hits["/news"] == 6


def test_purge_by_explicit_key_removes_every_variant(make_proxy, upstream, r):
    """The URL role with forwarded headers (as reverse-proxy mode fills them), under key=v."""
    proxy = make_proxy().proxy

    def route(handler):
        language = handler.headers.get("Accept-Language", "none")
        handler.reply(200, language.encode(), {"Cache-Control": "max-age=60", "Vary": "Accept-Language"})

    url = upstream.route("/v", route)

    def fetch(language: str):
        got = proxy.fetch(url, "v", request=ClientRequest.of("GET", {}, {"Accept-Language": language}))
        return got.body, got.cache

    assert [fetch(language) for language in ("de", "en", "de", "en")] == \
        [(b"de", "MISS"), (b"en", "MISS"), (b"de", "HIT"), (b"en", "HIT")]
    assert proxy.purge(key="v") == 2
    assert r.exists("rp:v", index_key("rp:v"), variant_key("rp:v", {"accept-language": "en"})) == 0
    assert [fetch(language) for language in ("de", "en")] == [(b"de", "MISS"), (b"en", "MISS")]
    assert upstream.hits["/v"] == 4
