"""RULES_FILE (proxy.cache.rules): parsing, every check at its boundary with its line, matching
by host and path, merging in file order, and the freshness a rule gives (Policy.ruled)."""

import os
import re

import pytest

from load_env import load_settings
from proxy.cache.freshness import Policy
from proxy.cache.rules import MAX_SECONDS, RulesError, Timing, parse_rules, site_host
from proxy.errors import ConfigError
from proxy.parts import rules_of
from servers import ROOT

EXPECTED_KEYS = ("host, path, status, ttl, ttl_min, ttl_max, stale_while_revalidate, "
                 "stale_if_error, bypass, ignore_query, keep_query, key_headers")
SECONDS = "a number of seconds from 0 to 2147483648"


def problems(text: str, max_stale: float | None = None) -> list[str]:
    with pytest.raises(RulesError) as caught:
        parse_rules(text, max_stale)
    return caught.value.problems


def one_rule(body: str) -> str:
    """The problem of a file whose one rule (header on line 1) is `body`."""
    (problem,) = problems("[[rule]]\n" + body)
    return problem


# ----- parsing ------------------------------------------------------------------------------------


def test_the_readmes_example_parses_and_does_what_its_comments_say():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    example = re.search(r"### Rules per path\n.*?```toml\n(.*?)```", readme, re.S).group(1)
    rules = parse_rules(example, max_stale=300)
    assert len(rules.rules) == 5
    page = rules.match("www.example.com", "/page")
    assert page.key_query("id=7&utm_source=mail") == page.key_query("id=7&fbclid=x") == "id=7"
    static = rules.match("www.example.com", "/static/app.js")
    assert (static.timing(200), static.key_headers) == (Timing(ttl=86400, ttl_min=600), ("x-device",))
    api = rules.match("api.example.com", "/api/v1/users.json")
    assert (api.timing(200), api.timing(404)) == (Timing(), Timing(ttl=30, stale_if_error=0))
    assert rules.match("example.com", "/api/v1/users.json").timing(404) == Timing()
    assert rules.match("h", "/account/me").bypass and not rules.match("h", "/account/public/logo").bypass



def test_a_rule_file_parses_into_rules_in_file_order_with_their_lines():
    rules = parse_rules('# comment\n[[rule]]\npath = "/static/"\nttl = 600\nttl_min = 60\n'
                        'ttl_max = 86400\nignore_query = ["utm_*", "fbclid"]\n\n'
                        '[[rule]]\nhost = "*.Example.com"\npath = "/api/*"\nstatus = [404, 410]\n'
                        'ttl = 5\nstale_if_error = 30\n\n[[rule]]\npath = "/admin/"\nbypass = true\n'
                        'key_headers = ["X-Device"]\nkeep_query = ["page"]\n')
    first, second, third = rules.rules
    assert (first.line, first.path, first.host, first.timing) == (2, "/static/", "", Timing(600, 60, 86400))
    assert first.ignore_query == ("utm_*", "fbclid") and first.keep_query is None
    assert (second.line, second.host, second.statuses) == (9, "*.example.com", frozenset({404, 410}))
    assert second.timing == Timing(ttl=5, stale_if_error=30)
    assert (third.line, third.bypass, third.key_headers, third.keep_query) == \
        (16, True, ("x-device",), ("page",))


def test_an_empty_file_is_no_rules():
    rules = parse_rules("# nothing yet\n")
    assert not rules and rules.match("example.com", "/") is None


def test_a_toml_syntax_error_names_its_line():
    assert problems('[[rule]]\npath = "/a"\nttl = \n') == [
        "line 3: not valid TOML: Invalid value; expected TOML (https://toml.io) of [[rule]] tables"]


def test_a_toml_syntax_error_at_the_end_names_the_last_line():
    assert problems('[[rule]]\npath = "/a') == [
        "line 2: not valid TOML: Unterminated string; expected TOML (https://toml.io) of "
        "[[rule]] tables"]


