"""Compressed entries on a real Redis with a real upstream: what is stored, and the bytes each
Accept-Encoding gets back."""

import dataclasses
import gzip
import json
import time

import pytest
import zstandard

from proxy.cache import entry as cache_entry
from servers import q, request

HTML = b"".join(b"<li class='item'><a href='/item/%d'>Item number %d</a> in stock: %d</li>\n"
                % (i, i, i % 7) for i in range(1400))[:100 * 1024]
JSON = json.dumps([{"id": i, "name": f"user {i}", "active": i % 3 == 0, "tags": ["a", "b"]}
                   for i in range(1500)]).encode()[:100 * 1024]


@pytest.mark.parametrize("body, content_type", [(HTML, "text/html; charset=utf-8"),
                                                (JSON, "application/json")])
def test_a_large_text_body_is_stored_at_least_3_times_smaller(upstream, make_proxy, r, body,
                                                              content_type):
    assert len(body) == 100 * 1024
    url = upstream.serve("/big", body, headers={"Content-Type": content_type})
    plain, packed = make_proxy(), make_proxy(compress_min_bytes=1024)
    request(plain.port, q(url, "plain"))
    request(packed.port, q(url, "packed"))
    assert r.memory_usage("rp:plain") >= 3 * r.memory_usage("rp:packed")
    entry = cache_entry.decode(r.get("rp:packed"))
    assert entry.coding == "zstd"
    assert zstandard.ZstdDecompressor().decompress(entry.body) == body


@pytest.mark.parametrize("accept, served_coded", [
    (None, False), ("identity", False), ("gzip", False), ("gzip, deflate, br", False),
    ("zstd", True), ("gzip, zstd;q=0.5", True), ("*", True), ("*;q=0", False),
    ("zstd;q=0, *", False), ("ZSTD;Q=1.0", True), ("zstd;q=0.000", False),
])
def test_the_stored_bytes_go_to_clients_that_accept_zstd_and_the_body_to_the_others(
        upstream, make_proxy, r, accept, served_coded):
    url = upstream.serve("/page", HTML, headers={"Content-Type": "text/html", "ETag": '"v1"'})
    proxy = make_proxy(compress_min_bytes=1024)
    request(proxy.port, q(url, "page"))
    coded = cache_entry.decode(r.get("rp:page")).body
    for _ in range(2):  # from Redis, then from L1
        got = request(proxy.port, q(url, "page"), headers={"Accept-Encoding": accept} if accept else {})
        assert (got.status, got.headers["X-Cache"], got.headers["Vary"]) == (200, "HIT", "Accept-Encoding")
        if served_coded:
            assert (got.body, got.headers["Content-Encoding"], got.headers["ETag"]) == \
                (coded, "zstd", '"v1-zstd"')
            assert got.headers["Content-Length"] == str(len(coded))
        else:
            assert (got.body, got.headers["Content-Encoding"], got.headers["ETag"]) == (HTML, None, '"v1"')
    # ?key=K alone negotiates the same way.
    alone = request(proxy.port, "/?key=page", headers={"Accept-Encoding": accept} if accept else {})
    assert alone.body == (coded if served_coded else HTML)


def test_the_miss_that_stores_it_gets_the_upstream_body_and_the_vary_of_later_answers(
        upstream, make_proxy):
    url = upstream.serve("/miss", HTML, headers={"Content-Type": "text/html"})
    proxy = make_proxy(compress_min_bytes=1024)
    got = request(proxy.port, q(url), headers={"Accept-Encoding": "zstd"})
    assert (got.body, got.headers["X-Cache"], got.headers["Content-Encoding"]) == (HTML, "MISS", None)
    assert got.headers["Vary"] == "Accept-Encoding"
    small = upstream.serve("/small-miss", b"short", headers={"Content-Type": "text/html"})
    assert "Vary" not in request(proxy.port, q(small)).headers  # stored as it came: no Vary


# ----- the RFC 9111/9110 semantics on a compressed entry -----------------------------------------

