"""docs/OPERATIONS.md and docs/SCALING.md, claim by claim: every statement with a value in it
(a status, a default, a metric, a signal, a log line, a count) and the test that checks it.
docs/CONFIGURATION.md is generated from the settings table and checked whole by
tests/unit/test_settings_docs.py; docs/PERFORMANCE.md and SCALING.md's per-hit and per-miss
cost figures are the benchmark's (bench/). `test_every_test_the_table_cites_exists` holds the
table to the tests; the tests without a file below are in this module.

| doc: section | claim | test |
|---|---|---|
| OPERATIONS: Starting | `redis-proxy` is the installed command | tests/unit/test_packaging.py::test_the_console_script_is_http_servers_main |
| OPERATIONS: Starting | settings from the environment or a `.env` in the working directory | tests/e2e/test_reload.py::test_sighup_takes_new_tokens_from_env_and_drops_the_old_ones |
| OPERATIONS: Starting | `--check-config` prints the effective values, secrets as `***` | tests/e2e/test_command_line.py::test_check_config_prints_the_effective_configuration_with_secrets_masked |
| OPERATIONS: Starting | `--check-config` exits 2 naming each bad setting | tests/e2e/test_command_line.py::test_check_config_prints_every_problem_and_exits_2 |
| OPERATIONS: Starting | SIGTERM stops it cleanly (exit 0) | tests/e2e/test_command_line.py::test_a_port_flag_serves_on_that_port_over_the_environment |
| OPERATIONS: Starting | SIGINT stops it cleanly | tests/e2e/test_make_run.py::test_make_run_serves_and_stops_cleanly_on_sigint |
| OPERATIONS: Starting | a port in use: exit 1 before any Redis is started | tests/e2e/test_command_line.py::test_a_port_in_use_names_the_port_and_its_setting_before_starting_redis |
| OPERATIONS: Starting | the embedded redis-server dies with the process | tests/e2e/test_workers.py::test_sigint_stops_every_worker_and_the_embedded_redis |
| OPERATIONS: Workers | `HTTP_WORKERS=N` pre-forks N workers on the same ports | tests/e2e/test_workers.py::test_workers_share_the_port_the_cache_and_the_fetches |
| OPERATIONS: Workers | `MAX_CLIENTS`, `MAX_PARALLEL` are per worker | tests/e2e/test_workers.py::test_the_start_logs_what_the_per_worker_limits_add_up_to |
| OPERATIONS: Workers, SCALING: Settings | a process holds at most `REDIS_MAX_CONNECTIONS` + 1 invalidation connection | test_a_process_holds_at_most_redis_max_connections_plus_one_invalidation_connection |
| OPERATIONS: Workers | a worker that dies is replaced | tests/e2e/test_workers.py::test_a_dead_worker_is_replaced |
| OPERATIONS: Workers | the parent stopping stops them all | tests/e2e/test_workers.py::test_sigint_stops_every_worker_and_the_embedded_redis |
| OPERATIONS: Workers | `kill -HUP` on the parent reloads the configuration | tests/e2e/test_reload.py::test_sighup_takes_new_tokens_from_env_and_drops_the_old_ones |
| OPERATIONS: Redis sizing | an entry is its body plus a header of a few hundred bytes | tests/unit/test_entry_format.py::test_a_typical_entry_has_at_most_70_bytes_of_metadata_beyond_its_kept_headers |
| OPERATIONS: Redis sizing | an entry lives for its freshness plus `CACHE_STALE_TTL` | tests/unit/test_units.py::test_store_is_one_write_with_freshness_plus_stale_window_as_ttl |
| OPERATIONS: Redis sizing | `REDIS_EVICTION_POLICY=allkeys-lru` (the default) | test_the_defaults_the_docs_state_are_the_settings_defaults |
| OPERATIONS: Redis sizing | a full Redis (`OOM`): still served, `redis_proxy_store_errors_total` counts it | tests/e2e/test_faults.py::test_full_redis_still_serves_and_counts_the_store_error |
| OPERATIONS: Redis sizing | ... logged at most once per 10 s | test_a_refused_write_is_logged_once_per_10_seconds |
| OPERATIONS: Redis sizing | both applied with `CONFIG SET` | test.py::test_config_set_applies_maxmemory_and_policy |
| OPERATIONS: Redis sizing | a refused `CONFIG` is a warning | test.py::test_refused_config_set_is_a_warning_not_a_crash |
| OPERATIONS: Redis sizing | `python3 docs/capacity.py --help` | tests/unit/test_capacity.py::test_the_help_the_docs_point_to_exits_0_and_names_the_options |
| OPERATIONS: Health | `/health` needs no token | tests/e2e/test_auth.py::test_health_stays_open |
| OPERATIONS: Health | 200 `{"status": "ok", "redis": "ok", "l1_invalidation": "tracking"}` | test.py::test_health_reports_redis |
| OPERATIONS: Health | 503 with `"redis": "down"` while Redis does not answer | tests/e2e/test_redis_security.py::test_a_wrong_password_is_one_clear_line_and_health_503 |
| OPERATIONS: Health | the proxy keeps serving what it can meanwhile | tests/e2e/test_faults.py::test_get_key_with_redis_down_is_503_unless_l1_has_it |
| OPERATIONS: Health, SCALING: limits | cluster: `shards`, 200 `degraded` with one shard down, its keys 503, 503 when none serves | tests/e2e/test_cluster_faults.py::test_killed_primary_fails_only_its_own_keys_with_503_and_health_is_degraded |
| OPERATIONS: Health | follows a failover by itself, idle or not | tests/e2e/test_cluster_faults.py::test_an_idle_proxys_health_follows_a_failover_by_itself_and_stays_200 |
| OPERATIONS: Health | `"l1_invalidation": "ttl"` when Redis refuses `CLIENT TRACKING` | tests/e2e/test_l1.py::test_a_redis_that_refuses_client_falls_back_to_ttl |
| OPERATIONS: Health | `/metrics` needs a token unless `METRICS_REQUIRE_AUTH=false` | tests/e2e/test_metrics.py::test_metrics_need_the_token_unless_configured_open |
| OPERATIONS: Health | the README's HTTP API table lists every series | test_every_series_of_a_scrape_is_named_in_the_readme_http_api_table |
| OPERATIONS: Health | the dashboard's queries name series and labels the proxy exports | test_the_dashboard_queries_name_series_and_labels_a_scrape_has |
| OPERATIONS: Health | the hit ratio query divides two sums (one-to-one matching) | test_the_dashboard_ratio_sums_each_rate_so_prometheus_can_divide_them |
| OPERATIONS: Health | with `HTTP_WORKERS` > 1 a scrape sums every worker | tests/e2e/test_worker_metrics.py::test_a_scrape_reaching_either_worker_sums_both |
| OPERATIONS: Logs | `LOG_LEVEL` `info`, `LOG_FORMAT` `text`, `LOG_FILE` empty = stderr | test_the_defaults_the_docs_state_are_the_settings_defaults |
| OPERATIONS: Logs | `json`: one object a line | tests/e2e/test_access_log.py::test_each_request_is_one_json_line_with_its_fields |
| OPERATIONS: Logs | `LOG_FILE` is held open for appending | test_the_log_file_is_appended_to_never_truncated |
| OPERATIONS: Logs | the start (ports, the Redis, its password masked) | tests/e2e/test_redis_security.py::test_the_process_never_logs_the_password |
| OPERATIONS: Logs | Redis going down and coming back | test_redis_going_down_and_coming_back_is_logged |
| OPERATIONS: Logs | tracking re-armed | tests/e2e/test_cluster_faults.py::test_sentinel_failover_is_survived_tracking_rearmed_and_memory_set_on_the_new_primary |
| OPERATIONS: Logs | workers replaced | tests/e2e/test_workers.py::test_a_dead_worker_is_replaced |
| OPERATIONS: Logs | a port exposed with no tokens is a warning | tests/e2e/test_auth.py::test_a_public_bind_without_tokens_is_warned_about |
| OPERATIONS: Logs | one access line per request on `redis_proxy.access` | tests/e2e/test_access_log.py::test_the_text_line_says_client_request_status_cache_bytes_and_ms |
| OPERATIONS: Logs | `ACCESS_LOG=false` or `LOG_LEVEL=warning` turns them off | tests/e2e/test_access_log.py::test_off_is_decided_once_from_the_setting_and_the_level |
| OPERATIONS: Logs | bearer tokens are never logged | tests/e2e/test_resp_auth.py::test_no_token_is_ever_logged |
| OPERATIONS: Logs | the Redis password is never logged | tests/e2e/test_redis_security.py::test_the_process_never_logs_the_password |
| OPERATIONS: Upgrades | `RPE5` written; `RPE1` (4-byte length, JSON, body) and versions 1-4 read | tests/unit/test_entry_format.py::test_versions_3_and_4_as_the_previous_release_wrote_them_still_decode |
| OPERATIONS: Upgrades (and README: HTTP caching semantics) | version 5 stores the URL once, 134 bytes shorter for the bench's entry (68 bytes of metadata against 202) | test_version_5_is_134_bytes_shorter_than_3_for_the_benchs_entry_and_smaller_in_redis |
| OPERATIONS: Upgrades | the store time: a flag and one more text section | tests/unit/test_entry_format.py::test_the_store_time_round_trips_in_version_5_and_3_and_adds_one_section |
| OPERATIONS: Upgrades | `KEY_RULE 2`: the rule's number and the target sent upstream are hashed | tests/e2e/test_cache_keys.py::test_a_derived_key_is_the_prefix_and_the_sha256_of_the_rule_number_and_canonical_url |
| OPERATIONS: Upgrades | an entry of the previous rule is a miss | tests/e2e/test_cache_keys.py::test_an_entry_stored_under_the_previous_rule_is_a_miss |
| OPERATIONS: Upgrades | explicit keys keep their names (`rp:` + key) | test_the_defaults_the_docs_state_are_the_settings_defaults |
| OPERATIONS: Upgrades | a hop-less entry of a named host through `?key=` under the strict policy: 403 | tests/e2e/test_entry_policy.py::test_a_version_1_entry_of_a_name_is_not_served_by_a_strict_proxy |
| OPERATIONS: Upgrades | entries of metadata version 1 and 2 are still read | tests/e2e/test_entry_policy.py::test_entry_metadata_version_2_is_still_read_with_its_eight_headers_only |
| SCALING: deployment | a cold URL is fetched once across processes | tests/e2e/test_cluster.py::test_two_proxies_fetch_a_cold_url_once |
| SCALING: deployment | the fetch lock lives in its entry's hash slot | tests/unit/test_topology_settings.py::test_an_entry_and_its_lock_share_a_hash_slot |
| SCALING: deployment | the fetch lock is `SET NX PX` | tests/e2e/test_miss_round_trips.py::test_the_lock_is_taken_before_the_keys_read_with_it_in_one_round_trip |
| SCALING: deployment | a write on any node reaches every process's L1 | tests/e2e/test_cluster.py::test_l1_entry_dropped_when_its_key_is_rewritten_on_its_node |
| SCALING: deployment | a purge through one proxy reaches another's L1 | tests/e2e/test_cluster.py::test_purge_through_one_proxy_reaches_the_other_proxys_l1 |
| SCALING: Settings | the topology is followed (MOVED, failover) | tests/e2e/test_cluster_faults.py::test_after_a_failover_no_proxy_serves_its_l1_copy_of_the_dead_primarys_keys |
| SCALING: Settings | Sentinel: the current primary, followed through a failover | tests/e2e/test_cluster_faults.py::test_sentinel_failover_is_survived_tracking_rearmed_and_memory_set_on_the_new_primary |
| SCALING: Settings | `REDIS_MAXMEMORY` and the policy on every primary | tests/e2e/test_cluster.py::test_maxmemory_is_set_on_every_primary |
| SCALING: Settings | ... and on a replica when it is promoted | tests/e2e/test_cluster_faults.py::test_an_idle_proxys_health_follows_a_failover_by_itself_and_stays_200 |
| SCALING: Settings | a dead primary's key: one retry after a slot-map refresh, then 503 | tests/e2e/test_cluster_faults.py::test_killed_primary_fails_only_its_own_keys_with_503_and_health_is_degraded |
| SCALING: Settings | `L1_INVALIDATION` `tracking` by default; `ttl` uses no listeners | tests/e2e/test_l1.py::test_ttl_mode_uses_no_tracking |
| SCALING: Settings | `CACHE_PREFIX`: proxies must agree on it | tests/e2e/test_cluster.py::test_url_role_stores_each_entry_on_the_node_owning_its_key |
| SCALING: Capacity model | a miss is 3 round trips and 12 commands (GET x7, SET x2, EVALSHA, EXISTS, DEL) | tests/e2e/test_miss_round_trips.py::test_a_cold_miss_is_three_redis_round_trips_and_twelve_commands |
| SCALING: Capacity model | the table is what `docs/capacity.py` prints | tests/unit/test_capacity.py::test_the_scaling_doc_table_is_what_the_script_prints |
| SCALING: Capacity model | `--hit-ratio 0.99 --hot-set-mb 50`: 4, 31, 306 cores; 1, 2, 38 primaries | tests/unit/test_capacity.py::test_the_small_hot_set_sentence_is_what_the_script_prints |
| SCALING: limits | after a failover no process serves its L1 copy of the dead primary's keys | tests/e2e/test_cluster_faults.py::test_after_a_failover_no_proxy_serves_its_l1_copy_of_the_dead_primarys_keys |
| SCALING: limits | coalescing: one fetch per cold URL at a time | tests/e2e/test_cluster.py::test_two_proxies_fetch_a_cold_url_once |
| both | every setting the docs name is a setting | test_every_setting_the_docs_name_is_a_setting |
"""

