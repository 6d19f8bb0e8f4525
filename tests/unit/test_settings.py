"""Settings: parsing, the environment over .env, and a clean exit 2 on bad values."""

import os

import pytest

from load_env import HEURISTIC_STATUSES as TABLE_STATUSES
from load_env import load_settings
from proxy.cache.freshness import HEURISTIC_STATUSES
from proxy.errors import ConfigError
from proxy.process.settings_table import misspelled
from servers import run_proxy


def test_defaults_without_any_configuration():
    s = load_settings({}, env_file=None)
    assert (s.http_host, s.http_port, s.resp_port, s.cache_ttl, s.cache_prefix) == \
        ("127.0.0.1", 8080, 6380, 3600.0, "rp:")
    assert s.redis_maxmemory == 256 * 1024 * 1024 and s.redis_eviction_policy == "allkeys-lru"
    assert s.cache_store_statuses == frozenset(range(200, 300))
    assert s.redis_configured is False


def test_sizes_use_redis_units_and_durations_allow_decimals():
    s = load_settings({"REDIS_MAXMEMORY": "64mb", "CACHE_MAX_BYTES": "1k", "CACHE_TTL": "0.5",
                       "UPSTREAM_MAX_BYTES": "1gb"}, env_file=None)
    assert (s.redis_maxmemory, s.cache_max_bytes, s.cache_ttl, s.upstream_max_bytes) == \
        (64 * 1024**2, 1000, 0.5, 1024**3)


def test_lists_and_statuses():
    s = load_settings({"UPSTREAM_ALLOWED_PORTS": "80, 8443", "CACHE_STORE_STATUSES": "2xx,404",
                       "AUTH_TOKENS": "a,b"}, env_file=None)
    assert s.upstream_allowed_ports == (80, 8443) and s.auth_tokens == ("a", "b")
    assert 404 in s.cache_store_statuses and 204 in s.cache_store_statuses and 500 not in s.cache_store_statuses