def coded_page(upstream, make_proxy, r, headers: dict[str, str] | None = None):
    """A 100 KiB page with ETag "v1" cached compressed under key `page`: its URL, the proxy and
    the stored bytes."""
    url = upstream.serve("/page", HTML, headers={"Content-Type": "text/html", "ETag": '"v1"',
                                                 **(headers or {})})
    proxy = make_proxy(compress_min_bytes=1024)
    request(proxy.port, q(url, "page"))
    return url, proxy, cache_entry.decode(r.get("rp:page")).body


@pytest.mark.parametrize("accept, if_none_match, status", [
    ("zstd", '"v1-zstd"', 304), ("zstd", 'W/"v1-zstd"', 304), ("zstd", '"v1"', 200),
    (None, '"v1"', 304), (None, '"v1-zstd"', 200), ("gzip", '"v1"', 304),
])
def test_if_none_match_is_compared_with_the_etag_of_the_representation_sent(
        upstream, make_proxy, r, accept, if_none_match, status):
    url, proxy, coded = coded_page(upstream, make_proxy, r)
    got = request(proxy.port, q(url, "page"), headers={
        "If-None-Match": if_none_match, **({"Accept-Encoding": accept} if accept else {})})
    etag = '"v1-zstd"' if accept == "zstd" else '"v1"'
    assert (got.status, got.headers["ETag"], got.headers["Vary"]) == (status, etag, "Accept-Encoding")
    if status == 304:
        assert (got.body, got.headers["Content-Length"]) == (b"", None)
    else:
        assert got.body == (coded if accept == "zstd" else HTML)
    assert upstream.hits["/page"] == 1


@pytest.mark.parametrize("accept", ["zstd", None])
def test_a_range_is_over_the_representation_sent(upstream, make_proxy, r, accept):
    url, proxy, coded = coded_page(upstream, make_proxy, r)
    whole = coded if accept else HTML
    coding = {"Accept-Encoding": accept} if accept else {}
    got = request(proxy.port, q(url, "page"), headers={"Range": "bytes=0-99", **coding})
    assert (got.status, got.body, got.headers["Content-Range"], got.headers["Content-Encoding"]) == \
        (206, whole[:100], f"bytes 0-99/{len(whole)}", accept)
    last = request(proxy.port, q(url, "page"), headers={"Range": f"bytes={len(whole) - 1}-", **coding})
    assert (last.status, last.body) == (206, whole[-1:])
    beyond = request(proxy.port, q(url, "page"), headers={"Range": f"bytes={len(whole)}-", **coding})
    assert (beyond.status, beyond.headers["Content-Range"]) == (416, f"bytes */{len(whole)}")
    # If-Range names the representation: the other one's ETag gets the whole of this one.
    other = '"v1"' if accept else '"v1-zstd"'
    ignored = request(proxy.port, q(url, "page"), headers={"Range": "bytes=0-99", "If-Range": other,
                                                          **coding})
    assert (ignored.status, ignored.body) == (200, whole)


@pytest.mark.parametrize("origin_vary, vary", [
    ("Accept-Language", "Accept-Language, Accept-Encoding"),
    ("accept-encoding", "accept-encoding"),
    ("Accept-Encoding, Accept-Language", "Accept-Encoding, Accept-Language"),
])
def test_vary_accept_encoding_is_merged_with_the_origins_vary_and_never_listed_twice(
        upstream, make_proxy, r, origin_vary, vary):
    url = upstream.serve("/vary", HTML, headers={"Content-Type": "text/html", "Vary": origin_vary})
    proxy = make_proxy(compress_min_bytes=1024)
    answers = [request(proxy.port, q(url), headers={"Accept-Encoding": "zstd"})]  # the miss
    answers += [request(proxy.port, q(url), headers=headers)
                for headers in ({"Accept-Encoding": "zstd"}, {})]
    assert [got.headers["X-Cache"] for got in answers] == ["MISS", "HIT", "HIT"]
    assert [got.headers.get_all("Vary") for got in answers] == [[vary]] * 3
    assert upstream.hits["/vary"] == 1


