"""The requests counter and latency histogram kept by the HTTP and RESP hot paths, as /metrics
exports them."""

import pathlib
import re

from prometheus_client import CollectorRegistry, generate_latest

from proxy.resp.commands import COMMANDS, label_of
from proxy.serving.metrics import _Requests


def _exposed(observations: list[tuple[str, int, float]]) -> dict[str, float]:
    registry = CollectorRegistry()
    requests = _Requests()
    registry.register(requests)
    for front, status, seconds in observations:
        requests.observe(front, status, seconds)
    lines = generate_latest(registry).decode().splitlines()
    return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2]) for line in lines
            if not line.startswith("#") and "_created" not in line}


def test_requests_are_counted_by_front_and_status():
    exposed = _exposed([("http", 200, 0.0001)] * 3 + [("http", 404, 0.0001), ("resp", 200, 0.0001)])
    assert exposed['redis_proxy_requests_total{front="http",status="200"}'] == 3
    assert exposed['redis_proxy_requests_total{front="http",status="404"}'] == 1
    assert exposed['redis_proxy_requests_total{front="resp",status="200"}'] == 1


def test_a_latency_on_a_bucket_bound_counts_in_that_bucket_and_the_sum_is_kept():
    exposed = _exposed([("http", 200, 0.001), ("http", 200, 0.0010001), ("http", 200, 11.0)])
    bucket = 'redis_proxy_request_duration_seconds_bucket{front="http",le="%s"}'
    assert exposed[bucket % "0.0005"] == 0
    assert exposed[bucket % "0.001"] == 1  # le: at most the bound
    assert exposed[bucket % "0.0025"] == 2
    assert exposed[bucket % "10.0"] == 2
    assert exposed[bucket % "+Inf"] == 3
    assert exposed['redis_proxy_request_duration_seconds_count{front="http"}'] == 3
    assert abs(exposed['redis_proxy_request_duration_seconds_sum{front="http"}'] - 11.0020001) < 1e-9


def test_resp_connections_tallies_are_summed_by_command_and_status_open_or_closed():
    registry = CollectorRegistry()
    requests = _Requests()
    registry.register(requests)
    first, second = requests.resp.open(), requests.resp.open()
    first.ok["get"] = 10
    first.failed["other"] = 2
    first.observe(12, 0.0003)  # one read's 12 commands: each observed with its latency
    second.ok["get"] = 1
    second.observe(1, 0.003)
    requests.resp.close(first)  # a closed connection's counts stay in the totals
    requests.resp.close(first)  # once
    lines = generate_latest(registry).decode().splitlines()
    exposed = {line.rpartition(" ")[0]: float(line.rpartition(" ")[2]) for line in lines
               if not line.startswith("#") and "_created" not in line}
    assert exposed['redis_proxy_requests_total{command="get",front="resp",status="ok"}'] == 11
    assert exposed['redis_proxy_requests_total{command="other",front="resp",status="error"}'] == 2
    bucket = 'redis_proxy_request_duration_seconds_bucket{front="resp",le="%s"}'
    assert exposed[bucket % "0.0005"] == 12
    assert exposed[bucket % "0.0025"] == 12 and exposed[bucket % "0.005"] == 13
    assert exposed['redis_proxy_request_duration_seconds_count{front="resp"}'] == 13
    assert abs(exposed['redis_proxy_request_duration_seconds_sum{front="resp"}'] - 0.0066) < 1e-12


def test_the_command_label_is_a_served_command_in_any_case_else_other_as_the_readme_lists():
    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
    stated = re.search(r"`command` is one of (.*?)\s*and `other` for every other command", readme, re.S)
    listed = re.findall(r"`(\w+)`", stated.group(1))
    assert listed == list(COMMANDS)  # the README names each command the RESP front end serves
    assert [label_of(name.encode()) for name in listed] == listed
    assert [label_of(name.upper().encode()) for name in listed] == listed
    assert label_of(b"GeT") == "get" and label_of(b"Mget") == "mget"
    for word in (b"SET", b"del", b"flushall", b"no-such-command", b"\xff\xfe"):
        assert label_of(word) == "other"