def test_a_key_outside_the_rules_is_refused_with_its_line():
    assert problems('[[rule]]\nttl = 1\n\n[defaults]\nttl = 5\n') == [
        "line 4: unknown key 'defaults'; expected only [[rule]] tables"]


def test_rule_that_is_not_a_list_of_tables_is_refused():
    assert problems("\nrule = 5\n") == ["line 2: rule is not a list of tables; expected [[rule]] tables"]


def test_an_unknown_key_in_a_rule_is_refused_with_its_line_and_the_key_meant():
    assert problems('[[rule]]\npath = "/a"\ntll = 5\n') == [
        f"line 3: unknown key 'tll' in a [[rule]] (did you mean ttl?); expected one of {EXPECTED_KEYS}"]


def test_every_problem_is_reported_at_once_in_line_order():
    found = problems('[[rule]]\nttl = -1\nbypas = true\n\n[[rule]]\nstatus = 99\npath = "a"\n')
    assert [problem.split(":")[0] for problem in found] == ["line 2", "line 3", "line 6", "line 7"]


@pytest.mark.parametrize("host", ["*", "a*.example.com", "example.com:8080", "exa mple.com", "", 5])
def test_a_host_that_is_no_host_name_nor_a_subdomain_wildcard_is_refused(host):
    shown = f'"{host}"' if isinstance(host, str) else str(host)
    assert one_rule(f"host = {shown}\n") == (
        f"line 2: host = {shown} is not a host name; expected a host name, or *.example.com for "
        "the hosts under example.com")


@pytest.mark.parametrize("host, kept", [("*.example.com", "*.example.com"), ("WWW.Example.com", "www.example.com"),
                                        ("127.0.0.1", "127.0.0.1"), ("[::1]", "[::1]"), ("a.example.", "a.example")])
def test_host_names_and_subdomain_wildcards_are_taken_lower_case(host, kept):
    assert parse_rules(f'[[rule]]\nhost = "{host}"\n').rules[0].host == kept


@pytest.mark.parametrize("path", ["static/", "", "/a b", "*.css"])
def test_a_path_not_starting_with_a_slash_or_holding_a_space_is_refused(path):
    assert one_rule(f'path = "{path}"\n') == (
        f'line 2: path = "{path}" is not a path; expected a path starting with \'/\' (a prefix, or a '
        "glob with *, ? or [...]), percent-encoded")


@pytest.mark.parametrize("status", ["99", "600", "[]", "[200, 1000]", "true", '"404"'])
def test_a_status_outside_100_to_599_is_refused(status):
    assert one_rule(f"status = {status}\nttl = 1\n") == (
        f"line 2: status = {status} is not a status nor a list of statuses; expected a "
        "status from 100 to 599, or a list of them: [404, 410]")


def test_statuses_100_and_599_alone_or_listed_are_taken():
    assert parse_rules("[[rule]]\nstatus = 100\n").rules[0].statuses == frozenset({100})
    assert parse_rules("[[rule]]\nstatus = [599, 404]\n").rules[0].statuses == frozenset({599, 404})


@pytest.mark.parametrize("name", ["ttl", "ttl_min", "ttl_max", "stale_while_revalidate", "stale_if_error"])
@pytest.mark.parametrize("value, why", [("-1", "negative"), ("-0.5", "negative"),
                                        (str(MAX_SECONDS + 1), "out of range"), ("inf", "out of range"),
                                        ("nan", "out of range"), ('"5m"', "not a number"),
                                        ("true", "not a number")])
def test_a_time_that_is_negative_too_large_or_no_number_is_refused(name, value, why):
    assert one_rule(f"{name} = {value}\n") == f"line 2: {name} = {value} is {why}; expected {SECONDS}"