import dataclasses
import logging
import os
import re
import threading
from urllib.parse import quote

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

import http_server
import logger
from load_env import Settings, load_settings
from proxy.cache import entry as cache_entry
from proxy.store.launcher import RedisServer
from redis_proxy import RedisProxy
from servers import ROOT, ServerThread, q, request, wait_until

OPERATIONS = os.path.join(ROOT, "docs", "OPERATIONS.md")
SCALING = os.path.join(ROOT, "docs", "SCALING.md")
README = os.path.join(ROOT, "README.md")
SETTINGS = {field.metadata["env"]: field for field in dataclasses.fields(Settings)}


def read(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


def dashboard_queries() -> dict[str, str]:
    """OPERATIONS.md's dashboard table: panel -> its query cell."""
    rows = {}
    for line in read(OPERATIONS).split("\n"):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and "redis_proxy_" in cells[1]:
            rows[cells[0]] = cells[1]
    return rows


def families(port: int) -> dict[str, object]:
    got = request(port, "/metrics")
    assert got.status == 200
    return {family.name: family for family in text_string_to_metric_families(got.body.decode())}


@pytest.fixture
def own_redis():
    server = RedisServer(unix_socket=True).start()
    yield server
    server.cleanup()


# ----- the table ------------------------------------------------------------------------------

def test_every_test_the_table_cites_exists():
    cited = re.findall(r"\| (?:(\S+\.py)::)?(test_\w+) \|$", __doc__, re.MULTILINE)
    assert len(cited) >= 70
    for path, name in cited:
        source = read(os.path.join(ROOT, path)) if path else read(__file__)
        assert re.search(rf"^def {name}\(", source, re.MULTILINE), f"{path or __file__}::{name} is cited but absent"


def test_every_setting_the_docs_name_is_a_setting():
    not_settings = {"CLIENT", "CONFIG", "DELETE", "GET", "KEY_RULE", "MEMORY", "OOM", "RPE1", "RPE5", "SET"}
    for path in (OPERATIONS, SCALING):
        named = set(re.findall(r"`([A-Z][A-Z0-9_]{2,})(?:[=` ]|\b)", read(path))) - not_settings
        assert named and named <= set(SETTINGS), f"{path} names {sorted(named - set(SETTINGS))}"


# What the docs state a default to be: (doc, the words, setting, its default).
STATED_DEFAULTS = [
    (OPERATIONS, "`LOG_LEVEL` (`info`)", "LOG_LEVEL", "info"),
    (OPERATIONS, "`LOG_FORMAT` (`text`", "LOG_FORMAT", "text"),
    (OPERATIONS, "`LOG_FILE` (stderr when empty", "LOG_FILE", ""),
    (OPERATIONS, "keep\n`REDIS_EVICTION_POLICY=allkeys-lru`", "REDIS_EVICTION_POLICY", "allkeys-lru"),
    (OPERATIONS, "delete `rp:*`", "CACHE_PREFIX", "rp:"),
    (OPERATIONS, "(`ACCESS_LOG=false`", "ACCESS_LOG", True),
    (OPERATIONS, "unless `METRICS_REQUIRE_AUTH=false`", "METRICS_REQUIRE_AUTH", True),
    (SCALING, "`tracking` (default)", "L1_INVALIDATION", "tracking"),
]


@pytest.mark.parametrize("doc, words, name, default", STATED_DEFAULTS, ids=[row[2] for row in STATED_DEFAULTS])
def test_the_defaults_the_docs_state_are_the_settings_defaults(doc, words, name, default):
    assert words in read(doc)
    assert getattr(Settings(), SETTINGS[name].name) == default


# ----- workers and Redis connections ----------------------------------------------------------

def test_a_process_holds_at_most_redis_max_connections_plus_one_invalidation_connection(own_redis):
    admin = redis.Redis.from_url(own_redis.url)
    admin.set("k", b"v")
    settings = load_settings({"REDIS_URL": own_redis.url, "REDIS_MAX_CONNECTIONS": "2",
                              "CACHE_CAPACITY": "0", "MAX_PARALLEL": "8"}, env_file=None)
    proxy = RedisProxy.from_settings(settings)
    server = ServerThread(http_server.make_server("127.0.0.1", 0, proxy)).start()
    try:
        statuses: list[int] = []

        def client() -> None:
            statuses.extend(request(server.port, "/get/k").status for _ in range(10))

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert statuses == [200] * 80
        me = admin.client_id()
        theirs = [c for c in admin.client_list() if int(c["id"]) != me]
        subscribed = [c for c in theirs if int(c["sub"]) > 0]
        assert len(subscribed) == 1  # the invalidation connection, beside the pool
        assert 1 <= len(theirs) - 1 <= 2  # the pool: REDIS_MAX_CONNECTIONS
    finally:
        server.stop()
        proxy.close()
        admin.close()


# ----- Redis sizing ---------------------------------------------------------------------------

def test_a_refused_write_is_logged_once_per_10_seconds(own_redis, upstream, make_proxy, caplog):
    client = redis.Redis.from_url(own_redis.url)
    client.config_set("maxmemory-policy", "noeviction")
    client.set("ballast", b"x" * 2_000_000)
    client.config_set("maxmemory", 1024 * 1024)  # already over: every write is refused (OOM)
    url = upstream.serve("/oom", b"still served")
    proxy = make_proxy(own_redis.url, capacity=0)
    now = [1000.0]
    proxy.proxy.urls.log_limiter.clock = lambda: now[0]
    lines = lambda: [r.getMessage() for r in caplog.records if "redis refused a write" in r.getMessage()]  # noqa: E731
    for at in (1000.0, 1000.0, 1009.9):
        now[0] = at
        assert request(proxy.port, q(url, "oom")).body == b"still served"
    assert len(lines()) == 1
    now[0] = 1010.0
    assert request(proxy.port, q(url, "oom")).body == b"still served"
    assert len(lines()) == 2 and lines()[1].endswith("(2 more like this in the last 10 s)")
    client.close()


def test_version_5_is_134_bytes_shorter_than_3_for_the_benchs_entry_and_smaller_in_redis(own_redis):
    entry = cache_entry.Entry(status=200, body=b"x" * 100, url="http://127.0.0.1:43211/page",
                              fetched_at=1764630000.123456, fresh_for=3600.0,
                              headers={"content-type": "text/plain", "cache-control": "max-age=3600"},
                              via=(("http://127.0.0.1:43211/page", "127.0.0.1"),))
    five, three = cache_entry.encode(entry), cache_entry.encode_json(entry)
    assert (len(five), len(three)) == (215, 349)
    # README's HTTP caching semantics says what each takes beyond the body and the headers.
    kept = sum(len(name) + len(value) for name, value in entry.headers.items())
    beyond = (len(five) - len(entry.body) - kept, len(three) - len(entry.body) - kept)
    assert (f"{beyond[0]} bytes of metadata beyond the headers for `make bench`'s entry (a 100-byte "
            f"body, two headers) where version 3 took {beyond[1]}.") in " ".join(read(README).split())
    assert "takes 134 bytes less, 215 against 349" in " ".join(read(OPERATIONS).split())
    client = redis.Redis.from_url(own_redis.url)
    client.set("rp:five", five)
    client.set("rp:three", three)
    assert client.memory_usage("rp:three") - client.memory_usage("rp:five") >= 134
    client.close()


# ----- health and metrics ---------------------------------------------------------------------

def scraped_proxy(make_proxy, upstream):
    """A proxy that served a miss, a hit, a 404 and refused one URL: every family has samples."""
    url = upstream.serve("/d", b"dashboard")
    proxy = make_proxy()
    assert request(proxy.port, q(url, "d")).headers["X-Cache"] == "MISS"
    assert request(proxy.port, q(url, "d")).headers["X-Cache"] == "HIT"
    assert request(proxy.port, "/nowhere").status == 404
    strict = make_proxy(allow_private=False)
    assert request(strict.port, "/?url=" + quote("http://127.0.0.1:1/x", safe="")).status == 403
    return proxy, strict


def test_the_dashboard_queries_name_series_and_labels_a_scrape_has(make_proxy, upstream):
    proxy, strict = scraped_proxy(make_proxy, upstream)
    samples: dict[str, set[str]] = {}  # sample name -> the label names it carries
    for family in [*families(proxy.port).values(), *families(strict.port).values()]:
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    queries = dashboard_queries()
    assert len(queries) == 7
    for panel, cell in queries.items():
        for query in re.findall(r"`([^`]+)`", cell):
            names = re.findall(r"redis_proxy_\w+", query)
            assert names and all(name in samples for name in names), f"{panel}: {query}"
            for label in re.findall(r"by \((\w+)\)", query):
                assert all(label in samples[name] for name in names), f"{panel}: no {label} label"


def test_the_dashboard_ratio_sums_each_rate_so_prometheus_can_divide_them():
    # PromQL matches the two sides of `/` or `+` one-to-one by their labels: a sum has none, a
    # bare rate keeps instance and job, so `sum(a) / (sum(a) + rate(b))` matches nothing.
    for panel, cell in dashboard_queries().items():
        for query in re.findall(r"`([^`]+)`", cell):
            if re.search(r"\) [/+*-] \(?", query):
                assert query.count("rate(") == query.count("sum(rate("), f"{panel}: {query}"


def test_every_series_of_a_scrape_is_named_in_the_readme_http_api_table(make_proxy, upstream):
    proxy, _strict = scraped_proxy(make_proxy, upstream)
    row = next(line for line in read(README).split("\n") if line.startswith("| `GET /metrics` |"))
    listed = set(re.findall(r"`(redis_proxy_\w+)(?:\{[^}]*\})?`", row))
    # A counter's `_created` gauge is the client library's (text format 0.0.4), not a series of ours.
    exported = {name + ("_total" if family.type == "counter" else "")
                for name, family in families(proxy.port).items() if not name.endswith("_created")}
    assert exported == listed


# ----- logs -----------------------------------------------------------------------------------

def test_the_log_file_is_appended_to_never_truncated(tmp_path):
    path = tmp_path / "proxy.log"
    path.write_text("a line of the last run\n")
    root = logging.getLogger()
    level = root.level
    try:
        logger.configure("info", "text", str(path))
        logging.getLogger("redis_proxy.test").info("a line of this run")
    finally:
        logger.configure(logging.getLevelName(level), "text", None)
        root.handlers = [h for h in root.handlers if h.get_name() != "redis-proxy"]
        root.setLevel(level)
    lines = path.read_text().splitlines()
    assert lines[0] == "a line of the last run" and lines[1].endswith("INFO redis_proxy.test: a line of this run")


def test_redis_going_down_and_coming_back_is_logged(own_redis, upstream, make_proxy, caplog):
    caplog.set_level(logging.INFO)
    url = upstream.serve("/r", b"resilient")
    proxy = make_proxy(own_redis.url, capacity=0)
    own_redis.stop()
    assert request(proxy.port, q(url, "r")).status == 200
    assert "redis unreachable" in caplog.text
    own_redis.start()
    wait_until(lambda: request(proxy.port, "/health").status == 200, timeout=5)
    wait_until(lambda: "redis answers again" in caplog.text, timeout=5)

