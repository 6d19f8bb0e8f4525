"""The stored entry's bytes: version 5 (what encode writes), the JSON versions it still reads, and
what is no entry. The e2e tests (test_entry_policy, test_compression) cover versions 1-4 further."""

import dataclasses
import gzip
import struct

import pytest

from proxy.cache import entry as cache_entry
from proxy.cache.entry import Entry

EVERY_FIELD = Entry(
    status=206, body=bytes(range(256)) * 2, url="https://example.com/a?b=1:2", fetched_at=1764630000.123456,
    fresh_for=599.5, headers={"content-type": "text/html; charset=utf-8", "etag": '"v:1"',
                              "x-latin": "caf\xe9", "x-empty": ""},
    via=(("https://example.com/a?b=1:2", "93.184.216.34"),
         ("https://www.example.com/a b", "2606:2800:220:1:248:1893:25c8:1946")),
    vary={"accept-language": "de, en;q=0.5", "x-empty": "", "x-absent": None},
    tags=("news", "sport!"), coding="gzip")

# The entry make bench measures: a 100-byte body from a local origin, two kept headers.
BENCH_URL = "http://127.0.0.1:43211/page"
BENCH = Entry(status=200, body=b"x" * 100, url=BENCH_URL, fetched_at=1764630000.123456, fresh_for=3600.0,
              headers={"content-type": "text/plain", "cache-control": "max-age=3600"},
              via=((BENCH_URL, "127.0.0.1"),))

# Real bytes of versions 3 and 4, as the previous release's encode wrote them.
VERSION_3 = (
    b'RPE1\x00\x00\x01\xa5{"v":3,"status":200,"url":"https://example.com/a?b=1","fetched_at":1764630000.25,'
    b'"fresh_for":600.0,"headers":{"content-type":"text/html; charset=utf-8","etag":"\\"v1\\"",'
    b'"cache-control":"max-age=600","vary":"Accept-Language"},"vary":{"accept-language":"de",'
    b'"x-absent":null},"via":[["https://example.com/a?b=1","93.184.216.34"],["https://www.example.com/a?b=1",'
    b'"2606:2800:220:1:248:1893:25c8:1946"]],"tags":["news","sport"]}<p>hello</p>')
VERSION_4 = (
    b'RPE1\x00\x00\x00\xd9{"v":4,"status":404,"url":"http://127.0.0.1:8081/gone","fetched_at":1764630001.5,'
    b'"fresh_for":60.0,"headers":{"content-type":"text/plain"},"vary":null,"via":[["http://127.0.0.1:8081/gone",'
    b'"127.0.0.1"]],"coding":"gzip"}\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03\xcb\xcb/Q\xc8H-J\x05\x00\xbbi\x90'
    b'\x1c\x08\x00\x00\x00')


def v5(text: str, *, flags: int = 0b100, status: int = 200, fetched_at: float = 1.0, fresh_for: float = 2.0,
       body: bytes = b"b", length: int | None = None) -> bytes:
    """Version 5 bytes written by hand, as anyone who can write the Redis could."""
    meta = text.encode("utf-8", "surrogateescape")
    return struct.pack(">4sBHddH", b"RPE5", flags, status, fetched_at, fresh_for,
                       len(meta) if length is None else length) + meta + body


def test_version_5_round_trips_every_field():
    raw = cache_entry.encode(EVERY_FIELD)
    assert raw.startswith(b"RPE5") and raw.endswith(EVERY_FIELD.body)
    assert cache_entry.decode(raw) == EVERY_FIELD


@pytest.mark.parametrize("change", [
    {"via": None}, {"vary": None}, {"vary": {}}, {"headers": {}}, {"tags": ()}, {"coding": ""},
    {"coding": "zstd"}, {"body": b""}, {"via": None, "vary": None, "headers": {}, "tags": (), "coding": ""},
    {"fetched_at": 0, "fresh_for": 0}, {"status": 599}, {"url": "http://a/\u20ac"},
])
def test_version_5_round_trips_each_field_absent_or_at_its_edge(change):
    entry = dataclasses.replace(EVERY_FIELD, **change)
    raw = cache_entry.encode(entry)
    assert raw.startswith(b"RPE5")
    assert cache_entry.decode(raw) == entry


