"""The upstream URL as one value (proxy.cache.target): split once, checked once, read as parts
by the key derivation and the upstream policy."""

import sys
import urllib.parse

import pytest

from proxy.cache import keys as cache_keys
from proxy.cache.target import HOST_RULE, SCHEME_RULE, Target, check, split
from proxy.errors import BadRequest, Forbidden, URITooLong
from proxy.upstream.policy import UpstreamPolicy

PUBLIC_V4 = "93.184.216.34"


def test_split_reads_the_parts_and_drops_the_fragment():
    got = split("HTTP://User:pw@Example.COM:8080/a/b?x=1#frag")
    assert got == Target("http", "User:pw@Example.COM:8080", "example.com", 8080, "/a/b", "x=1")
    assert got.url == "http://User:pw@Example.COM:8080/a/b?x=1"
    assert (got.effective_port, got.host_port) == (8080, "example.com:8080")
    assert split("https://[2606:4700::1111]/").host_port == "[2606:4700::1111]:443"


@pytest.mark.parametrize("url", ["http://example.com:99999/", "http://example.com:x/", "http://[::1/"])
def test_a_url_urlsplit_cannot_read_is_400_bad_url(url):
    with pytest.raises(BadRequest, match="url is malformed") as caught:
        split(url)
    assert caught.value.error == "bad url"


@pytest.mark.parametrize("url, detail", [("ftp://example.com/", SCHEME_RULE), ("example.com/x", SCHEME_RULE),
                                         ("http:///x", HOST_RULE), ("https://:80/", HOST_RULE)])
def test_the_one_check_names_the_scheme_or_the_missing_host(url, detail):
    with pytest.raises(BadRequest) as caught:
        check(split(url))
    assert (caught.value.error, caught.value.detail) == ("bad url", detail)


@pytest.mark.parametrize("url", ["HTTP://Example.com:80/a/../b?z=1&a=2", "https://u:p@h.test:443/%7e?",
                                 "http://[2606:4700::1111]:8080/x y?q=é", "http://h.test/?b&a="])
def test_the_canonical_form_of_the_sent_target_is_the_keys_rule(url):
    target = cache_keys.checked_target(cache_keys.check_url(url, 8192), [("p", "1")], 8192)
    assert target.url == cache_keys.target_url(url, [("p", "1")])
    assert target.canonical == cache_keys.canonical_url(url, [("p", "1")])


def test_params_taking_the_target_over_the_limit_is_414():
    given = cache_keys.check_url("http://h.test/" + "a" * 80, 100)
    with pytest.raises(URITooLong, match=r"url is longer than 100 bytes \(MAX_URL_BYTES\)") as caught:
        cache_keys.checked_target(given, [("p", "b" * 20)], 100)
    assert caught.value.status == 414


def test_the_policy_reads_the_parts_without_splitting_again(monkeypatch):
    target = split("http://Public.Test.:8080/p?q=1")
    splits = []
    # Wherever a split could come from: urllib.parse itself and every product module's own name.
    for module in [urllib.parse] + [m for name, m in sys.modules.items() if name.startswith("proxy.")]:
        if hasattr(module, "urlsplit"):
            monkeypatch.setattr(module, "urlsplit", lambda *a: splits.append(a))
    checked = UpstreamPolicy(resolver=lambda host, port: [PUBLIC_V4]).check_target(target)
    assert checked == Target("http", "public.test.:8080", "public.test.", 8080, "/p", "q=1")
    assert splits == []


def test_the_policy_refuses_a_target_with_user_info_or_another_scheme():
    policy = UpstreamPolicy(resolver=lambda host, port: [PUBLIC_V4])
    with pytest.raises(Forbidden, match="user info"):
        policy.check_target(split("http://u@public.test/"))
    with pytest.raises(Forbidden, match="scheme 'gopher' refused"):
        policy.check_target(split("gopher://public.test/"))
    with pytest.raises(BadRequest, match="url has no host"):
        policy.check_target(split("http:///x"))
    assert policy.refusal_counts() == {"userinfo": 1, "scheme": 1}