@pytest.mark.parametrize("value", [0, 0.5, MAX_SECONDS])
def test_times_from_0_to_the_largest_delta_seconds_are_taken(value):
    assert parse_rules(f"[[rule]]\nttl = {value}\n").rules[0].timing.ttl == value


def test_ttl_min_more_than_ttl_max_is_refused_and_equal_is_taken():
    assert one_rule("ttl_min = 61\nttl_max = 60\n") == \
        "line 2: ttl_min = 61 is more than ttl_max = 60; expected ttl_min at most ttl_max"
    assert parse_rules("[[rule]]\nttl_min = 60\nttl_max = 60\n").rules[0].timing == Timing(None, 60, 60)


@pytest.mark.parametrize("bounds, ttl", [("ttl_min = 10", 9), ("ttl_max = 10", 11)])
def test_a_ttl_outside_its_own_rules_bounds_is_refused(bounds, ttl):
    assert one_rule(f"{bounds}\nttl = {ttl}\n") == \
        f"line 3: ttl = {ttl} is outside ttl_min..ttl_max; expected a ttl within them"


def test_ignore_query_and_keep_query_in_one_rule_are_refused():
    assert one_rule('ignore_query = ["a"]\nkeep_query = ["b"]\n') == (
        "line 3: both ignore_query and keep_query in one rule; expected one of them: the parameters "
        "left out of the cache key, or the ones kept")


@pytest.mark.parametrize("key, value, what", [
    ("ignore_query", '"utm_*"', 'query parameter names (globs allowed: "utm_*")'),
    ("keep_query", '["a=b"]', 'query parameter names (globs allowed: "utm_*")'),
    ("key_headers", '["X Device"]', "request header names"),
    ("key_headers", '["X-Device:"]', "request header names"),
])
def test_names_that_are_not_a_list_of_names_are_refused(key, value, what):
    assert one_rule(f"{key} = {value}\n") == \
        f"line 2: {key} = {value} is not a list of names; expected a list of {what}"


def test_bypass_that_is_not_a_boolean_is_refused():
    assert one_rule('bypass = "yes"\n') == 'line 2: bypass = "yes" is not true or false; expected true or false'


@pytest.mark.parametrize("key, value", [("bypass", "true"), ("ignore_query", '["a"]'),
                                        ("keep_query", '["a"]'), ("key_headers", '["X-A"]')])
def test_a_request_part_in_a_rule_scoped_by_status_is_refused(key, value):
    assert one_rule(f"status = 404\n{key} = {value}\n") == (
        f"line 3: {key} in a rule with status: it is decided before the response (and its status) "
        f"is known; expected {key} in a rule without status")


@pytest.mark.parametrize("name", ["stale_while_revalidate", "stale_if_error"])
def test_a_stale_window_longer_than_cache_stale_ttl_is_refused(name):
    assert problems(f"[[rule]]\n{name} = 301\n", max_stale=300) == [
        f"line 2: {name} = 301 is more than CACHE_STALE_TTL (300), how long an entry is kept past "
        "its freshness; expected at most CACHE_STALE_TTL"]
    assert getattr(parse_rules(f"[[rule]]\n{name} = 300\n", 300).rules[0].timing, name) == 300


# ----- the file, as a setting (proxy.parts.rules_of) ------------------------------------------------


def settings_with(path) -> object:
    return load_settings({"RULES_FILE": str(path)}, env_file=None)


@pytest.mark.parametrize("content, problem", [
    (b'[[rule]]\npath = "/a/"\nttl_min = 10\nttl_max = 5\n',
     "line 3: ttl_min = 10 is more than ttl_max = 5; expected ttl_min at most ttl_max"),
    (None, "cannot be read (No such file or directory); expected a readable TOML file of [[rule]] "
           "tables"),
    (b'[[rule]]\npath = "/caf\xe9"\n', "line 2: byte 0xe9 is not UTF-8; expected a TOML file, which "
                                        "is UTF-8"),
], ids=["bad-value", "missing", "not-utf8"])
def test_a_bad_rules_file_is_a_config_error_naming_the_file_and_what_is_wrong(tmp_path, content, problem):
    path = tmp_path / "rules.toml"
    if content is not None:  # None: no such file
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        rules_of(settings_with(path))
    assert caught.value.problems == [f"RULES_FILE={path}: {problem}"]


