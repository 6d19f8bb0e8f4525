"""ORIGIN_URL, ADMIN_PREFIX and MAX_BODY_BYTES as load_settings reads them."""

import pytest

from load_env import load_settings
from proxy.errors import ConfigError

ORIGIN_EXPECTED = ("an http:// or https:// URL with a host and optionally a port and a base path, "
                   "no user, query or fragment")


def test_origin_and_prefix_are_read_without_their_trailing_slash():
    settings = load_settings({"ORIGIN_URL": "http://127.0.0.1:3000/base/", "ADMIN_PREFIX": "/admin/",
                              "MAX_BODY_BYTES": "2kb"}, env_file=None)
    assert (settings.origin_url, settings.admin_prefix, settings.max_body_bytes) == \
        ("http://127.0.0.1:3000/base", "/admin", 2048)


def test_defaults_are_off_the_proxy_prefix_and_one_mebibyte():
    settings = load_settings({}, env_file=None)
    assert (settings.origin_url, settings.admin_prefix, settings.max_body_bytes) == ("", "/_proxy", 1024**2)


@pytest.mark.parametrize("value", ["ftp://h/", "http://", "http://user@h/", "http://h/?q=1",
                                   "http://h/#top", "http://h:99999/", "h:80"])
def test_an_unusable_origin_url_is_refused_with_what_is_expected(value):
    with pytest.raises(ConfigError) as refused:
        load_settings({"ORIGIN_URL": value}, env_file=None)
    assert refused.value.problems == [f"ORIGIN_URL={value!r}: expected {ORIGIN_EXPECTED}"]


@pytest.mark.parametrize("value", ["/", "admin", "/a/../b", "/a b", "/a?x"])
def test_an_unusable_admin_prefix_is_refused(value):
    with pytest.raises(ConfigError) as refused:
        load_settings({"ADMIN_PREFIX": value}, env_file=None)
    assert refused.value.problems[0].startswith(f"ADMIN_PREFIX={value!r}: expected a path like /_proxy")


@pytest.mark.parametrize("environ, expected", [
    ({}, "ttl"),
    ({"ORIGIN_URL": "http://127.0.0.1:3000"}, "rfc"),
    ({"ORIGIN_URL": "http://127.0.0.1:3000", "DEFAULT_FRESHNESS": "ttl"}, "ttl"),
    ({"DEFAULT_FRESHNESS": "rfc"}, "rfc"),
])
def test_default_freshness_left_unset_is_rfc_with_an_origin_and_ttl_without(environ, expected):
    assert load_settings(environ, env_file=None).default_freshness == expected


def test_an_empty_default_freshness_as_the_shipped_env_has_it_follows_origin_url(tmp_path):
    env = tmp_path / ".env"
    env.write_text("DEFAULT_FRESHNESS=\nORIGIN_URL=http://127.0.0.1:3000\n")
    assert load_settings({}, env_file=str(env)).default_freshness == "rfc"
