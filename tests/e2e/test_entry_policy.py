"""A tightened policy serves nothing a looser one stored (issue 8, point 6): two proxies on one
real Redis, one with private upstreams allowed and one strict, a counting upstream on loopback
reached through a fake DNS; and /get/ and RESP refusing the URL cache's own keys."""

import dataclasses
import json
from urllib.parse import quote

import pytest
import redis

from load_env import load_settings
from net_guard import FakeDNS, loopback_only  # noqa: F401
from proxy.cache import entry as cache_entry
from proxy.errors import ConfigError
from proxy.upstream.policy import UpstreamPolicy
from servers import Upstream, request

pytestmark = pytest.mark.usefixtures("loopback_only")

KEY_REFUSED = {
    "error": "key refused",
    "detail": "keys under 'rp:' (CACHE_PREFIX) hold the URL cache's entries and are not read "
              "here: read an entry with /?key=<name without 'rp:'>, which applies the upstream "
              "policy (GET_ALLOW_CACHE_PREFIX=true lifts this)",
}


def q(url: str | None = None, key: str | None = None) -> str:
    fields = ([f"url={quote(url, safe='')}"] if url else []) + ([f"key={quote(key)}"] if key else [])
    return "/?" + "&".join(fields)


@pytest.fixture
def pair(make_proxy, upstream):
    """`loose` allows private upstreams, `strict` does not; both allow the upstream's port and
    resolve through one fake DNS where `localhost` and `internal.test` are loopback."""
    dns = FakeDNS({"localhost": ["127.0.0.1"], "internal.test": ["127.0.0.1"]})
    ports = (upstream.port,)
    loose = make_proxy(upstream_policy=UpstreamPolicy(allow_private=True, allowed_ports=ports,
                                                      resolver=dns))
    strict = make_proxy(upstream_policy=UpstreamPolicy(allowed_ports=ports, resolver=dns),
                        invalidation="ttl")
    for path in ("/x", "/y", "/z"):
        upstream.serve(path, b"internal " + path.encode())
    return type("Pair", (), dict(loose=loose, strict=strict, dns=dns))


def assert_url_refused(got, reason: str) -> None:
    assert got.status == 403, got
    assert got.headers["Content-Type"] == "application/json"
    doc = got.json()
    assert set(doc) == {"error", "detail"} and doc["error"] == "url refused", doc
    assert reason in doc["detail"], doc


def test_strict_proxy_refuses_what_a_permissive_one_stored_and_the_permissive_one_still_serves_it(
        pair, upstream, r):
    port = upstream.port
    entries = [  # url, explicit key, what the strict policy says
        (f"http://localhost:{port}/x", "lx", "'localhost' is loopback"),
        (f"http://127.0.0.1:{port}/y", "ly", "127.0.0.1 is in 127.0.0.0/8"),
        (f"http://internal.test:{port}/z", "iz",
         "address refused: 127.0.0.1 is in 127.0.0.0/8 (loopback, RFC 1122) "
         "(internal.test resolves to it); "),
    ]
    for url, key, _reason in entries:
        for stored_key in (key, None):  # under the explicit key and under the derived one
            got = request(pair.loose.port, q(url, stored_key))
            assert (got.status, got.headers["X-Cache"]) == (200, "MISS")
    hits, asked = dict(upstream.hits), list(pair.dns.asked)
    assert hits == {"/x": 2, "/y": 2, "/z": 2}
    stored = {key: (r.get(f"rp:{key}"), r.ttl(f"rp:{key}")) for _url, key, _reason in entries}

    for url, key, reason in entries:
        assert_url_refused(request(pair.strict.port, q(url, key)), reason)
        assert_url_refused(request(pair.strict.port, q(url)), reason)
        assert_url_refused(request(pair.strict.port, q(key=key)), reason)
        got = request(pair.strict.port, "/get/" + quote(f"rp:{key}", safe=""))
        assert (got.status, got.json()) == (403, KEY_REFUSED)

    # Refused from the entries themselves: nothing fetched, nothing resolved, nothing rewritten.
    assert dict(upstream.hits) == hits and pair.dns.asked == asked
    for _url, key, _reason in entries:
        value, ttl = stored[key]
        assert r.get(f"rp:{key}") == value and 0 < r.ttl(f"rp:{key}") <= ttl
    assert pair.strict.proxy.fetcher.policy.refusal_counts()["address"] == 9

    for url, key, _reason in entries:
        path = url.rsplit("/", 1)[1]
        for path_query in (q(url, key), q(url), q(key=key)):
            got = request(pair.loose.port, path_query)
            assert (got.status, got.body, got.headers["X-Cache"]) == \
                (200, b"internal /" + path.encode(), "HIT")
    assert dict(upstream.hits) == hits