def test_a_stale_window_is_checked_against_the_settings_cache_stale_ttl(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text("[[rule]]\nstale_if_error = 600\n")
    assert rules_of(load_settings({"RULES_FILE": str(path), "CACHE_STALE_TTL": "600"}, env_file=None))
    with pytest.raises(ConfigError, match=r"line 2: stale_if_error = 600 is more than CACHE_STALE_TTL \(300\)"):
        rules_of(settings_with(path))


def test_no_rules_file_is_no_rules():
    assert not rules_of(load_settings({}, env_file=None))


# ----- matching ----------------------------------------------------------------------------------


def test_a_path_without_glob_characters_is_a_prefix():
    rules = parse_rules('[[rule]]\npath = "/static/"\nttl = 1\n')
    assert rules.match("h", "/static/") and rules.match("h", "/static/a/b.css")
    assert rules.match("h", "/static") is None and rules.match("h", "/staticx/") is None


def test_a_glob_path_matches_the_whole_path_its_star_crossing_slashes():
    rules = parse_rules('[[rule]]\npath = "/img/*.png"\nttl = 1\n\n[[rule]]\npath = "/v?/x"\nttl = 2\n')
    assert rules.match("h", "/img/a.png") and rules.match("h", "/img/a/b.png")
    assert rules.match("h", "/img/a.png.txt") is None and rules.match("h", "/IMG/a.png") is None
    assert rules.match("h", "/v1/x").timing(200).ttl == 2 and rules.match("h", "/v10/x") is None


def test_a_host_matches_exactly_and_a_wildcard_matches_the_hosts_under_it_only():
    rules = parse_rules('[[rule]]\nhost = "example.com"\nttl = 1\n\n'
                        '[[rule]]\nhost = "*.cdn.example"\nttl = 2\n')
    assert rules.match("example.com", "/").timing(200).ttl == 1
    assert rules.match("www.example.com", "/") is None
    assert rules.match("a.cdn.example", "/").timing(200).ttl == 2
    assert rules.match("a.b.cdn.example", "/").timing(200).ttl == 2
    assert rules.match("cdn.example", "/") is None and rules.match("xcdn.example", "/") is None


@pytest.mark.parametrize("header, host", [("Example.COM:8080", "example.com"), ("[::1]:8080", "[::1]"),
                                          ("www.example.com.", "www.example.com"), ("[::1]", "[::1]")])
def test_a_host_header_is_matched_lower_case_without_its_port(header, host):
    assert site_host(header) == host


def test_every_matching_rule_applies_in_file_order_a_later_key_replacing_an_earlier():
    rules = parse_rules('[[rule]]\npath = "/"\nignore_query = ["utm_*"]\nttl = 60\nbypass = true\n\n'
                        '[[rule]]\npath = "/static/"\nttl_max = 600\nbypass = false\n\n'
                        '[[rule]]\npath = "/static/v/"\nkeep_query = ["v"]\nttl = 30\n')
    other = rules.match("h", "/page")
    assert (other.bypass, other.timing(200)) == (True, Timing(ttl=60))
    static = rules.match("h", "/static/a")
    assert (static.bypass, static.keep, static.query) == (False, False, ("utm_*",))
    assert static.timing(200) == Timing(ttl=60, ttl_max=600)
    versioned = rules.match("h", "/static/v/a")
    assert (versioned.keep, versioned.query, versioned.timing(200)) == (True, ("v",), Timing(ttl=30, ttl_max=600))


def test_a_rule_scoped_by_status_gives_its_timing_to_those_statuses_only():
    rules = parse_rules('[[rule]]\npath = "/"\nttl = 300\n\n[[rule]]\npath = "/"\nstatus = [404, 410]\n'
                        'ttl = 10\nstale_if_error = 0\n')
    decision = rules.match("h", "/x")
    assert decision.timing(200) == Timing(ttl=300)
    assert decision.timing(404) == decision.timing(410) == Timing(ttl=10, stale_if_error=0)


def test_ignored_query_parameters_are_left_out_of_the_key_query_by_name():
    decision = parse_rules('[[rule]]\nignore_query = ["utm_*", "fbclid"]\n').match("h", "/")
    assert decision.key_query("a=1&utm_source=x&fbclid=2&b&utm_=3") == "a=1&b"
    assert decision.key_query("utm_source=x") == "" and decision.key_query("") == ""
    assert decision.key_query("xutm_a=1&fbclidx=2") == "xutm_a=1&fbclidx=2"
    assert decision.key_query("UTM_source=x&FBCLID=2") == "UTM_source=x&FBCLID=2"  # case matters


def test_kept_query_parameters_alone_stay_in_the_key_query():
    decision = parse_rules('[[rule]]\nkeep_query = ["page", "id"]\n').match("h", "/")
    assert decision.key_query("page=2&utm=x&id=7&ref") == "page=2&id=7"
    assert decision.key_query("utm=x") == ""


# ----- the freshness a rule gives (proxy.cache.freshness.Policy.ruled) ----------------------------


def test_a_rules_ttl_is_the_freshness_of_a_response_stating_none_cache_ttl_not_capping_it():
    policy = Policy(ttl=3600).ruled(Timing(ttl=7200))
    assert policy.lifetime({}, 0.0) == 7200
    assert policy.lifetime({"cache-control": "max-age=50"}, 0.0) == 50


def test_ttl_min_and_ttl_max_bound_the_stated_freshness_ttl_max_in_place_of_cache_ttl():
    policy = Policy(ttl=3600).ruled(Timing(ttl_min=60, ttl_max=7200))
    assert policy.lifetime({"cache-control": "max-age=0"}, 0.0) == 60
    assert policy.lifetime({"cache-control": "max-age=5000"}, 0.0) == 5000
    assert policy.lifetime({"cache-control": "max-age=9000"}, 0.0) == 7200
    assert policy.lifetime({}, 0.0) == 3600


def test_ttl_min_does_not_make_a_no_cache_response_fresh():
    assert Policy(ttl=3600).ruled(Timing(ttl_min=60)).lifetime({"cache-control": "no-cache"}, 0.0) == 0


@pytest.mark.parametrize("cache_control, refusal", [("no-store", "no-store"), ("private", "private")])
def test_a_rule_does_not_store_what_the_response_forbids(cache_control, refusal):
    policy = Policy(ttl=3600).ruled(Timing(ttl=60, ttl_min=60))
    assert policy.refusal(200, {"cache-control": cache_control}) == refusal


def test_a_rules_ttl_stores_what_rfc_mode_would_refuse_as_having_no_freshness():
    policy = Policy(ttl=3600, default_freshness="rfc")
    assert policy.refusal(200, {}) == "no-freshness"
    assert policy.ruled(Timing(ttl=60)).refusal(200, {}) == ""


def test_a_rules_stale_windows_replace_the_settings_the_response_still_deciding():
    policy = Policy(ttl=60).ruled(Timing(stale_while_revalidate=30, stale_if_error=90))
    assert policy.stale_window({}, "stale-while-revalidate", 0, 300) == 30
    assert policy.stale_window({}, "stale-if-error", 300, 300) == 90
    assert policy.stale_window({"cache-control": "stale-if-error=10"}, "stale-if-error", 300, 300) == 10


def test_no_timing_leaves_the_policy_as_it_is():
    policy = Policy(ttl=60)
    assert policy.ruled(Timing()) is policy
