"""GET /metrics: Prometheus text with requests, hits by tier, misses, upstream fetches and errors,
store errors, latency and connections (CONTRACT §4), read from a proxy that served real traffic."""

from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.serving.auth import Authenticator
from servers import request, wait_until

TOKEN = "metrics-test-token-0123456789abcdef"


def scrape(port: int, headers: dict | None = None) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    got = request(port, "/metrics", headers=headers)
    assert got.status == 200, got
    assert got.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(got.body.decode())
            for sample in family.samples}


def test_metrics_count_what_the_proxy_did(upstream, make_proxy, r):
    url = upstream.serve("/m", b"measured")
    proxy = make_proxy()
    path = f"/?url={quote(url, safe='')}&key=m"
    assert request(proxy.port, path).headers["X-Cache"] == "MISS"
    assert request(proxy.port, path).headers["X-Cache"] == "HIT"
    assert request(proxy.port, "/nowhere").status == 404
    r.set("plain", b"v")
    request(proxy.port, "/get/plain")
    request(proxy.port, "/get/plain")
    # Closed connections leave the count as their server threads notice; the scrape's own stays.
    wait_until(lambda: scrape(proxy.port)[("redis_proxy_connections", (("front", "http"),))] == 1)
    m = scrape(proxy.port)
    assert m[("redis_proxy_cache_hits_total", (("tier", "l1"),))] == 2  # one URL hit, one /get hit
    assert m[("redis_proxy_cache_misses_total", ())] == 1
    assert m[("redis_proxy_upstream_fetches_total", ())] == 1 == upstream.hits["/m"]
    assert m[("redis_proxy_upstream_errors_total", ())] == 0
    assert m[("redis_proxy_store_errors_total", ())] == 0
    assert m[("redis_proxy_redis_reads_total", ())] == 1
    scrapes = m[("redis_proxy_requests_total", (("front", "http"), ("status", "200")))] - 4
    assert scrapes >= 1  # the polling scrapes are requests too
    assert m[("redis_proxy_requests_total", (("front", "http"), ("status", "404")))] == 1
    assert m[("redis_proxy_request_duration_seconds_count", (("front", "http"),))] == 5 + scrapes
    assert m[("redis_proxy_redis_up", ())] == 1
    assert m[("redis_proxy_l1_entries", ())] == 2


def test_upstream_errors_and_policy_refusals_are_counted(make_proxy):
    proxy = make_proxy(allow_private=False)
    assert request(proxy.port, "/?url=" + quote("http://127.0.0.1:1/x", safe="")).status == 403
    m = scrape(proxy.port)
    assert m[("redis_proxy_upstream_refusals_total", (("reason", "address"),))] == 1
    assert m[("redis_proxy_requests_total", (("front", "http"), ("status", "403")))] == 1


@pytest.mark.parametrize("options, status", [({}, 401), ({"metrics_require_auth": False}, 200),
                                             ({"metrics_require_auth": True}, 401)])
def test_metrics_need_the_token_unless_configured_open(make_proxy, options, status):
    proxy = make_proxy(server_options={"authenticator": Authenticator([TOKEN], **options)})
    assert request(proxy.port, "/metrics").status == status
    assert request(proxy.port, "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
    assert request(proxy.port, "/get/x").status == 401  # the other routes need the token anyway


def test_metrics_answer_only_get_and_head(make_proxy):
    proxy = make_proxy()
    assert request(proxy.port, "/metrics", method="DELETE").status == 405
    head = request(proxy.port, "/metrics", method="HEAD")
    assert (head.status, head.body) == (200, b"") and int(head.headers["Content-Length"]) > 0
