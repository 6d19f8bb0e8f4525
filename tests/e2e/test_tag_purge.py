"""Purge by tag (`DELETE|PURGE /?tag=T`) and soft purge (`soft=true`), on a real Redis with a
real upstream: every proxy's L1 included, a store in flight not resurrecting what was purged."""

import dataclasses
import threading
from urllib.parse import quote

import pytest

from proxy.cache import entry as cache_entry
from proxy.serving.auth import Authenticator
from proxy.serving.site import Site
from proxy.store.tags import MAX_ENTRIES, MAX_TAGS
from servers import Upstream, q, request, wait_until
from test_caching import fire, gated


def tagged(upstream, path: str, body: bytes, tags: str, header: str = "Surrogate-Key",
           cache_control: str = "max-age=600") -> str:
    return upstream.serve(path, body, headers={header: tags, "Cache-Control": cache_control})


def by_tag(upstream, tag: str, extra: str = "") -> str:
    """The URL role's purge of `tag` as `upstream`'s origin's (a tag is its origin's)."""
    return f"/?tag={tag}&url={quote(upstream.url('/'), safe='')}{extra}"


def tag_key(upstream, tag: str) -> str:
    """The Redis set of `upstream`'s tag `tag` (proxy.store.tags: scoped by the origin)."""
    return f"rp:\x00tag:http://127.0.0.1:{upstream.port} {tag}"


def cached(port: int, url: str) -> str:
    return request(port, q(url)).headers["X-Cache"]


@pytest.mark.parametrize("method", ["DELETE", "PURGE"])
def test_a_tag_purge_removes_every_tagged_entry_from_redis_and_both_proxies_l1(
        upstream, make_proxy, r, method):
    news = tagged(upstream, "/news", b"news page", "news front")
    sport = tagged(upstream, "/sport", b"sport page", "sport, front", header="Cache-Tag")
    other = tagged(upstream, "/other", b"other page", "sport")
    first, second = make_proxy(), make_proxy()
    for proxy in (first, second):
        for url in (news, sport, other):
            request(proxy.port, q(url))
        assert [cached(proxy.port, url) for url in (news, sport, other)] == ["HIT"] * 3
    assert (len(first.proxy.local), len(second.proxy.local)) == (3, 3)
    keys = {url: first.proxy.parse(url).redis_key for url in (news, sport, other)}
    assert r.smembers(tag_key(upstream, "front")) == {keys[news].encode(), keys[sport].encode()}

    purged = request(first.port, by_tag(upstream, "front"), method=method)

    assert (purged.status, purged.json()) == (200, {"purged": 2})
    assert (r.exists(keys[news]), r.exists(keys[sport]), r.exists(keys[other])) == (0, 0, 1)
    assert r.exists(tag_key(upstream, "front")) == 0
    # The other proxy's L1 hears of the deletes through Redis's invalidation messages.
    wait_until(lambda: len(second.proxy.local) == 1)
    assert len(first.proxy.local) == 1
    for proxy in (second, first):
        again = request(proxy.port, q(news))
        assert (again.status, again.body) == (200, b"news page")
    assert upstream.hits["/news"] == 2  # fetched once more, then shared through Redis
    assert (cached(second.port, sport), cached(second.port, other)) == ("MISS", "HIT")
    assert (upstream.hits["/sport"], upstream.hits["/other"]) == (2, 1)


def test_the_tag_header_is_stripped_unless_shown_and_the_ttl_of_a_tag_set_follows_its_entries(
        upstream, make_proxy, r):
    url = tagged(upstream, "/t", b"body", "a,b  c", cache_control="max-age=100")
    hidden = make_proxy(stale_ttl=50)
    for cache in ("MISS", "HIT"):
        got = request(hidden.port, q(url))
        assert (got.body, got.headers["X-Cache"], got.headers["Surrogate-Key"]) == (b"body", cache, None)
    assert 140 < r.ttl(tag_key(upstream, "a")) <= 150  # the entry's TTL: freshness plus CACHE_STALE_TTL
    assert {r.ttl(tag_key(upstream, tag)) for tag in "abc"} == {r.ttl(tag_key(upstream, "a"))}
    shown = make_proxy(stale_ttl=50, tag_headers_shown=True)
    got = request(shown.port, q(url))
    assert (got.headers["X-Cache"], got.headers["Surrogate-Key"]) == ("HIT", "a b c")


