"""Derived keys: two URLs share one only when the request-target sent upstream is the same
(RFC 3986 §6.2.2 equivalences, and the query's items in any order)."""

import hashlib
import string
import time
from urllib.parse import quote, urlsplit

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from urllib3.util.url import _encode_target  # what urllib3 does to the target before sending

from proxy.cache import entry as cache_entry
from proxy.cache import keys as cache_keys
from proxy.cache.entry import Entry
from proxy.errors import BadRequest
from servers import request

BASE = "http://example.com/p"


def key(url: str, params: cache_keys.Pairs = ()) -> str:  # type: ignore[assignment]
    return cache_keys.redis_key("rp:", None, cache_keys.canonical_url(url, list(params)))


def origin_form(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def sent_by_requests(url: str) -> str:
    """The request-target requests and urllib3 put on the request line for `url`."""
    return _encode_target(requests.Request("GET", url).prepare().path_url)


# ----- pairs that send different bytes upstream: never one key -------------------------------

NON_UTF8_QUERIES = ["?q=%FF", "?q=%FE", "?q=%C0", "?q=%80", "?q=%EF%BF%BD"]

DISTINCT = [
    ("?flag", "?flag="),
    ("?a=b=c", "?a=b%3Dc"),
    ("?a=1;b=2", "?a=1%3Bb=2"),
    ("?q=a+b", "?q=a%20b"),
    ("?q=a+b", "?q=a%2Bb"),
    ("?p=a%2Fb", "?p=a/b"),
    ("?a=1&&b=2", "?a=1&b=2"),
    ("?a=1&", "?a=1"),
    ("?a=1&b=2", "?a=1%26b=2"),
    ("?q=%25", "?q=%2525"),
    ("?q=%3F", "?q=?"),
    ("/%2F", "//"),
    ("/a%2Fb", "/a/b"),
    ("/a;b", "/a%3Bb"),
    ("/a+b", "/a%20b"),
    ("/a/", "/a"),
    ("/a/b/..", "/a"),
]


def absolute(tail: str) -> str:
    return "http://example.com" + ("" if tail.startswith("/") else "/p") + tail


def test_queries_with_different_bytes_that_are_not_utf8_get_different_keys():
    assert len({key(BASE + query) for query in NON_UTF8_QUERIES}) == len(NON_UTF8_QUERIES)


@pytest.mark.parametrize(("a", "b"), DISTINCT)
def test_urls_sent_differently_get_different_keys(a, b):
    assert sent_by_requests(cache_keys.target_url(absolute(a), [])) != \
        sent_by_requests(cache_keys.target_url(absolute(b), []))
    assert key(absolute(a)) != key(absolute(b))


# ----- spellings of one request-target: one key ----------------------------------------------

EQUIVALENT = [
    ("http://example.com/p?q=%ff", "http://example.com/p?q=%FF"),  # §6.2.2.1 hex case
    ("http://example.com/p?q=%3b", "http://example.com/p?q=%3B"),
    ("http://example.com/%7euser/%41", "http://example.com/~user/A"),  # §6.2.2.2 unreserved
    ("http://example.com/p?q=%2D%2E%5F%7E", "http://example.com/p?q=-._~"),
    ("http://example.com/a/./b/../c", "http://example.com/a/c"),  # §6.2.2.3 dot-segments
    ("http://example.com/a/%2E%2e/c", "http://example.com/c"),
    ("http://example.com", "http://example.com/"),  # §6.2.3 empty path
    ("http://example.com/p?", "http://example.com/p"),  # requests never sends a bare "?"
    ("http://example.com/p#frag", "http://example.com/p"),  # never sent
    ("http://example.com/é?q=é", "http://example.com/%C3%A9?q=%C3%A9"),  # sent as UTF-8
    ('http://example.com/a b?q="x y"', "http://example.com/a%20b?q=%22x%20y%22"),
    ("http://example.com/[x]?q=[y]", "http://example.com/%5Bx%5D?q=%5By%5D"),
    ("HTTP://Example.COM:80/p", "http://example.com/p"),  # scheme and host case, default port
    ("https://example.com:443/p", "https://example.com/p"),
    ("http://example.com/p?b=2&a=1", "http://example.com/p?a=1&b=2"),  # item order
    ("http://example.com/p?&a=1", "http://example.com/p?a=1&"),
]


@pytest.mark.parametrize(("a", "b"), EQUIVALENT)
def test_spellings_of_one_request_target_share_a_key(a, b):
    assert key(a) == key(b)


@pytest.mark.parametrize(("a", "b"), EQUIVALENT[:-2])
def test_spellings_that_share_a_key_are_sent_identically(a, b):
    assert sent_by_requests(cache_keys.target_url(a, [])) == \
        sent_by_requests(cache_keys.target_url(b, []))


def test_requests_itself_removes_literal_dot_segments_drops_a_bare_query_mark_and_requotes():
    assert sent_by_requests("http://example.com/a/./b/../c?") == "/a/c"
    assert sent_by_requests("http://example.com/%7e?q=%ff é") == "/~?q=%FF%20%C3%A9"


def test_a_derived_key_is_the_prefix_and_the_sha256_of_the_rule_number_and_canonical_url():
    canonical = cache_keys.canonical_url("http://example.com/p?b=2&a=1")
    assert canonical == "http://example.com/p?a=1&b=2"
    assert key("http://example.com/p?b=2&a=1") == \
        "rp:" + hashlib.sha256(b"2 http://example.com/p?a=1&b=2").hexdigest()


@pytest.mark.parametrize(("url", "params", "same_as"), [
    ("http://example.com/p", [("q", "a b")], "http://example.com/p?q=a+b"),
    ("http://example.com/p", [("q", "a+b")], "http://example.com/p?q=a%2Bb"),
    ("http://example.com/p", [("p", "/x;y=z")], "http://example.com/p?p=%2Fx%3By%3Dz"),
    ("http://example.com/p", [("q", "é")], "http://example.com/p?q=%C3%A9"),
    ("http://example.com/p?x=1", [("a", "2")], "http://example.com/p?a=2&x=1"),
    ("http://example.com/p?", [("a", "2")], "http://example.com/p?a=2"),
])
def test_params_are_keyed_as_they_are_encoded_into_the_target(url, params, same_as):
    assert key(url, params) == key(same_as)


def test_params_that_send_a_plus_and_a_space_get_different_keys():
    assert key("http://example.com/p", [("q", "a+b")]) != key("http://example.com/p", [("q", "a b")])
    assert key("http://example.com/p", [("q", "a+b")]) != key("http://example.com/p?q=a+b")


@pytest.mark.parametrize("url", ["http://example.com/p?q=%zz", "http://example.com/p?q=%F",
                                 "http://example.com/%g0", "http://example.com/100%"])
def test_a_percent_without_two_hex_digits_is_a_bad_url(url):
    with pytest.raises(BadRequest) as caught:
        cache_keys.check_url(url, 8192)
    assert caught.value.error == "bad url"
    assert "percent-encode '%' as %25" in caught.value.detail


# ----- the rule, generated --------------------------------------------------------------------

UNRESERVED = set(string.ascii_letters + string.digits + "-._~")
RAW_OK = UNRESERVED | set("!$&'()*+,;=:@/?")
PIECES = ["a", "B", "~", "-", ".", "%41", "%61", "%7e", "%7E", "%2E", "%2e", "%FF", "%ff", "%FE",
          "%C0", "%80", "%EF%BF%BD", "%20", "+", "%2B", "%2b", ";", "%3B", "%3b", "=", "%3D",
          "&", "%26", "/", "%2F", "%2f", "?", "%3F", "%25", " ", "é", "%C3%A9"]
SEGMENT_PIECES = [p for p in PIECES if p not in ("&", "/", "?")] + [".", "..", "%2E%2E"]


def tokens(text: str) -> tuple:
    """The characters of a path or query as bytes on the wire, told apart from delimiters: an
    independent statement of RFC 3986 §6.2.2.1-2 for the oracle."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "%":
            char = chr(int(text[i + 1:i + 3], 16))
            out.append(("char", char) if char in UNRESERVED else ("byte", ord(char)))
            i += 3
        else:
            if text[i] in RAW_OK:
                out.append(("char", text[i]))
            else:
                out.extend(("byte", b) for b in text[i].encode())
            i += 1
    return tuple(out)


def remove_dots(path: str) -> str:
    """RFC 3986 §5.2.4 as written: the input-buffer loop, steps A to E."""
    out = ""
    while path:
        if path.startswith("../"):
            path = path[3:]
        elif path.startswith("./"):
            path = path[2:]
        elif path.startswith("/./"):
            path = path[2:]
        elif path == "/.":
            path = "/"
        elif path.startswith("/../") or path == "/..":
            path = "/" + path[4:]
            out = out[:out.rfind("/")] if "/" in out else ""
        elif path in (".", ".."):
            path = ""
        else:
            end = path.find("/", 1)
            end = len(path) if end < 0 else end
            out, path = out + path[:end], path[end:]
    return out


def decode_unreserved(text: str) -> str:
    out, i = "", 0
    while i < len(text):
        if text[i] == "%" and chr(int(text[i + 1:i + 3], 16)) in UNRESERVED:
            out, i = out + chr(int(text[i + 1:i + 3], 16)), i + 3
        else:
            out, i = out + text[i], i + 1
    return out


def identity(path: str, query: str | None) -> tuple:
    """What the rule says two URLs must agree on to share a key."""
    path = remove_dots(decode_unreserved(path)) or "/"
    items = tuple(sorted(tokens(item) for item in query.split("&"))) if query else ()
    return tuple(tokens(segment) for segment in path.split("/")), items


segments = st.lists(st.sampled_from(SEGMENT_PIECES), max_size=3).map("".join)
paths = st.lists(segments, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
queries = st.none() | st.lists(st.sampled_from(PIECES), max_size=6).map("".join)


def url_of(path: str, query: str | None) -> str:
    return BASE.rsplit("/", 1)[0] + path + ("" if query is None else "?" + query)


@settings(max_examples=300, deadline=None)
@given(paths, queries, paths, queries)
def test_two_urls_share_a_key_exactly_when_the_rule_calls_them_equivalent(pa, qa, pb, qb):
    same = identity(pa, qa) == identity(pb, qb)
    assert (key(url_of(pa, qa)) == key(url_of(pb, qb))) is same


ALTERNATIVES = {"a": ["a", "%61"], "B": ["B", "%42"], "~": ["~", "%7e", "%7E"], "-": ["-", "%2D"],
                ".": [".", "%2E", "%2e"], "%FF": ["%FF", "%ff"], "%3B": ["%3B", "%3b"],
                "%2F": ["%2F", "%2f"], " ": [" ", "%20"], "é": ["é", "%C3%A9", "%c3%a9"]}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.sampled_from(sorted(ALTERNATIVES)), max_size=4), min_size=1,
                max_size=4), st.data())
def test_every_spelling_and_order_of_a_query_shares_one_key(items, data):
    def spell(item: list[str]) -> str:
        return "".join(data.draw(st.sampled_from(ALTERNATIVES[piece])) for piece in item)
    first = "&".join(spell(item) for item in items)
    second = "&".join(spell(item) for item in data.draw(st.permutations(items)))
    path = "/" + spell(data.draw(st.sampled_from(items)))
    assert key(url_of(path, first)) == key(url_of(path, second))


@settings(max_examples=300, deadline=None)
@given(paths, queries)
def test_requests_sends_the_target_byte_for_byte(path, query):
    target = cache_keys.target_url(url_of(path, query), [])
    assert sent_by_requests(target) == origin_form(target)


# ----- end to end: the real upstream sees what the client gave ---------------------------------

def echo_target(upstream, path: str = "/echo") -> str:
    """An upstream page whose body is the raw request-target it received."""
    return upstream.route(path, lambda h: h.reply(200, b"target " + h.path.encode(),
                                                  {"Content-Type": "text/plain"}))


def get(port: int, url: str):
    return request(port, "/?url=" + quote(url, safe=""))


def test_non_utf8_query_bytes_are_fetched_and_cached_apart(upstream, make_proxy, r):
    url = echo_target(upstream)
    proxy = make_proxy()
    ff, fe = get(proxy.port, url + "?q=%FF"), get(proxy.port, url + "?q=%FE")
    assert (ff.status, ff.body, ff.headers["X-Cache"]) == (200, b"target /echo?q=%FF", "MISS")
    assert (fe.status, fe.body, fe.headers["X-Cache"]) == (200, b"target /echo?q=%FE", "MISS")
    assert [target for target, _ in upstream.requests] == ["/echo?q=%FF", "/echo?q=%FE"]
    again = get(proxy.port, url + "?q=%ff")
    assert (again.body, again.headers["X-Cache"]) == (b"target /echo?q=%FF", "HIT")
    assert upstream.hits["/echo"] == 2
    assert len(r.keys("rp:*")) == 2


@pytest.mark.parametrize(("given_target", "sent"), [
    ("/echo?q=%EF%BF%BD", "/echo?q=%EF%BF%BD"),
    ("/echo?a=b=c&a=b%3Dc", "/echo?a=b=c&a=b%3Dc"),
    ("/echo?flag&flag=&&x;y%3Bz", "/echo?flag&flag=&&x;y%3Bz"),
    ("/echo?q=a+b%20c%2Fd/e", "/echo?q=a+b%20c%2Fd/e"),
    ("/echo?q=%3b%7e%41", "/echo?q=%3B~A"),
    ("/echo?q=é x", "/echo?q=%C3%A9%20x"),
    ("/x/../echo?", "/echo"),
    ("/x/%2E%2E/echo", "/echo"),
    ("/ech%6F", "/echo"),
])
def test_the_upstream_receives_the_normal_form_of_the_target_given(upstream, make_proxy,
                                                                   given_target, sent):
    echo_target(upstream)
    proxy = make_proxy()
    response = get(proxy.port, upstream.url(given_target))
    assert (response.status, response.body) == (200, b"target " + sent.encode())
    assert [target for target, _ in upstream.requests] == [sent]


def test_a_url_with_a_stray_percent_is_refused_and_nothing_is_fetched(upstream, make_proxy, r):
    url = echo_target(upstream)
    proxy = make_proxy()
    response = get(proxy.port, url + "?q=100%")
    assert response.status == 400
    assert response.json()["error"] == "bad url"
    assert "percent-encode '%' as %25" in response.json()["detail"]
    assert upstream.hits["/echo"] == 0 and r.keys("*") == []
    assert get(proxy.port, url + "?q=100%25").body == b"target /echo?q=100%25"


def test_an_entry_stored_under_the_previous_rule_is_a_miss(upstream, make_proxy, r):
    url = echo_target(upstream) + "?q=%EF%BF%BD"
    # The first rule keyed ?q=%FF by this very canonical URL (it decoded %FF to U+FFFD), with
    # the bare SHA-256: an entry fetched for ?q=%FF may sit there.
    old_key = "rp:" + hashlib.sha256(url.encode()).hexdigest()
    r.set(old_key, cache_entry.encode(Entry(status=200, body=b"target /echo?q=%FF", url=url,
                                            fetched_at=time.time(), fresh_for=3600.0)), ex=3600)
    proxy = make_proxy()
    response = get(proxy.port, url)
    assert (response.body, response.headers["X-Cache"]) == (b"target /echo?q=%EF%BF%BD", "MISS")
    assert upstream.hits["/echo"] == 1
    assert r.get(old_key) is not None  # left to expire by its TTL


def test_an_explicit_key_entry_of_the_previous_rule_is_served_to_the_url_it_remembers(
        upstream, make_proxy, r):
    # The known limit the README states for upgrades: explicit keys keep their names.
    url = echo_target(upstream) + "?q=%EF%BF%BD"
    r.set("rp:mine", cache_entry.encode(Entry(status=200, body=b"target /echo?q=%FF", url=url,
                                              fetched_at=time.time(), fresh_for=3600.0)), ex=3600)
    proxy = make_proxy()
    response = request(proxy.port, "/?key=mine&url=" + quote(url, safe=""))
    assert (response.body, response.headers["X-Cache"]) == (b"target /echo?q=%FF", "HIT")
    assert upstream.hits["/echo"] == 0
