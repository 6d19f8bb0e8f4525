"""The access log (issue 11): one line per request on `redis_proxy.access`, JSON with
LOG_FORMAT=json, no secrets, off with ACCESS_LOG=false. The proxy runs as a process, as
`make run` starts it, against the test's Redis and a real upstream."""

import json
import logging
from urllib.parse import quote

import pytest

from proxy.serving.access_log import AccessLog
from proxy.store.launcher import free_port
from servers import q, refused, request, start_proxy, stop_proxy, wait_until

TOKEN = "access-log-token-0123456789abcdef"


@pytest.fixture
def run_proxy_logging(redis_url, upstream, tmp_path):
    """Start the proxy with `env` over a JSON log to a file; returns (port, read the log lines)."""
    started = []

    def start(**env: str):
        port, log_file = free_port(), tmp_path / "proxy.log"
        process = start_proxy({"REDIS_URL": redis_url, "HTTP_PORT": str(port), "RESP_PORT": "0",
                               "LOG_FILE": str(log_file), "LOG_FORMAT": "json",
                               "UPSTREAM_ALLOW_PRIVATE": "true",
                               "UPSTREAM_ALLOWED_PORTS": str(upstream.port), **env})
        started.append(process)
        wait_until(lambda: not refused(port), timeout=20)
        return port, lambda: [json.loads(line) for line in log_file.read_text().splitlines()]

    yield start
    for process in started:
        stop_proxy(process)


def access_lines(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line["logger"] == "redis_proxy.access"]


def test_each_request_is_one_json_line_with_its_fields(run_proxy_logging, upstream):
    url = upstream.serve("/logged", b"twelve bytes")
    port, read_log = run_proxy_logging(AUTH_TOKENS=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    path = q(url, "logged")

    assert request(port, path, headers=auth).headers["X-Cache"] == "MISS"
    assert request(port, path, headers=auth).headers["X-Cache"] == "HIT"
    assert request(port, "/get/nothing", headers=auth).status == 404
    assert request(port, path).status == 401  # no token

    # Each line is written just after its reply is sent, by the thread that served it: wait
    # for the fourth. Two requests served by two threads may write their lines in either order
    # (the next request can be answered before the thread of the one before writes its line),
    # so the lines are compared in the order of their (status, cache).
    lines = wait_until(lambda: (found := access_lines(read_log())) and len(found) >= 4 and found)[:4]
    lines.sort(key=lambda line: (line["status"], line["cache"]))
    logged = "/?url=***&key=***"  # the query's values masked
    assert [(line["method"], line["path"], line["status"], line["cache"], line["bytes"])
            for line in lines] == [
        ("GET", logged, 200, "HIT", 12),
        ("GET", logged, 200, "MISS", 12),
        ("GET", logged, 401, "-", lines[2]["bytes"]),
        ("GET", "/get/nothing", 404, "-", len(request(port, "/get/nothing", headers=auth).body)),
    ]
    for line in lines:
        assert line["level"] == "INFO" and line["client"] == "127.0.0.1"
        assert isinstance(line["duration_ms"], float) and 0 <= line["duration_ms"] < 10_000
        assert line["message"].startswith(f'127.0.0.1 "GET {line["path"]}" {line["status"]} ')
    assert TOKEN not in "\n".join(json.dumps(line) for line in read_log())


def test_every_query_value_is_masked_and_the_names_kept(run_proxy_logging, upstream):
    port, read_log = run_proxy_logging()
    secret_url = f"http://alice:s3cret-pw@127.0.0.1:{upstream.port}/private?api_key=k3y"
    path = "/?url=" + quote(secret_url, safe="") + "&key=kept-key"

    assert request(port, path).status == 403  # the policy refuses user info; it is logged all the same

    (line,) = wait_until(lambda: access_lines(read_log()))
    assert line["path"] == "/?url=***&key=***"
    assert line["status"] == 403
    assert "s3cret-pw" not in json.dumps(read_log()) and "k3y" not in json.dumps(read_log())


def test_a_site_paths_query_values_are_masked(run_proxy_logging, origin):
    origin.serve("/reset", b"reset page")
    port, read_log = run_proxy_logging(ORIGIN_URL=origin.url(""),
                                       UPSTREAM_ALLOWED_PORTS=str(origin.port))
    got = request(port, "/reset?reset_token=s3cret-reset&api_key=k3y")
    assert (got.status, got.body) == (200, b"reset page")
    (line,) = wait_until(lambda: access_lines(read_log()))
    assert line["path"] == "/reset?reset_token=***&api_key=***"
    assert line["message"].startswith('127.0.0.1 "GET /reset?reset_token=***&api_key=***" 200 MISS ')
    assert "s3cret-reset" not in json.dumps(read_log()) and "k3y" not in json.dumps(read_log())


def test_access_log_false_writes_no_access_line(run_proxy_logging, upstream):
    url = upstream.serve("/quiet", b"quiet")
    port, read_log = run_proxy_logging(ACCESS_LOG="false")

    assert request(port, q(url)).status == 200
    assert request(port, "/health").status == 200

    lines = read_log()
    assert any(line["logger"] == "redis_proxy" for line in lines)  # the log itself is written
    assert access_lines(lines) == []


def test_the_text_line_says_client_request_status_cache_bytes_and_ms(make_proxy, upstream, caplog):
    caplog.set_level(logging.INFO, logger="redis_proxy.access")  # before the server decides
    url = upstream.serve("/text", b"abc")
    proxy = make_proxy(server_options={"access_log": AccessLog()})

    request(proxy.port, q(url, "text"))
    request(proxy.port, "/health", method="HEAD")

    access = lambda: [record for record in caplog.records if record.name == "redis_proxy.access"]  # noqa: E731
    records = wait_until(lambda: len(access()) == 2 and access())
    first, second = (record.getMessage() for record in records)
    assert first.startswith('127.0.0.1 "GET /?url=***&key=***" 200 MISS 3 ') and first.endswith("ms")
    assert second.startswith('127.0.0.1 "HEAD /health" 200 - 0 ')


def test_off_is_decided_once_from_the_setting_and_the_level():
    quiet = logging.getLogger("redis_proxy.access.test")
    quiet.setLevel(logging.WARNING)
    assert AccessLog(logger=quiet).enabled is False  # INFO lines would be dropped anyway
    quiet.setLevel(logging.INFO)
    assert AccessLog(logger=quiet).enabled is True
    assert AccessLog(enabled=False, logger=quiet).enabled is False