def test_a_tag_purge_during_a_fetch_of_a_tagged_entry_is_not_undone_by_its_store(
        upstream, make_proxy, r):
    # The entry is in no tag set while its fetch is in flight: the tag's purge number refuses it.
    url, gate = gated(upstream, "/racing", b"older answer", {"Surrogate-Key": "news"})
    fetching, purging = make_proxy(), make_proxy()
    redis_key = fetching.proxy.parse(url).redis_key
    responses, _sent, threads = fire(fetching.port, q(url), 1)
    wait_until(lambda: upstream.hits["/racing"] == 1)
    purge = request(purging.port, by_tag(upstream, "news"), method="PURGE")
    assert (purge.status, purge.json()) == (200, {"purged": 0})
    gate.set()
    for thread in threads:
        thread.join(10)
    assert responses == [(200, b"older answer")]
    assert r.exists(redis_key) == 0
    assert fetching.proxy.stats["stores_refused"] == 1
    again = request(fetching.port, q(url))
    assert (again.body, again.headers["X-Cache"]) == (b"older answer", "MISS")
    assert 3590 < r.ttl(redis_key) <= 3600  # stored: this fetch began after the purge
    assert cached(fetching.port, url) == "HIT"
    assert upstream.hits["/racing"] == 2


def test_a_tag_purge_does_not_stop_the_store_of_an_entry_with_other_tags(upstream, make_proxy, r):
    url, gate = gated(upstream, "/kept", b"kept", {"Surrogate-Key": "sport"})
    proxy = make_proxy()
    responses, _sent, threads = fire(proxy.port, q(url), 1)
    wait_until(lambda: upstream.hits["/kept"] == 1)
    assert request(proxy.port, by_tag(upstream, "news"), method="DELETE").json() == {"purged": 0}
    gate.set()
    for thread in threads:
        thread.join(10)
    assert responses == [(200, b"kept")]
    assert r.exists(proxy.proxy.parse(url).redis_key) == 1
    assert cached(proxy.port, url) == "HIT"


def test_concurrent_tag_purges_and_stores_never_leave_a_purged_generation_stored(
        upstream, make_proxy, r):
    # Each answer names its generation; a purge that answered 200 must leave no earlier one.
    generation = [0]
    lock = threading.Lock()

    def route(handler):
        with lock:
            body = b"gen %d" % generation[0]
        handler.reply(200, body, {"Surrogate-Key": "hot", "Cache-Control": "max-age=600"})

    url = upstream.route("/hot", route)
    first, second = make_proxy(capacity=0), make_proxy(capacity=0)
    redis_key = first.proxy.parse(url).redis_key
    stop = threading.Event()

    def reader(port):
        while not stop.is_set():
            request(port, q(url))

    readers = [threading.Thread(target=reader, args=(p.port,)) for p in (first, second)]
    for thread in readers:
        thread.start()
    try:
        for round_ in range(1, 30):
            with lock:
                generation[0] = round_
            assert request(second.port, by_tag(upstream, "hot"), method="DELETE").status == 200
            stored = r.get(redis_key)
            if stored is not None:
                assert cache_entry.decode(stored).body == b"gen %d" % round_
    finally:
        stop.set()
        for thread in readers:
            thread.join(10)