def test_an_entry_records_each_hop_and_the_address_it_connected_to(pair, upstream, r):
    upstream.serve("/hop", b"", status=302, headers={"Location": "/z"})
    url = f"http://internal.test:{upstream.port}/hop"
    assert request(pair.loose.port, q(url, "hop")).body == b"internal /z"
    entry = cache_entry.decode(r.get("rp:hop"))
    assert entry.via == ((url, "127.0.0.1"), (f"http://internal.test:{upstream.port}/z", "127.0.0.1"))
    # Version 5: the first hop was the entry's URL, so only its address is stored.
    raw = r.get("rp:hop")
    assert raw.startswith(b"RPE5")
    assert f"\x00127.0.0.1\n127.0.0.1 http://internal.test:{upstream.port}/z\x00".encode() in raw


def test_a_redirect_hop_the_strict_policy_refuses_refuses_the_entry(make_proxy, upstream, r):
    """The first hop is allowed by both policies; the redirect goes to a port only one allows."""
    other = Upstream().start()
    try:
        other.serve("/page", b"from the other port")
        upstream.serve("/hop", b"", status=302, headers={"Location": other.url("/page")})
        loose = make_proxy(upstream_policy=UpstreamPolicy(
            allow_private=True, allowed_ports=(upstream.port, other.port)))
        strict = make_proxy(upstream_policy=UpstreamPolicy(
            allow_private=True, allowed_ports=(upstream.port,)))
        url = upstream.url("/hop")
        assert request(loose.port, q(url, "hop")).body == b"from the other port"
        assert_url_refused(request(strict.port, q(key="hop")), f"port {other.port} refused")
        assert_url_refused(request(strict.port, q(url, "hop")), f"port {other.port} refused")
        assert (upstream.hits["/hop"], other.hits["/page"]) == (1, 1)
    finally:
        other.stop()


def test_an_l1_copy_is_checked_like_a_redis_one(pair, upstream, r):
    url = f"http://internal.test:{upstream.port}/z"
    assert request(pair.loose.port, q(url, "iz")).status == 200
    entry = cache_entry.decode(r.get("rp:iz"))
    pair.strict.proxy.local.set(("u", "rp:iz"), entry, 60)
    r.delete("rp:iz")  # the strict proxy (L1_INVALIDATION=ttl) keeps its copy
    assert_url_refused(request(pair.strict.port, q(key="iz")), "internal.test resolves to it")
    assert_url_refused(request(pair.strict.port, q(url, "iz")), "internal.test resolves to it")
    assert upstream.hits["/z"] == 1 and r.exists("rp:iz") == 0


def raw_entry(meta: dict, body: bytes) -> bytes:
    """An entry's bytes as any version writes them: magic, the metadata's length, JSON, body."""
    encoded = json.dumps(meta, separators=(",", ":")).encode()
    return cache_entry.MAGIC + len(encoded).to_bytes(4, "big") + encoded + body


def write_version_1_entry(r, key: str, url: str, body: bytes) -> None:
    """What the first version stored: no "v", no "via"."""
    r.set(f"rp:{key}", raw_entry({"status": 200, "url": url, "fetched_at": 1e9, "fresh_for": 1e10,
                                  "headers": {"content-type": "text/plain"}}, body), ex=600)


def test_a_version_1_entry_of_a_name_is_not_served_by_a_strict_proxy(pair, upstream, r):
    url = f"http://internal.test:{upstream.port}/z"
    write_version_1_entry(r, "old", url, b"old body")
    assert_url_refused(request(pair.strict.port, q(key="old")),
                       "does not record the address it was fetched from")
    assert pair.dns.asked == []
    # ?url= treats it as a miss: the fetch asks the policy, which refuses the loopback address.
    assert_url_refused(request(pair.strict.port, q(url, "old")), "internal.test resolves to it")
    assert pair.dns.asked == ["internal.test"] and upstream.hits["/z"] == 0
    assert r.get("rp:old").endswith(b"old body")
    assert pair.strict.proxy.fetcher.policy.refusal_counts() == {"address": 1}