def test_a_304_from_upstream_freshens_a_compressed_entry_and_keeps_its_coding(
        upstream, make_proxy, r):
    def route(handler):
        if upstream.hits["/reval"] == 1:
            handler.reply(200, HTML, {"Content-Type": "text/html", "ETag": '"v1"',
                                      "Cache-Control": "max-age=10"})
        else:
            handler.reply(304, b"", {"ETag": '"v1"', "Cache-Control": "max-age=100",
                                     "X-Revalidated": "yes", "Content-Encoding": "gzip"})

    url = upstream.route("/reval", route)
    now = [time.time()]
    proxy = make_proxy(compress_min_bytes=1024, clock=lambda: now[0], stale_ttl=300)
    request(proxy.port, q(url, "reval"))
    coded = cache_entry.decode(r.get("rp:reval")).body
    now[0] += 20
    got = request(proxy.port, q(url, "reval"), headers={"Accept-Encoding": "zstd"})
    assert upstream.requests[-1][1].get("If-None-Match") == '"v1"'  # the plain validator upstream
    assert (got.status, got.body, got.headers["Content-Encoding"], got.headers["ETag"],
            got.headers["X-Revalidated"]) == (200, coded, "zstd", '"v1-zstd"', "yes")
    assert "fwd-status=304" in got.headers["Cache-Status"]
    entry = cache_entry.decode(r.get("rp:reval"))
    assert (entry.coding, entry.body, entry.headers["x-revalidated"], entry.headers["cache-control"],
            "content-encoding" in entry.headers) == ("zstd", coded, "yes", "max-age=100", False)
    plain = request(proxy.port, q(url, "reval"))
    assert (plain.body, plain.headers["X-Cache"], plain.headers["Content-Encoding"]) == (HTML, "HIT", None)
    assert upstream.hits["/reval"] == 2


def test_a_body_the_upstream_sent_gzip_coded_is_decoded_then_stored_in_the_proxys_coding(
        upstream, make_proxy, r):
    # The fetcher decodes it (and drops its Content-Encoding), so it is an identity body like
    # any other: compressed in the proxy's coding when that pays, served by Accept-Encoding.
    url = upstream.serve("/gz", gzip.compress(HTML), headers={"Content-Type": "text/html",
                                                             "Content-Encoding": "gzip"})
    proxy = make_proxy(compress_min_bytes=1024)
    first = request(proxy.port, q(url, "gz"))
    assert (first.body, first.headers["Content-Encoding"]) == (HTML, None)
    entry = cache_entry.decode(r.get("rp:gz"))
    assert (entry.coding, zstandard.ZstdDecompressor().decompress(entry.body),
            "content-encoding" in entry.headers) == ("zstd", HTML, False)
    got = request(proxy.port, q(url, "gz"), headers={"Accept-Encoding": "zstd, gzip"})
    assert (got.body, got.headers["X-Cache"], got.headers["Content-Encoding"], got.headers["Vary"]) == \
        (entry.body, "HIT", "zstd", "Accept-Encoding")
    plain = request(proxy.port, q(url, "gz"))
    assert (plain.body, plain.headers["X-Cache"], plain.headers["Content-Encoding"]) == (HTML, "HIT", None)
    assert upstream.hits["/gz"] == 1


@pytest.mark.parametrize("path, headers, size", [
    ("/png", {"Content-Type": "image/png"}, 4096),
    ("/zip", {"Content-Type": "application/zip"}, 4096),
    ("/small", {"Content-Type": "text/plain"}, 1023),
    ("/coded", {"Content-Type": "text/plain", "Content-Encoding": "x-custom"}, 4096),
])
def test_bodies_that_do_not_compress_are_stored_as_received(upstream, make_proxy, r, path,
                                                            headers, size):
    body = (b"abcdefgh" * 1024)[:size]
    url = upstream.serve(path, body, headers=headers)
    proxy = make_proxy(compress_min_bytes=1024)
    request(proxy.port, q(url, "k"))
    entry = cache_entry.decode(r.get("rp:k"))
    assert (entry.coding, entry.body) == ("", body)


