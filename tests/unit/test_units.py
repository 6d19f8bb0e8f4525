"""Fast unit tests of pure logic: the entry format, key derivation, freshness, and the core's
store/read decisions over fakeredis (the end-to-end suite proves them against a real Redis)."""

import threading

import fakeredis
import pytest

from proxy.cache import entry as cache_entry
from proxy.cache import keys as cache_keys
from proxy.cache.entry import Entry
from proxy.cache.freshness import Policy
from proxy.cache.target import Target
from proxy.core.stats import Stats
from proxy.errors import BadRequest
from proxy.upstream.fetcher import UpstreamResponse
from redis_proxy import HIT, MISS, RedisProxy


class FakeFetcher:
    """Answers every URL with a fixed response and counts the calls; opens no socket."""

    timeout = 5.0
    max_bytes = 10 * 1024**2  # UPSTREAM_MAX_BYTES: also what a stored entry may decode to

    def __init__(self, body: bytes = b"body", headers: dict | None = None, status: int = 200):
        self.body, self.headers, self.status = body, headers or {}, status
        self.calls: list[str] = []

    def check(self, target: Target) -> None:
        pass

    def check_source(self, url: str, hops) -> None:  # noqa: ANN001
        pass

    def fetch(self, target: Target, headers=None, *, follow_redirects=True):  # noqa: ANN001
        self.calls.append(target.url)
        return UpstreamResponse(self.status, self.headers, self.body, target.url)

    def close(self) -> None:
        pass


def proxy_over_fakeredis(fetcher: FakeFetcher, **options) -> tuple[RedisProxy, fakeredis.FakeRedis]:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    return RedisProxy(client, fetcher, **options), client


def test_entry_round_trips_every_byte_value_and_its_metadata():
    entry = Entry(status=203, body=bytes(range(256)) * 3, url="http://a/", fetched_at=1234.5,
                  fresh_for=60.0, headers={"content-type": "image/png", "etag": '"x"'})
    raw = cache_entry.encode(entry)
    assert raw.startswith(b"RPE5") and raw.endswith(entry.body)
    assert cache_entry.decode(raw) == entry


@pytest.mark.parametrize("raw", [b"", b"RPE1", b"plain value", b"RPE1\x00\x00\x00\x05{bad}x",
                                 b"RPE2\x00\x00\x00\x02{}", b"RPE1\xff\xff\xff\xff{}"])
def test_anything_that_is_not_an_entry_decodes_to_none(raw):
    assert cache_entry.decode(raw) is None


def test_derived_keys_ignore_param_order_host_case_default_port_and_fragment():
    a = cache_keys.canonical_url("HTTP://Example.COM:80/p?b=2&a=1#frag", [("z", "9"), ("c", "3")])
    b = cache_keys.canonical_url("http://example.com/p?a=1", [("c", "3"), ("b", "2"), ("z", "9")])
    assert a == b == "http://example.com/p?a=1&b=2&c=3&z=9"
    assert cache_keys.redis_key("rp:", None, a) == "rp:" + cache_keys.url_digest(a)
    assert cache_keys.redis_key("rp:", "mine", a) == "rp:mine"
    assert cache_keys.canonical_url("http://example.com:8080/") != cache_keys.canonical_url("http://example.com/")


@pytest.mark.parametrize("params", ['{"a": {"b": 1}}', "[1]", "nope", '{"a": NaN}', '{"a": [[1]]}'])
def test_params_that_are_not_a_flat_json_object_are_refused(params):
    with pytest.raises(BadRequest):
        cache_keys.parse_params(params)


def test_freshness_is_the_smallest_of_cache_ttl_and_the_response_own():
    policy = Policy(ttl=100)
    assert policy.lifetime({"cache-control": "max-age=10"}, now=0) == 10
    assert policy.lifetime({"cache-control": "max-age=500"}, now=0) == 100
    assert policy.lifetime({"cache-control": "max-age=50, s-maxage=5"}, now=0) == 5
    assert policy.lifetime({"cache-control": "no-cache"}, now=0) == 0
    assert policy.lifetime({"expires": "garbage"}, now=0) == 0
    assert not policy.storable(200, {"cache-control": "no-store"})
    assert not policy.storable(200, {"set-cookie": "a=b"})
    assert not policy.storable(500, {})


def test_store_is_one_write_with_freshness_plus_stale_window_as_ttl():
    fetcher = FakeFetcher(headers={"cache-control": "max-age=30"})
    proxy, client = proxy_over_fakeredis(fetcher, ttl=3600, stale_ttl=300, policy=Policy(ttl=3600))
    first = proxy.fetch("http://example.com/x", key="x")
    assert (first.cache, first.body) == (MISS, b"body")
    assert 300 < client.ttl("rp:x") <= 330
    assert proxy.fetch("http://example.com/x", key="x").cache == HIT
    assert fetcher.calls == ["http://example.com/x"]
    assert proxy.check_key("x") is True and proxy.check_key("y") is False


def test_a_key_bound_to_another_url_is_refetched_never_served():
    fetcher = FakeFetcher()
    proxy, client = proxy_over_fakeredis(fetcher)
    proxy.fetch("http://example.com/a", key="k")
    fetcher.body = b"other"
    got = proxy.fetch("http://example.com/b", key="k")
    assert (got.cache, got.body) == (MISS, b"other")
    assert cache_entry.decode(client.get("rp:k")).url == "http://example.com/b"


@pytest.mark.parametrize("headers", [{"content-type": "text/html\r\nSet-Cookie: pwn=1"},
                                     {"content-length": "0"}, {"etag": "a\x00b"}, {"etag": 5}])
def test_an_entry_with_headers_this_format_never_writes_is_not_an_entry(headers):
    entry = Entry(status=200, body=b"x", url="http://a/", fetched_at=0, fresh_for=1, headers=headers)
    assert cache_entry.decode(cache_entry.encode(entry)) is None


@pytest.mark.parametrize("field, value", [("fresh_for", float("inf")), ("fresh_for", float("nan")),
                                          ("fetched_at", float("-inf")), ("fresh_for", 1e300),
                                          ("fresh_for", -5.0)])
def test_an_entry_with_numbers_out_of_range_is_not_an_entry(field, value):
    fields = {"status": 200, "body": b"x", "url": "http://a/", "fetched_at": 0.0, "fresh_for": 1.0}
    entry = Entry(**{**fields, field: value})
    assert cache_entry.decode(cache_entry.encode(entry)) is None


def test_an_entry_with_a_status_no_client_can_be_given_is_not_an_entry():
    entry = Entry(status=103, body=b"", url="http://a/", fetched_at=0, fresh_for=1)
    assert cache_entry.decode(cache_entry.encode(entry)) is None


def test_stats_lose_no_count_across_threads_and_add_every_kind_of_amount():
    """Counts of one take no lock (proxy.core.stats): threads counting at once lose none, and
    the totals add them to the counts of other amounts, whole or float."""
    stats = Stats()
    assert stats.counts == {}

    def count_many() -> None:
        for _ in range(20_000):
            stats.count("hits_l1")

    threads = [threading.Thread(target=count_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats.count("hits_l1", 5)
    stats.count("reads_redis", 2)
    stats.count("upstream_seconds", 0.25)
    stats.count("upstream_seconds", 1.0)
    stats.count("misses", 0)
    assert stats.counts == {"hits_l1": 80_005, "reads_redis": 2, "upstream_seconds": 1.25,
                            "misses": 0}
    assert type(stats.counts["upstream_seconds"]) is float
    assert stats.counts["never_counted"] == 0  # a Counter, as the readers expect
