"""GET /get/<key>: the Redis read proxy over HTTP (CONTRACT §4), with a real Redis behind it."""

import base64
import json
from urllib.parse import quote

import pytest
import redis

from http_server import start_front_ends
from load_env import load_settings
from proxy.errors import ConfigError
from proxy.store.launcher import RedisServer
from servers import request


@pytest.fixture
def proxy(make_proxy):
    return make_proxy()


def get(port: int, key: bytes | str, headers: dict[str, str] | None = None, method: str = "GET"):
    raw = key.encode() if isinstance(key, str) else key
    return request(port, "/get/" + quote(raw, safe=""), method=method, headers=headers)


def test_hit_is_the_raw_value(proxy, r):
    r.set("greeting", b"hello")
    response = get(proxy.port, "greeting")
    assert (response.status, response.body) == (200, b"hello")
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Length"] == "5"


def test_first_read_is_a_miss_from_redis_then_a_hit_from_l1(make_proxy, r):
    proxy = make_proxy(invalidation="ttl")
    r.set("tiered", b"value")

    first, second = get(proxy.port, "tiered"), get(proxy.port, "tiered")

    assert (first.status, first.body) == (200, b"value")
    assert first.headers["X-Cache"] == "MISS"
    assert first.headers["Cache-Status"] == "redis-proxy; fwd=miss"
    assert (second.status, second.body) == (200, b"value")
    assert second.headers["X-Cache"] == "HIT"
    assert second.headers["Cache-Status"] == "redis-proxy; hit"
    assert dict(proxy.proxy.stats) == {"reads_redis": 1, "hits_l1": 1}


def test_json_form_says_the_source_cache_or_redis(make_proxy, r):
    proxy = make_proxy(invalidation="ttl")
    r.set("sourced", b"text")
    accept = {"Accept": "application/json"}

    first, second = get(proxy.port, "sourced", accept), get(proxy.port, "sourced", accept)

    assert first.json() == {"key": "sourced", "value": "text", "source": "redis"}
    assert first.headers["X-Cache"] == "MISS"
    assert second.json() == {"key": "sourced", "value": "text", "source": "cache"}
    assert second.headers["X-Cache"] == "HIT"
    assert second.headers["Cache-Status"] == "redis-proxy; hit"


def test_miss_is_404_key_not_found(proxy):
    response = get(proxy.port, "absent")
    assert response.status == 404
    assert response.json() == {"error": "key not found", "detail": "no such key in the backing Redis"}
    assert response.headers["Content-Type"] == "application/json"


def test_binary_value_comes_back_byte_for_byte(proxy, r):
    value = bytes(range(256)) * 64 + b"\r\n\x00"
    r.set("blob", value)
    response = get(proxy.port, "blob")
    assert (response.status, response.body) == (200, value)
    assert response.headers["Content-Type"] == "application/octet-stream"


def test_json_form_for_text(proxy, r):
    r.set("name", "Zoë".encode())
    response = get(proxy.port, "name", {"Accept": "application/json"})
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"key": "name", "value": "Zoë", "source": "redis"}


def test_json_form_for_bytes_that_are_not_utf8_is_base64_flagged(proxy, r):
    value = b"\xff\xfe\x00binary"
    r.set("raw", value)
    doc = get(proxy.port, "raw", {"Accept": "application/json"}).json()
    assert doc == {"key": "raw", "value": base64.b64encode(value).decode(), "encoding": "base64",
                   "source": "redis"}
    assert base64.b64decode(doc["value"]) == value


@pytest.mark.parametrize("key", ["a/b/c", "with space", "ключ", "emoji 🗝", "100%", "q?x=1&y#z",
                                 b"\xff\x00raw"])
def test_any_key_percent_encoded(proxy, r, key):
    raw = key.encode() if isinstance(key, str) else key
    r.set(raw, b"value of " + raw)
    response = get(proxy.port, raw)
    assert (response.status, response.body) == (200, b"value of " + raw)


def test_a_slash_need_not_be_encoded(proxy, r):
    r.set("users/42/name", b"Ada")
    assert request(proxy.port, "/get/users/42/name").body == b"Ada"


def test_second_read_is_served_from_l1(proxy, r):
    r.set("hot", b"1")
    assert get(proxy.port, "hot").body == b"1"
    assert get(proxy.port, "hot").body == b"1"
    assert proxy.proxy.stats["hits_l1"] == 1 and proxy.proxy.stats["reads_redis"] == 1


@pytest.mark.parametrize("path, status, error", [
    ("/get/", 400, "bad key"),
    ("/get/%zz", 400, "bad key"),
    ("/nothing/here", 404, "resource not found"),
    ("/get", 404, "resource not found"),
])
def test_bad_paths(proxy, path, status, error):
    response = request(proxy.port, path)
    assert (response.status, response.json()["error"]) == (status, error)


