"""ORIGIN_URL, ORIGINS, ADMIN_PREFIX and MAX_BODY_BYTES as load_settings reads them, and the
site a request's Host picks."""

import pytest

from load_env import load_settings
from proxy.errors import ConfigError
from proxy.serving.site import Site, Sites, host_name

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


# ----- ORIGINS: several sites -------------------------------------------------------------

ORIGINS_EXPECTED = ("comma-separated HOST=URL pairs (HOST a host name, or *.suffix for its subdomains; "
                    "URL as ORIGIN_URL's)")


def test_origins_are_read_as_pairs_in_order_hosts_lower_cased_without_a_trailing_dot():
    settings = load_settings({"ORIGINS": " A.Example.=http://127.0.0.1:8081/ , *.b.example=https://10.0.0.2:8082/base"},
                             env_file=None)
    assert settings.origins == (("a.example", "http://127.0.0.1:8081"),
                                ("*.b.example", "https://10.0.0.2:8082/base"))
    assert settings.default_freshness == "rfc"  # in front of sites, as with ORIGIN_URL


@pytest.mark.parametrize("value, why", [
    ("a.example", "'a.example': expected HOST=URL, HOST a host name or *.suffix without a port"),
    ("a.example:8080=http://h", "'a.example:8080=http://h': expected HOST=URL, HOST a host name or *.suffix without a port"),
    ("*=http://h", "'*=http://h': expected HOST=URL, HOST a host name or *.suffix without a port"),
    ("a.*.example=http://h", "'a.*.example=http://h': expected HOST=URL, HOST a host name or *.suffix without a port"),
    ("a.example=http://h,b.example=ftp://h",
     f"'b.example=ftp://h': expected the URL to be {ORIGIN_EXPECTED}"),
    ("a.example=http://h?x=1", f"'a.example=http://h?x=1': expected the URL to be {ORIGIN_EXPECTED}"),
    ("a.example=http://h,A.example=http://i", "'A.example=http://i': a.example is given twice; give each host one origin"),
])
def test_a_bad_pair_of_origins_is_refused_by_name(value, why):
    with pytest.raises(ConfigError) as refused:
        load_settings({"ORIGINS": value}, env_file=None)
    assert refused.value.problems == [f"ORIGINS={value!r}: expected {ORIGINS_EXPECTED}; {why}"]


def test_origins_with_origin_url_or_public_host_is_refused():
    with pytest.raises(ConfigError) as refused:
        load_settings({"ORIGINS": "a.example=http://h", "ORIGIN_URL": "http://h",
                       "PUBLIC_HOST": "www.example"}, env_file=None)
    assert refused.value.problems == [
        "ORIGINS and ORIGIN_URL are both set: expected one of them (ORIGIN_URL for one site whatever "
        "the Host, ORIGINS for a site per Host)",
        "ORIGINS and PUBLIC_HOST are both set: with ORIGINS each site's own Host is sent as "
        "X-Forwarded-Host; leave PUBLIC_HOST empty"]


SITES = Sites([Site("http://a", name="a.example"), Site("http://b", name="*.b.example"),
               Site("http://xb", name="*.x.b.example"), Site("http://exact", name="y.x.b.example")])


@pytest.mark.parametrize("host, origin", [
    ("a.example", "http://a"),
    ("x.a.example", None),  # an exact name has no subdomains
    ("b.example", None),  # a wildcard matches subdomains only
    ("c.b.example", "http://b"),
    ("d.c.b.example", "http://b"),
    ("z.x.b.example", "http://xb"),  # the longest suffix wins
    ("x.b.example", "http://b"),
    ("y.x.b.example", "http://exact"),  # an exact name before any wildcard
    ("evil.example/c.b.example", None),  # only a host name matches a wildcard (it is forwarded)
    ("c..b.example", None),
    (".b.example", None),
    ("", None),
])
def test_sites_pick_an_exact_host_then_the_longest_wildcard_that_matches(host, origin):
    site = SITES.pick(host)
    assert (site.origin if site else None) == origin


@pytest.mark.parametrize("value, name", [
    ("A.Example:8080", "a.example"), ("a.example.", "a.example"), ("a.example.:80", "a.example"),
    ("[::1]:8080", "[::1]"), ("127.0.0.1:80", "127.0.0.1"), (None, ""), ("", ""),
])
def test_host_name_drops_the_port_the_case_and_a_trailing_dot(value, name):
    assert host_name(value) == name


def test_origin_urls_one_site_answers_for_any_host():
    sites = Sites.one(Site("http://one"))
    assert sites.pick("anything.example").origin == sites.pick("").origin == "http://one"