class PublicStandIn(UpstreamPolicy):
    """The strict policy, except that `public.test` (loopback in the fake DNS) counts as a
    public name: how a test stands in for a public origin without leaving loopback."""

    def check_address(self, address: str, host: str = "") -> None:
        if host.rstrip(".") != "public.test":
            super().check_address(address, host)


def test_a_version_1_entry_of_a_name_is_fetched_again_and_replaced_by_url(make_proxy, upstream, r):
    dns = FakeDNS({"public.test": ["127.0.0.1"]})
    strict = make_proxy(upstream_policy=PublicStandIn(allowed_ports=(upstream.port,), resolver=dns))
    upstream.serve("/z", b"new body")
    url = f"http://public.test:{upstream.port}/z"
    write_version_1_entry(r, "old", url, b"old body")
    got = request(strict.port, q(url, "old"))
    assert (got.status, got.body, got.headers["X-Cache"]) == (200, b"new body", "MISS")
    assert upstream.hits["/z"] == 1
    assert cache_entry.decode(r.get("rp:old")).via == ((url, "127.0.0.1"),)
    got = request(strict.port, q(key="old"))
    assert (got.status, got.body, got.headers["X-Cache"]) == (200, b"new body", "HIT")


def test_a_version_1_entry_is_read_where_the_policy_can_judge_it(pair, upstream, r):
    """Private addresses allowed, or the host is an address: the URL alone is checked."""
    named = f"http://internal.test:{upstream.port}/z"
    literal = f"http://127.0.0.1:{upstream.port}/y"
    write_version_1_entry(r, "named", named, b"old named")
    write_version_1_entry(r, "literal", literal, b"old literal")
    for path_query, body in ((q(key="named"), b"old named"), (q(named, "named"), b"old named"),
                             (q(literal, "literal"), b"old literal")):
        got = request(pair.loose.port, path_query)
        assert (got.status, got.body, got.headers["X-Cache"]) == (200, body, "HIT")
    assert_url_refused(request(pair.strict.port, q(key="literal")), "127.0.0.0/8")
    assert sum(upstream.hits.values()) == 0


def test_entry_metadata_version_2_is_still_read_with_its_eight_headers_only():
    meta = {"status": 200, "url": "http://a.example/", "fetched_at": 1.0, "fresh_for": 2.0,
            "headers": {"etag": '"e"'}, "v": 2, "via": [["http://a.example/", "93.184.216.34"]]}
    entry = cache_entry.decode(raw_entry(meta, b"b"))
    assert (entry.body, entry.headers, entry.vary) == (b"b", {"etag": '"e"'}, None)
    assert entry.via == (("http://a.example/", "93.184.216.34"),)
    assert cache_entry.decode(raw_entry({**meta, "headers": {"x-frame-options": "DENY"}}, b"b")) is None


def test_entry_metadata_version_3_keeps_any_end_to_end_header_and_vary():
    entry = cache_entry.Entry(status=200, body=b"b", url="http://a.example/", fetched_at=1.0,
                              fresh_for=2.0, headers={"x-frame-options": "DENY", "link": "</a>"},
                              vary={"accept-language": "de", "x-absent": None})
    for encode in (cache_entry.encode_json, cache_entry.encode):  # versions 3 and 5
        assert cache_entry.decode(encode(entry)) == entry
        for name in ("transfer-encoding", "connection", "set-cookie", "Upper", "bad name"):
            bad = dataclasses.replace(entry, headers={name: "x"})
            assert cache_entry.decode(encode(bad)) is None, name
        assert cache_entry.decode(encode(dataclasses.replace(entry, vary={"a": 1}))) is None