def test_a_soft_purge_keeps_the_entry_and_revalidates_it_with_a_304(upstream, make_proxy, r):
    def route(handler):
        headers = {"ETag": '"v1"', "Cache-Control": "max-age=600", "Surrogate-Key": "news"}
        if handler.headers.get("If-None-Match") == '"v1"':
            handler.reply(304, b"", headers)
        else:
            handler.reply(200, b"the body", headers)

    url = upstream.route("/soft", route)
    now = [1_000_000.0]
    first, second = make_proxy(clock=lambda: now[0]), make_proxy(clock=lambda: now[0])
    request(first.port, q(url))
    assert cached(second.port, url) == "HIT"
    redis_key = first.proxy.parse(url).redis_key
    ttl_before = r.ttl(redis_key)
    now[0] += 10

    purged = request(first.port, by_tag(upstream, "news", "&soft=true"), method="PURGE")

    assert (purged.status, purged.json()) == (200, {"purged": 1})
    stored = cache_entry.decode(r.get(redis_key))
    assert (stored.body, stored.remaining(now[0])) == (b"the body", 0)
    assert ttl_before - 1 <= r.ttl(redis_key) <= ttl_before  # KEEPTTL: it stays for revalidation
    wait_until(lambda: len(second.proxy.local) == 0)  # the rewrite invalidates other proxies' L1
    now[0] += 1
    again = request(second.port, q(url))
    assert (again.status, again.body, again.headers["X-Cache"]) == (200, b"the body", "HIT")
    assert "fwd=stale; fwd-status=304" in again.headers["Cache-Status"]
    assert upstream.requests[-1][1].get("If-None-Match") == '"v1"'
    # The 304's tag header updates no stored header: the tags are the entry's, and not shown.
    assert again.headers["Surrogate-Key"] is None
    assert "surrogate-key" not in cache_entry.decode(r.get(redis_key)).headers
    assert upstream.hits["/soft"] == 2
    assert cached(first.port, url) == "HIT"
    assert upstream.hits["/soft"] == 2
    # Revalidated, it is still tagged: a later tag purge reaches it.
    assert request(first.port, by_tag(upstream, "news"), method="DELETE").json() == {"purged": 1}


def test_a_soft_purge_keeps_a_compressed_entrys_coding_vary_key_and_tags(upstream, make_proxy, r):
    body = b"<p>a line of news</p>\n" * 200
    url = upstream.serve("/coded", body, headers={
        "Content-Type": "text/html", "ETag": '"v1"', "Cache-Control": "max-age=600",
        "Vary": "Accept-Language", "Surrogate-Key": "news"})
    now = [1_000_000.0]
    proxy = make_proxy(compress_min_bytes=1024, clock=lambda: now[0])
    request(proxy.port, q(url))
    redis_key = proxy.proxy.parse(url).redis_key
    before = cache_entry.decode(r.get(redis_key))
    assert (before.coding, before.tags, before.vary) == ("zstd", ("news",), {"accept-language": None})
    now[0] += 10
    assert request(proxy.port, by_tag(upstream, "news", "&soft=true"), method="PURGE").json() == {"purged": 1}
    after = cache_entry.decode(r.get(redis_key))
    assert after == dataclasses.replace(before, fresh_for=10.0)
    assert r.get(redis_key)[:5] == b"RPE5\x1e"  # version 5: coding zstd (CODINGS[2]), via, vary, stored_at


def test_a_soft_purged_entry_is_served_stale_if_upstream_then_fails(upstream, make_proxy):
    url = tagged(upstream, "/sie", b"still here", "news")
    now = [1_000_000.0]
    proxy = make_proxy(stale_ttl=300, stale_if_error=300, clock=lambda: now[0])
    request(proxy.port, q(url))
    assert request(proxy.port, "/?key=never&soft=true", method="DELETE").json() == {"purged": 0}
    assert request(proxy.port, q(url) + "&soft=true", method="DELETE").json() == {"purged": 1}
    now[0] += 1
    upstream.serve("/sie", b"down", status=503)
    got = request(proxy.port, q(url))
    assert (got.status, got.body, got.headers["X-Cache"]) == (200, b"still here", "STALE")
    assert "detail=stale-if-error" in got.headers["Cache-Status"]