@pytest.mark.parametrize("method, path, allow", [
    ("PUT", "/get/x", "GET, HEAD"),
    ("DELETE", "/get/x", "GET, HEAD"),
    ("POST", "/health", "GET, HEAD"),
    ("DELETE", "/metrics", "GET, HEAD"),
    ("PUT", "/?key=x", "GET, HEAD, DELETE, PURGE"),
])
def test_405_allow_lists_only_the_methods_of_the_route(proxy, r, method, path, allow):
    r.set("x", b"v")
    response = request(proxy.port, path, method=method)
    assert (response.status, response.headers["Allow"]) == (405, allow)
    assert response.json() == {"error": "method not allowed",
                               "detail": f"{method} is not supported here; use {allow}"}
    assert r.get("x") == b"v"


def test_post_is_405_with_allow(proxy, r):
    r.set("k", b"v")
    response = get(proxy.port, "k", method="POST")
    assert response.status == 405
    assert "GET" in response.headers["Allow"].split(", ")
    assert response.json()["error"] == "method not allowed"
    delete = get(proxy.port, "k", method="DELETE")  # DELETE is a purge of the URL cache only
    assert (delete.status, delete.headers["Allow"]) == (405, "GET, HEAD")
    assert r.get("k") == b"v"


def test_head_has_the_length_and_no_body(proxy, r):
    r.set("k", b"12345")
    response = get(proxy.port, "k", method="HEAD")
    assert (response.status, response.body, response.headers["Content-Length"]) == (200, b"", "5")


def test_redis_down_serves_l1_copies_else_503(make_proxy):
    own = RedisServer(unix_socket=True).start()
    try:
        direct = redis.Redis.from_url(own.url)
        direct.set("cached", b"from L1")
        direct.set("not-yet", b"never read")
        direct.close()
        proxy = make_proxy(own.url)
        assert get(proxy.port, "cached").body == b"from L1"
        own.stop()
        assert (get(proxy.port, "cached").status, get(proxy.port, "cached").body) == (200, b"from L1")
        down = get(proxy.port, "not-yet")
        assert down.status == 503
        assert json.loads(down.body)["error"] == "redis unavailable"
    finally:
        own.cleanup()


def test_get_format_json_answers_json_without_an_accept_header(make_proxy, r):
    proxy = make_proxy(server_options={"get_format": "json"})
    r.set("formatted", b"v1")
    response = get(proxy.port, "formatted")
    assert response.status == 200
    assert response.json() == {"key": "formatted", "value": "v1", "source": "redis"}
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Vary"] == "Accept"


@pytest.mark.parametrize("get_format, accept, form", [
    ("raw", "application/json", "json"),
    ("raw", "APPLICATION/JSON", "json"),                          # case-insensitive
    ("raw", "application/json;q=0", "raw"),                       # q=0: not acceptable
    ("raw", "application/json;q=0.5, application/octet-stream", "raw"),
    ("raw", "application/octet-stream;q=0.2, application/json;q=0.9", "json"),
    ("json", "application/json;q=0, */*", "raw"),                 # the specific range's q wins
    ("json", "application/octet-stream", "raw"),
    ("json", "*/*", "json"),                                      # a tie: the default
    ("json", "text/html", "json"),                                # neither admitted: the default
    ("raw", "text/html", "raw"),
    ("json", "application/json;q=oops, application/octet-stream;q=0.1", "raw"),  # bad q: 0
])
def test_accept_negotiation_chooses_the_form(make_proxy, r, get_format, accept, form):
    proxy = make_proxy(server_options={"get_format": get_format})
    r.set("negotiated", b"val")
    response = get(proxy.port, "negotiated", {"Accept": accept})
    assert response.status == 200 and response.headers["Vary"] == "Accept"
    if form == "json":
        assert response.json()["value"] == "val"
        assert response.headers["Content-Type"] == "application/json"
    else:
        assert response.body == b"val"
        assert response.headers["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize("body, content_type", [
    (b'{"error": "key was not found"}', "application/json"),
    (b"Not Found", "text/plain; charset=utf-8"),
])
def test_not_found_body_replaces_the_404_body(make_proxy, body, content_type):
    proxy = make_proxy(server_options={"not_found_body": body})
    response = get(proxy.port, "absent-key")
    assert (response.status, response.body) == (404, body)
    assert response.headers["Content-Type"] == content_type
    assert response.headers["Vary"] == "Accept"


def test_the_default_404_says_vary_accept(proxy):
    response = get(proxy.port, "absent-key")
    assert response.status == 404 and response.json()["error"] == "key not found"
    assert response.headers["Vary"] == "Accept"


def test_get_format_and_not_found_body_settings_reach_the_http_front_end(make_proxy, r):
    settings = load_settings({"HTTP_PORT": "0", "RESP_PORT": "0", "GET_FORMAT": "json",
                              "NOT_FOUND_BODY": '{"error": "key was not found"}'}, env_file=None)
    servers = start_front_ends(settings, make_proxy().proxy)
    try:
        r.set("wired", b"w")
        assert request(servers[0].port, "/get/wired").json()["value"] == "w"
        missing = request(servers[0].port, "/get/not-there")
        assert (missing.status, missing.body) == (404, b'{"error": "key was not found"}')
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_a_get_format_other_than_raw_or_json_is_refused():
    with pytest.raises(ConfigError) as refused:
        load_settings({"GET_FORMAT": "xml"}, env_file=None)
    assert refused.value.problems == ["GET_FORMAT='xml': expected one of raw, json"]