def test_environment_wins_over_env_file_and_empty_means_default(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("HTTP_PORT=9000\nCACHE_TTL=60\nCACHE_PREFIX=\n")
    s = load_settings({"HTTP_PORT": "9100"}, env_file=str(env_file))
    assert (s.http_port, s.cache_ttl, s.cache_prefix) == (9100, 60.0, "rp:")


def test_every_bad_value_is_reported_at_once_by_name():
    with pytest.raises(ConfigError) as caught:
        load_settings({"HTTP_PORT": "70000", "CACHE_TTL": "-1", "REDIS_MAXMEMORY": "lots",
                       "REDIS_EVICTION_POLICY": "sometimes", "REDIS_PASSWORD": "",
                       "MAX_CLIENTS": "many"}, env_file=None)
    problems = "\n".join(caught.value.problems)
    for name in ("HTTP_PORT='70000'", "CACHE_TTL='-1'", "REDIS_MAXMEMORY='lots'",
                 "REDIS_EVICTION_POLICY='sometimes'", "MAX_CLIENTS='many'"):
        assert name in problems
    assert len(caught.value.problems) == 5


def test_stale_if_error_is_bounded_by_the_stale_window():
    with pytest.raises(ConfigError, match="STALE_IF_ERROR"):
        load_settings({"CACHE_STALE_TTL": "10", "STALE_IF_ERROR": "20"}, env_file=None)


@pytest.mark.parametrize("stale_ttl, expected", [("10", 10.0), ("0", 0.0), ("299.5", 299.5), ("300", 300.0),
                                                 ("1000", 300.0)])
def test_stale_if_error_left_unset_follows_a_smaller_stale_window(stale_ttl, expected):
    assert load_settings({"CACHE_STALE_TTL": stale_ttl}, env_file=None).stale_if_error == expected


def test_an_explicit_stale_if_error_within_the_window_is_kept():
    s = load_settings({"CACHE_STALE_TTL": "1000", "STALE_IF_ERROR": "600"}, env_file=None)
    assert (s.cache_stale_ttl, s.stale_if_error) == (1000.0, 600.0)
    assert load_settings({"CACHE_STALE_TTL": "10", "STALE_IF_ERROR": "10"}, env_file=None).stale_if_error == 10.0


RFC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
SITE = {"ORIGIN_URL": "http://127.0.0.1:8000"}


@pytest.mark.parametrize("environ, statuses, caps", [
    ({}, frozenset(range(200, 300)), True),  # the URL role: any 2xx, CACHE_TTL the ceiling
    ({"CACHE_TTL": "600"}, frozenset(range(200, 300)), True),
    (SITE, RFC_STATUSES, False),  # rfc by default: the RFC's statuses, the origin's freshness
    ({**SITE, "CACHE_TTL": "600"}, RFC_STATUSES, True),  # set: a ceiling on the origin's too
    ({**SITE, "CACHE_TTL": "3600"}, RFC_STATUSES, True),  # set to the default value: still set
    ({**SITE, "CACHE_STORE_STATUSES": "2xx"}, frozenset(range(200, 300)), False),  # set: it wins
    ({**SITE, "DEFAULT_FRESHNESS": "ttl"}, frozenset(range(200, 300)), True),
    ({"DEFAULT_FRESHNESS": "rfc"}, RFC_STATUSES, False),
    ({**SITE, "CACHE_TTL_CAPS_ORIGIN": "true"}, RFC_STATUSES, True),
    ({"CACHE_TTL_CAPS_ORIGIN": "false"}, frozenset(range(200, 300)), False),
])
def test_with_rfc_freshness_the_defaults_are_the_rfc_statuses_and_no_ceiling_unless_cache_ttl_is_set(
        environ, statuses, caps):
    s = load_settings(environ, env_file=None)
    assert (s.cache_store_statuses, s.cache_ttl_caps_origin) == (statuses, caps)


def test_the_settings_table_lists_the_statuses_the_cache_calls_heuristically_cacheable():
    assert TABLE_STATUSES == HEURISTIC_STATUSES == RFC_STATUSES


def test_the_environment_is_never_mutated(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("SOME_ODD_NAME_FOR_THE_TEST=1\nHTTP_PORT=9000\n")
    before = dict(os.environ)
    load_settings(env_file=str(env_file))
    assert dict(os.environ) == before


@pytest.mark.parametrize("name, value", [("HTTP_PORT", "http"), ("CACHE_TTL", "0"),
                                         ("REDIS_EVICTION_POLICY", "lru"), ("REDIS_URL", "mysql://x")])
def test_a_bad_setting_stops_the_server_with_exit_2_and_one_line(name, value):
    done = run_proxy({name: value, "RESP_PORT": "0"})
    assert done.returncode == 2
    assert name in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["https://example.com", "example.com:443", "*", "a b.com", "*.*.x", ".x.com"])
def test_allowed_hosts_must_be_names_or_suffix_patterns(value):
    with pytest.raises(ConfigError, match="UPSTREAM_ALLOWED_HOSTS"):
        load_settings({"UPSTREAM_ALLOWED_HOSTS": value}, env_file=None)


def test_allowed_hosts_accepts_names_patterns_and_unicode():
    s = load_settings({"UPSTREAM_ALLOWED_HOSTS": "api.example.com, *.example.org,bücher.example"},
                      env_file=None)
    assert s.upstream_allowed_hosts == ("api.example.com", "*.example.org", "bücher.example")


def test_an_unusable_log_file_is_a_bad_setting_not_a_traceback(tmp_path):
    done = run_proxy({"LOG_FILE": str(tmp_path / "no" / "such" / "dir.log"), "RESP_PORT": "0"})
    assert done.returncode == 2
    assert "LOG_FILE=" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("raw, expected", [("0", 0.0), ("0.8", 0.8), ("0.999", 0.999)])
def test_refresh_ahead_is_a_fraction_below_one(raw, expected):
    assert load_settings({"REFRESH_AHEAD": raw}, env_file=None).refresh_ahead == expected


@pytest.mark.parametrize("raw", ["1", "-0.1", "nan", "80%"])
def test_refresh_ahead_outside_zero_to_one_is_refused(raw):
    with pytest.raises(ConfigError, match=r"REFRESH_AHEAD=.*expected a fraction from 0 up to"):
        load_settings({"REFRESH_AHEAD": raw}, env_file=None)


def test_tag_headers_default_to_surrogate_key_and_cache_tag_and_take_header_names():
    assert load_settings({}, env_file=None).tag_header == ("Surrogate-Key", "Cache-Tag")
    assert load_settings({"TAG_HEADER": "X-Tags"}, env_file=None).tag_header == ("X-Tags",)
    with pytest.raises(ConfigError, match="TAG_HEADER='X Tags': expected a comma-separated list of header names"):
        load_settings({"TAG_HEADER": "X Tags"}, env_file=None)


def test_misspelled_names_in_the_env_file_are_named_with_the_setting_meant(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("REDIS_URI=redis://127.0.0.1:6379/0\nCACHE_TTL=5\nMY_APP_SECRET=x\n")
    assert misspelled({"PATH": "/bin", "HTTP_PROXY": "", "HOME": "/root"}, str(env_file)) == [
        "REDIS_URI (in .env) is not a setting; did you mean REDIS_URL?"]


def test_http_workers_defaults_to_one_per_core_and_auto_says_so():
    assert load_settings({}, env_file=None).http_workers == (os.cpu_count() or 1)
    assert load_settings({"HTTP_WORKERS": "auto"}, env_file=None).http_workers == (os.cpu_count() or 1)
    assert load_settings({"HTTP_WORKERS": "3"}, env_file=None).http_workers == 3
    with pytest.raises(ConfigError) as refused:
        load_settings({"HTTP_WORKERS": "0"}, env_file=None)
    assert "HTTP_WORKERS" in str(refused.value.problems)