def test_a_soft_purge_during_a_fetch_is_not_undone_by_its_store(upstream, make_proxy, r):
    url = tagged(upstream, "/softrace", b"v1", "news")
    proxy = make_proxy()
    request(proxy.port, q(url))
    redis_key = proxy.proxy.parse(url).redis_key
    r.delete(redis_key)  # gone from Redis; a new fetch starts and is held
    proxy.proxy.local.clear()
    url, gate = gated(upstream, "/softrace", b"v2 older", {"Surrogate-Key": "news"})
    responses, _sent, threads = fire(proxy.port, q(url), 1)
    wait_until(lambda: upstream.hits["/softrace"] == 2)
    assert request(proxy.port, q(url) + "&soft=true", method="PURGE").json() == {"purged": 0}
    gate.set()
    for thread in threads:
        thread.join(10)
    assert responses == [(200, b"v2 older")]
    assert r.exists(redis_key) == 0


@pytest.mark.parametrize("query, status, error", [
    ("/?tag=", 400, "bad tag"),
    ("/?tag=a%20b", 400, "bad tag"),
    ("/?tag=" + "x" * 257, 400, "bad tag"),
    ("/?tag=news&key=k", 400, "bad query"),
    ("/?tag=news&soft=yes", 400, "bad query"),
    ("/?tag=news&colour=red", 400, "bad query"),
    ("/?tag=news", 400, "missing url"),  # the URL role: a tag is its origin's, name the origin
])
def test_a_bad_purge_is_refused_and_changes_nothing(upstream, make_proxy, r, query, status, error):
    url = tagged(upstream, "/keep", b"keep", "news")
    proxy = make_proxy()
    request(proxy.port, q(url))
    got = request(proxy.port, query, method="DELETE")
    assert (got.status, got.json()["error"]) == (status, error)
    assert got.json()["detail"]
    assert r.exists(proxy.proxy.parse(url).redis_key) == 1
    assert cached(proxy.port, url) == "HIT"


def test_tag_and_soft_are_refused_on_a_get(make_proxy):
    proxy = make_proxy()
    got = request(proxy.port, "/?tag=news")
    assert (got.status, got.json()["error"]) == (400, "bad query")
    assert "tag and soft are for DELETE and PURGE" in got.json()["detail"]


def test_purge_by_tag_says_how_to_turn_it_on_when_tags_are_off(upstream, make_proxy, r):
    url = tagged(upstream, "/off", b"untagged", "news")
    proxy = make_proxy(tag_headers=())
    request(proxy.port, q(url))
    assert r.keys("rp:\x00tag:*") == []
    got = request(proxy.port, by_tag(upstream, "news"), method="DELETE")
    assert (got.status, got.json()["error"]) == (400, "tags off")
    assert "TAG_HEADER" in got.json()["detail"]


def test_the_purge_method_is_allowed_on_the_root_only(make_proxy):
    proxy = make_proxy()
    got = request(proxy.port, "/health", method="PURGE")
    assert (got.status, got.headers["Allow"]) == (405, "GET, HEAD")
    got = request(proxy.port, "/", method="PATCH")
    assert (got.status, got.headers["Allow"]) == (405, "GET, HEAD, DELETE, PURGE")


def test_a_response_with_too_many_or_bad_tags_is_served_but_not_stored(upstream, make_proxy, r):
    many = tagged(upstream, "/many", b"many", " ".join(f"t{i}" for i in range(MAX_TAGS + 1)))
    enough = tagged(upstream, "/enough", b"enough", " ".join(f"t{i}" for i in range(MAX_TAGS)))
    bad = tagged(upstream, "/bad", b"bad", "x" * 257)
    proxy = make_proxy()
    for url, body, stored in ((many, b"many", 0), (enough, b"enough", 1), (bad, b"bad", 0)):
        got = request(proxy.port, q(url))
        assert (got.status, got.body) == (200, body)
        assert r.exists(proxy.proxy.parse(url).redis_key) == stored