def test_version_5_layout_stores_the_url_once():
    assert cache_entry.encode(BENCH) == (
        struct.pack(">4sBHddH", b"RPE5", 0b100, 200, 1764630000.123456, 3600.0, 90)
        + b"http://127.0.0.1:43211/page\x00content-type:text/plain\ncache-control:max-age=3600"
        + b"\x00127.0.0.1\x00\x00" + b"x" * 100)


def test_a_typical_entry_has_at_most_70_bytes_of_metadata_beyond_its_kept_headers():
    """The budget of make bench's entry overhead (<= 150 bytes of MEMORY USAGE beyond body and
    kept headers): Redis's own cost of a key holding the body is 68 bytes for `rp:bench`
    (robj, dict entry, key, sds header, jemalloc's size class), and the allocator rounds the
    value up to its size class (224 bytes for this one), which leaves about 70 for metadata."""
    raw = cache_entry.encode(BENCH)
    kept = sum(len(name) + len(value) for name, value in BENCH.headers.items())
    assert len(raw) - len(BENCH.body) - kept == 68
    assert len(cache_entry.encode_json(BENCH)) - len(BENCH.body) - kept == 202  # version 3


def test_versions_3_and_4_as_the_previous_release_wrote_them_still_decode():
    assert cache_entry.decode(VERSION_3) == Entry(
        status=200, body=b"<p>hello</p>", url="https://example.com/a?b=1", fetched_at=1764630000.25,
        fresh_for=600.0, headers={"content-type": "text/html; charset=utf-8", "etag": '"v1"',
                                  "cache-control": "max-age=600", "vary": "Accept-Language"},
        via=(("https://example.com/a?b=1", "93.184.216.34"),
             ("https://www.example.com/a?b=1", "2606:2800:220:1:248:1893:25c8:1946")),
        vary={"accept-language": "de", "x-absent": None}, tags=("news", "sport"))
    assert cache_entry.decode(VERSION_4) == Entry(
        status=404, body=gzip.compress(b"not here", mtime=0), url="http://127.0.0.1:8081/gone",
        fetched_at=1764630001.5, fresh_for=60.0, headers={"content-type": "text/plain"},
        via=(("http://127.0.0.1:8081/gone", "127.0.0.1"),), coding="gzip")
    for old in (VERSION_3, VERSION_4):  # rewritten (a soft purge, a revalidation) as version 5
        entry = cache_entry.decode(old)
        assert cache_entry.decode(cache_entry.encode(entry)) == entry


@pytest.mark.parametrize("entry", [
    dataclasses.replace(BENCH, vary={"x-odd": "a\rb"}),  # version 3 read a CR in a vary value
    dataclasses.replace(BENCH, vary={"x:odd": "a"}),
    dataclasses.replace(BENCH, via=(("", "127.0.0.1"),)),
    dataclasses.replace(BENCH, url="http://a/\udcff"),  # not UTF-8: JSON escapes it
    dataclasses.replace(BENCH, url="http://a/\nb"),  # version 3 never checked the URL's characters
], ids=["cr-in-vary", "colon-in-vary-name", "empty-hop-url", "surrogate", "lf-in-url"])
def test_an_entry_version_5_cannot_carry_exactly_is_written_as_version_3_and_read_as_before(entry):
    raw = cache_entry.encode(entry)
    assert raw.startswith(b'RPE1') and b'"v":3' in raw
    assert cache_entry.decode(raw) == entry == cache_entry.decode(cache_entry.encode_json(entry))


@pytest.mark.parametrize("change", [
    {"headers": {"etag": "a\nset-cookie: x"}}, {"headers": {"etag": "a\rb"}}, {"headers": {"etag": "a\x00b"}},
    {"headers": {"a:b": "c"}}, {"headers": {"": "c"}}, {"headers": {"etag": 5}},
    {"via": (("http://a/\n", "127.0.0.1"),)}, {"via": (("http://a/", "127.0.0.1 x"),)},
    {"via": ()}, {"tags": ("a b",)}, {"coding": "br"}, {"status": 70000}, {"status": 103},
    {"fresh_for": float("nan")}, {"fetched_at": -1.0},
])
def test_an_entry_no_version_reads_is_still_no_entry(change):
    assert cache_entry.decode(cache_entry.encode(dataclasses.replace(BENCH, **change))) is None