def test_entry_metadata_version_3_round_trips_and_bad_hops_are_not_entries():
    entry = cache_entry.Entry(status=200, body=b"b", url="http://a.example/", fetched_at=1.0,
                              fresh_for=2.0, via=(("http://a.example/", "93.184.216.34"),))
    assert cache_entry.decode(cache_entry.encode_json(entry)) == entry
    for via in ([], [["http://a.example/", "not an address"]], [["http://a.example/", 2130706433]],
                [["http://a.example/\r\nX: y", "93.184.216.34"]], "nope"):
        raw = cache_entry.encode_json(entry).replace(
            b'"via":[["http://a.example/","93.184.216.34"]]',
            b'"via":' + json.dumps(via).encode())
        assert cache_entry.decode(raw) is None, via
    later = cache_entry.encode_json(entry).replace(b'"v":3', b'"v":5')
    assert cache_entry.decode(later) is None
    # Version 4 is 3 plus a coding, which it must name (tests/e2e/test_compression.py).
    assert cache_entry.decode(cache_entry.encode_json(entry).replace(b'"v":3', b'"v":4')) is None


# ----- /get/ and RESP: the URL cache's keys ---------------------------------------------------

def test_get_refuses_keys_under_the_cache_prefix_and_serves_others(make_proxy, r):
    proxy = make_proxy()
    r.set("rp:k", b"entry bytes")
    r.set("rpk", b"not under the prefix")
    got = request(proxy.port, "/get/rp%3Ak")
    assert (got.status, got.json()) == (403, KEY_REFUSED)
    assert got.headers["Content-Type"] == "application/json"
    got = request(proxy.port, "/get/rp%3Ak", method="HEAD")
    assert (got.status, got.body) == (403, b"")
    got = request(proxy.port, "/get/rpk")
    assert (got.status, got.body) == (200, b"not under the prefix")


def test_get_allow_cache_prefix_lets_get_read_them(make_proxy, r):
    proxy = make_proxy(get_allow_cache_prefix=True)
    r.set("rp:k", b"entry bytes")
    got = request(proxy.port, "/get/rp%3Ak")
    assert (got.status, got.body) == (200, b"entry bytes")


def test_resp_get_mget_exists_refuse_keys_under_the_cache_prefix(make_resp_proxy, r):
    resp = make_resp_proxy()
    r.set("rp:k", b"entry bytes")
    r.set("plain", b"value")
    client = redis.Redis(host="127.0.0.1", port=resp.port, protocol=2, socket_timeout=5)
    try:
        for call in (lambda: client.get("rp:k"), lambda: client.mget("plain", "rp:k"),
                     lambda: client.exists("plain", "rp:k")):
            with pytest.raises(redis.exceptions.NoPermissionError) as refused:
                call()
            assert str(refused.value) == KEY_REFUSED["detail"]
        assert client.get("plain") == b"value"  # the connection stays usable
        assert client.mget("plain", "absent") == [b"value", None]
    finally:
        client.close()


def test_resp_get_allow_cache_prefix_lets_resp_read_them(make_resp_proxy, r):
    resp = make_resp_proxy(get_allow_cache_prefix=True)
    r.set("rp:k", b"entry bytes")
    client = redis.Redis(host="127.0.0.1", port=resp.port, protocol=2, socket_timeout=5)
    try:
        assert client.get("rp:k") == b"entry bytes"
        assert client.exists("rp:k") == 1
    finally:
        client.close()


def test_an_entry_another_proxy_stored_is_served_where_this_policy_admits_it(make_proxy, upstream):
    """The check refuses what the policy refuses, not whatever another proxy stored."""
    first, second = make_proxy(), make_proxy()
    url = upstream.url("/y")
    upstream.serve("/y", b"shared")
    assert request(first.port, q(url, "shared")).headers["X-Cache"] == "MISS"
    for path_query in (q(url, "shared"), q(key="shared")):
        got = request(second.port, path_query)
        assert (got.status, got.body, got.headers["X-Cache"]) == (200, b"shared", "HIT")
    assert upstream.hits["/y"] == 1


def test_get_allow_cache_prefix_setting():
    assert load_settings({}, env_file=None).get_allow_cache_prefix is False
    assert load_settings({"GET_ALLOW_CACHE_PREFIX": "true"}, env_file=None).get_allow_cache_prefix
    with pytest.raises(ConfigError) as bad:
        load_settings({"GET_ALLOW_CACHE_PREFIX": "maybe"}, env_file=None)
    assert bad.value.problems == ["GET_ALLOW_CACHE_PREFIX='maybe': expected true or false"]