def test_a_full_tag_set_drops_expired_members_and_then_refuses_live_ones(upstream, make_proxy, r):
    proxy = make_proxy()
    proxy.proxy.urls.tags.max_entries = 2
    urls = [tagged(upstream, f"/f{i}", b"f%d" % i, "full") for i in range(3)]
    for url in urls[:2]:
        request(proxy.port, q(url))
    request(proxy.port, q(urls[2]))
    assert r.exists(proxy.proxy.parse(urls[2]).redis_key) == 0  # the set is full of live entries
    r.delete(proxy.proxy.parse(urls[0]).redis_key)  # expired, say
    request(proxy.port, q(urls[2]))
    assert r.exists(proxy.proxy.parse(urls[2]).redis_key) == 1
    assert r.scard(tag_key(upstream, "full")) == 2


def test_a_tag_names_at_most_10000_entries_by_default(make_proxy):
    assert MAX_ENTRIES == 10_000 == make_proxy().proxy.urls.tags.max_entries


@pytest.fixture
def other_upstream():
    server = Upstream().start()
    yield server
    server.stop()


def test_a_tag_is_its_origins_and_a_purge_reaches_only_the_origin_it_names(
        upstream, other_upstream, make_proxy, r):
    mine = tagged(upstream, "/mine", b"mine", "news")
    theirs = tagged(other_upstream, "/theirs", b"theirs", "news")
    proxy = make_proxy()
    for url in (mine, theirs):
        request(proxy.port, q(url))
    assert r.smembers(tag_key(upstream, "news")) == {proxy.proxy.parse(mine).redis_key.encode()}
    assert r.smembers(tag_key(other_upstream, "news")) == {proxy.proxy.parse(theirs).redis_key.encode()}
    got = request(proxy.port, by_tag(upstream, "news"), method="DELETE")
    assert (got.status, got.json()) == (200, {"purged": 1})
    assert (cached(proxy.port, mine), cached(proxy.port, theirs)) == ("MISS", "HIT")
    assert (upstream.hits["/mine"], other_upstream.hits["/theirs"]) == (2, 1)


def test_one_upstream_cannot_fill_another_upstreams_tag_set(upstream, other_upstream, make_proxy, r):
    proxy = make_proxy()
    proxy.proxy.urls.tags.max_entries = 2
    for i in range(2):
        request(proxy.port, q(tagged(other_upstream, f"/fill{i}", b"filler", "news")))
    assert r.scard(tag_key(other_upstream, "news")) == 2  # full
    mine = tagged(upstream, "/mine", b"mine", "news")
    assert request(proxy.port, q(mine)).headers["X-Cache"] == "MISS"
    assert r.exists(proxy.proxy.parse(mine).redis_key) == 1
    assert cached(proxy.port, mine) == "HIT"
    assert upstream.hits["/mine"] == 1


def test_in_reverse_proxy_mode_a_tag_purge_is_origin_urls_unless_url_names_another(
        origin, upstream, make_proxy, r):
    origin.route("/site", lambda h: h.reply(200, b"site page", {"Surrogate-Key": "news",
                                                                "Cache-Control": "max-age=600"}))
    other = tagged(upstream, "/other", b"other page", "news")
    site_url = origin.url("")
    proxy = make_proxy(origin=site_url, server_options={"site": Site(site_url),
                                                        "authenticator": Authenticator(())})
    assert request(proxy.port, "/site").headers["X-Cache"] == "MISS"
    assert request(proxy.port, "/_proxy" + q(other)).headers["X-Cache"] == "MISS"
    got = request(proxy.port, "/_proxy/?tag=news", method="DELETE")
    assert (got.status, got.json()) == (200, {"purged": 1})
    assert request(proxy.port, "/site").headers["X-Cache"] == "MISS"
    assert request(proxy.port, "/_proxy" + q(other)).headers["X-Cache"] == "HIT"
    got = request(proxy.port, "/_proxy" + by_tag(upstream, "news"), method="DELETE")
    assert (got.status, got.json()) == (200, {"purged": 1})
    assert request(proxy.port, "/_proxy" + q(other)).headers["X-Cache"] == "MISS"
    assert (origin.hits["/site"], upstream.hits["/other"]) == (2, 2)