def test_the_threshold_is_inclusive(upstream, make_proxy, r):
    url = upstream.serve("/edge", b"a" * 1024, headers={"Content-Type": "text/plain"})
    proxy = make_proxy(compress_min_bytes=1024)
    request(proxy.port, q(url, "k"))
    assert cache_entry.decode(r.get("rp:k")).coding == "zstd"


def test_an_uncompressed_entry_is_version_3_as_before_and_still_served(upstream, make_proxy, r):
    url = upstream.serve("/old", b"fresh upstream", headers={"Content-Type": "text/html"})
    proxy = make_proxy(compress_min_bytes=1024)
    canonical = proxy.proxy.parse(url).canonical
    old = cache_entry.Entry(status=200, body=HTML, url=canonical, fetched_at=2e9 - 10, fresh_for=1e9,
                            headers={"content-type": "text/html"},
                            via=((canonical, "127.0.0.1"),))
    raw = cache_entry.encode_json(old)
    assert b'"v":3' in raw and b"coding" not in raw  # what a proxy of the previous version wrote
    r.set("rp:old", raw)
    got = request(proxy.port, q(url, "old"), headers={"Accept-Encoding": "zstd"})
    assert (got.body, got.headers["X-Cache"], got.headers["Content-Encoding"]) == (HTML, "HIT", None)
    assert "Vary" not in got.headers
    assert upstream.hits["/old"] == 0


def test_a_coded_entry_is_version_4_so_a_reader_of_version_3_takes_it_for_a_miss():
    entry = cache_entry.Entry(status=200, body=b"x", url="http://a/", fetched_at=1.0, fresh_for=1.0,
                              via=(("http://a/", "127.0.0.1"),), coding="zstd", tags=("news",),
                              headers={"x-frame-options": "DENY"}, vary={"accept-language": "de"})
    raw = cache_entry.encode_json(entry)
    assert b'"v":4' in raw and b'"coding":"zstd"' in raw and b'"tags":["news"]' in raw
    assert cache_entry.decode(raw) == entry
    assert cache_entry.decode(_edited(raw, b'"v":4', b'"v":5')) is None


def test_tags_are_optional_in_version_3():
    entry = cache_entry.Entry(status=200, body=b"x", url="http://a/", fetched_at=1.0, fresh_for=1.0,
                              via=(("http://a/", "127.0.0.1"),), tags=("news", "sport"))
    raw = cache_entry.encode_json(entry)
    assert b'"v":3' in raw and b'"tags":["news","sport"]' in raw
    assert cache_entry.decode(raw) == entry
    assert cache_entry.decode(_edited(raw, b',"tags":["news","sport"]', b"")) == \
        dataclasses.replace(entry, tags=())


@pytest.mark.parametrize("change", [
    (b'"coding":"zstd"', b'"coding":"br"'), (b',"coding":"zstd"', b""),
    (b'"coding":"zstd"', b'"coding":"zstd","tags":"news"'), (b'"v":4', b'"v":3'),
    (b'"coding":"zstd"', b'"coding":""'),
])
def test_an_entry_with_an_unknown_coding_no_coding_at_version_4_a_coding_at_3_or_tags_not_a_list_is_no_entry(
        change):
    entry = cache_entry.Entry(status=200, body=b"x", url="http://a/", fetched_at=1.0, fresh_for=1.0,
                              via=(("http://a/", "127.0.0.1"),), coding="zstd")
    raw = cache_entry.encode_json(entry)
    assert change[0] in raw
    assert cache_entry.decode(_edited(raw, *change)) is None


def _edited(raw: bytes, old: bytes, new: bytes) -> bytes:
    """An entry with `old` replaced by `new` in its metadata, its length field kept right."""
    start = len(cache_entry.MAGIC) + 4
    length = int.from_bytes(raw[len(cache_entry.MAGIC):start], "big")
    meta = raw[start:start + length]
    assert old in meta
    meta = meta.replace(old, new)
    return cache_entry.MAGIC + len(meta).to_bytes(4, "big") + meta + raw[start + length:]