def test_hand_written_version_5_bytes_decode():
    assert cache_entry.decode(v5("http://a/\x00etag:x\x00127.0.0.1\x00\x00")) == Entry(
        status=200, body=b"b", url="http://a/", fetched_at=1.0, fresh_for=2.0, headers={"etag": "x"},
        via=(("http://a/", "127.0.0.1"),))


@pytest.mark.parametrize("raw", [
    b"RPE5", b"RPE5\x04\x00\xc8",
    v5("http://a/\x00etag:x\x00127.0.0.1\x00\x00", length=200),  # the text cut short
    v5("http://a/\x00etag:x\r\x00127.0.0.1\x00\x00"),
    v5("http://a/\x00ETag:x\x00127.0.0.1\x00\x00"),
    v5("http://a/\x00set-cookie:x\x00127.0.0.1\x00\x00"),
    v5("http://a/\x00etag\x00127.0.0.1\x00\x00"),
    v5("http://a/\x00etag:x\n\x00127.0.0.1\x00\x00"),
    v5("http://a/\nb\x00\x00127.0.0.1\x00\x00"),
    v5("http://a/\x00\x00127.0.0.1\x00\x00", flags=0b10100),  # a flag this version does not know
    v5("http://a/\x00\x00127.0.0.1\x00\x00", flags=0b111),  # coding 3
    v5("http://a/\x00\x00not-an-address\x00\x00"),
    v5("http://a/\x00\x00\x00\x00"),  # via recorded, no hop
    v5("http://a/\x00\x00127.0.0.1\x00\x00", flags=0),  # hops, via not recorded
    v5("http://a/\x00\x00\x00accept-language:de\x00", flags=0),  # vary values, vary not recorded
    v5("http://a/\x00\x00127.0.0.1\x00\x00a,b"),
    v5("http://a/\x00\x00127.0.0.1\x00\x00a  b"),
    v5("http://a/\x00\x00127.0.0.1\x00"),  # four sections
    v5("http://a/\x00\x00127.0.0.1\x00\x00\x00"),  # six
    v5("http://a/\udcff\x00\x00127.0.0.1\x00\x00"),  # not UTF-8
    v5("http://a/\x00\x00127.0.0.1\x00\x00", status=199),
    v5("http://a/\x00\x00127.0.0.1\x00\x00", status=600),
    v5("http://a/\x00\x00127.0.0.1\x00\x00", fetched_at=float("nan")),
    v5("http://a/\x00\x00127.0.0.1\x00\x00", fresh_for=float("inf")),
    v5("http://a/\x00\x00127.0.0.1\x00\x00", fresh_for=-1.0),
    v5("http://a/\x00\x00127.0.0.1\x00\x00", fetched_at=1e11),
])
def test_version_5_bytes_this_format_never_writes_are_no_entry(raw):
    assert cache_entry.decode(raw) is None


def test_the_store_time_round_trips_in_version_5_and_3_and_adds_one_section():
    stored = dataclasses.replace(EVERY_FIELD, stored_at=1764630007.25)
    raw = cache_entry.encode(stored)
    assert raw[4] & 0b10000 and raw.count(b"\x00") - cache_entry.encode(EVERY_FIELD).count(b"\x00") == 1
    assert cache_entry.decode(raw) == stored
    assert cache_entry.decode(cache_entry.encode_json(stored)) == stored
    assert cache_entry.decode(cache_entry.encode(EVERY_FIELD)).stored_at == 0.0  # not recorded


@pytest.mark.parametrize("stored_text", ["", "1.5", "17646300071.250000x", "-1.000000", "1e10"])
def test_a_store_time_that_is_not_one_is_no_entry(stored_text):
    assert cache_entry.decode(v5(f"http://h/\x00\x00\x00\x00\x00{stored_text}", flags=0b10000)) is None


def test_a_store_time_written_by_hand_decodes():
    entry = cache_entry.decode(v5("http://h/\x00\x00\x00\x00\x001764630007.250000", flags=0b10000))
    assert entry is not None and entry.stored_at == 1764630007.25
